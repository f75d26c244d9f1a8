/**
 * Crash recovery and preflight on real LVM in UML: kill -9 during the stream leaves a snapshot (and, for a
 * filesystem snapshot, a mount) that the next run removes first, without touching snapshots it did not make; a
 * volume group without room for the snapshot, and a disk that is not on LVM, fail the preflight (exit 3) before
 * anything is created.
 */
import { describe, it } from "vitest";
import { cleanRun, describeRun, runUml, umlTestTimeout } from "../lab/umlLab.ts";
import { configScript, decompress, listRunnerSnapshots, MiB, pseudoRandom, readLines, sha256, VG_SCRIPT } from "./lvmLab.ts";
import { backupResult, backupRun } from "./lvmBackup.ts";

// Each test boots its own guest; they run side by side.
describe.concurrent("lvm recovery and preflight (UML)", () => {
  it("kill -9 mid-stream: the next run unmounts and removes the orphan snapshots first, leaves foreign ones, and backs up", async ({ expect }) => {
    const a = pseudoRandom(16 * MiB, 11);
    const first = await backupRun("web01", "first");
    const second = await backupRun("web01", "second");
    const r = await runUml({
      name: "lvm-kill",
      timeoutMs: 330_000,
      files: { "a.bin": a },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 64M -n web01 vg0
lvcreate -q -y -L 64M -n images vg0
mkfs.ext4 -q /dev/vg0/images
mkdir -p /tmp/images && mount /dev/vg0/images /tmp/images
cp $LAB/a.bin /tmp/images/data.raw && sync
# Snapshots this run must never touch: someone else's, and one of another VM whose name starts the same.
lvcreate -q -y -s -L 8M -n kvmbk-manual vg0/web01
lvcreate -q -y -s -L 8M -n 'kvmbk+web01.old+20261128T010000Z+web01' vg0/web01
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01", vdb: "/tmp/images/data.raw" }, snapshot: { size: "48MiB", pollInterval: "1s" } })}
# Killed mid-stream: its snapshots exist and are mounted, and the stream (held) cannot end first. The gate is
# never opened: the held compressor must die with the runner, or it would keep the snapshot open.
${first.heldBackground}${first.waitForStream}kill -9 $pid
wait $pid || true
${listRunnerSnapshots("$LAB/orphans.txt")}
grep '/.kvm-backup/mnt/' /proc/self/mountinfo > $LAB/orphan-mounts.txt || true
${second.foreground}${listRunnerSnapshots("$LAB/left.txt")}
grep '/.kvm-backup/mnt/' /proc/self/mountinfo > $LAB/mounts-after.txt || true
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const orphans = readLines(r.dir, "orphans.txt");
    expect(orphans.filter((n) => n.startsWith("kvmbk+web01+2")), describeRun(r)).toHaveLength(2);
    expect(readLines(r.dir, "orphan-mounts.txt")).toHaveLength(1);
    const res = backupResult(r.dir, "web01", "second");
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(0);
    expect(res.recovered.filter((m) => /removed the leftover snapshot vg0\/kvmbk\+web01\+2/.test(m))).toHaveLength(2);
    expect(res.recovered.some((m) => /unmounted the leftover snapshot mount/.test(m))).toBe(true);
    expect(sha256(decompress(res.diskFile("vdb")))).toBe(sha256(a));
    // Only the foreign snapshots remain.
    expect(readLines(r.dir, "left.txt")).toEqual(["kvmbk+web01.old+20261128T010000Z+web01"]);
    expect(readLines(r.dir, "mounts-after.txt")).toEqual([]);
    cleanRun(r);
  }, umlTestTimeout(330_000));

  it("too little free space in the VG, or a disk not on LVM, fails the preflight (exit 3) and creates nothing", async ({ expect }) => {
    const full = await backupRun("web01", "full");
    const notLvm = await backupRun("web01", "notlvm", "config-notlvm.json");
    const r = await runUml({
      name: "lvm-preflight",
      timeoutMs: 180_000,
      script: `${VG_SCRIPT}
lvcreate -q -y -L 900M -n web01 vg0
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: "20%" } })}
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01", vdb: "/tmp/scratch.raw" }, snapshot: { size: "8MiB" } }, "config-notlvm.json")}
truncate -s 16M /tmp/scratch.raw
vgs --noheadings --units m -o vg_free vg0 > $LAB/free.txt
${full.foreground}${notLvm.foreground}lvs --noheadings -o lv_name vg0 | tr -d ' ' > $LAB/lvs-after.txt
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const fullRes = backupResult(r.dir, "web01", "full");
    expect(fullRes.exitCode, `${describeRun(r)}\n${fullRes.log}`).toBe(3);
    expect(fullRes.error).toMatch(/volume group vg0 has 1[12][0-9] MiB free, but the snapshots of web01 \(900 MiB\) need 180 MiB \(snapshot\.size "20%"\); free space in vg0/);
    const notLvmRes = backupResult(r.dir, "web01", "notlvm");
    expect(notLvmRes.exitCode, notLvmRes.log).toBe(3);
    expect(notLvmRes.error).toMatch(/disk vdb \(\/tmp\/scratch\.raw\) is an image file on tmpfs .* which is not a logical volume; back this VM up with the libvirt method/);
    expect(readLines(r.dir, "lvs-after.txt")).toEqual(["web01"]);
    cleanRun(r);
  }, umlTestTimeout(330_000));
});
