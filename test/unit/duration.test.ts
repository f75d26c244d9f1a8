import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  DurationSyntaxError,
  formatDuration,
  formatDurationMicroseconds,
  parseDuration,
  parseDurationMicroseconds,
} from "../../runner/config/duration.ts";
import { TIMESPANS, type RecordedTimespan } from "./fixtures/calendar/record.ts";
import { ExitCode, KvmBackupError, UsageError } from "../../runner/errors.ts";

// Recorded from the real `systemd-analyze timespan` by test/unit/fixtures/calendar/record.ts.
const recorded = JSON.parse(
  readFileSync(new URL("./fixtures/calendar/systemd-timespan.json", import.meta.url), "utf8"),
) as { tool: string; cases: RecordedTimespan[] };

const USEC_INFINITY = "18446744073709551615";

function messageOf(text: string): string {
  try {
    parseDuration(text);
  } catch (error) {
    expect(error).toBeInstanceOf(DurationSyntaxError);
    return (error as Error).message;
  }
  throw new Error(`${JSON.stringify(text)} was accepted`);
}

describe("fixtures recorded from systemd-analyze timespan", () => {
  it("come from systemd 252 and match the list in record.ts", () => {
    expect(recorded.tool).toMatch(/^systemd 252 /);
    expect(recorded.cases.map((c) => c.input)).toEqual([...TIMESPANS]);
    expect(recorded.cases.filter((c) => c.valid).length).toBeGreaterThanOrEqual(40);
  });
});

describe("agrees with systemd-analyze timespan", () => {
  it.each(recorded.cases)("%o", (c) => {
    if (!c.valid) {
      expect(() => parseDurationMicroseconds(c.input)).toThrow(DurationSyntaxError);
      expect(() => parseDuration(c.input)).toThrow(DurationSyntaxError);
      return;
    }
    const usec = parseDurationMicroseconds(c.input);
    expect(usec === null ? USEC_INFINITY : String(usec)).toBe(c.usec);
    // systemd's "Human" line is format_timespan() of the parsed value.
    expect(usec === null ? "infinity" : formatDurationMicroseconds(usec)).toBe(c.human);
    const seconds = parseDuration(c.input);
    expect(seconds).toBe(usec === null ? Infinity : Number(usec) / 1e6);
    expect(formatDuration(seconds)).toBe(c.human);
  });
});

const ALLOWED =
  "allowed units: us ms s sec second(s) m min minute(s) h hr hour(s) d day(s) w week(s) M month(s) y year(s); " +
  'a bare number is seconds, parts add up as in "1h 30min"';

const MESSAGES: Readonly<Record<string, string>> = {
  "-1s": '"-1s": negative durations are not allowed',
  "1x": `"1x": unknown unit "x" (${ALLOWED})`,
  "": '"": empty duration (expected e.g. "90s", "30min", "1h 30min")',
  "1mo": `"1mo": unknown unit "mo" (${ALLOWED})`,
  "1ns": `"1ns": unknown unit "ns" (${ALLOWED})`,
  "1e3s": `"1e3s": unknown unit "e" (${ALLOWED})`,
  "1.s": '"1.s": a decimal point must be followed by digits',
  "100000000000000000000s": '"100000000000000000000s": number "100000000000000000000" is too large',
  "1000000000y": '"1000000000y": duration is too large',
  "1h,2m": `"1h,2m": expected a number at ",2m" (${ALLOWED})`,
  "1S": `"1S": unknown unit "S" (${ALLOWED})`,
  "1H": `"1H": unknown unit "H" (${ALLOWED})`,
  "12.34.56": '"12.34.56": a number cannot have two decimal points',
  "+.5s": `"+.5s": expected a number at "+.5s" (${ALLOWED})`,
  "5 days ago": `"5 days ago": expected a number at "ago" (${ALLOWED})`,
};

describe("invalid durations say what is wrong", () => {
  it("has a message for every recorded input systemd rejects, and only for those", () => {
    const rejected = recorded.cases.filter((c) => !c.valid).map((c) => c.input);
    expect(rejected.sort()).toEqual(Object.keys(MESSAGES).sort());
  });

  it.each(Object.entries(MESSAGES))("%j", (text, message) => {
    expect(messageOf(text)).toBe(message);
  });
});

describe("parseDuration", () => {
  it("returns seconds for the forms the config uses", () => {
    expect(parseDuration("90s")).toBe(90);
    expect(parseDuration("30min")).toBe(1800);
    expect(parseDuration("1h 30min")).toBe(5400);
    expect(parseDuration("2h")).toBe(7200);
    expect(parseDuration("1d")).toBe(86_400);
    expect(parseDuration("500ms")).toBe(0.5);
    expect(parseDuration("1w")).toBe(604_800);
    expect(parseDuration("1M")).toBe(2_629_800);
    expect(parseDuration("1y")).toBe(31_557_600);
    expect(parseDuration("infinity")).toBe(Infinity);
  });

  it("takes a number as seconds, to the microsecond", () => {
    expect(parseDuration(45)).toBe(45);
    expect(parseDuration(0.0000004)).toBe(0);
    expect(parseDuration(1.2345678)).toBe(1.234568);
    expect(() => parseDuration(-1)).toThrow(DurationSyntaxError);
    expect(() => parseDuration(Number.NaN)).toThrow(DurationSyntaxError);
  });
});

describe("formatDuration", () => {
  it("writes durations the way systemd does", () => {
    expect(formatDuration(5400)).toBe("1h 30min");
    expect(formatDuration(45)).toBe("45s");
    expect(formatDuration(0)).toBe("0");
    expect(formatDuration(0.5)).toBe("500ms");
    expect(formatDuration(90)).toBe("1min 30s");
    expect(formatDuration(176_400)).toBe("2d 1h");
    expect(formatDuration(Infinity)).toBe("infinity");
    expect(() => formatDuration(-1)).toThrow(RangeError);
  });

  it("round-trips through parseDuration", () => {
    const values = [0.000001, 0.001, 0.25, 1, 59.999999, 61.5, 3599, 3600, 86_399, 90_061, 604_800, 2_629_800, 31_557_600, 1e8];
    for (const v of values) expect(parseDuration(formatDuration(v))).toBe(v);
  });
});

describe("DurationSyntaxError", () => {
  it("is a usage error of the runner (exit code 2: bad config, nothing changed)", () => {
    const error = (() => {
      try {
        parseDuration("1x");
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(UsageError);
    expect(error).toBeInstanceOf(KvmBackupError);
    expect((error as UsageError).exitCode).toBe(ExitCode.usage);
    expect((error as Error).name).toBe("DurationSyntaxError");
  });
});
