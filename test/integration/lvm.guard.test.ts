/**
 * The overflow guard on real LVM in UML: a guest writes faster than the stream can finish; the run must stop at
 * maxFillPercent, before the snapshot reaches 100 %, and leave no snapshot and no partial output. And when a
 * snapshot does overflow (the guard is made blind with a long poll interval), the backup fails: a read error of
 * the compressor is never taken for the end of the disk.
 */
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "vitest";
import { cleanRun, describeRun, runUml, umlTestTimeout } from "../lab/umlLab.ts";
import { configScript, listRunnerSnapshots, MiB, pseudoRandom, readLines, VG_SCRIPT, writerLog } from "./lvmLab.ts";
import { backupResult, backupRun } from "./lvmBackup.ts";

const WRITER = new URL("../lab/pacedWriter.mjs", import.meta.url).pathname;

function partials(dir: string, vm: string): string[] {
  const d = join(dir, "staging", vm);
  return existsSync(d) ? readdirSync(d).filter((n) => n.endsWith(".partial")) : [];
}

// Each test boots its own guest; they run side by side (a guest is one CPU, the host has more).
describe.concurrent("lvm overflow guard (UML)", () => {
  it("aborts at maxFillPercent before the snapshot fills, removes it and the partial output", async ({ expect }) => {
    // In UML every exec costs 0.5 s and more on a loaded machine (lvs 1-3 s, lvremove 1-5 s), so the margin
    // above the limit must cover ~10 s of writes. The lowest limit leaves the widest margin: 16 MiB snapshot,
    // limit 10 % (reached after ~2 s), writer 0.75 MiB/s leaves 14.4 MiB = 19 s until the snapshot would be full.
    // On a real host these commands take ~0.1-0.3 s and the default 80 % leaves room for far faster writers.
    // The stream runs as on a host, not held: a 3 GiB origin (sparse; 2 min and more to stream in UML) takes far
    // longer than the writer needs to reach the limit, and the abort ends it.
    const SNAP_MIB = 16;
    const LIMIT = 10;
    const run = await backupRun("web01");
    const r = await runUml({
      name: "lvm-guard",
      timeoutMs: 330_000,
      diskBytes: 4 * 1024 * MiB,
      files: { "b.bin": pseudoRandom(20 * MiB, 7) },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 3G -n web01 vg0
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: `${SNAP_MIB}MiB`, maxFillPercent: LIMIT, pollInterval: "200ms" } })}
${run.background}${run.waitForSnapshot}
# 20 MiB at 0.75 MiB/s into a 16 MiB snapshot: without the guard it overflows after about 21 s.
node ${WRITER} $LAB/b.bin /dev/vg0/web01 0 20 0.75 $LAB/writer.log &
wpid=$!
# Once the run has ended its snapshot is gone: the rest of the writes cannot touch it.
${run.wait}kill $wpid 2>/dev/null || true
wait $wpid || true
dmesg | grep -i -E 'invalidat|snapshot.*full' > $LAB/dmesg-overflow.txt || true
${listRunnerSnapshots("$LAB/left.txt")}
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const res = backupResult(r.dir, "web01");
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(1);
    expect(res.error).toMatch(/snapshot vg0\/kvmbk\+web01\+\S+ reached \d+\.\d+ % of 16\.0 MiB \(limit snapshot\.maxFillPercent 10 %\)/);
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

  it("a snapshot that overflowed anyway (guard blinded) fails the backup: zstd read error 37, never a short backup", async ({ expect }) => {
    const run = await backupRun("web01");
    const r = await runUml({
      name: "lvm-invalid",
      timeoutMs: 330_000,
      files: { "b.bin": pseudoRandom(24 * MiB, 8) },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 64M -n web01 vg0
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: "16MiB", maxFillPercent: 80, pollInterval: "5min" } })}
${run.heldBackground}${run.waitForStream}
# 24 MiB into the 16 MiB snapshot while the stream is held: it overflows before the stream can end.
dd if=$LAB/b.bin of=/dev/vg0/web01 bs=1M oflag=direct status=none
n=0; until dmesg | grep -qi 'invalidating snapshot'; do n=$((n+1)); [ $n -lt 300 ] || break; sleep 0.1; done
${run.releaseStream}${run.wait}dmesg | grep -i 'invalidating snapshot' > $LAB/dmesg-overflow.txt || true
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

  it("extends the snapshot with lvextend at the limit while the VG has room, up to LVM's maximum, and the backup succeeds", async ({ expect }) => {
    // 20 MiB written while the snapshot lives (the stream is held until the writer is done): more than the first
    // 16 MiB can hold. A low limit leaves a wide margin for each extension (lvs + lvextend take seconds in UML on a
    // loaded machine): the first one has 12 MiB = 16 s at 0.75 MiB/s, the later ones more. 20 MiB at 25 % would
    // ask for 80 MiB and more, below the ceiling (128 MiB), but LVM stops a snapshot of the 64 MiB origin at 68 MiB
    // (the whole origin plus metadata: it cannot overflow), with lvextend exit 0: the guard stops extending there.
    const LIMIT = 25;
    const run = await backupRun("web01");
    const r = await runUml({
      name: "lvm-extend",
      timeoutMs: 330_000,
      files: { "b.bin": pseudoRandom(20 * MiB, 9) },
      script: `${VG_SCRIPT}
lvcreate -q -y -L 64M -n web01 vg0
${configScript({ vm: "web01", disks: { vda: "/dev/vg0/web01" }, snapshot: { size: "16MiB", maxFillPercent: LIMIT, extendBy: "16MiB", extendMax: "128MiB", pollInterval: "200ms" } })}
${run.heldBackground}${run.waitForStream}
node ${WRITER} $LAB/b.bin /dev/vg0/web01 0 20 0.75 $LAB/writer.log
${run.releaseStream}${run.wait}dmesg | grep -i 'invalidating snapshot' > $LAB/dmesg-overflow.txt || true
${listRunnerSnapshots("$LAB/left.txt")}
`,
    });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const res = backupResult(r.dir, "web01");
    expect(res.exitCode, `${describeRun(r)}\n${res.log}`).toBe(0);
    const extends_ = res.log.split("\n").filter((l) => l.includes('"event":"lvm.snapshot.extend"'));
    expect(extends_.length, res.log).toBeGreaterThanOrEqual(1);
    expect(extends_[0]).toMatch(/extending it by 16\.0 MiB/);
    // Once LVM would not grow it any more (lvextend changed nothing), no lvextend at every reading after that.
    const lines = res.log.split("\n");
    const atMax = lines.findIndex((l) => l.includes('"event":"lvm.snapshot.max-size"'));
    expect(atMax, res.log).toBeGreaterThanOrEqual(0);
    expect(lines[atMax]).toMatch(/did not grow beyond 68\.0 MiB: LVM's maximum for its origin/);
    expect(lines.slice(atMax).filter((l) => l.includes('"event":"lvm.snapshot.extend"'))).toEqual([]);
    expect(extends_.length).toBeLessThanOrEqual(5);
    expect(res.peakFillPercent).toBeGreaterThanOrEqual(LIMIT);
    expect(res.peakFillPercent).toBeLessThan(100);
    expect(readLines(r.dir, "dmesg-overflow.txt")).toEqual([]);
    expect(readLines(r.dir, "left.txt")).toEqual([]);
    const w = writerLog(r.dir);
    const crossing = w.find(([, mib]) => mib >= (LIMIT / 100) * 16)?.[0];
    const extended = Date.parse(JSON.parse(extends_[0]!).ts);
    console.log(`lvm extend: ${extends_.length} extension(s), the first ${crossing ? extended - crossing : "?"} ms after the writer crossed ${LIMIT} %, peak ${res.peakFillPercent} %; boot ${r.bootMs} ms, total ${r.totalMs} ms`);
    cleanRun(r);
  }, umlTestTimeout(330_000));
});
