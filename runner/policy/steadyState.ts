/**
 * "Typical history", the one definition both `policy diff` and `policy plan` use: one backup at every elapse
 * of the schedule over the last N days before a reference time, pruned after every run (as `kvm-backup run`
 * does: back up, ship, prune). What survives the last prune is the steady state: the backups that exist on a
 * target after N days of runs without failures. N defaults to the span the rules can reach, so every rule is
 * filled.
 */
import { decideRetention, type RetentionItem, type RetentionRules } from "../retention.ts";
import { elapsesBetween, largestGap } from "./schedule.ts";

const DAY_MS = 86_400_000;
export const MAX_HISTORY_DAYS = 3660;

export interface History {
  schedules: string[];
  from: Date;
  to: Date;
  days: number;
  /** Every run in the window, oldest first. */
  runs: Date[];
  truncated: boolean;
}

/**
 * Days of runs needed before every rule is filled. Each rule takes periods no earlier rule holds, so their
 * reaches add up (daily 14 + weekly 4 reaches back about 14 + 4 x 7 days); the sum plus a week is an upper
 * bound, and a longer history changes nothing once every rule is filled.
 */
export function retentionSpanDays(rules: RetentionRules, schedules: readonly string[], now: Date): number {
  let days = 7;
  if (rules.keepHourly) days += Math.ceil(rules.keepHourly / 24) + 1;
  if (rules.keepDaily) days += rules.keepDaily + 1;
  if (rules.keepWeekly) days += 7 * rules.keepWeekly + 7;
  if (rules.keepMonthly) days += 31 * rules.keepMonthly + 31;
  if (rules.keepYearly) days += 366 * rules.keepYearly + 366;
  if (rules.keepLast) {
    const gap = largestGap(schedules, new Date(now.getTime() - 366 * DAY_MS)).ms;
    days += Number.isFinite(gap) ? Math.ceil((rules.keepLast * gap) / DAY_MS) + 1 : MAX_HISTORY_DAYS;
  }
  return Math.min(MAX_HISTORY_DAYS, days);
}

export function typicalHistory(schedules: readonly string[], now: Date, days: number): History {
  const from = new Date(now.getTime() - days * DAY_MS);
  const { times, truncated } = elapsesBetween(schedules, from, new Date(now.getTime() + 1));
  return { schedules: [...schedules], from, to: now, days, runs: times, truncated };
}

export const backupId = (t: Date): string => t.toISOString();

/**
 * The backups that exist after the last run of the history, pruning after every run with `keeps` (which says,
 * for the backups present, which ids stay).
 */
export type Keep = (items: RetentionItem[]) => Set<string>;

export function steadyStateWith(runs: readonly (Date | RetentionItem)[], keeps: Keep): RetentionItem[] {
  let present: RetentionItem[] = [];
  for (const r of runs) {
    present.push(r instanceof Date ? { id: backupId(r), time: r } : r);
    const kept = keeps(present);
    present = present.filter((i) => kept.has(i.id));
  }
  return present;
}

export function keptBy(rules: RetentionRules): (items: RetentionItem[]) => Set<string> {
  return (items) => new Set(decideRetention(items, rules).filter((d) => d.keep).map((d) => d.id));
}

/** The newest `n` backups: staging's keepLast. */
export function newest(n: number): (items: RetentionItem[]) => Set<string> {
  return (items) => new Set([...items].sort((a, b) => b.time.getTime() - a.time.getTime()).slice(0, n).map((i) => i.id));
}

/** `keep` applied to one policy's backups only (ids "<policy>@<time>"). */
export function ofPolicy(policy: string, keep: Keep): Keep {
  return (items) => keep(items.filter((i) => i.id.startsWith(`${policy}@`)));
}

export function union(...fs: Array<(items: RetentionItem[]) => Set<string>>): (items: RetentionItem[]) => Set<string> {
  return (items) => new Set(fs.flatMap((f) => [...f(items)]));
}

export function describeHistory(h: History): string {
  const sched = h.schedules.map((s) => `"${s}"`).join(" + ");
  return `one backup per run of ${sched} over the ${h.days} days before ${h.to.toISOString()}, pruned after every run${h.truncated ? " (cut to the newest runs)" : ""}`;
}
