import { readFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import {
  CalendarSyntaxError,
  nextElapse,
  nextElapses,
  parseCalendar,
} from "../../runner/config/calendar.ts";
import { HAND_PICKED, generatedCases, type RecordedCalendarCase } from "./fixtures/calendar/record.ts";
import { ExitCode, KvmBackupError, UsageError } from "../../runner/errors.ts";

// Recorded from the real systemd-analyze by test/unit/fixtures/calendar/record.ts (run it again after
// changing the case lists there; the "fixture is current" test below fails until you do).
const recorded = JSON.parse(
  readFileSync(new URL("./fixtures/calendar/systemd-calendar.json", import.meta.url), "utf8"),
) as { tool: string; cases: RecordedCalendarCase[] };

const originalTz = process.env.TZ;
afterEach(() => {
  if (originalTz === undefined) delete process.env.TZ;
  else process.env.TZ = originalTz;
});

/** systemd-analyze prints whole seconds (rounded down). */
const asPrinted = (d: Date): string => new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString().replace(".000Z", "Z");

function messageOf(expr: string): string {
  try {
    parseCalendar(expr);
  } catch (error) {
    expect(error).toBeInstanceOf(CalendarSyntaxError);
    return (error as Error).message;
  }
  throw new Error(`${JSON.stringify(expr)} was accepted`);
}

describe("fixtures recorded from systemd-analyze", () => {
  it("come from systemd 252 and match the case lists in record.ts", () => {
    expect(recorded.tool).toMatch(/^systemd 252 /);
    const expected = [...HAND_PICKED, ...generatedCases(200)].map(({ note, expr, tz, base, iterations }) => ({
      note, expr, tz, base, iterations,
    }));
    const stored = recorded.cases.map(({ note, expr, tz, base, iterations }) => ({ note, expr, tz, base, iterations }));
    expect(stored).toEqual(expected);
  });

  it("cover what the calendar must handle (DST, leap day, first Monday, repetitions, invalid input)", () => {
    const valid = recorded.cases.filter((c) => c.valid);
    const invalid = recorded.cases.filter((c) => !c.valid);
    expect(valid.filter((c) => c.note !== "generated").length).toBeGreaterThanOrEqual(30);
    expect(invalid.filter((c) => c.note !== "generated").length).toBeGreaterThanOrEqual(30);
    const has = (expr: string, tz?: string) =>
      recorded.cases.some((c) => c.expr === expr && (tz === undefined || c.tz === tz));
    expect(has("*-*-* 02:30", "Europe/Berlin")).toBe(true);
    expect(has("*-02-29")).toBe(true);
    expect(has("Mon *-*-1..7 03:00")).toBe(true);
    expect(has("*-*-1/7")).toBe(true);
    expect(has("*:0/15", "Europe/Berlin")).toBe(true);
    const berlinSwitches = valid.filter(
      (c) => c.tz === "Europe/Berlin" && /^2024-(03-3[01]|10-2[67])/.test(c.elapses?.[0] ?? ""),
    );
    expect(berlinSwitches.length).toBeGreaterThanOrEqual(8);
  });
});

describe("agrees with systemd-analyze calendar", () => {
  it.each(recorded.cases.map((c, k) => [k, c] as const))(
    "#%i %o",
    (_k, c) => {
      process.env.TZ = c.tz;
      if (!c.valid) {
        expect(() => parseCalendar(c.expr)).toThrow(CalendarSyntaxError);
        return;
      }
      const spec = parseCalendar(c.expr);
      expect(spec.normalized).toBe(c.normalized);
      expect(nextElapses(spec, new Date(c.base), c.iterations).map(asPrinted)).toEqual(c.elapses);
    },
  );
});

// Every expression systemd rejects in the hand-picked list, with the message a person gets from us.
const MESSAGES: Readonly<Record<string, string>> = {
  "Mon..Fry 02:00":
    '"Mon..Fry 02:00": unknown weekday "Fry" (allowed: Mon Tue Wed Thu Fri Sat Sun, ranges Mon..Fri, lists Mon,Wed)',
  "Fri..Mon":
    '"Fri..Mon": weekday range Fri..Mon runs backwards (ranges go forward from Mon to Sun, e.g. Mon..Fri; use a list for wrap-around, e.g. Sat,Sun,Mon)',
  "Mon..":
    '"Mon..": weekday range starting at Mon has no end (allowed: Mon Tue Wed Thu Fri Sat Sun, ranges Mon..Fri, lists Mon,Wed)',
  "Mon.Fri":
    '"Mon.Fri": weekday ranges need two dots, e.g. Mon..Fri (allowed: Mon Tue Wed Thu Fri Sat Sun, ranges Mon..Fri, lists Mon,Wed)',
  "Mon..Tue..Wed":
    '"Mon..Tue..Wed": a weekday range cannot be extended with another range (allowed: Mon Tue Wed Thu Fri Sat Sun, ranges Mon..Fri, lists Mon,Wed)',
  "Mon Tue":
    '"Mon Tue": weekday "Tue" is out of place (weekdays come first, as one list without spaces, e.g. Mon,Tue 02:00)',
  dialy:
    '"dialy": unknown keyword or weekday "dialy" (allowed: minutely hourly daily weekly monthly quarterly semiannually yearly annually, or an expression like "Mon..Fri *-*-* 02:00:00")',
  " daily": '" daily": leading whitespace is not allowed',
  "daily ": '"daily ": no whitespace is allowed around "daily"',
  "": '"": empty calendar expression (expected e.g. "daily", "Mon..Fri 02:00", "*-*-* 02:30:00")',
  "*-*-* 24:00": '"*-*-* 24:00": hour 24 is out of range (allowed: 0..23)',
  "*-*-* 23:60": '"*-*-* 23:60": minute 60 is out of range (allowed: 0..59)',
  "*:*:60": '"*:*:60": second 60 is out of range (allowed: 0..59.999999)',
  "*:*:59.9999999": '"*:*:59.9999999": second 60 is out of range (allowed: 0..59.999999)',
  "*-13-01": '"*-13-01": month 13 is out of range (allowed: 1..12)',
  "*-00-01": '"*-00-01": month 0 is out of range (allowed: 1..12)',
  "*-*-00": '"*-*-00": day 0 is out of range (allowed: 1..31)',
  "*-*-32": '"*-*-32": day 32 is out of range (allowed: 1..31)',
  "1969-01-01": '"1969-01-01": year 1969 is out of range (allowed: 1970..2199)',
  "2200-01-01": '"2200-01-01": year 2200 is out of range (allowed: 1970..2199)',
  "*/15":
    '"*/15": "*/N" is not supported; a repetition needs a start value, e.g. 0/15 for every 15th year, month or hour from 0',
  "*:*/15":
    '"*:*/15": "*/N" is not supported; a repetition needs a start value, e.g. 0/15 for every 15th minute from 0',
  "*:50/15": '"*:50/15": minute repetition "50/15" never repeats: 65 is past 59 (allowed: 0..59)',
  "20/5:00": '"20/5:00": hour repetition "20/5" never repeats: 25 is past 23 (allowed: 0..23)',
  "*-*-1/0": '"*-*-1/0": a repetition step must be greater than 0 (in day "/0")',
  "*-*-* 5..3:00": '"*-*-* 5..3:00": hour range "5..3" runs backwards (ranges go from low to high, allowed: 0..23)',
  "*:*:01.5..02":
    '"*:*:01.5..02": seconds range 1.500000..2 must span at least one second (or give a step, e.g. 1.5..2/0.5)',
  "*-*~29":
    '"*-*~29": day 29 is out of range (allowed: with "~" the day counts back from the end of the month, 1..28)',
  "*-*~1/2":
    '"*-*~1/2": day repetition "1/2" would count past the first day of the month (allowed: with "~" the day counts back from the end of the month, 1..28)',
  "2023~01-01": '"2023~01-01": "~" may only stand between month and day, e.g. *-02~01',
  "12": '"12": a time needs hours and minutes, e.g. 02:00 or 02:00:00',
  "12:": '"12:": expected a number for the minute, got the end',
  ":30": '":30": missing a number before ":" (a time is H:M or H:M:S, e.g. 00:30)',
  "*-*-1x":
    '"*-*-1x": unexpected "x" in day at "x" (values like 5, lists 1,15, ranges 1..7, repetitions 0/15 or 1..31/2)',
  "* * *":
    '"* * *": unexpected " " at " * *", expected "-" between the parts of a date (Y-M-D or M-D) or ":" in a time',
  "*": '"*": a time needs hours and minutes, e.g. 02:00 or 02:00:00',
  "02:00 Europe/Berln":
    '"02:00 Europe/Berln": unknown time zone "Europe/Berln" (allowed: UTC or an IANA name such as Europe/Berlin; names are case-sensitive)',
  "02:00 europe/berlin":
    '"02:00 europe/berlin": unknown time zone "europe/berlin"; did you mean Europe/Berlin? (allowed: UTC or an IANA name such as Europe/Berlin; names are case-sensitive)',
  now:
    '"now": unknown keyword or weekday "now" (allowed: minutely hourly daily weekly monthly quarterly semiannually yearly annually, or an expression like "Mon..Fri *-*-* 02:00:00")',
};

describe("invalid expressions say what is wrong and what is allowed", () => {
  const rejected = recorded.cases.filter((c) => !c.valid && c.note !== "generated");

  it("has a message for every hand-picked expression systemd rejects, and only for those", () => {
    expect(rejected.map((c) => c.expr).sort()).toEqual(Object.keys(MESSAGES).sort());
  });

  it.each(Object.entries(MESSAGES))("%j", (expr, message) => {
    expect(messageOf(expr)).toBe(message);
  });

  it("rejects non-strings with a CalendarSyntaxError", () => {
    expect(() => parseCalendar(42 as unknown as string)).toThrow(CalendarSyntaxError);
  });
});

describe("parseCalendar", () => {
  it("keeps the source and returns a frozen spec", () => {
    const spec = parseCalendar("Mon..Fri 02:00 Europe/Berlin");
    expect(spec.source).toBe("Mon..Fri 02:00 Europe/Berlin");
    expect(spec.normalized).toBe("Mon..Fri *-*-* 02:00:00 Europe/Berlin");
    expect(spec.timeZone).toBe("Europe/Berlin");
    expect(spec.weekdays).toBe(0b0011111);
    expect(Object.isFrozen(spec)).toBe(true);
    expect(Object.isFrozen(spec.hour)).toBe(true);
  });

  it("treats a trailing UTC in any case as UTC", () => {
    const spec = parseCalendar("*-*-* 02:00 utc");
    expect(spec.utc).toBe(true);
    expect(spec.timeZone).toBeNull();
    expect(spec.normalized).toBe("*-*-* 02:00:00 UTC");
  });

  it("does not take property names of plain objects for keywords", () => {
    expect(() => parseCalendar("constructor")).toThrow(CalendarSyntaxError);
    expect(() => parseCalendar("__proto__")).toThrow(CalendarSyntaxError);
  });
});

describe("nextElapse", () => {
  it("is strictly after the given time", () => {
    process.env.TZ = "UTC";
    const spec = parseCalendar("*-*-* 02:00");
    expect(nextElapse(spec, new Date("2024-05-01T02:00:00Z"))?.toISOString()).toBe("2024-05-02T02:00:00.000Z");
    expect(nextElapse(spec, new Date("2024-05-01T01:59:59.999Z"))?.toISOString()).toBe("2024-05-01T02:00:00.000Z");
  });

  it("returns null when the event never elapses again", () => {
    expect(nextElapse(parseCalendar("2020-01-01 UTC"), new Date("2024-01-01T00:00:00Z"))).toBeNull();
    expect(nextElapse(parseCalendar("*-02-30"), new Date("2024-01-01T00:00:00Z"))).toBeNull();
    expect(nextElapse(parseCalendar("2199-12-31 23:59:59 UTC"), new Date("2199-12-31T23:59:59Z"))).toBeNull();
  });

  it("evaluates in the expression's zone, whatever the process zone is", () => {
    const spec = parseCalendar("*-*-* 02:30 Europe/Berlin");
    const after = new Date("2024-03-30T12:00:00Z");
    process.env.TZ = "UTC";
    const inUtc = nextElapses(spec, after, 3).map((d) => d.toISOString());
    process.env.TZ = "Asia/Tokyo";
    const inTokyo = nextElapses(spec, after, 3).map((d) => d.toISOString());
    expect(inUtc).toEqual(["2024-04-01T00:30:00.000Z", "2024-04-02T00:30:00.000Z", "2024-04-03T00:30:00.000Z"]);
    expect(inTokyo).toEqual(inUtc);
  });

  it("uses the process zone (TZ) when the expression names none", () => {
    const spec = parseCalendar("*-*-* 02:00");
    const after = new Date("2024-06-01T12:00:00Z");
    process.env.TZ = "Asia/Tokyo";
    expect(nextElapse(spec, after)?.toISOString()).toBe("2024-06-01T17:00:00.000Z");
    process.env.TZ = "America/New_York";
    expect(nextElapse(spec, after)?.toISOString()).toBe("2024-06-02T06:00:00.000Z");
  });

  it("does not fire a wall time that DST skips, and fires a repeated one once (Europe/Berlin)", () => {
    process.env.TZ = "Europe/Berlin";
    const spec = parseCalendar("*-*-* 02:30");
    const spring = nextElapses(spec, new Date("2024-03-30T12:00:00Z"), 2).map((d) => d.toISOString());
    expect(spring).toEqual(["2024-04-01T00:30:00.000Z", "2024-04-02T00:30:00.000Z"]);
    const fall = nextElapses(spec, new Date("2024-10-26T12:00:00Z"), 2).map((d) => d.toISOString());
    expect(fall).toEqual(["2024-10-27T00:30:00.000Z", "2024-10-28T01:30:00.000Z"]);
  });

  it("keeps fractions of a second and never returns the same elapse twice", () => {
    process.env.TZ = "UTC";
    const half = nextElapses(parseCalendar("*:*:0/0.5"), new Date("2024-01-01T00:00:00Z"), 3);
    expect(half.map((d) => d.toISOString())).toEqual([
      "2024-01-01T00:00:00.500Z",
      "2024-01-01T00:00:01.000Z",
      "2024-01-01T00:00:01.500Z",
    ]);
    // 0.0005 s cannot be shown in a Date: it is rounded up, and the next search starts past it.
    const tiny = nextElapses(parseCalendar("*:*:0.0005/1"), new Date("2024-01-01T00:00:00Z"), 2);
    expect(tiny.map((d) => d.toISOString())).toEqual(["2024-01-01T00:00:00.001Z", "2024-01-01T00:00:01.001Z"]);
  });

  it("checks its arguments", () => {
    const spec = parseCalendar("daily");
    expect(() => nextElapse(spec, new Date(Number.NaN))).toThrow(TypeError);
    expect(() => nextElapses(spec, new Date(), -1)).toThrow(RangeError);
    expect(nextElapses(spec, new Date(), 0)).toEqual([]);
  });
});

describe("CalendarSyntaxError", () => {
  it("is a usage error of the runner (exit code 2: bad config, nothing changed)", () => {
    const error = (() => {
      try {
        parseCalendar("Mon..Fry 02:00");
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(UsageError);
    expect(error).toBeInstanceOf(KvmBackupError);
    expect((error as UsageError).exitCode).toBe(ExitCode.usage);
    expect((error as Error).name).toBe("CalendarSyntaxError");
  });
});
