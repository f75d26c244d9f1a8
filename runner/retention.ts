/**
 * Which backups retention keeps: Proxmox Backup Server prune semantics (pbs-datastore/src/prune.rs,
 * `compute_prune_info` + `mark_selections`), as a pure function with a reason for every decision.
 *
 * How PBS decides, and therefore how this module decides:
 * - Backups are sorted newest first (ties in time: id descending, so the result never depends on input order).
 * - Protected backups are set aside first: always kept, and they count for no rule (their periods are not
 *   "already kept" for any rule either).
 * - The rules run in the fixed order last, hourly, daily, weekly, monthly, yearly. Each rule groups the
 *   backups by its period in local time: hour, day, ISO week (Monday to Sunday, ISO week-year, so Dec 29-31 may
 *   belong to week 1 of the next year and Jan 1-3 to week 52/53 of the previous one), month, year. For
 *   keep-last every backup is its own period.
 * - A rule first collects the periods that already hold a backup KEPT by an earlier rule. Walking newest to
 *   oldest over the backups no earlier rule has marked (kept or removed), it
 *     - skips a backup whose period is already held by an earlier rule's keep (left unmarked, so a later rule
 *       may still keep it),
 *     - keeps the newest backup of each new period, until N new periods are taken; at the first backup of an
 *       (N+1)th new period the rule stops (periods without backups therefore do not count),
 *     - MARKS AS REMOVED every older backup of a period this rule already took. Such a backup is final: later
 *       rules do not reconsider it, even though they might otherwise have kept it.
 *   Backups no rule marked are removed.
 * - The last point is what PBS does and we do the same, with one consequence worth knowing: because ISO weeks
 *   straddle month and year boundaries, weekly combined with monthly/yearly is not monotone. Example: backups
 *   on Fri 2026-01-30 and Sun 2026-02-01 (both ISO week 2026-W05). keepMonthly=2 alone keeps both;
 *   keepWeekly=1 + keepMonthly=2 keeps only Feb 1, because weekly took W05 with Feb 1 and marked Jan 30 as
 *   removed, so monthly never sees it. Rules whose periods nest (last, hourly, daily, then weekly OR
 *   monthly/yearly) have no such effect: there, adding a rule or raising a count never removes more
 *   (checked over random histories in test/unit/retention.properties.test.ts).
 * - Deviation from PBS, deliberate: PBS groups keep-last by the backup time string, which is unique per backup
 *   group there. Our ids may share a time, so keep-last counts each backup (by id) on its own.
 * - A rule with count 0 or unset does nothing. Rules that all keep nothing are refused (EmptyRetentionError)
 *   instead of deleting every backup.
 *
 * Time zone: periods are computed in `timeZone` (IANA name) or, by default, in the process's local zone, the
 * way PBS uses the host's local time. In a repeated DST hour both backups share one hourly period; a skipped
 * hour is simply a period without backups.
 */
import { KvmBackupError, UsageError } from "./errors.ts";

export interface RetentionRules {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
}

export interface RetentionItem {
  id: string;
  time: Date;
  protected?: boolean;
}

export type RetentionRule = "last" | "hourly" | "daily" | "weekly" | "monthly" | "yearly";
export type CalendarRule = Exclude<RetentionRule, "last">;

export interface RetentionDecision {
  id: string;
  time: Date;
  keep: boolean;
  /**
   * The rule that decided: for a kept backup the rule that kept it; for a removed one the rule whose period was
   * already taken by a newer backup; null when no rule selected it.
   */
  rule: RetentionRule | "protected" | null;
  /** The rule's period ("2026-W48", ...); for rule "last" the 1-based position among keep-last ("2"). */
  period: string | null;
  reason: string;
}

/** Thrown when no rule keeps anything (all counts zero or unset): pruning would delete every backup. */
export class EmptyRetentionError extends UsageError {
  constructor(message = EMPTY_RULES_MESSAGE) {
    super(message);
  }
}

/** Rules, items or time zone that cannot be decided on (bad count, invalid date, duplicate id, unknown zone). */
export class RetentionInputError extends KvmBackupError {}

const EMPTY_RULES_MESSAGE =
  "retention keeps nothing: keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly and keepYearly are all 0 or unset, " +
  "so pruning would delete every backup; set at least one of them above 0 (for example keepLast: 1) in the VM's retention";

const RULE_KEYS = [
  ["last", "keepLast"],
  ["hourly", "keepHourly"],
  ["daily", "keepDaily"],
  ["weekly", "keepWeekly"],
  ["monthly", "keepMonthly"],
  ["yearly", "keepYearly"],
] as const satisfies readonly (readonly [RetentionRule, keyof RetentionRules])[];

export function retentionKeepsSomething(rules: RetentionRules): boolean {
  return RULE_KEYS.some(([, key]) => {
    const count = rules[key];
    return typeof count === "number" && count > 0;
  });
}

function checkedCounts(rules: RetentionRules): Map<RetentionRule, number> {
  if (rules === null || typeof rules !== "object") {
    throw new RetentionInputError(`retention rules must be an object like { keepDaily: 7 }, got ${String(rules)}`);
  }
  const known = new Set<string>(RULE_KEYS.map(([, key]) => key));
  for (const key of Object.keys(rules)) {
    // A misspelt rule would silently keep less; refuse it instead.
    if (!known.has(key)) {
      throw new RetentionInputError(
        `unknown retention rule "${key}": use keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly or keepYearly`,
      );
    }
  }
  const counts = new Map<RetentionRule, number>();
  for (const [rule, key] of RULE_KEYS) {
    const count: unknown = rules[key];
    if (count === undefined) continue;
    if (typeof count !== "number" || !Number.isSafeInteger(count) || count < 0) {
      throw new RetentionInputError(`retention ${key} must be a whole number of 0 or more, got ${String(count)}`);
    }
    if (count > 0) counts.set(rule, count);
  }
  if (counts.size === 0) throw new EmptyRetentionError();
  return counts;
}

// ---------------------------------------------------------------------------------------------------------------
// Local time and period keys

interface LocalTime {
  year: number;
  month: number;
  day: number;
  hour: number;
}

// Building an Intl.DateTimeFormat costs far more than using one; one per zone serves every call.
const formatters = new Map<string, Intl.DateTimeFormat>();

function formatterFor(timeZone: string): Intl.DateTimeFormat {
  let formatter = formatters.get(timeZone);
  if (formatter === undefined) {
    try {
      formatter = new Intl.DateTimeFormat("en-US-u-ca-gregory-nu-latn", {
        timeZone,
        year: "numeric",
        month: "numeric",
        day: "numeric",
        hour: "numeric",
        hourCycle: "h23",
      });
    } catch (error) {
      throw new RetentionInputError(
        `unknown time zone "${timeZone}": use an IANA zone name such as "Europe/Berlin" or "UTC", ` +
          "or leave it unset to use the host's local time",
        undefined,
        { cause: error },
      );
    }
    formatters.set(timeZone, formatter);
  }
  return formatter;
}

// The process's zone can change at runtime (process.env.TZ); remember the answer per TZ value only.
let defaultZone: { tz: string | undefined; zone: string } | undefined;

function resolveZone(timeZone: string | undefined): string {
  if (timeZone !== undefined) return timeZone;
  const tz = process.env.TZ;
  if (defaultZone === undefined || defaultZone.tz !== tz) {
    defaultZone = { tz, zone: new Intl.DateTimeFormat().resolvedOptions().timeZone };
  }
  return defaultZone.zone;
}

function checkedTime(time: Date, what: string): number {
  const ms = time instanceof Date ? time.getTime() : Number.NaN;
  if (!Number.isFinite(ms)) {
    throw new RetentionInputError(`${what} has no valid time (${String(time)}); it needs a valid Date`);
  }
  return ms;
}

// "11/27/2026, 13" for the en-US formatter above. format() is several times faster than formatToParts(), which
// is kept as the fallback should an ICU version ever render the fields differently.
const EN_US_LOCAL = /^(\d{1,2})\/(\d{1,2})\/(\d{1,6}), (\d{2})$/;

function localTime(ms: number, formatter: Intl.DateTimeFormat): LocalTime {
  const match = EN_US_LOCAL.exec(formatter.format(ms));
  if (match !== null) {
    return { year: Number(match[3]), month: Number(match[1]), day: Number(match[2]), hour: Number(match[4]) };
  }
  const local: LocalTime = { year: 0, month: 0, day: 0, hour: 0 };
  for (const part of formatter.formatToParts(ms)) {
    switch (part.type) {
      case "year":
        local.year = Number(part.value);
        break;
      case "month":
        local.month = Number(part.value);
        break;
      case "day":
        local.day = Number(part.value);
        break;
      case "hour":
        local.hour = Number(part.value);
        break;
    }
  }
  return local;
}

const DAY_MS = 86_400_000;

/** ISO 8601 week of a calendar date: weeks start on Monday, week 1 holds the year's first Thursday. */
function isoWeek(year: number, month: number, day: number): { weekYear: number; week: number } {
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  const mondayBased = (date.getUTCDay() + 6) % 7;
  // The Thursday of the same week decides which year the week belongs to.
  const thursday = date.getTime() + (3 - mondayBased) * DAY_MS;
  const weekYear = new Date(thursday).getUTCFullYear();
  const jan1 = new Date(0);
  jan1.setUTCFullYear(weekYear, 0, 1);
  return { weekYear, week: Math.floor((thursday - jan1.getTime()) / (7 * DAY_MS)) + 1 };
}

const pad2 = (n: number): string => (n < 10 ? `0${n}` : String(n));
const pad4 = (n: number): string => String(n).padStart(4, "0");

function keyOf(rule: CalendarRule, t: LocalTime): string {
  switch (rule) {
    case "hourly":
      return `${pad4(t.year)}-${pad2(t.month)}-${pad2(t.day)}T${pad2(t.hour)}`;
    case "daily":
      return `${pad4(t.year)}-${pad2(t.month)}-${pad2(t.day)}`;
    case "weekly": {
      const { weekYear, week } = isoWeek(t.year, t.month, t.day);
      return `${pad4(weekYear)}-W${pad2(week)}`;
    }
    case "monthly":
      return `${pad4(t.year)}-${pad2(t.month)}`;
    case "yearly":
      return pad4(t.year);
  }
}

const CALENDAR_RULES: readonly string[] = ["hourly", "daily", "weekly", "monthly", "yearly"];

/**
 * The period a backup at `time` falls into for `rule`, in `timeZone` (default: the process's local zone):
 * "2026-11-27T13", "2026-11-27", "2026-W48" (ISO week-year and week), "2026-11", "2026".
 */
export function periodKey(rule: CalendarRule, time: Date, timeZone?: string): string {
  if (!CALENDAR_RULES.includes(rule)) {
    throw new RetentionInputError(`unknown period rule "${String(rule)}": use hourly, daily, weekly, monthly or yearly`);
  }
  const ms = checkedTime(time, "period lookup");
  return keyOf(rule, localTime(ms, formatterFor(resolveZone(timeZone))));
}

// ---------------------------------------------------------------------------------------------------------------
// Decisions

interface Mark {
  keep: boolean;
  rule: RetentionRule | "protected";
  period: string | null;
}

interface Sorted {
  item: RetentionItem;
  ms: number;
}

/** Newest first; equal times by id descending (plain code-unit order, independent of locale). */
function newestFirst(a: Sorted, b: Sorted): number {
  if (a.ms !== b.ms) return b.ms - a.ms;
  if (a.item.id === b.item.id) return 0;
  return a.item.id < b.item.id ? 1 : -1;
}

/** One rule over the list, exactly like PBS's mark_selections (see the module comment). */
function markSelections(marks: (Mark | undefined)[], rule: RetentionRule, keep: number, key: (i: number) => string): void {
  const alreadyKept = new Set<string>();
  for (let i = 0; i < marks.length; i++) {
    if (marks[i]?.keep === true && marks[i]?.rule !== "protected") alreadyKept.add(key(i));
  }
  const taken = new Set<string>();
  for (let i = 0; i < marks.length; i++) {
    if (marks[i] !== undefined) continue;
    const period = key(i);
    if (alreadyKept.has(period)) continue;
    if (!taken.has(period)) {
      if (taken.size >= keep) break;
      taken.add(period);
      marks[i] = { keep: true, rule, period: rule === "last" ? String(taken.size) : period };
    } else {
      marks[i] = { keep: false, rule, period };
    }
  }
}

/**
 * Decide for every backup whether retention keeps it. Decisions come newest first, one per item, each with the
 * rule, period and a reason (see formatDecision). timeZone: an IANA zone; default the process's local zone.
 */
export function decideRetention(
  items: readonly RetentionItem[],
  rules: RetentionRules,
  opts?: { timeZone?: string },
): RetentionDecision[] {
  const counts = checkedCounts(rules);
  const zone = resolveZone(opts?.timeZone);
  const formatter = formatterFor(zone);

  const seen = new Set<string>();
  const sorted: Sorted[] = items.map((item) => {
    if (typeof item.id !== "string" || item.id === "") {
      throw new RetentionInputError(`a backup given to retention has no id (time ${String(item.time)})`);
    }
    if (seen.has(item.id)) {
      throw new RetentionInputError(
        `backup id "${item.id}" appears twice in the list given to retention; each backup must be listed once`,
      );
    }
    seen.add(item.id);
    return { item, ms: checkedTime(item.time, `backup "${item.id}"`) };
  });
  sorted.sort(newestFirst);

  const marks: (Mark | undefined)[] = sorted.map(({ item }) =>
    item.protected === true ? { keep: true, rule: "protected", period: null } : undefined,
  );

  // Local time is the expensive part: compute it at most once per backup, and only for backups a rule reaches.
  const locals: (LocalTime | undefined)[] = new Array(sorted.length);
  const localOf = (i: number): LocalTime => (locals[i] ??= localTime(sorted[i]!.ms, formatter));

  for (const [rule] of RULE_KEYS) {
    const count = counts.get(rule);
    if (count === undefined) continue;
    if (rule === "last") {
      markSelections(marks, rule, count, (i) => sorted[i]!.item.id);
    } else {
      const keys: (string | undefined)[] = new Array(sorted.length);
      markSelections(marks, rule, count, (i) => (keys[i] ??= keyOf(rule, localOf(i))));
    }
  }

  return sorted.map(({ item, ms }, i) => {
    const mark = marks[i];
    const decision: RetentionDecision = {
      id: item.id,
      time: new Date(ms),
      keep: mark?.keep ?? false,
      rule: mark?.rule ?? null,
      period: mark?.period ?? null,
      reason: "",
    };
    decision.reason = formatDecision(decision);
    return decision;
  });
}

/**
 * One line saying what happens to the backup and why: "kept: daily 2026-11-27", "kept: last 2",
 * "kept: protected", "removed: hourly 2026-11-27T13 already kept by a newer backup",
 * "removed: not selected by any rule".
 */
export function formatDecision(d: RetentionDecision): string {
  if (d.keep) {
    if (d.rule === "protected") return "kept: protected";
    if (d.rule !== null && d.period !== null) return `kept: ${d.rule} ${d.period}`;
  } else {
    if (d.rule === null) return "removed: not selected by any rule";
    if (d.rule !== "protected" && d.period !== null) {
      return `removed: ${d.rule} ${d.period} already kept by a newer backup`;
    }
  }
  // Fields that do not fit together were not produced by decideRetention; say what is known.
  return d.reason !== "" ? d.reason : `${d.keep ? "kept" : "removed"}: ${d.rule ?? "no rule"}`;
}
