/**
 * When backups happen: the elapses of OnCalendar expressions, the largest gap between backups, and the next
 * runs as `systemd-analyze calendar` computes them where it exists (calendar.ts otherwise; the output says
 * which).
 */
import { nextElapses, parseCalendar } from "../config/calendar.ts";
import { run } from "../exec.ts";

const DAY_MS = 86_400_000;
/** More elapses than this in one window is a schedule every few seconds; the window is cut there. */
export const MAX_ELAPSES = 200_000;

/** Every elapse of any of the schedules in [from, to), merged and sorted, at most MAX_ELAPSES. */
export function elapsesBetween(schedules: readonly string[], from: Date, to: Date): { times: Date[]; truncated: boolean } {
  const all: number[] = [];
  let truncated = false;
  for (const s of new Set(schedules)) {
    const spec = parseCalendar(s);
    let after = new Date(from.getTime() - 1);
    for (;;) {
      const batch = nextElapses(spec, after, 1000);
      const inside = batch.filter((d) => d.getTime() < to.getTime());
      all.push(...inside.map((d) => d.getTime()));
      if (all.length > MAX_ELAPSES) {
        truncated = true;
        break;
      }
      if (inside.length < batch.length || batch.length < 1000) break;
      after = batch[batch.length - 1]!;
    }
  }
  const times = [...new Set(all)].sort((a, b) => a - b);
  return { times: (truncated ? times.slice(-MAX_ELAPSES) : times).map((t) => new Date(t)), truncated };
}

export interface Gap {
  /** Milliseconds between two successive backups; Infinity when the schedules stop elapsing. */
  ms: number;
  after: Date | null;
  before: Date | null;
}

/**
 * The largest time between two successive backups over the year after `from` (including the wait for the first
 * run after the year, so a yearly schedule shows a year). Calendar times only: randomizedDelay comes on top.
 */
export function largestGap(schedules: readonly string[], from: Date, days = 366): Gap {
  const to = new Date(from.getTime() + days * DAY_MS);
  const { times } = elapsesBetween(schedules, from, to);
  const next = schedules
    .map((s) => nextElapses(parseCalendar(s), new Date(to.getTime() - 1), 1)[0])
    .filter((d): d is Date => d !== undefined)
    .sort((a, b) => a.getTime() - b.getTime())[0];
  if (next && (!times.length || times[times.length - 1]!.getTime() < next.getTime())) times.push(next);
  if (times.length === 0) return { ms: Infinity, after: null, before: null };
  if (times.length === 1) return { ms: Infinity, after: times[0]!, before: null };
  let best: Gap = { ms: -1, after: null, before: null };
  for (let i = 1; i < times.length; i++) {
    const ms = times[i]!.getTime() - times[i - 1]!.getTime();
    if (ms > best.ms) best = { ms, after: times[i - 1]!, before: times[i]! };
  }
  return best;
}

export function formatSpan(ms: number): string {
  if (!Number.isFinite(ms)) return "forever (the schedule stops)";
  const h = ms / 3_600_000;
  if (h < 1) return `${Math.round(ms / 60_000)} min`;
  if (h < 48) return `${Number(h.toFixed(1))} h`;
  return `${Number((h / 24).toFixed(1))} days`;
}

export type CalendarSource = "systemd-analyze" | "calendar.ts";

/** The next `count` runs of one schedule after `after`, and which evaluator computed them. */
export async function nextRuns(schedule: string, after: Date, count: number, opts: { preferSystemd?: boolean } = {}): Promise<{ times: Date[]; source: CalendarSource }> {
  if (opts.preferSystemd !== false) {
    const times = await systemdNextRuns(schedule, after, count);
    if (times) return { times, source: "systemd-analyze" };
  }
  return { times: nextElapses(parseCalendar(schedule), after, count), source: "calendar.ts" };
}

/** null when systemd-analyze is missing or cannot answer (then calendar.ts does). */
async function systemdNextRuns(schedule: string, after: Date, count: number): Promise<Date[] | null> {
  let out: string;
  try {
    const base = `@${Math.floor(after.getTime() / 1000)}`;
    const r = await run("systemd-analyze", ["calendar", `--iterations=${count}`, `--base-time=${base}`, schedule], { timeoutMs: 10_000 });
    out = r.stdout;
  } catch {
    return null;
  }
  return parseSystemdAnalyze(out);
}

/** Reads the elapses from `systemd-analyze calendar` output (the "(in UTC)" lines when the zone is not UTC). */
export function parseSystemdAnalyze(out: string): Date[] | null {
  const utcLines = [...out.matchAll(/\(in UTC\): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC/g)].map((m) => m[1]!);
  const lines = utcLines.length
    ? utcLines
    : [...out.matchAll(/(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC/g)].map((m) => m[1]!);
  if (!lines.length) return null;
  return lines.map((l) => new Date(`${l.replace(" ", "T")}Z`));
}
