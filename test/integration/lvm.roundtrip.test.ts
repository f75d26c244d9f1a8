/**
 * Round trips on real LVM in User-Mode Linux: (a) an LV as the VM disk, (b) image files on ext4 and xfs
 * filesystems on LVs. A writer changes the origin while the snapshot is streamed (the stream is held, its
 * compressor waiting at a gate, until the writes are done, so they land mid-stream however fast the guest is); the
 * backup must hold the content at snapshot time, and the origin the new writes. Sizes are small: nothing here
 * depends on them, and every MiB streamed costs time in UML. The two guests run side by side.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "vitest";
import { cleanRun, describeRun, runUml, umlTestTimeout } from "../lab/umlLab.ts";
import { configScript, decompress, listRunnerSnapshots, MiB, pseudoRandom, readLines, sha256, VG_SCRIPT, writerLog } from "./lvmLab.ts";
import { backupResult, backupRun } from "./lvmBackup.ts";

const WRITER = new URL("../lab/pacedWriter.mjs", import.meta.url).pathname;

describe.concurrent("lvm method round trips (UML)", () => {
  it("(a) LV disk: the backup holds the content at snapshot time while the origin is written during the stream", async ({ expect }) => {
    const a = pseudoRandom(32 * MiB, 1);
    const b = pseudoRandom(16 * MiB, 2);
    const run = await backupRun("web01");
    const r = await runUml({
      name: "lvm-rt-lv",
      timeoutMs: 330_000,
      files: { "a.bin": a, "b.bin": b },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 64M -n web01 vg0
dd if=$LAB/a.bin of=/dev/vg0/web01 bs=1M conv=fsync status=none
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: "48MiB", pollInterval: "1s" } })}
${run.heldBackground}${run.waitForStream}
# 16 MiB from 24 MiB on: over the end of the data and into the zeros behind it.
node ${WRITER} $LAB/b.bin /dev/vg0/web01 24 16 16 $LAB/writer.log
${run.releaseStream}${run.wait}sha256sum /dev/vg0/web01 | cut -d' ' -f1 > $LAB/after.sha
${listRunnerSnapshots("$LAB/left.txt")}
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const res = backupResult(r.dir, "web01");
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(0);
    const expectedAtSnapshot = Buffer.concat([a, Buffer.alloc(32 * MiB)]);
    const restored = decompress(res.diskFile("vda"));
    expect(restored.length).toBe(64 * MiB);
    expect(sha256(restored)).toBe(sha256(expectedAtSnapshot));
    const after = Buffer.from(expectedAtSnapshot);
    b.copy(after, 24 * MiB);
    expect(readFileSync(join(r.dir, "after.sha"), "utf8").trim()).toBe(sha256(after));
    // The writes happened while the snapshot lived, i.e. during the stream.
    const w = writerLog(r.dir);
    expect(w.at(-1)![1]).toBe(16);
    expect(w.at(-1)![0]).toBeLessThan(res.removedMs!);
    expect(res.peakFillPercent).toBeGreaterThan(20);
    expect(res.peakFillPercent).toBeLessThan(80);
    expect(readLines(r.dir, "left.txt")).toEqual([]);
    console.log(`lvm round trip (a): boot ${r.bootMs} ms, total ${r.totalMs} ms, peak fill ${res.peakFillPercent} %, snapshot window ${res.windowMs} ms`);
    cleanRun(r);
  }, umlTestTimeout(330_000));

  it("(b) image files on ext4 and xfs on LVs: snapshots mounted read-only, files streamed, unmounted and removed", async ({ expect }) => {
    const a = pseudoRandom(12 * MiB, 3);
    const c = pseudoRandom(8 * MiB, 4);
    const b = pseudoRandom(4 * MiB, 5);
    const run = await backupRun("db01");
    const r = await runUml({
      name: "lvm-rt-fs",
      timeoutMs: 330_000,
      files: { "a.bin": a, "b.bin": b, "c.bin": c },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 256M -n images vg0
lvcreate -q -y -L 320M -n xfsimages vg0
mkfs.ext4 -q /dev/vg0/images
mkfs.xfs -q /dev/vg0/xfsimages
mkdir -p /tmp/images /tmp/xfs
mount /dev/vg0/images /tmp/images
mount /dev/vg0/xfsimages /tmp/xfs
mkdir -p /tmp/images/vms
cp $LAB/a.bin /tmp/images/vms/db01.raw
cp $LAB/c.bin /tmp/xfs/db01-data.raw
sync
${configScript({ vm: "db01", disks: { vda: "/tmp/images/vms/db01.raw", vdb: "/tmp/xfs/db01-data.raw" }, snapshot: { size: "20%", pollInterval: "1s" } })}
${run.heldBackground}${run.waitForStream}
grep '/.kvm-backup/mnt/' /proc/self/mountinfo > $LAB/mounts-during.txt || true
node ${WRITER} $LAB/b.bin /tmp/images/vms/db01.raw 4 4 16 $LAB/writer.log
${run.releaseStream}${run.wait}sha256sum /tmp/images/vms/db01.raw | cut -d' ' -f1 > $LAB/after.sha
grep '/.kvm-backup/mnt/' /proc/self/mountinfo > $LAB/mounts-after.txt || true
ls /tmp/staging/.kvm-backup/mnt/ > $LAB/mntdirs-after.txt 2>/dev/null || true
${listRunnerSnapshots("$LAB/left.txt")}
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const res = backupResult(r.dir, "db01");
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(0);
    expect(sha256(decompress(res.diskFile("vda")))).toBe(sha256(a));
    expect(sha256(decompress(res.diskFile("vdb")))).toBe(sha256(c));
    const after = Buffer.from(a);
    b.copy(after, 4 * MiB);
    expect(readFileSync(join(r.dir, "after.sha"), "utf8").trim()).toBe(sha256(after));
    // During the run: one read-only mount per filesystem snapshot, xfs with nouuid. After: none, no snapshot left.
    const during = readLines(r.dir, "mounts-during.txt").join("\n");
    expect(during).toMatch(/ ro[ ,].* - ext4 /);
    expect(during).toMatch(/ ro[ ,].* - xfs .*nouuid/);
    expect(readLines(r.dir, "mounts-after.txt")).toEqual([]);
    expect(readLines(r.dir, "mntdirs-after.txt")).toEqual([]);
    expect(readLines(r.dir, "left.txt")).toEqual([]);
    console.log(`lvm round trip (b): boot ${r.bootMs} ms, total ${r.totalMs} ms, peak fill ${res.peakFillPercent} %`);
    cleanRun(r);
  }, umlTestTimeout(330_000));
});
