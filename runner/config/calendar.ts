/**
 * systemd calendar events (systemd.time(7), OnCalendar=) in pure TypeScript: parse, normalize, and compute
 * the next elapses without systemd-analyze.
 *
 * The parser accepts and rejects what systemd 252 accepts and rejects, and the normalized form is
 * systemd's. The evaluator is a port of systemd's own search (calendarspec.c find_next): it walks the
 * wall-clock fields and leans on mktime() to normalize them. Because that is where DST behaviour comes
 * from, glibc's mktime() is emulated too (see ZoneClock), so DST days come out as systemd computes them:
 *
 * - Spring forward: a wall time that does not exist that day does not fire that day
 *   (`*-*-* 02:30` in Europe/Berlin skips the last Sunday of March); a repeating spec such as `*:0/15`
 *   just continues after the gap.
 * - Fall back: a time inside the repeated hour fires once, in the first pass (`02:30 CEST`); `*:0/15`
 *   runs through the first pass and then continues at 03:00 after the second one, as systemd does. If
 *   the search starts inside the second pass, ambiguous times resolve to the second pass (glibc keeps the
 *   offset of its previous call).
 *
 * Time zones: a trailing `UTC` (any case) or an IANA name is evaluated in that zone through Intl;
 * otherwise the process's local zone (TZ) is used. Known differences from systemd: local zone
 * abbreviations such as `CEST` (which systemd accepts only when they are the local zone's own names, and
 * then forces DST on or off) are rejected here; names that are IANA zones (`CET`, `EST5EDT`) are taken as
 * zones. Zone names under `posix/` and `right/` are not accepted. Elapses with sub-millisecond fractions
 * are rounded up to the next millisecond in the returned Date.
 */

import { UsageError } from "../errors.ts";

/** Bad config input: a usage error (exit code 2), nothing was changed. */
export class CalendarSyntaxError extends UsageError {
  override name = "CalendarSyntaxError";
}

/** One element of a list: a value, a range `start..stop`, or a repetition `start/repeat` / `start..stop/repeat`. */
export interface CalendarComponent {
  readonly start: number;
  /** -1 when there is no upper bound. */
  readonly stop: number;
  /** 0 when the value does not repeat. */
  readonly repeat: number;
}

/** `null` means `*` (any value). */
export type CalendarChain = readonly CalendarComponent[] | null;

export interface CalendarSpec {
  readonly source: string;
  readonly normalized: string;
  /** Bit 0 = Monday ... bit 6 = Sunday; null = any weekday. */
  readonly weekdays: number | null;
  readonly year: CalendarChain;
  readonly month: CalendarChain;
  readonly day: CalendarChain;
  /** Days count back from the end of the month (`~`). */
  readonly endOfMonth: boolean;
  readonly hour: CalendarChain;
  readonly minute: CalendarChain;
  /** In microseconds; never null (`*` is 0/1s). */
  readonly second: readonly CalendarComponent[];
  readonly utc: boolean;
  /** IANA zone named in the expression, or null for UTC / the local zone. */
  readonly timeZone: string | null;
}

const USEC_PER_SEC = 1_000_000;
const MIN_YEAR = 1970;
const MAX_YEAR = 2199;
const INT_MAX = 2_147_483_647;
/** systemd's safety valve against endless searches (calendarspec.c MAX_CALENDAR_ITERATIONS). */
const MAX_ITERATIONS = 1000;
/** systemd caps list length the same way. */
const MAX_COMPONENTS = 240;
const ALL_WEEKDAYS = 127;

const WEEKDAY_ABBR = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"] as const;
// Longest first, so "Monday" is preferred over "Mon", exactly as systemd tries them.
const WEEKDAY_NAMES: ReadonlyArray<readonly [string, number]> = [
  ["monday", 0], ["mon", 0], ["tuesday", 1], ["tue", 1], ["wednesday", 2], ["wed", 2],
  ["thursday", 3], ["thu", 3], ["friday", 4], ["fri", 4], ["saturday", 5], ["sat", 5],
  ["sunday", 6], ["sun", 6],
];

const ALLOWED_WEEKDAYS = "allowed: Mon Tue Wed Thu Fri Sat Sun, ranges Mon..Fri, lists Mon,Wed";
const ALLOWED_SHORTHANDS =
  "allowed: minutely hourly daily weekly monthly quarterly semiannually yearly annually, " +
  'or an expression like "Mon..Fri *-*-* 02:00:00"';
const ALLOWED_ZONES = "allowed: UTC or an IANA name such as Europe/Berlin; names are case-sensitive";

// ---------------------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------------------

interface MutableComponent {
  start: number;
  stop: number;
  repeat: number;
}

interface Draft {
  weekdays: number;
  year: MutableComponent[] | null;
  month: MutableComponent[] | null;
  day: MutableComponent[] | null;
  endOfMonth: boolean;
  hour: MutableComponent[] | null;
  minute: MutableComponent[] | null;
  second: MutableComponent[] | null;
  utc: boolean;
  timeZone: string | null;
}

const single = (value: number): MutableComponent[] => [{ start: value, stop: -1, repeat: 0 }];

const SHORTHANDS: Readonly<Record<string, Partial<Draft>>> = {
  minutely: { second: single(0) },
  hourly: { minute: single(0), second: single(0) },
  daily: { hour: single(0), minute: single(0), second: single(0) },
  monthly: { day: single(1), hour: single(0), minute: single(0), second: single(0) },
  weekly: { weekdays: 1, hour: single(0), minute: single(0), second: single(0) },
  yearly: { month: single(1), day: single(1), hour: single(0), minute: single(0), second: single(0) },
  quarterly: {
    month: [1, 4, 7, 10].flatMap(single),
    day: single(1), hour: single(0), minute: single(0), second: single(0),
  },
  semiannually: { month: [1, 7].flatMap(single), day: single(1), hour: single(0), minute: single(0), second: single(0) },
};
const SHORTHAND_ALIASES: ReadonlyMap<string, string> = new Map([
  ["minutely", "minutely"], ["hourly", "hourly"], ["daily", "daily"], ["monthly", "monthly"], ["weekly", "weekly"],
  ["yearly", "yearly"], ["annually", "yearly"], ["anually", "yearly"], // systemd keeps the old misspelling
  ["quarterly", "quarterly"],
  ["semiannually", "semiannually"], ["semi-annually", "semiannually"], ["biannually", "semiannually"],
  ["bi-annually", "semiannually"],
]);

const isDigit = (ch: string | undefined): boolean => ch !== undefined && ch >= "0" && ch <= "9";
const isLetter = (ch: string | undefined): boolean => ch !== undefined && /[A-Za-z]/.test(ch);

const zoneNameCache = new Map<string, boolean>();

/** A zone systemd would find in /usr/share/zoneinfo and Intl can evaluate. */
function isTimeZoneName(name: string): boolean {
  if (name === "UTC") return true;
  const cached = zoneNameCache.get(name);
  if (cached !== undefined) return cached;
  // systemd's verify_timezone() character rules; every tzdata path segment starts with a capital letter
  // or digit, which keeps Intl's case-insensitive lookup from accepting "europe/berlin".
  let ok = /^[A-Za-z0-9_+-]+(\/[A-Za-z0-9_+-]+)*$/.test(name) &&
    name.split("/").every((segment) => /^[A-Z0-9]/.test(segment));
  if (ok) {
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: name });
    } catch {
      ok = false;
    }
  }
  zoneNameCache.set(name, ok);
  return ok;
}

function zoneCaseHint(name: string): string {
  try {
    const resolved = new Intl.DateTimeFormat("en-US", { timeZone: name }).resolvedOptions().timeZone;
    if (resolved !== name && resolved.toLowerCase() === name.toLowerCase()) return `; did you mean ${resolved}?`;
  } catch {
    // not a zone in any spelling
  }
  return "";
}

class Parser {
  private i = 0;

  constructor(
    private readonly source: string,
    private readonly s: string,
    private readonly draft: Draft,
  ) {}

  fail(reason: string, allowed?: string): never {
    throw new CalendarSyntaxError(`${JSON.stringify(this.source)}: ${reason}${allowed ? ` (${allowed})` : ""}`);
  }

  // A method, not a getter: TypeScript would narrow a getter's type across the index moves below.
  private ch(): string | undefined {
    return this.s[this.i];
  }

  private rest(): string {
    return this.s.slice(this.i);
  }

  private word(at: number = this.i): string {
    return /^[^\s,.:~-]*/.exec(this.s.slice(at))?.[0] ?? "";
  }

  private skipSpaces(): void {
    while (this.s[this.i] === " ") this.i++;
  }

  parse(): void {
    this.parseWeekdays();
    const date = this.parseDate();
    if (date !== "timestamp") this.parseTime();
    if (this.i < this.s.length) this.fail(`unexpected ${JSON.stringify(this.rest())} at the end`);
  }

  private parseWeekdays(): void {
    let rangeStart = -1;
    let first = true;
    for (;;) {
      const lower = this.s.slice(this.i).toLowerCase();
      const hit = WEEKDAY_NAMES.find(([name]) => lower.startsWith(name));
      if (!hit) {
        if (first) {
          if (isLetter(this.ch())) {
            const token = this.word();
            if (!/\s/.test(this.s)) this.fail(`unknown keyword or weekday "${token}"`, ALLOWED_SHORTHANDS);
            this.fail(`unknown weekday "${token}"`, ALLOWED_WEEKDAYS);
          }
          return;
        }
        if (!isLetter(this.ch())) this.fail(`expected a weekday at ${JSON.stringify(this.rest())}`, ALLOWED_WEEKDAYS);
        this.fail(`unknown weekday "${this.word()}"`, ALLOWED_WEEKDAYS);
      }
      const [name, nr] = hit;
      const after = this.s[this.i + name.length];
      if (after !== undefined && !"-., ".includes(after)) {
        this.fail(`unknown weekday "${this.word()}"`, ALLOWED_WEEKDAYS);
      }
      this.draft.weekdays |= 1 << nr;
      if (rangeStart >= 0) {
        if (rangeStart > nr) {
          this.fail(
            `weekday range ${WEEKDAY_ABBR[rangeStart]}..${WEEKDAY_ABBR[nr]} runs backwards`,
            "ranges go forward from Mon to Sun, e.g. Mon..Fri; use a list for wrap-around, e.g. Sat,Sun,Mon",
          );
        }
        for (let j = rangeStart + 1; j < nr; j++) this.draft.weekdays |= 1 << j;
      }
      this.i += name.length;

      if (this.ch() === undefined) return;
      if (this.ch() === " ") {
        this.skipSpaces();
        return;
      }
      if (this.ch() === ".") {
        if (rangeStart >= 0) this.fail("a weekday range cannot be extended with another range", ALLOWED_WEEKDAYS);
        if (this.s[this.i + 1] !== ".") this.fail(`weekday ranges need two dots, e.g. Mon..Fri`, ALLOWED_WEEKDAYS);
        rangeStart = nr;
        this.i += 2;
      } else if (this.ch() === "-") {
        // systemd still accepts "Mon-Fri" for backwards compatibility.
        if (rangeStart >= 0) this.fail("a weekday range cannot be extended with another range", ALLOWED_WEEKDAYS);
        rangeStart = nr;
        this.i += 1;
      } else if (this.ch() === ",") {
        rangeStart = -1;
        this.i += 1;
      }
      if (this.ch() === undefined || this.ch() === " ") {
        // A trailing comma is allowed, an open range is not.
        if (rangeStart >= 0) this.fail(`weekday range starting at ${WEEKDAY_ABBR[rangeStart]} has no end`, ALLOWED_WEEKDAYS);
        this.skipSpaces();
        return;
      }
      first = false;
    }
  }

  /** Returns "timestamp" for `@SECONDS`, which has no separate time part. */
  private parseDate(): "timestamp" | "date" | "none" {
    if (this.ch() === undefined) return "none";
    if (this.ch() === "@") {
      this.i++;
      const digits = /^\d+/.exec(this.rest())?.[0];
      if (!digits) this.fail(`"@" must be followed by seconds since the epoch, e.g. @1700000000`);
      this.i += digits.length;
      const seconds = Number(digits);
      const at = new Date(seconds * 1000);
      if (!Number.isSafeInteger(seconds) || Number.isNaN(at.getTime())) this.fail(`timestamp @${digits} is out of range`);
      Object.assign(this.draft, {
        utc: true,
        year: single(at.getUTCFullYear()),
        month: single(at.getUTCMonth() + 1),
        day: single(at.getUTCDate()),
        hour: single(at.getUTCHours()),
        minute: single(at.getUTCMinutes()),
        second: single(at.getUTCSeconds() * USEC_PER_SEC),
      });
      return "timestamp";
    }

    const begin = this.i;
    const first = this.parseChain(false, "year, month or hour");
    // A ':' right after the first field means this was a time, not a date.
    if (this.ch() === undefined || this.ch() === ":") {
      this.i = begin;
      return "none";
    }
    if (this.ch() === "~") this.draft.endOfMonth = true;
    else if (this.ch() !== "-") this.expectedSeparator(`"-" between the parts of a date (Y-M-D or M-D) or ":" in a time`);
    this.i++;

    const second = this.parseChain(false, "month or day");
    if (this.ch() === undefined || this.ch() === " ") {
      this.skipSpaces();
      this.draft.month = first;
      this.draft.day = second;
      return "date";
    }
    if (this.draft.endOfMonth) this.fail(`"~" may only stand between month and day, e.g. *-02~01`);
    if (this.ch() === "~") this.draft.endOfMonth = true;
    else if (this.ch() !== "-") this.expectedSeparator(`"-" between the parts of a date (Y-M-D)`);
    this.i++;

    const third = this.parseChain(false, "day");
    if (this.ch() !== undefined && this.ch() !== " ") this.expectedSeparator("a space between date and time");
    this.skipSpaces();
    this.draft.year = first;
    this.draft.month = second;
    this.draft.day = third;
    return "date";
  }

  private parseTime(): void {
    if (this.ch() === undefined) {
      // No time at all means midnight.
      this.draft.hour = single(0);
      this.draft.minute = single(0);
      this.draft.second = single(0);
      return;
    }
    const hour = this.parseChain(false, "hour");
    if (this.ch() !== ":") {
      if (this.ch() === undefined) this.fail(`a time needs hours and minutes, e.g. 02:00 or 02:00:00`);
      this.expectedSeparator(`":" between hours and minutes`);
    }
    this.i++;
    const minute = this.parseChain(false, "minute");
    let second: MutableComponent[] | null = single(0);
    if (this.ch() !== undefined) {
      if (this.ch() !== ":") this.expectedSeparator(`":" between minutes and seconds, or the end`);
      this.i++;
      second = this.parseChain(true, "second");
      if (this.ch() !== undefined) this.expectedSeparator("the end of the time (H:M:S)");
    }
    this.draft.hour = hour;
    this.draft.minute = minute;
    this.draft.second = second;
  }

  private expectedSeparator(expected: string): never {
    if (this.ch() === " " && isLetter(this.s[this.i + 1])) {
      this.fail(`unexpected "${this.word(this.i + 1)}"`, "weekdays go first; a time zone goes last");
    }
    this.fail(`unexpected ${JSON.stringify(this.ch())} at ${JSON.stringify(this.rest())}, expected ${expected}`);
  }

  /** A `*` or a comma-separated list of values, ranges and repetitions. */
  private parseChain(usec: boolean, field: string): MutableComponent[] | null {
    if (this.ch() === "*") {
      this.i++;
      if (this.ch() === "/") {
        this.fail(`"*/N" is not supported; a repetition needs a start value, e.g. 0/15 for every 15th ${field} from 0`);
      }
      if (this.ch() === "," || (this.ch() === "." && this.s[this.i + 1] === ".")) {
        this.fail(`"*" cannot be combined with other values in a ${field} list`);
      }
      return usec ? [{ start: 0, stop: -1, repeat: USEC_PER_SEC }] : null;
    }
    const chain: MutableComponent[] = [];
    for (;;) {
      if (chain.length > MAX_COMPONENTS) this.fail(`too many list elements (at most ${MAX_COMPONENTS + 1})`);
      const start = this.parseNumber(usec, field);
      let stop = -1;
      let repeat = 0;
      if (this.ch() === "." && this.s[this.i + 1] === ".") {
        this.i += 2;
        stop = this.parseNumber(usec, field);
        repeat = usec ? USEC_PER_SEC : 1;
      }
      if (this.ch() === "/") {
        this.i++;
        repeat = this.parseNumber(usec, field);
        if (repeat === 0) this.fail(`a repetition step must be greater than 0 (in ${field} "/0")`);
      } else {
        if (start > INT_MAX - repeat) this.fail(`${field} value is too large`);
        if (usec && stop >= 0 && start + repeat > stop) {
          this.fail(
            `seconds range ${formatSeconds(start)}..${formatSeconds(stop)} must span at least one second`,
            "or give a step, e.g. 1.5..2/0.5",
          );
        }
      }
      const next = this.ch();
      if (next !== undefined && !" ,-~:".includes(next)) {
        this.fail(
          `unexpected ${JSON.stringify(this.ch())} in ${field} at ${JSON.stringify(this.rest())}`,
          "values like 5, lists 1,15, ranges 1..7, repetitions 0/15 or 1..31/2",
        );
      }
      chain.push({ start, stop, repeat });
      if (this.ch() !== ",") return chain;
      this.i++;
    }
  }

  private parseNumber(usec: boolean, field: string): number {
    const digits = /^\d+/.exec(this.rest())?.[0];
    if (!digits) {
      const word = this.word();
      if (WEEKDAY_NAMES.some(([name]) => word.toLowerCase() === name)) {
        this.fail(`weekday "${word}" is out of place`, "weekdays come first, as one list without spaces, e.g. Mon,Tue 02:00");
      }
      if (this.ch() === ":") this.fail(`missing a number before ":"`, "a time is H:M or H:M:S, e.g. 00:30");
      const got = this.ch() === undefined ? "the end" : JSON.stringify(word || this.ch());
      this.fail(`expected a number for the ${field}, got ${got}`);
    }
    this.i += digits.length;
    let value = Number(digits);
    if (usec) {
      value *= USEC_PER_SEC;
      // One "." is a decimal point, ".." is a range.
      if (this.ch() === "." && this.s[this.i + 1] !== ".") {
        this.i++;
        const fraction = /^\d+/.exec(this.rest())?.[0];
        if (!fraction) this.fail(`a decimal point in the seconds must be followed by digits`);
        this.i += fraction.length;
        // Microsecond resolution, rounded on the 7th digit like systemd's parse_fractional_part_u().
        let micro = Number(fraction.slice(0, 6).padEnd(6, "0"));
        if (fraction.length > 6 && fraction[6]! >= "5") micro++;
        value += micro;
      }
    }
    if (value > INT_MAX) this.fail(`${field} value ${digits} is too large`);
    return value;
  }
}

function formatSeconds(usec: number): string {
  const whole = Math.floor(usec / USEC_PER_SEC);
  const frac = usec % USEC_PER_SEC;
  return frac ? `${whole}.${String(frac).padStart(6, "0")}` : String(whole);
}

/** systemd's normalize_chain(): tidy ranges, drop repeats that never fire, sort and de-duplicate. */
function normalizeChain(chain: MutableComponent[] | null): MutableComponent[] | null {
  if (!chain) return null;
  for (const c of chain) {
    if (c.stop > c.start && c.repeat > 0) c.stop -= (c.stop - c.start) % c.repeat;
    if ((c.stop > c.start && c.repeat > 0 && c.start + c.repeat > c.stop) || c.start === c.stop) {
      c.repeat = 0;
      c.stop = -1;
    }
  }
  const sorted = [...chain].sort((a, b) => a.start - b.start || a.stop - b.stop || a.repeat - b.repeat);
  return sorted.filter(
    (c, k) => k === 0 || c.start !== sorted[k - 1]!.start || c.stop !== sorted[k - 1]!.stop || c.repeat !== sorted[k - 1]!.repeat,
  );
}

/** Two-digit years as systemd reads them: 0..69 are 20xx, 70..99 are 19xx. */
function fixYears(chain: MutableComponent[] | null): void {
  for (const c of chain ?? []) {
    for (const key of ["start", "stop"] as const) {
      if (c[key] >= 0 && c[key] < 70) c[key] += 2000;
      else if (c[key] >= 70 && c[key] < 100) c[key] += 1900;
    }
  }
}

interface FieldRule {
  readonly name: string;
  readonly from: number;
  readonly to: number;
  readonly show: (v: number) => string;
}

function describeComponent(c: CalendarComponent, show: (v: number) => string): string {
  let text = show(c.start);
  if (c.stop >= 0) text += `..${show(c.stop)}`;
  if (c.repeat > 0 && !(c.stop >= 0 && (c.repeat === 1 || c.repeat === USEC_PER_SEC))) text += `/${show(c.repeat)}`;
  return text;
}

/** systemd's chain_valid(), with a reason for each refusal. */
function validateChain(p: Parser, chain: readonly CalendarComponent[] | null, rule: FieldRule, endOfMonth: boolean): void {
  const to = endOfMonth ? rule.to - 3 : rule.to;
  const range = `${rule.show(rule.from)}..${rule.show(to)}`;
  const allowed = endOfMonth
    ? `allowed: with "~" the day counts back from the end of the month, ${range}`
    : `allowed: ${range}`;
  for (const c of chain ?? []) {
    const text = describeComponent(c, rule.show);
    if (c.start < rule.from || c.start > to) p.fail(`${rule.name} ${rule.show(c.start)} is out of range`, allowed);
    if (c.repeat > to - rule.from) p.fail(`${rule.name} repetition "${text}" has a step larger than the whole range`, allowed);
    if (c.stop >= 0) {
      if (c.stop < rule.from || c.stop > to) p.fail(`${rule.name} ${rule.show(c.stop)} is out of range`, allowed);
      if (c.start + c.repeat > c.stop) p.fail(`${rule.name} range "${text}" runs backwards`, `ranges go from low to high, ${allowed}`);
    } else if (endOfMonth && c.start - c.repeat < rule.from) {
      p.fail(`${rule.name} repetition "${text}" would count past the first day of the month`, allowed);
    } else if (!endOfMonth && c.start + c.repeat > to) {
      p.fail(`${rule.name} repetition "${text}" never repeats: ${rule.show(c.start + c.repeat)} is past ${rule.show(to)}`, allowed);
    }
  }
}

const pad = (width: number) => (v: number) => String(v).padStart(width, "0");

function formatChain(chain: readonly CalendarComponent[] | null, width: number, usec: boolean): string {
  if (!chain) return "*";
  const d = usec ? USEC_PER_SEC : 1;
  // A seconds list that contains "every second" is just "*".
  if (usec && chain.some((c) => c.start === 0 && c.stop < 0 && c.repeat === USEC_PER_SEC)) return "*";
  const fraction = (v: number): string => (v % d > 0 ? `.${String(v % d).padStart(6, "0")}` : "");
  return chain
    .map((c) => {
      let text = String(Math.floor(c.start / d)).padStart(width, "0") + fraction(c.start);
      if (c.stop > 0) text += ".." + String(Math.floor(c.stop / d)).padStart(width, "0") + fraction(c.stop);
      if (c.repeat > 0 && !(c.stop > 0 && c.repeat === d)) text += "/" + String(Math.floor(c.repeat / d)) + fraction(c.repeat);
      return text;
    })
    .join(",");
}

function formatWeekdays(bits: number): string {
  const parts: string[] = [];
  for (let x = 0; x < 7; ) {
    if (!(bits & (1 << x))) {
      x++;
      continue;
    }
    let end = x;
    while (end + 1 < 7 && bits & (1 << (end + 1))) end++;
    if (end === x) parts.push(WEEKDAY_ABBR[x]!);
    else parts.push(`${WEEKDAY_ABBR[x]}${end > x + 1 ? ".." : ","}${WEEKDAY_ABBR[end]}`);
    x = end + 1;
  }
  return parts.join(",");
}

function formatSpec(spec: Omit<CalendarSpec, "source" | "normalized">): string {
  let text = spec.weekdays !== null ? `${formatWeekdays(spec.weekdays)} ` : "";
  text += `${formatChain(spec.year, 4, false)}-${formatChain(spec.month, 2, false)}`;
  text += `${spec.endOfMonth ? "~" : "-"}${formatChain(spec.day, 2, false)} `;
  text += `${formatChain(spec.hour, 2, false)}:${formatChain(spec.minute, 2, false)}:${formatChain(spec.second, 2, true)}`;
  if (spec.utc) text += " UTC";
  else if (spec.timeZone) text += ` ${spec.timeZone}`;
  return text;
}

const freezeChain = (chain: MutableComponent[] | null): CalendarChain =>
  chain ? Object.freeze(chain.map((c) => Object.freeze({ ...c }))) : null;

/** Parses an OnCalendar= expression; throws CalendarSyntaxError saying what is wrong and what is allowed. */
export function parseCalendar(expr: string): CalendarSpec {
  if (typeof expr !== "string") {
    throw new CalendarSyntaxError(`calendar expression must be a string like "daily" or "*-*-* 02:00:00"`);
  }
  const draft: Draft = {
    weekdays: 0, year: null, month: null, day: null, endOfMonth: false,
    hour: null, minute: null, second: null, utc: false, timeZone: null,
  };
  if (/^\s/.test(expr)) {
    throw new CalendarSyntaxError(`${JSON.stringify(expr)}: leading whitespace is not allowed`);
  }
  let body = expr;
  if (expr.length > 4 && expr.slice(-4).toLowerCase() === " utc") {
    draft.utc = true;
    body = expr.slice(0, -4);
  } else {
    const lastSpace = expr.lastIndexOf(" ");
    const candidate = lastSpace >= 0 ? expr.slice(lastSpace + 1) : "";
    if (candidate && isTimeZoneName(candidate)) {
      draft.timeZone = candidate;
      body = expr.slice(0, lastSpace);
    } else if (isLetter(candidate[0]) && !WEEKDAY_NAMES.some(([n]) => candidate.toLowerCase().startsWith(n))) {
      // Nothing that starts with a letter can follow a space except a zone, so this must be a bad zone.
      throw new CalendarSyntaxError(
        `${JSON.stringify(expr)}: unknown time zone "${candidate}"${zoneCaseHint(candidate)} (${ALLOWED_ZONES})`,
      );
    }
  }
  const parser = new Parser(expr, body, draft);
  if (body === "") {
    parser.fail(
      expr.trim() === "" ? "empty calendar expression" : "nothing before the time zone",
      'expected e.g. "daily", "Mon..Fri 02:00", "*-*-* 02:30:00"',
    );
  }

  const shorthand = SHORTHAND_ALIASES.get(body.toLowerCase());
  if (shorthand) {
    Object.assign(draft, structuredClone(SHORTHANDS[shorthand]));
  } else {
    if (SHORTHAND_ALIASES.has(body.trim().toLowerCase())) parser.fail(`no whitespace is allowed around "${body.trim()}"`);
    parser.parse();
  }

  // Normalize as systemd's calendar_spec_normalize() does, then validate.
  if (draft.timeZone === "UTC") {
    draft.utc = true;
    draft.timeZone = null;
  }
  const weekdays = draft.weekdays <= 0 || draft.weekdays >= ALL_WEEKDAYS ? null : draft.weekdays;
  if (draft.endOfMonth && !draft.day) draft.endOfMonth = false;
  fixYears(draft.year);
  const year = normalizeChain(draft.year);
  const month = normalizeChain(draft.month);
  const day = normalizeChain(draft.day);
  const hour = normalizeChain(draft.hour);
  const minute = normalizeChain(draft.minute);
  const second = normalizeChain(draft.second) ?? single(0);

  validateChain(parser, year, { name: "year", from: MIN_YEAR, to: MAX_YEAR, show: String }, false);
  validateChain(parser, month, { name: "month", from: 1, to: 12, show: String }, false);
  validateChain(parser, day, { name: "day", from: 1, to: 31, show: String }, draft.endOfMonth);
  validateChain(parser, hour, { name: "hour", from: 0, to: 23, show: String }, false);
  validateChain(parser, minute, { name: "minute", from: 0, to: 59, show: String }, false);
  validateChain(parser, second, { name: "second", from: 0, to: 60 * USEC_PER_SEC - 1, show: formatSeconds }, false);

  const spec = {
    weekdays,
    year: freezeChain(year),
    month: freezeChain(month),
    day: freezeChain(day),
    endOfMonth: draft.endOfMonth,
    hour: freezeChain(hour),
    minute: freezeChain(minute),
    second: freezeChain(second)!,
    utc: draft.utc,
    timeZone: draft.timeZone,
  };
  return Object.freeze({ source: expr, normalized: formatSpec(spec), ...spec });
}

// ---------------------------------------------------------------------------------------------------------
// Time zones: glibc mktime()/localtime() semantics on top of Intl
// ---------------------------------------------------------------------------------------------------------

/** Broken-down wall-clock time like struct tm, but with the full year and mon 0..11. */
interface Tm {
  year: number;
  mon: number;
  mday: number;
  hour: number;
  min: number;
  sec: number;
  /** -1 = unknown (let mktime decide), 0 = standard time, 1 = daylight saving time. */
  isdst: number;
  wday: number;
}

interface Clock {
  localtime(t: number): Tm;
  /** Normalizes tm and returns the instant in seconds, like mktime()/timegm(). */
  mktime(tm: Tm): { t: number; tm: Tm };
}

function wallSeconds(tm: Tm): number {
  const d = new Date(0);
  d.setUTCFullYear(tm.year, tm.mon, tm.mday);
  d.setUTCHours(tm.hour, tm.min, tm.sec, 0);
  return d.getTime() / 1000;
}

function fieldsOf(wall: number, isdst: number): Tm {
  const d = new Date(wall * 1000);
  return {
    year: d.getUTCFullYear(), mon: d.getUTCMonth(), mday: d.getUTCDate(),
    hour: d.getUTCHours(), min: d.getUTCMinutes(), sec: d.getUTCSeconds(),
    isdst, wday: d.getUTCDay(),
  };
}

class UtcClock implements Clock {
  localtime(t: number): Tm {
    return fieldsOf(t, 0);
  }
  mktime(tm: Tm): { t: number; tm: Tm } {
    const t = wallSeconds(tm);
    return { t, tm: fieldsOf(t, 0) };
  }
}

const OFFSET_CACHE_LIMIT = 100_000;

/** UTC offsets of one zone, read from Intl and cached per instant. */
class ZoneOffsets {
  private readonly format: Intl.DateTimeFormat;
  private readonly offsets = new Map<number, number>();
  private readonly standard = new Map<number, number>();

  constructor(readonly zone: string) {
    this.format = new Intl.DateTimeFormat("en-US", {
      timeZone: zone, hourCycle: "h23", era: "short",
      year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric",
    });
  }

  /** Seconds east of UTC at instant t (seconds). */
  at(t: number): number {
    let offset = this.offsets.get(t);
    if (offset !== undefined) return offset;
    const f: Record<string, string> = {};
    for (const part of this.format.formatToParts(new Date(t * 1000))) f[part.type] = part.value;
    const year = f.era === "BC" || f.era === "B" ? 1 - Number(f.year) : Number(f.year);
    const wall = wallSeconds({
      year, mon: Number(f.month) - 1, mday: Number(f.day),
      hour: Number(f.hour), min: Number(f.minute), sec: Number(f.second), isdst: -1, wday: 0,
    });
    offset = wall - t;
    if (this.offsets.size >= OFFSET_CACHE_LIMIT) this.offsets.clear();
    this.offsets.set(t, offset);
    return offset;
  }

  /** The year's standard (non-DST) offset: the smaller of mid-winter and mid-summer. */
  standardOffset(t: number): number {
    const year = new Date(t * 1000).getUTCFullYear();
    let std = this.standard.get(year);
    if (std === undefined) {
      std = Math.min(this.at(Date.UTC(year, 0, 1) / 1000), this.at(Date.UTC(year, 6, 1) / 1000));
      this.standard.set(year, std);
    }
    return std;
  }

  isdst(t: number): number {
    return this.at(t) > this.standardOffset(t) ? 1 : 0;
  }
}

const zoneOffsets = new Map<string, ZoneOffsets>();
function offsetsFor(zone: string): ZoneOffsets {
  let z = zoneOffsets.get(zone);
  if (!z) {
    z = new ZoneOffsets(zone);
    zoneOffsets.set(zone, z);
  }
  return z;
}

/**
 * glibc's mktime() for one zone. Two behaviours matter for calendar events and are reproduced here:
 * a wall time in a spring-forward gap is moved forward by the gap (02:30 -> 03:30 CEST), and an
 * ambiguous wall time in the fall-back hour takes the UTC offset of the previous mktime() call (glibc
 * keeps it in a static variable). Hence one clock per search: its `guess` is that state.
 */
class ZoneClock implements Clock {
  private guess = 0;

  constructor(private readonly z: ZoneOffsets) {}

  localtime(t: number): Tm {
    return fieldsOf(t + this.z.at(t), this.z.isdst(t));
  }

  mktime(tm: Tm): { t: number; tm: Tm } {
    const wall = wallSeconds(tm);
    const t = tm.isdst < 0 ? this.solve(wall) : this.solveWithDst(wall, tm.isdst);
    this.guess = wall - t;
    return { t, tm: this.localtime(t) };
  }

  /** glibc's search: start from the previous offset and follow the offsets until they agree. */
  private solve(wall: number): number {
    let t = wall - this.guess;
    const seen: number[] = [];
    for (let probe = 0; probe < 8; probe++) {
      const next = wall - this.z.at(t);
      if (next === t) return t;
      if (seen.includes(next)) {
        // Oscillating between the two sides of a gap: take the later instant (after the gap).
        return Math.max(t, next);
      }
      seen.push(t);
      t = next;
    }
    return t;
  }

  /** mktime() with tm_isdst set: prefer the reading with that DST flag, else shift by the DST difference. */
  private solveWithDst(wall: number, isdst: number): number {
    const offsets = new Set([this.z.at(wall - 86_400), this.z.at(wall), this.z.at(wall + 86_400)]);
    const matching: number[] = [];
    for (const o of offsets) {
      const t = wall - o;
      if (this.z.at(t) === o && this.z.isdst(t) === isdst) matching.push(t);
    }
    if (matching.length > 0) return Math.min(...matching);
    // No reading with that flag: glibc takes the offset of a nearby time that has it.
    const std = this.z.standardOffset(wall);
    const year = new Date(wall * 1000).getUTCFullYear();
    const seasonal = [this.z.at(Date.UTC(year, 0, 1) / 1000), this.z.at(Date.UTC(year, 6, 1) / 1000), ...offsets];
    const wanted = seasonal.find((o) => (o > std ? 1 : 0) === isdst);
    if (wanted === undefined) return this.solve(wall);
    return wall - wanted;
  }
}

const UTC_ZONES = new Set(["UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu"]);

function clockFor(spec: CalendarSpec): Clock {
  if (spec.utc) return new UtcClock();
  const zone = spec.timeZone ?? (new Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC");
  if (UTC_ZONES.has(zone)) return new UtcClock();
  return new ZoneClock(offsetsFor(zone));
}

// ---------------------------------------------------------------------------------------------------------
// The search (a port of systemd's find_next())
// ---------------------------------------------------------------------------------------------------------

/** Earliest value >= val that a chain allows; null if none. */
function matchComponent(chain: CalendarChain, val: number, endOfMonthBound?: (day: number) => number): number | null | undefined {
  if (!chain) return undefined; // "*": any value, unchanged
  let best: number | null = null;
  for (const c of chain) {
    let start = c.start;
    let stop = c.stop;
    if (endOfMonthBound) {
      start = endOfMonthBound(c.start);
      stop = endOfMonthBound(c.stop);
      if (stop > 0) [start, stop] = [stop, start];
    }
    if (start >= val) {
      if (best === null || start < best) best = start;
    } else if (c.repeat > 0) {
      const k = start + c.repeat * Math.ceil((val - start) / c.repeat);
      if ((best === null || k < best) && (stop < 0 || k <= stop)) best = k;
    }
  }
  return best;
}

class Search {
  constructor(
    private readonly spec: CalendarSpec,
    private readonly clock: Clock,
  ) {}

  /**
   * tm_within_bounds(): 1 if tm needs no normalization, 0 if it was normalized forward (tm is replaced and
   * the field below the first changed one is reset), -1 if it is past MAX_YEAR or would go backwards.
   */
  private withinBounds(c: Tm): number {
    if (c.year > MAX_YEAR) return -1;
    const n = this.clock.mktime({ ...c }).tm;
    let cmp: number;
    if ((cmp = Math.sign(n.year - c.year)) !== 0) n.mon = 0;
    else if ((cmp = Math.sign(n.mon - c.mon)) !== 0) n.mday = 1;
    else if ((cmp = Math.sign(n.mday - c.mday)) !== 0) n.hour = 0;
    else if ((cmp = Math.sign(n.hour - c.hour)) !== 0) n.min = 0;
    else if ((cmp = Math.sign(n.min - c.min)) !== 0) n.sec = 0;
    else cmp = Math.sign(n.sec - c.sec);
    if (cmp < 0) return -1;
    if (cmp > 0) {
      Object.assign(c, n);
      return 0;
    }
    return 1;
  }

  private endOfMonth(c: Tm, day: number): number {
    const n = this.clock.mktime({ ...c, mon: c.mon + 1, mday: 1 - day }).tm;
    return n.mon === c.mon ? n.mday : -1;
  }

  private matchesWeekday(c: Tm): boolean {
    if (this.spec.weekdays === null) return true;
    const wday = this.clock.mktime({ ...c }).tm.wday;
    return (this.spec.weekdays & (1 << (wday === 0 ? 6 : wday - 1))) !== 0;
  }

  /** Next elapse strictly after `afterUsec` (microseconds since the epoch), or null. */
  next(afterUsec: number): number | null {
    const usec = afterUsec + 1;
    const t0 = Math.floor(usec / USEC_PER_SEC);
    let tmUsec = usec - t0 * USEC_PER_SEC;
    let c = this.clock.localtime(t0);
    const spec = this.spec;

    const resetBelowDay = (): void => {
      c.hour = c.min = c.sec = tmUsec = 0;
    };

    for (let iteration = 0; iteration < MAX_ITERATIONS; iteration++) {
      c = this.clock.mktime(c).tm;
      c.isdst = -1;

      const year = matchComponent(spec.year, c.year);
      if (year === null) return null;
      if (year !== undefined && year !== c.year) {
        c.year = year;
        c.mon = 0;
        c.mday = 1;
        resetBelowDay();
      }
      if (this.withinBounds(c) <= 0) return null;

      const month = matchComponent(spec.month, c.mon + 1);
      let r = month === null ? -1 : month === undefined || month === c.mon + 1 ? 0 : 1;
      if (r > 0) {
        c.mon = month! - 1;
        c.mday = 1;
        resetBelowDay();
      }
      if (r < 0 || (r = this.withinBounds(c)) < 0) {
        c.year++;
        c.mon = 0;
        c.mday = 1;
        resetBelowDay();
        continue;
      }
      if (r === 0) continue;

      const eom = spec.endOfMonth ? (d: number) => this.endOfMonth(c, d) : undefined;
      const day = matchComponent(spec.day, c.mday, eom);
      r = day === null ? -1 : day === undefined || day === c.mday ? 0 : 1;
      if (r > 0) {
        c.mday = day!;
        resetBelowDay();
      }
      if (r < 0 || (r = this.withinBounds(c)) < 0) {
        c.mon++;
        c.mday = 1;
        resetBelowDay();
        continue;
      }
      if (r === 0) continue;

      if (!this.matchesWeekday(c)) {
        c.mday++;
        resetBelowDay();
        continue;
      }

      const hour = matchComponent(spec.hour, c.hour);
      r = hour === null ? -1 : hour === undefined || hour === c.hour ? 0 : 1;
      if (r > 0) {
        c.hour = hour!;
        c.min = c.sec = tmUsec = 0;
      }
      if (r < 0 || (r = this.withinBounds(c)) < 0) {
        c.mday++;
        resetBelowDay();
        continue;
      }
      // The hour just set may not exist on a DST day; start again from the normalized time.
      if (r === 0) continue;

      const minute = matchComponent(spec.minute, c.min);
      r = minute === null ? -1 : minute === undefined || minute === c.min ? 0 : 1;
      if (r > 0) {
        c.min = minute!;
        c.sec = tmUsec = 0;
      }
      if (r < 0 || (r = this.withinBounds(c)) < 0) {
        c.hour++;
        c.min = c.sec = tmUsec = 0;
        continue;
      }
      if (r === 0) continue;

      const current = c.sec * USEC_PER_SEC + tmUsec;
      const second = matchComponent(spec.second, current);
      r = second === null ? -1 : 1;
      if (second !== null && second !== undefined) {
        tmUsec = second % USEC_PER_SEC;
        c.sec = Math.floor(second / USEC_PER_SEC);
      }
      if (r < 0 || (r = this.withinBounds(c)) < 0) {
        c.min++;
        c.sec = tmUsec = 0;
        continue;
      }
      if (r === 0) continue;

      return this.clock.mktime(c).t * USEC_PER_SEC + tmUsec;
    }
    // systemd gives up here too ("Infinite loop in calendar calculation") and the timer never elapses.
    return null;
  }
}

function toMicroseconds(after: Date): number {
  if (!(after instanceof Date) || Number.isNaN(after.getTime())) {
    throw new TypeError(`nextElapse needs a valid Date, got ${String(after)}`);
  }
  return after.getTime() * 1000;
}

const fromMicroseconds = (usec: number): Date => new Date(Math.ceil(usec / 1000));

/** The first time the calendar event elapses strictly after `after`, or null if it never does again. */
export function nextElapse(spec: CalendarSpec, after: Date): Date | null {
  const next = new Search(spec, clockFor(spec)).next(toMicroseconds(after));
  return next === null ? null : fromMicroseconds(next);
}

/** Up to `count` successive elapses strictly after `after` (fewer if the event stops elapsing). */
export function nextElapses(spec: CalendarSpec, after: Date, count: number): Date[] {
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`count must be a non-negative integer, got ${count}`);
  const clock = clockFor(spec);
  const result: Date[] = [];
  let usec = toMicroseconds(after);
  while (result.length < count) {
    const next = new Search(spec, clock).next(usec);
    if (next === null) break;
    result.push(fromMicroseconds(next));
    usec = next;
  }
  return result;
}
