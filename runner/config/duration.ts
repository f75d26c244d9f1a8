/**
 * systemd time spans (systemd.time(7) "PARSING TIME SPANS"), as used by RandomizedDelaySec= and the run
 * timeout. Parsing and formatting follow systemd 252's parse_sec()/format_timespan() so that a value the
 * config accepts is one systemd accepts, and a formatted value reads exactly as `systemd-analyze timespan`
 * prints it. Internally everything is whole microseconds (BigInt), like systemd's usec_t.
 */

import { UsageError } from "../errors.ts";

/** Bad config input: a usage error (exit code 2), nothing was changed. */
export class DurationSyntaxError extends UsageError {
  override name = "DurationSyntaxError";
}

const USEC_PER_MSEC = 1_000n;
const USEC_PER_SEC = 1_000_000n;
const USEC_PER_MINUTE = 60n * USEC_PER_SEC;
const USEC_PER_HOUR = 60n * USEC_PER_MINUTE;
const USEC_PER_DAY = 24n * USEC_PER_HOUR;
const USEC_PER_WEEK = 7n * USEC_PER_DAY;
// systemd's month and year are averages: 30.44 days and 365.25 days.
const USEC_PER_MONTH = 2_629_800n * USEC_PER_SEC;
const USEC_PER_YEAR = 31_557_600n * USEC_PER_SEC;
// usec_t is a uint64 whose maximum means "infinity"; systemd refuses sums that reach it.
const USEC_INFINITY = (1n << 64n) - 1n;
const LLONG_MAX = (1n << 63n) - 1n;

// Order matters: systemd takes the first suffix the text starts with ("ms" before "m", "min" before "m").
const UNITS: ReadonlyArray<readonly [string, bigint]> = [
  ["seconds", USEC_PER_SEC],
  ["second", USEC_PER_SEC],
  ["sec", USEC_PER_SEC],
  ["s", USEC_PER_SEC],
  ["minutes", USEC_PER_MINUTE],
  ["minute", USEC_PER_MINUTE],
  ["min", USEC_PER_MINUTE],
  ["months", USEC_PER_MONTH],
  ["month", USEC_PER_MONTH],
  ["M", USEC_PER_MONTH],
  ["msec", USEC_PER_MSEC],
  ["ms", USEC_PER_MSEC],
  ["m", USEC_PER_MINUTE],
  ["hours", USEC_PER_HOUR],
  ["hour", USEC_PER_HOUR],
  ["hr", USEC_PER_HOUR],
  ["h", USEC_PER_HOUR],
  ["days", USEC_PER_DAY],
  ["day", USEC_PER_DAY],
  ["d", USEC_PER_DAY],
  ["weeks", USEC_PER_WEEK],
  ["week", USEC_PER_WEEK],
  ["w", USEC_PER_WEEK],
  ["years", USEC_PER_YEAR],
  ["year", USEC_PER_YEAR],
  ["y", USEC_PER_YEAR],
  ["usec", 1n],
  ["us", 1n],
  ["\u00b5s", 1n], // MICRO SIGN
  ["\u03bcs", 1n], // GREEK SMALL LETTER MU
];

const ALLOWED_UNITS =
  "us ms s sec second(s) m min minute(s) h hr hour(s) d day(s) w week(s) M month(s) y year(s); " +
  'a bare number is seconds, parts add up as in "1h 30min"';
const WHITESPACE = " \t\n\r";
const isDigit = (ch: string | undefined): boolean => ch !== undefined && ch >= "0" && ch <= "9";
const isSpace = (ch: string | undefined): boolean => ch !== undefined && WHITESPACE.includes(ch);

function fail(text: string, reason: string, hint: string | null = `allowed units: ${ALLOWED_UNITS}`): never {
  throw new DurationSyntaxError(`${JSON.stringify(text)}: ${reason}${hint ? ` (${hint})` : ""}`);
}

/** Parses a systemd time span into microseconds; `null` stands for "infinity". */
export function parseDurationMicroseconds(text: string): bigint | null {
  let p = 0;
  const skipSpace = (): void => {
    while (isSpace(text[p])) p++;
  };

  skipSpace();
  if (text.startsWith("infinity", p)) {
    let rest = p + "infinity".length;
    while (isSpace(text[rest])) rest++;
    if (rest !== text.length) fail(text, `unexpected text after "infinity"`, null);
    return null;
  }

  let total = 0n;
  let something = false;
  let lastUnitStart = -1;
  let lastUnitEnd = -1;
  for (;;) {
    skipSpace();
    if (p >= text.length) {
      if (!something) fail(text, "empty duration", 'expected e.g. "90s", "30min", "1h 30min"');
      break;
    }
    if (text[p] === "-") fail(text, "negative durations are not allowed", null);

    // Mirror strtoll(): an optional "+", then decimal digits.
    const numberStart = p;
    let e = p;
    if (text[e] === "+") e++;
    const digitsStart = e;
    while (isDigit(text[e])) e++;
    let whole = 0n;
    if (e === digitsStart) {
      e = numberStart; // no conversion: strtoll leaves the end pointer at the start
    } else {
      whole = BigInt(text.slice(digitsStart, e));
      if (whole > LLONG_MAX) fail(text, `number "${text.slice(numberStart, e)}" is too large`, null);
    }

    if (text[e] === ".") {
      p = e + 1;
      while (isDigit(text[p])) p++;
    } else if (e === numberStart) {
      // "1mo": systemd reads "1m" and then trips over "o"; name the whole word as the unit.
      if (lastUnitEnd === numberStart && /^[A-Za-z]/.test(text.slice(numberStart))) {
        fail(text, `unknown unit "${/^[A-Za-z\u00b5\u03bc]+/.exec(text.slice(lastUnitStart))![0]}"`);
      }
      fail(text, `expected a number at ${JSON.stringify(text.slice(numberStart))}`);
    } else {
      p = e;
    }

    let unitPos = p;
    while (isSpace(text[unitPos])) unitPos++;
    let multiplier = USEC_PER_SEC;
    let afterUnit = unitPos;
    for (const [suffix, usec] of UNITS) {
      if (text.startsWith(suffix, unitPos)) {
        multiplier = usec;
        afterUnit = unitPos + suffix.length;
        break;
      }
    }
    if (afterUnit === p && p < text.length) {
      if (text[p] === ".") fail(text, `a number cannot have two decimal points`, null);
      const word = /^[A-Za-z\u00b5\u03bc]+/.exec(text.slice(p))?.[0];
      fail(text, word ? `unknown unit "${word}"` : `unexpected ${JSON.stringify(text.slice(p))}`);
    }
    if (afterUnit > unitPos) {
      lastUnitStart = unitPos;
      lastUnitEnd = afterUnit;
    }
    p = afterUnit;

    if (whole >= USEC_INFINITY / multiplier) fail(text, "duration is too large", null);
    let k = whole * multiplier;
    if (k >= USEC_INFINITY - total) fail(text, "duration is too large", null);
    total += k;
    something = true;

    if (text[e] === ".") {
      // Digits past the unit's resolution are dropped, as systemd does (e.g. "1.2345678s" = 1234567us).
      let m = multiplier / 10n;
      let b = e + 1;
      for (; isDigit(text[b]); b++, m /= 10n) {
        k = BigInt(text.charCodeAt(b) - 48) * m;
        if (k >= USEC_INFINITY - total) fail(text, "duration is too large", null);
        total += k;
      }
      if (b === e + 1) fail(text, "a decimal point must be followed by digits", null);
    }
  }
  return total;
}

/**
 * Parses a duration and returns seconds (fractions down to microseconds). A number is taken as seconds.
 * "infinity" yields Infinity, as systemd's time spans allow it.
 */
export function parseDuration(text: string | number): number {
  if (typeof text === "number") {
    if (!Number.isFinite(text) && text !== Infinity) {
      throw new DurationSyntaxError(`duration must be a number of seconds, got ${text}`);
    }
    if (text < 0) throw new DurationSyntaxError(`duration must not be negative, got ${text} seconds`);
    return text === Infinity ? Infinity : Math.round(text * 1e6) / 1e6;
  }
  if (typeof text !== "string") {
    throw new DurationSyntaxError(`duration must be a string like "1h 30min" or a number of seconds`);
  }
  const usec = parseDurationMicroseconds(text);
  return usec === null ? Infinity : Number(usec) / 1e6;
}

const FORMAT_UNITS: ReadonlyArray<readonly [string, bigint]> = [
  ["y", USEC_PER_YEAR],
  ["month", USEC_PER_MONTH],
  ["w", USEC_PER_WEEK],
  ["d", USEC_PER_DAY],
  ["h", USEC_PER_HOUR],
  ["min", USEC_PER_MINUTE],
  ["s", USEC_PER_SEC],
  ["ms", USEC_PER_MSEC],
  ["us", 1n],
];

/** Formats microseconds exactly like systemd's format_timespan() with 1us accuracy. */
export function formatDurationMicroseconds(usec: bigint): string {
  if (usec >= USEC_INFINITY) return "infinity";
  if (usec <= 0n) return "0";
  const parts: string[] = [];
  let t = usec;
  for (const [suffix, unit] of FORMAT_UNITS) {
    if (t <= 0n) break;
    if (t < unit) continue;
    const a = t / unit;
    const b = t % unit;
    // Below one minute a remainder is shown as a decimal fraction of the current unit ("1.500000s").
    if (t < USEC_PER_MINUTE && b > 0n) {
      const digits = String(unit).length - 1;
      if (digits > 0) {
        parts.push(`${a}.${String(b).padStart(digits, "0")}${suffix}`);
        t = 0n;
        continue;
      }
    }
    parts.push(`${a}${suffix}`);
    t = b;
  }
  return parts.join(" ");
}

/** Formats seconds as systemd does ("1h 30min", "45s", "500ms"); the result parses back with parseDuration. */
export function formatDuration(seconds: number): string {
  if (seconds === Infinity) return "infinity";
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) {
    throw new RangeError(`formatDuration needs a non-negative number of seconds, got ${String(seconds)}`);
  }
  return formatDurationMicroseconds(BigInt(Math.round(seconds * 1e6)));
}
