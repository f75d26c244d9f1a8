import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { decideFill, FillGuard } from "../../runner/lvm/fillGuard.ts";
import { SnapshotOverflowError } from "../../runner/lvm/errors.ts";
import { parseLvs, type LogicalVolume } from "../../runner/lvm/report.ts";
import { Logger } from "../../runner/log.ts";
import type { ExtendPlan } from "../../runner/lvm/snapshotSize.ts";

const MiB = 1024 ** 2;
const fx = (f: string) => readFileSync(new URL(`./fixtures/lvm/${f}`, import.meta.url), "utf8");
const snap = (fill: number, size = 48 * MiB, attr = "swi-a-s---") => ({ name: "kvmbk+web01+20261128T020000Z+web01", vg: "vg0", sizeBytes: size, fillPercent: fill, attr });
const noExtend: ExtendPlan = { stepBytes: null, ceilingBytes: 256 * MiB };
const extend: ExtendPlan = { stepBytes: 16 * MiB, ceilingBytes: 96 * MiB };

describe("fill decision", () => {
  it("does nothing below the limit", () => {
    expect(decideFill(snap(79.99), 80, extend, 1024 * MiB, 4 * MiB)).toEqual({ kind: "ok" });
  });

  it("aborts at the limit when the policy does not extend, naming the level and the setting", () => {
    const d = decideFill(snap(80), 80, noExtend, 1024 * MiB, 4 * MiB);
    expect(d).toMatchObject({ kind: "abort", invalid: false });
    expect((d as { reason: string }).reason).toMatch(/reached 80\.00 % of 48\.0 MiB \(limit snapshot\.maxFillPercent 80 %\) and the policy does not extend snapshots/);
  });

  it("extends by the step, capped by the ceiling and by the free extents", () => {
    expect(decideFill(snap(85), 80, extend, 1024 * MiB, 4 * MiB)).toEqual({ kind: "extend", addBytes: 16 * MiB });
    expect(decideFill(snap(85, 88 * MiB), 80, extend, 1024 * MiB, 4 * MiB)).toEqual({ kind: "extend", addBytes: 8 * MiB });
    expect(decideFill(snap(85), 80, extend, 10 * MiB, 4 * MiB)).toEqual({ kind: "extend", addBytes: 8 * MiB });
  });

  it("aborts at the ceiling and when the VG is full", () => {
    expect(decideFill(snap(85, 96 * MiB), 80, extend, 1024 * MiB, 4 * MiB)).toMatchObject({ kind: "abort", reason: expect.stringMatching(/ceiling of 96\.0 MiB/) });
    expect(decideFill(snap(85), 80, extend, 3 * MiB, 4 * MiB)).toMatchObject({ kind: "abort", reason: expect.stringMatching(/volume group vg0 has no free extents/) });
  });

  it("neither extends nor aborts a snapshot at LVM's maximum size, but still aborts an invalid one", () => {
    expect(decideFill(snap(85, 96 * MiB), 80, extend, 1024 * MiB, 4 * MiB, true)).toEqual({ kind: "ok" });
    expect(decideFill(snap(85), 80, noExtend, 1024 * MiB, 4 * MiB, true)).toEqual({ kind: "ok" });
    expect(decideFill(snap(100, 96 * MiB, "swi-I-s---"), 80, extend, 1024 * MiB, 4 * MiB, true)).toMatchObject({ kind: "abort", invalid: true });
  });

  it("aborts on an invalid snapshot whatever its level (recorded overflow)", () => {
    const lv = parseLvs(fx("lvs-overflowed.json")).find((l) => l.name.startsWith("kvmbk+web01"))!;
    expect(decideFill(lv, 80, extend, 1024 * MiB, 4 * MiB)).toMatchObject({ kind: "abort", invalid: true, reason: expect.stringMatching(/invalid \(lv_attr swi-I-s---\)/) });
  });
});

/** A scripted LVM: each reading returns the next fill level; lvextend stops at `maxSize` (and exits 0), like LVM. */
function scripted(levels: (number | "fail" | "invalid")[], maxSize = Infinity) {
  let i = 0;
  let size = 48 * MiB;
  const extended: number[] = [];
  return {
    extended,
    get readings() {
      return i;
    },
    deps: {
      async listLvs(): Promise<LogicalVolume[]> {
        const v = levels[Math.min(i++, levels.length - 1)]!;
        if (v === "fail") throw new Error("lvs: device busy");
        return [{ ...snap(v === "invalid" ? 100 : v, size, v === "invalid" ? "swi-I-s---" : "swi-a-s---"), path: "", origin: "web01", major: 254, minor: 5, vgFreeBytes: null }];
      },
      async listVgs() {
        return [{ name: "vg0", sizeBytes: 1024 * MiB, freeBytes: 512 * MiB, extentBytes: 4 * MiB }];
      },
      async extend(_vg: string, _name: string, add: number) {
        extended.push(add);
        size = Math.min(size + add, maxSize);
      },
    },
  };
}

const quiet = new Logger({}, { isTTY: false, write: () => undefined });
const guarded = (plan = noExtend) => [{ vg: "vg0", name: "kvmbk+web01+20261128T020000Z+web01", plan, extentBytes: 4 * MiB }];

function until(pred: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((res, rej) => {
    const t = setInterval(() => {
      if (pred()) clearInterval(t), res();
      else if (Date.now() > end) clearInterval(t), rej(new Error("condition not reached"));
    }, 5);
  });
}

describe("fill guard loop", () => {
  it("polls at the interval, keeps the peak and aborts at the limit with the level reached", async () => {
    const lvm = scripted([10, 40, 70, 85, 90]);
    const t0 = Date.now();
    let reason: Error | null = null;
    const g = new FillGuard({ snapshots: guarded(), maxFillPercent: 80, pollMs: 20, log: quiet, deps: lvm.deps }, (e) => (reason = e)).start();
    await until(() => reason !== null);
    expect(reason).toBeInstanceOf(SnapshotOverflowError);
    expect((reason as unknown as SnapshotOverflowError).fillPercent).toBe(85);
    expect(lvm.readings).toBe(4);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(4 * 20 - 5); // four intervals, the first one after creation
    await expect(g.stop()).rejects.toThrow(/reached 85\.00 %/);
    expect(g.peakFillPercent).toBe(85);
  });

  it("extends and keeps going, then reports the peak on stop", async () => {
    const lvm = scripted([50, 82, 60, 65]);
    let reason: Error | null = null;
    const g = new FillGuard({ snapshots: guarded(extend), maxFillPercent: 80, pollMs: 10, log: quiet, deps: lvm.deps }, (e) => (reason = e)).start();
    await until(() => lvm.readings >= 4);
    expect(lvm.extended).toEqual([16 * MiB]);
    expect(await g.stop()).toEqual({ peakFillPercent: 82 });
    expect(reason).toBeNull();
  });

  it("stops extending a snapshot that LVM no longer grows (its maximum: the origin's size plus metadata) and does not abort it", async () => {
    const lvm = scripted([85, 85, 85, 85, 85, 85], 64 * MiB);
    const lines: string[] = [];
    const log = new Logger({}, { isTTY: false, write: (t) => void lines.push(t) });
    let reason: Error | null = null;
    const g = new FillGuard({ snapshots: guarded(extend), maxFillPercent: 80, pollMs: 5, log, deps: lvm.deps }, (e) => (reason = e)).start();
    await until(() => lvm.readings >= 6);
    // 48 -> 64 MiB, then one lvextend that changed nothing: no more after it.
    expect(lvm.extended).toEqual([16 * MiB, 16 * MiB]);
    expect(lines.filter((l) => l.includes('"lvm.snapshot.max-size"'))).toHaveLength(1);
    expect(await g.stop()).toEqual({ peakFillPercent: 85 });
    expect(reason).toBeNull();
  });

  it("aborts after three failed readings in a row, not after one", async () => {
    const lvm = scripted([10, "fail", 20, "fail", "fail", "fail"]);
    let reason: Error | null = null;
    new FillGuard({ snapshots: guarded(), maxFillPercent: 80, pollMs: 5, log: quiet, deps: lvm.deps }, (e) => (reason = e)).start();
    await until(() => reason !== null);
    expect(lvm.readings).toBe(6);
    expect((reason as unknown as SnapshotOverflowError).kind).toBe("unreadable");
  });

  it("fails the stop when the snapshot turned invalid after the last poll, never a short backup", async () => {
    const lvm = scripted(["invalid"]);
    const g = new FillGuard({ snapshots: guarded(), maxFillPercent: 80, pollMs: 60_000, log: quiet, deps: lvm.deps }, () => undefined).start();
    await expect(g.stop()).rejects.toMatchObject({ kind: "invalid" });
    expect(lvm.readings).toBe(1);
  });

  it("does not fail the stop for a limit reached after the stream ended", async () => {
    const lvm = scripted([90]);
    const g = new FillGuard({ snapshots: guarded(), maxFillPercent: 80, pollMs: 60_000, log: quiet, deps: lvm.deps }, () => undefined).start();
    expect(await g.stop()).toEqual({ peakFillPercent: 90 });
  });
});
