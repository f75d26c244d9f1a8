/**
 * The overflow guard on real LVM in UML: a guest writes faster than the stream can finish; the run must stop at
 * maxFillPercent, before the snapshot reaches 100 %, and leave no snapshot and no partial output. And when a
 * snapshot does overflow (the guard is made blind with a long poll interval), the backup fails: a read error of
 * the compressor is never taken for the end of the disk.
 */
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cleanRun, describeRun, runUml, umlTestTimeout } from "../lab/umlLab.ts";
import { configScript, listRunnerSnapshots, MiB, pseudoRandom, readLines, VG_SCRIPT, WAIT_FOR_SNAPSHOT, writerLog } from "./lvmLab.ts";
import { backupResult, backupRun } from "./lvmBackup.ts";

const WRITER = new URL("../lab/pacedWriter.mjs", import.meta.url).pathname;

function partials(dir: string, vm: string): string[] {
  const d = join(dir, "staging", vm);
  return existsSync(d) ? readdirSync(d).filter((n) => n.endsWith(".partial")) : [];
}

describe("lvm overflow guard (UML)", () => {
  it("aborts at maxFillPercent before the snapshot fills, removes it and the partial output", async () => {
    // In UML every exec costs 0.5 s and more on a loaded machine (lvs 1-3 s, lvremove 1-5 s), so the margin
    // above the limit must cover ~10 s of writes: 16 MiB snapshot, limit 40 %, writer 0.5 MiB/s leaves 9.6 MiB = 19 s.
    // On a real host these commands take ~0.1-0.3 s and the default 80 % leaves room for far faster writers.
    const SNAP_MIB = 16;
    const LIMIT = 40;
    const run = await backupRun("web01");
    const r = await runUml({
      name: "lvm-guard",
      timeoutMs: 330_000,
      files: { "b.bin": pseudoRandom(20 * MiB, 7) },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 768M -n web01 vg0
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: `${SNAP_MIB}MiB`, maxFillPercent: LIMIT, pollInterval: "200ms" } })}
${run.background}${WAIT_FOR_SNAPSHOT}
# 20 MiB at 0.5 MiB/s into a 16 MiB snapshot: without the guard it overflows after about 32 s.
node ${WRITER} $LAB/b.bin /dev/vg0/web01 0 20 0.5 $LAB/writer.log &
wpid=$!
${run.wait}wait $wpid
dmesg | grep -i -E 'invalidat|snapshot.*full' > $LAB/dmesg-overflow.txt || true
${listRunnerSnapshots("$LAB/left.txt")}
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const res = backupResult(r.dir, "web01");
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(1);
    expect(res.error).toMatch(/snapshot vg0\/kvmbk\+web01\+\S+ reached \d+\.\d+ % of 16\.0 MiB \(limit snapshot\.maxFillPercent 40 %\)/);
    const abort = res.abort!;
    expect(abort, res.log).not.toBeNull();
    const fill = abort.fillPercent;
    expect(fill).toBeGreaterThanOrEqual(LIMIT);
    expect(fill).toBeLessThan(100);
    // The kernel never invalidated a snapshot, none is left, and nothing partial stays in staging.
    expect(readLines(r.dir, "dmesg-overflow.txt")).toEqual([]);
    expect(readLines(r.dir, "left.txt")).toEqual([]);
    expect(partials(r.dir, "web01")).toEqual([]);
    // Reaction: from the moment the writer had put 80 % of the snapshot's size into the origin to the abort,
    // and from the abort to the snapshot's removal.
    const w = writerLog(r.dir);
    const crossing = w.find(([, mib]) => mib >= (LIMIT / 100) * SNAP_MIB)?.[0];
    const removed = res.removedMs!;
    console.log(
      `lvm guard: abort at ${fill} % (peak ${fill} %), ${crossing ? abort.t - crossing : "?"} ms after the writer crossed ${LIMIT} %, snapshot removed ${removed - abort.t} ms after the abort; boot ${r.bootMs} ms, total ${r.totalMs} ms`,
    );
    cleanRun(r);
  }, umlTestTimeout(330_000));

  it("a snapshot that overflowed anyway (guard blinded) fails the backup: zstd read error 37, never a short backup", async () => {
    const run = await backupRun("web01");
    const r = await runUml({
      name: "lvm-invalid",
      timeoutMs: 330_000,
      files: { "b.bin": pseudoRandom(40 * MiB, 8) },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 768M -n web01 vg0
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: "16MiB", maxFillPercent: 80, pollInterval: "5min" } })}
${run.background}${WAIT_FOR_SNAPSHOT}
dd if=$LAB/b.bin of=/dev/vg0/web01 bs=1M oflag=direct status=none
${run.wait}dmesg | grep -i 'invalidating snapshot' > $LAB/dmesg-overflow.txt || true
${listRunnerSnapshots("$LAB/left.txt")}
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const res = backupResult(r.dir, "web01");
    // The kernel did invalidate the snapshot (what lvs shows as attr swi-I-s--- at 100 %, see the unit fixtures).
    expect(readLines(r.dir, "dmesg-overflow.txt").join("\n"), describeRun(r)).toMatch(/Invalidating snapshot/);
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(1);
    // The read of the invalid snapshot fails (EIO; zstd would exit 37) and the last reading finds lv_attr I:
    // the run fails with that, it never commits what it read.
    expect(res.error, res.log).toMatch(/is invalid \(lv_attr s.i-I-s---\): it overflowed|error 37|Input\/output error|EIO/);
    expect(existsSync(join(r.dir, "staging", "web01")) ? readdirSync(join(r.dir, "staging", "web01")).filter((n) => !n.startsWith(".")) : []).toEqual([]);
    expect(res.abort, "the guard was meant to be blind (pollInterval 5min)").toBeNull();
    expect(readLines(r.dir, "left.txt")).toEqual([]);
    expect(partials(r.dir, "web01")).toEqual([]);
    cleanRun(r);
  }, umlTestTimeout(330_000));

  it("extends the snapshot with lvextend at the limit while the VG has room, and the backup succeeds", async () => {
    const run = await backupRun("web01");
    const r = await runUml({
      name: "lvm-extend",
      timeoutMs: 330_000,
      files: { "b.bin": pseudoRandom(24 * MiB, 9) },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 768M -n web01 vg0
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: "16MiB", maxFillPercent: 50, extendBy: "16MiB", extendMax: "64MiB", pollInterval: "200ms" } })}
${run.background}
${WAIT_FOR_SNAPSHOT}
# 24 MiB at 0.5 MiB/s: more than the first 16 MiB can hold; each extension has a 16 s margin in UML.
node ${WRITER} $LAB/b.bin /dev/vg0/web01 0 24 0.5 $LAB/writer.log &
wpid=$!
${run.wait}
wait $wpid
dmesg | grep -i 'invalidating snapshot' > $LAB/dmesg-overflow.txt || true
${listRunnerSnapshots("$LAB/left.txt")}
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const res = backupResult(r.dir, "web01");
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(0);
    const extends_ = res.log.split("\n").filter((l) => l.includes('"event":"lvm.snapshot.extend"'));
    expect(extends_.length, res.log).toBeGreaterThanOrEqual(1);
    expect(extends_[0]).toMatch(/extending it by 16\.0 MiB/);
    expect(res.peakFillPercent).toBeGreaterThanOrEqual(50);
    expect(res.peakFillPercent).toBeLessThan(100);
    expect(readLines(r.dir, "dmesg-overflow.txt")).toEqual([]);
    expect(readLines(r.dir, "left.txt")).toEqual([]);
    console.log(`lvm extend: ${extends_.length} extension(s), peak ${res.peakFillPercent} %, total ${r.totalMs} ms`);
    cleanRun(r);
  }, umlTestTimeout(330_000));
});
