/**
 * The overflow guard: while snapshots live, read their fill level every `pollMs`. At `maxFillPercent` a snapshot
 * grows (lvextend, up to its ceiling, while the VG has room) or the backup is aborted, so that no snapshot of this
 * runner ever reaches 100 % and turns invalid. An invalid snapshot, or a fill level that cannot be read three times
 * in a row, also aborts: without the fill level the runner cannot promise the first rule.
 */
import type { Logger } from "../log.ts";
import type { SnapshotGuard } from "../snapshot/backend.ts";
import { formatBytes } from "../config/sizes.ts";
import { SnapshotOverflowError } from "./errors.ts";
import { isInvalidSnapshot, type LogicalVolume, type VolumeGroup } from "./report.ts";
import type { ExtendPlan } from "./snapshotSize.ts";

export interface GuardedSnapshot {
  vg: string;
  name: string;
  plan: ExtendPlan;
  extentBytes: number;
}

export type FillDecision = { kind: "ok" } | { kind: "extend"; addBytes: number } | { kind: "abort"; reason: string; invalid: boolean };

/**
 * What to do about one snapshot at one reading. Pure, so every branch is unit-tested. `atMaximum`: LVM would not
 * grow the snapshot any further (see FillGuard): it holds every chunk of its origin and cannot overflow.
 */
export function decideFill(
  lv: Pick<LogicalVolume, "name" | "vg" | "sizeBytes" | "fillPercent" | "attr">,
  maxFillPercent: number,
  plan: ExtendPlan,
  vgFreeBytes: number,
  extentBytes: number,
  atMaximum = false,
): FillDecision {
  const where = `${lv.vg}/${lv.name}`;
  if (isInvalidSnapshot(lv)) return { kind: "abort", invalid: true, reason: `snapshot ${where} is invalid (lv_attr ${lv.attr}): it overflowed` };
  if (atMaximum) return { kind: "ok" };
  const fill = lv.fillPercent ?? 0;
  if (fill < maxFillPercent) return { kind: "ok" };
  const room = plan.ceilingBytes - lv.sizeBytes;
  const free = Math.floor(vgFreeBytes / extentBytes) * extentBytes;
  if (plan.stepBytes !== null && room > 0 && free > 0) {
    return { kind: "extend", addBytes: Math.min(plan.stepBytes, room, free) };
  }
  const why =
    plan.stepBytes === null
      ? "the policy does not extend snapshots (set snapshot.extendBy)"
      : room <= 0
        ? `it reached its ceiling of ${formatBytes(plan.ceilingBytes)} (snapshot.extendMax)`
        : `volume group ${lv.vg} has no free extents left to extend it`;
  return {
    kind: "abort",
    invalid: false,
    reason: `snapshot ${where} reached ${fill.toFixed(2)} % of ${formatBytes(lv.sizeBytes)} (limit snapshot.maxFillPercent ${maxFillPercent} %) and ${why}`,
  };
}

export interface FillGuardDeps {
  listLvs(names: string[]): Promise<LogicalVolume[]>;
  listVgs(): Promise<VolumeGroup[]>;
  extend(vg: string, name: string, addBytes: number): Promise<void>;
}

export interface FillGuardOptions {
  snapshots: GuardedSnapshot[];
  maxFillPercent: number;
  pollMs: number;
  log: Logger;
  deps: FillGuardDeps;
  /** Consecutive failed readings before the guard gives up and aborts. */
  maxReadFailures?: number;
}

export class FillGuard implements SnapshotGuard {
  private peak: number | null = null;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  private aborted: SnapshotOverflowError | null = null;
  private failures = 0;
  /** Each snapshot's size before this guard's last lvextend of it, until the next reading shows what LVM did. */
  private readonly sizeBeforeExtend = new Map<string, number>();
  /**
   * Snapshots LVM did not grow: lvextend stops at the origin's size plus metadata ("Reached maximum COW size") and
   * exits 0 even when nothing changed. At that size a snapshot holds every chunk of its origin and cannot
   * overflow, so it needs neither another lvextend at each reading nor an abort.
   */
  private readonly atMaximum = new Set<string>();

  constructor(
    private readonly opts: FillGuardOptions,
    private readonly abort: (reason: Error) => void,
  ) {}

  get peakFillPercent(): number | null {
    return this.peak;
  }

  /** The first reading comes one interval after creation: a snapshot is empty when it is made. */
  start(): this {
    this.schedule(this.opts.pollMs);
    return this;
  }

  private schedule(ms: number): void {
    if (this.stopped || this.aborted) return;
    this.timer = setTimeout(() => {
      this.running = this.tick().finally(() => {
        this.running = null;
        this.schedule(this.opts.pollMs);
      });
    }, ms);
  }

  /** One reading of every snapshot; returns the invalid/overflow error when the backup must stop. */
  async check(): Promise<SnapshotOverflowError | null> {
    const { snapshots, deps, log, maxFillPercent } = this.opts;
    const lvs = await deps.listLvs(snapshots.map((s) => `${s.vg}/${s.name}`));
    let vgs: VolumeGroup[] | null = null;
    for (const s of snapshots) {
      const lv = lvs.find((l) => l.vg === s.vg && l.name === s.name);
      if (!lv) return new SnapshotOverflowError(`snapshot ${s.vg}/${s.name} disappeared while the backup read it`, { fillPercent: this.peak ?? 0, snapshot: s.name, kind: "gone" });
      if (lv.fillPercent !== null) this.peak = Math.max(this.peak ?? 0, lv.fillPercent);
      log.debug("lvm.guard.reading", `snapshot ${s.vg}/${s.name} is ${lv.fillPercent ?? "?"} % full`, { snapshot: s.name, fillPercent: lv.fillPercent, attr: lv.attr });
      const before = this.sizeBeforeExtend.get(s.name);
      this.sizeBeforeExtend.delete(s.name);
      if (before !== undefined && lv.sizeBytes <= before && !this.atMaximum.has(s.name)) {
        this.atMaximum.add(s.name);
        log.info(
          "lvm.snapshot.max-size",
          `snapshot ${s.vg}/${s.name} did not grow beyond ${formatBytes(lv.sizeBytes)}: LVM's maximum for its origin (the origin's size plus metadata), which holds every chunk of the origin, so it cannot overflow; no further extension`,
          { snapshot: s.name, bytes: lv.sizeBytes },
        );
      }
      const atMaximum = this.atMaximum.has(s.name);
      const needFree = !atMaximum && lv.fillPercent !== null && lv.fillPercent >= maxFillPercent && s.plan.stepBytes !== null;
      const free = !needFree ? 0 : lv.vgFreeBytes ?? (vgs ??= await deps.listVgs()).find((g) => g.name === s.vg)?.freeBytes ?? 0;
      const decision = decideFill(lv, maxFillPercent, s.plan, free, s.extentBytes, atMaximum);
      if (decision.kind === "extend") {
        log.warn("lvm.snapshot.extend", `snapshot ${s.vg}/${s.name} is ${lv.fillPercent?.toFixed(2)} % full; extending it by ${formatBytes(decision.addBytes)}`, {
          snapshot: s.name,
          fillPercent: lv.fillPercent,
          addBytes: decision.addBytes,
        });
        await deps.extend(s.vg, s.name, decision.addBytes);
        // Only a successful lvextend: a failed one says nothing about LVM's maximum.
        this.sizeBeforeExtend.set(s.name, lv.sizeBytes);
        vgs = null;
      } else if (decision.kind === "abort") {
        return new SnapshotOverflowError(decision.reason, { fillPercent: lv.fillPercent ?? 100, snapshot: s.name, kind: decision.invalid ? "invalid" : "limit" });
      }
    }
    return null;
  }

  private async tick(): Promise<void> {
    if (this.stopped || this.aborted) return;
    let err: SnapshotOverflowError | null;
    try {
      err = await this.check();
      this.failures = 0;
    } catch (e) {
      this.failures++;
      this.opts.log.warn("lvm.guard.read-failed", `cannot read the snapshot fill level (${this.failures}): ${(e as Error).message}`);
      if (this.failures < (this.opts.maxReadFailures ?? 3)) return;
      err = new SnapshotOverflowError(`the fill level of the snapshots could not be read ${this.failures} times in a row (${(e as Error).message}); stopping rather than risking an overflow`, {
        fillPercent: this.peak ?? 0,
        snapshot: this.opts.snapshots.map((s) => s.name).join(","),
        kind: "unreadable",
      });
    }
    if (err && !this.stopped) {
      this.aborted = err;
      this.opts.log.error("lvm.guard.abort", err.message, { fillPercent: err.fillPercent, peakFillPercent: this.peak });
      this.abort(err);
    }
  }

  /**
   * Stops watching. A last reading makes sure the snapshot was still valid when the stream finished: reads of an
   * invalid snapshot fail, but a backup must never be taken from one, so this throws then.
   */
  async stop(): Promise<{ peakFillPercent: number | null }> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
    if (this.aborted) throw this.aborted;
    const last = await this.check();
    // Reaching the limit after the last byte was read does not matter; a snapshot that is gone or invalid does.
    if (last && (last.kind === "invalid" || last.kind === "gone")) throw last;
    return { peakFillPercent: this.peak };
  }

  /**
   * Stops without the final check (cleanup after a failure). Does not wait for a reading in flight: after an
   * abort every moment until the snapshot is removed counts, and its result is ignored once stopped.
   */
  halt(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
