/**
 * Retention decisions checked against expectations computed BY HAND (in the comments next to each case), over
 * small histories and generated hourly histories, including DST changes and ISO week edges.
 */
import { afterEach, describe, expect, it } from "vitest";
import {
  decideRetention,
  EmptyRetentionError,
  formatDecision,
  periodKey,
  RetentionInputError,
  retentionKeepsSomething,
  type RetentionDecision,
  type RetentionItem,
  type RetentionRules,
} from "../../runner/retention.ts";
import { KvmBackupError, UsageError } from "../../runner/errors.ts";

const HOUR = 3_600_000;

/** Hourly backups, one per UTC hour from `from` to `to` inclusive, id "h-YYYY-MM-DDTHH" (UTC). */
function hourly(from: string, to: string, skip?: { from: string; to: string }): RetentionItem[] {
  const items: RetentionItem[] = [];
  const end = Date.parse(to);
  for (let t = Date.parse(from); t <= end; t += HOUR) {
    if (skip && t >= Date.parse(skip.from) && t <= Date.parse(skip.to)) continue;
    items.push({ id: `h-${new Date(t).toISOString().slice(0, 13)}`, time: new Date(t) });
  }
  return items;
}

const keptIds = (ds: readonly RetentionDecision[]): string[] => ds.filter((d) => d.keep).map((d) => d.id);
const byId = (ds: readonly RetentionDecision[]): Map<string, RetentionDecision> => new Map(ds.map((d) => [d.id, d]));

// ---------------------------------------------------------------------------------------------------------------
describe("periodKey", () => {
  it.each([
    ["hourly", "2026-11-27T13:59:59Z", "UTC", "2026-11-27T13"],
    ["daily", "2026-11-27T13:00:00Z", "UTC", "2026-11-27"],
    ["weekly", "2026-11-27T13:00:00Z", "UTC", "2026-W48"],
    ["monthly", "2026-11-27T13:00:00Z", "UTC", "2026-11"],
    ["yearly", "2026-11-27T13:00:00Z", "UTC", "2026"],
    // CET is UTC+1 in November
    ["hourly", "2026-11-27T13:00:00Z", "Europe/Berlin", "2026-11-27T14"],
    ["hourly", "2026-11-27T23:00:00Z", "Europe/Berlin", "2026-11-28T00"],
    ["daily", "2026-11-27T23:00:00Z", "Europe/Berlin", "2026-11-28"],
    // CEST is UTC+2 in July
    ["hourly", "2026-07-01T21:59:00Z", "Europe/Berlin", "2026-07-01T23"],
    ["daily", "2026-07-01T22:00:00Z", "Europe/Berlin", "2026-07-02"],
    // New York at local year end (EST, UTC-5): still the old year, month and day
    ["yearly", "2026-01-01T03:00:00Z", "America/New_York", "2025"],
    ["monthly", "2026-01-01T03:00:00Z", "America/New_York", "2025-12"],
    ["daily", "2026-01-01T03:00:00Z", "America/New_York", "2025-12-31"],
    ["yearly", "2025-12-31T23:30:00Z", "Europe/Berlin", "2026"],
    ["yearly", "2025-12-31T23:30:00Z", "UTC", "2025"],
    // Half-hour and 45-minute offsets split UTC hours: Kolkata is UTC+5:30, Chatham UTC+13:45 in (its) summer
    ["hourly", "2026-11-27T13:29:00Z", "Asia/Kolkata", "2026-11-27T18"],
    ["hourly", "2026-11-27T13:30:00Z", "Asia/Kolkata", "2026-11-27T19"],
    ["daily", "2026-11-27T10:14:00Z", "Pacific/Chatham", "2026-11-27"],
    ["daily", "2026-11-27T10:15:00Z", "Pacific/Chatham", "2026-11-28"],
    // Midnight is hour 00, never 24
    ["hourly", "2026-11-27T00:00:00Z", "UTC", "2026-11-27T00"],
  ] as const)("%s of %s in %s is %s", (rule, iso, zone, expected) => {
    expect(periodKey(rule, new Date(iso), zone)).toBe(expected);
  });

  // ISO 8601 weeks: Monday to Sunday, week 1 holds the first Thursday, so week-year may differ from the year.
  it.each([
    ["2008-12-29", "2009-W01"], // Monday of the week that holds Thu 2009-01-01
    ["2010-01-03", "2009-W53"],
    ["2015-12-31", "2015-W53"],
    ["2016-01-01", "2015-W53"], // Friday: belongs to the 53rd week of 2015
    ["2019-12-29", "2019-W52"], // Sunday
    ["2019-12-30", "2020-W01"], // Monday
    ["2020-12-31", "2020-W53"],
    ["2021-01-01", "2020-W53"],
    ["2021-01-03", "2020-W53"],
    ["2021-01-04", "2021-W01"],
    ["2022-01-01", "2021-W52"], // Saturday
    ["2022-01-02", "2021-W52"],
    ["2022-01-03", "2022-W01"],
    ["2023-01-01", "2022-W52"], // Sunday
    ["2024-12-29", "2024-W52"],
    ["2024-12-30", "2025-W01"],
    ["2024-12-31", "2025-W01"],
    ["2025-12-28", "2025-W52"],
    ["2025-12-29", "2026-W01"],
    ["2025-12-31", "2026-W01"],
    ["2026-01-01", "2026-W01"],
    ["2026-01-04", "2026-W01"],
    ["2026-01-05", "2026-W02"],
    ["2026-12-31", "2026-W53"],
    ["2027-01-01", "2026-W53"],
    ["2027-01-03", "2026-W53"],
    ["2027-01-04", "2027-W01"],
  ])("ISO week of %s is %s", (day, expected) => {
    for (const hour of ["00:00:00", "12:00:00", "23:59:59"]) {
      expect(periodKey("weekly", new Date(`${day}T${hour}Z`), "UTC")).toBe(expected);
    }
  });

  it("ISO week follows the zone: Sun 2025-12-28 23:30 UTC is Mon 00:30 in Berlin", () => {
    const t = new Date("2025-12-28T23:30:00Z");
    expect(periodKey("weekly", t, "UTC")).toBe("2025-W52");
    expect(periodKey("weekly", t, "America/New_York")).toBe("2025-W52");
    expect(periodKey("weekly", t, "Europe/Berlin")).toBe("2026-W01");
  });

  it("puts both passes of the repeated DST hour into one hourly period and has no period for the skipped hour", () => {
    // Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET at 01:00 UTC
    expect(periodKey("hourly", new Date("2026-10-25T00:30:00Z"), "Europe/Berlin")).toBe("2026-10-25T02");
    expect(periodKey("hourly", new Date("2026-10-25T01:30:00Z"), "Europe/Berlin")).toBe("2026-10-25T02");
    // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00 UTC
    expect(periodKey("hourly", new Date("2026-03-29T00:59:00Z"), "Europe/Berlin")).toBe("2026-03-29T01");
    expect(periodKey("hourly", new Date("2026-03-29T01:00:00Z"), "Europe/Berlin")).toBe("2026-03-29T03");
    // New York, 2026-11-01: 02:00 EDT goes back to 01:00 EST at 06:00 UTC
    expect(periodKey("hourly", new Date("2026-11-01T05:30:00Z"), "America/New_York")).toBe("2026-11-01T01");
    expect(periodKey("hourly", new Date("2026-11-01T06:30:00Z"), "America/New_York")).toBe("2026-11-01T01");
    // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00 UTC
    expect(periodKey("hourly", new Date("2026-03-08T06:59:00Z"), "America/New_York")).toBe("2026-03-08T01");
    expect(periodKey("hourly", new Date("2026-03-08T07:00:00Z"), "America/New_York")).toBe("2026-03-08T03");
  });

  it("counts 25 hourly backups on the Berlin fall-back day and 23 on the spring-forward day", () => {
    const dayCount = (items: RetentionItem[], day: string) =>
      items.filter((i) => periodKey("daily", i.time, "Europe/Berlin") === day).length;
    expect(dayCount(hourly("2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"), "2026-10-25")).toBe(25);
    expect(dayCount(hourly("2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"), "2026-03-29")).toBe(23);
  });

  describe("without a time zone", () => {
    const savedTz = process.env.TZ;
    afterEach(() => {
      if (savedTz === undefined) delete process.env.TZ;
      else process.env.TZ = savedTz;
    });

    // The oracle is Date's own local-time getters: that is what "the host's local time" means to Node.
    const localOracle = (t: Date) => {
      const p = (n: number) => String(n).padStart(2, "0");
      return `${t.getFullYear()}-${p(t.getMonth() + 1)}-${p(t.getDate())}T${p(t.getHours())}`;
    };

    it.each(["America/New_York", "Asia/Kolkata", "UTC"])("uses the process's local zone (TZ=%s)", (tz) => {
      process.env.TZ = tz;
      for (const iso of ["2026-01-01T03:00:00Z", "2026-07-01T21:45:00Z", "2026-11-01T05:30:00Z"]) {
        const t = new Date(iso);
        const zone = new Intl.DateTimeFormat().resolvedOptions().timeZone;
        expect(periodKey("hourly", t)).toBe(localOracle(t));
        expect(periodKey("hourly", t)).toBe(periodKey("hourly", t, zone));
        expect(periodKey("daily", t)).toBe(localOracle(t).slice(0, 10));
      }
    });

    it("decideRetention uses the process's local zone too", () => {
      process.env.TZ = "America/New_York";
      // 03:00 UTC on Jan 1 is still Dec 31 in New York (and, in forked test workers, for the process)
      const items = [
        { id: "a", time: new Date("2026-01-01T03:00:00Z") },
        { id: "b", time: new Date("2025-12-31T23:00:00Z") },
      ];
      const sameDay = localOracle(items[0]!.time).slice(0, 10) === localOracle(items[1]!.time).slice(0, 10);
      expect(keptIds(decideRetention(items, { keepDaily: 2 }))).toEqual(sameDay ? ["a"] : ["a", "b"]);
      const zone = new Intl.DateTimeFormat().resolvedOptions().timeZone;
      expect(decideRetention(items, { keepDaily: 2 })).toEqual(decideRetention(items, { keepDaily: 2 }, { timeZone: zone }));
    });
  });

  it("refuses an invalid date, an unknown zone and an unknown rule with RetentionInputError", () => {
    expect(() => periodKey("daily", new Date("not a date"), "UTC")).toThrow(RetentionInputError);
    expect(() => periodKey("daily", new Date(), "Mars/Olympus_Mons")).toThrow(/unknown time zone "Mars\/Olympus_Mons"/);
    expect(() => periodKey("fortnightly" as "daily", new Date(), "UTC")).toThrow(/unknown period rule "fortnightly"/);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// A small history in UTC; the period of every backup, worked out by hand:
//
//  id  time (UTC)            hour           day         ISO week   month    year
//  a   2026-03-10 15:40 Tue  2026-03-10T15  2026-03-10  2026-W11   2026-03  2026
//  b   2026-03-10 15:10      2026-03-10T15  2026-03-10  2026-W11   2026-03  2026
//  c   2026-03-10 14:30      2026-03-10T14  2026-03-10  2026-W11   2026-03  2026
//  d   2026-03-10 09:00      2026-03-10T09  2026-03-10  2026-W11   2026-03  2026
//  e   2026-03-09 22:00 Mon  2026-03-09T22  2026-03-09  2026-W11   2026-03  2026
//  f   2026-03-08 12:00 Sun  2026-03-08T12  2026-03-08  2026-W10   2026-03  2026
//  g   2026-03-08 08:00 Sun  2026-03-08T08  2026-03-08  2026-W10   2026-03  2026
//  h   2026-03-05 12:00 Thu  2026-03-05T12  2026-03-05  2026-W10   2026-03  2026
//  i   2026-02-27 12:00 Fri  ...            2026-02-27  2026-W09   2026-02  2026
//  j   2026-02-14 12:00 Sat                 2026-02-14  2026-W07   2026-02  2026
//  k   2026-01-02 12:00 Fri                 2026-01-02  2026-W01   2026-01  2026
//  l   2025-12-30 12:00 Tue                 2025-12-30  2026-W01   2025-12  2025
//  m   2025-06-01 12:00 Sun                 2025-06-01  2025-W22   2025-06  2025
//  n   2024-07-01 12:00 Mon                 2024-07-01  2024-W27   2024-07  2024
const SMALL: Record<string, string> = {
  a: "2026-03-10T15:40:00Z",
  b: "2026-03-10T15:10:00Z",
  c: "2026-03-10T14:30:00Z",
  d: "2026-03-10T09:00:00Z",
  e: "2026-03-09T22:00:00Z",
  f: "2026-03-08T12:00:00Z",
  g: "2026-03-08T08:00:00Z",
  h: "2026-03-05T12:00:00Z",
  i: "2026-02-27T12:00:00Z",
  j: "2026-02-14T12:00:00Z",
  k: "2026-01-02T12:00:00Z",
  l: "2025-12-30T12:00:00Z",
  m: "2025-06-01T12:00:00Z",
  n: "2024-07-01T12:00:00Z",
};
// Given oldest first and shuffled a little, to show the input order does not matter.
const smallItems = (protectedIds: string[] = []): RetentionItem[] =>
  ["n", "c", "m", "a", "l", "k", "j", "b", "i", "h", "g", "f", "e", "d"].map((id) => ({
    id,
    time: new Date(SMALL[id]!),
    ...(protectedIds.includes(id) ? { protected: true } : {}),
  }));

describe("decideRetention on a small history (expectations worked out by hand)", () => {
  it("checks the hand-made period table above", () => {
    const table = Object.entries(SMALL).map(([id, iso]) => [
      id,
      periodKey("hourly", new Date(iso), "UTC"),
      periodKey("weekly", new Date(iso), "UTC"),
    ]);
    expect(table.map(([, , w]) => w)).toEqual([
      "2026-W11", "2026-W11", "2026-W11", "2026-W11", "2026-W11", "2026-W10", "2026-W10", "2026-W10",
      "2026-W09", "2026-W07", "2026-W01", "2026-W01", "2025-W22", "2024-W27",
    ]);
    expect(table.slice(0, 4).map(([, h]) => h)).toEqual(["2026-03-10T15", "2026-03-10T15", "2026-03-10T14", "2026-03-10T09"]);
  });

  it.each<[string, RetentionRules, string[]]>([
    // last 3: the three newest
    ["keepLast 3", { keepLast: 3 }, ["a", "b", "c"]],
    // hourly: a takes T15 (b removed, same hour), c T14, d T09; e would be a 4th hour
    ["keepHourly 3", { keepHourly: 3 }, ["a", "c", "d"]],
    // daily: a takes 03-10 (b, c, d removed), e 03-09, f 03-08 (g removed); h would be a 4th day
    ["keepDaily 3", { keepDaily: 3 }, ["a", "e", "f"]],
    // weekly: a W11, f W10, i W09, j W07; k would be a 5th week
    ["keepWeekly 4", { keepWeekly: 4 }, ["a", "f", "i", "j"]],
    // monthly: a 2026-03, i 2026-02, k 2026-01, l 2025-12; m would be a 5th month
    ["keepMonthly 4", { keepMonthly: 4 }, ["a", "i", "k", "l"]],
    // yearly: only three years hold backups, so 10 keeps three (empty years do not count)
    ["keepYearly 10", { keepYearly: 10 }, ["a", "l", "n"]],
    // last keeps a, b; daily skips c, d (03-10 already kept), takes e 03-09, f 03-08, removes g, stops at h
    ["keepLast 2 + keepDaily 2", { keepLast: 2, keepDaily: 2 }, ["a", "b", "e", "f"]],
    // hourly a, c (b removed); weekly skips d, e (W11 already kept), takes f W10 (g, h removed), i W09
    ["keepHourly 2 + keepWeekly 2", { keepHourly: 2, keepWeekly: 2 }, ["a", "c", "f", "i"]],
    // daily a; weekly f (W10); monthly i (2026-02, j removed); yearly skips k (2026 kept), takes l (m removed)
    [
      "daily/weekly/monthly/yearly 1 each",
      { keepDaily: 1, keepWeekly: 1, keepMonthly: 1, keepYearly: 1 },
      ["a", "f", "i", "l"],
    ],
    // last a; hourly c (T14); daily e (03-09); weekly f (W10); monthly i (02); yearly l (2025)
    [
      "every rule 1",
      { keepLast: 1, keepHourly: 1, keepDaily: 1, keepWeekly: 1, keepMonthly: 1, keepYearly: 1 },
      ["a", "c", "e", "f", "i", "l"],
    ],
    // weekly alone with plenty: one per week that holds backups, all 7 of them (k and l share 2026-W01)
    ["keepWeekly 100", { keepWeekly: 100 }, ["a", "f", "i", "j", "k", "m", "n"]],
    // zero counts are rules that do nothing
    ["keepLast 0 + keepMonthly 1", { keepLast: 0, keepHourly: 0, keepMonthly: 1 }, ["a"]],
    ["keepLast 100 keeps everything", { keepLast: 100 }, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n"]],
  ])("%s", (_name, rules, expected) => {
    expect(keptIds(decideRetention(smallItems(), rules, { timeZone: "UTC" }))).toEqual(expected);
  });

  it("weekly then monthly is PBS's order: a backup weekly removed is not reconsidered by monthly", () => {
    // monthly 5 alone: a 2026-03, i 2026-02, k 2026-01, l 2025-12, m 2025-06
    expect(keptIds(decideRetention(smallItems(), { keepMonthly: 5 }, { timeZone: "UTC" }))).toEqual(["a", "i", "k", "l", "m"]);
    // weekly 5: a W11, f W10, i W09, j W07, k 2026-W01, and l (also 2026-W01, older than k) is REMOVED by weekly.
    // monthly 5 then sees 2026-03, 2026-02, 2026-01 as already kept and l as decided, and takes m and n.
    const both = decideRetention(smallItems(), { keepWeekly: 5, keepMonthly: 5 }, { timeZone: "UTC" });
    expect(keptIds(both)).toEqual(["a", "f", "i", "j", "k", "m", "n"]);
    expect(byId(both).get("l")?.reason).toBe("removed: weekly 2026-W01 already kept by a newer backup");
  });

  it("gives every decision its rule, period and reason (every rule 1)", () => {
    const ds = decideRetention(
      smallItems(),
      { keepLast: 1, keepHourly: 1, keepDaily: 1, keepWeekly: 1, keepMonthly: 1, keepYearly: 1 },
      { timeZone: "UTC" },
    );
    // Worked out by hand: b and d share the hour/day of kept backups, so the finer rules skip them (unmarked);
    // g and h are in f's week (weekly removes them); j in i's month; m in l's year; k's periods are all held by
    // kept backups (2026-01-02 is in 2026-W01, 2026-01 and 2026 - only yearly reaches it, and 2026 is kept).
    expect(ds.map((d) => [d.id, d.keep, d.rule, d.period, d.reason])).toEqual([
      ["a", true, "last", "1", "kept: last 1"],
      ["b", false, null, null, "removed: not selected by any rule"],
      ["c", true, "hourly", "2026-03-10T14", "kept: hourly 2026-03-10T14"],
      ["d", false, null, null, "removed: not selected by any rule"],
      ["e", true, "daily", "2026-03-09", "kept: daily 2026-03-09"],
      ["f", true, "weekly", "2026-W10", "kept: weekly 2026-W10"],
      ["g", false, "weekly", "2026-W10", "removed: weekly 2026-W10 already kept by a newer backup"],
      ["h", false, "weekly", "2026-W10", "removed: weekly 2026-W10 already kept by a newer backup"],
      ["i", true, "monthly", "2026-02", "kept: monthly 2026-02"],
      ["j", false, "monthly", "2026-02", "removed: monthly 2026-02 already kept by a newer backup"],
      ["k", false, null, null, "removed: not selected by any rule"],
      ["l", true, "yearly", "2025", "kept: yearly 2025"],
      ["m", false, "yearly", "2025", "removed: yearly 2025 already kept by a newer backup"],
      ["n", false, null, null, "removed: not selected by any rule"],
    ]);
    for (const d of ds) expect(formatDecision(d)).toBe(d.reason);
    expect(ds.map((d) => d.time.toISOString())).toEqual(Object.values(SMALL).map((iso) => new Date(iso).toISOString()));
  });

  it("numbers keep-last from the newest", () => {
    const ds = decideRetention(smallItems(), { keepLast: 3 }, { timeZone: "UTC" });
    expect(ds.slice(0, 4).map((d) => d.reason)).toEqual([
      "kept: last 1",
      "kept: last 2",
      "kept: last 3",
      "removed: not selected by any rule",
    ]);
  });

  describe("protected backups: always kept, never counted", () => {
    it.each<[string, string[], RetentionRules, string[]]>([
      // c protected: hourly takes a (T15, b removed), d (T09), e (03-09T22) - c uses up none of the 3 hours
      ["c protected, keepHourly 3", ["c"], { keepHourly: 3 }, ["a", "c", "d", "e"]],
      // the newest protected: keep-last 1 goes to b
      ["a protected, keepLast 1", ["a"], { keepLast: 1 }, ["a", "b"]],
      // b shares a's hour but is protected: kept anyway; hourly 1 stops at c
      ["b protected, keepHourly 1", ["b"], { keepHourly: 1 }, ["a", "b"]],
      // an old protected backup stays whatever the rules
      ["n protected, keepDaily 1", ["n"], { keepDaily: 1 }, ["a", "n"]],
      // a protected does not make 03-10 "already kept": daily still takes b for 03-10
      ["a protected, keepDaily 2", ["a"], { keepDaily: 2 }, ["a", "b", "e"]],
      // all protected: everything kept, nothing counted
      ["all protected", Object.keys(SMALL), { keepLast: 1 }, Object.keys(SMALL)],
    ])("%s", (_name, protectedIds, rules, expected) => {
      const ds = decideRetention(smallItems(protectedIds), rules, { timeZone: "UTC" });
      expect(keptIds(ds)).toEqual(expected);
      for (const id of protectedIds) {
        expect(byId(ds).get(id)).toMatchObject({ keep: true, rule: "protected", period: null, reason: "kept: protected" });
      }
    });
  });

  it("orders equal times by id descending, whatever the input order", () => {
    const t = new Date("2026-05-05T05:05:00Z");
    const items = [
      { id: "x1", time: t },
      { id: "x3", time: new Date(t) },
      { id: "x2", time: new Date(t) },
    ];
    for (const list of [items, [...items].reverse()]) {
      expect(decideRetention(list, { keepLast: 1 }, { timeZone: "UTC" }).map((d) => [d.id, d.keep])).toEqual([
        ["x3", true],
        ["x2", false],
        ["x1", false],
      ]);
      // keep-last counts each backup on its own even when times are equal
      expect(keptIds(decideRetention(list, { keepLast: 2 }, { timeZone: "UTC" }))).toEqual(["x3", "x2"]);
      expect(decideRetention(list, { keepHourly: 5 }, { timeZone: "UTC" }).map((d) => d.reason)).toEqual([
        "kept: hourly 2026-05-05T05",
        "removed: hourly 2026-05-05T05 already kept by a newer backup",
        "removed: hourly 2026-05-05T05 already kept by a newer backup",
      ]);
    }
  });

  it("returns nothing for no backups, and copies times instead of sharing the caller's Date", () => {
    expect(decideRetention([], { keepLast: 1 })).toEqual([]);
    const item = { id: "a", time: new Date("2026-01-01T00:00:00Z") };
    const [d] = decideRetention([item], { keepLast: 1 }, { timeZone: "UTC" });
    expect(d?.time).toEqual(item.time);
    expect(d?.time).not.toBe(item.time);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Two years of hourly backups, 2024-11-28T00Z .. 2026-11-27T13Z: 729 days * 24 + 14 = 17,510 backups.
// The newest, 2026-11-27T13Z, is a Friday in ISO week 2026-W48 (Mon Nov 23 - Sun Nov 29).
describe("decideRetention on two years of hourly backups", () => {
  const history = hourly("2024-11-28T00:00:00Z", "2026-11-27T13:00:00Z");

  it("has the size the comment says", () => {
    expect(history).toHaveLength(17_510);
  });

  it.each<[string, RetentionRules, string, string[]]>([
    // the last backup of each of the 7 newest days; in UTC a day ends with its 23:00 backup
    [
      "keepDaily 7",
      { keepDaily: 7 },
      "UTC",
      ["h-2026-11-27T13", "h-2026-11-26T23", "h-2026-11-25T23", "h-2026-11-24T23", "h-2026-11-23T23", "h-2026-11-22T23", "h-2026-11-21T23"],
    ],
    // Berlin in November is UTC+1: a local day ends with the 22:00 UTC backup (23:00 local)
    [
      "keepDaily 7",
      { keepDaily: 7 },
      "Europe/Berlin",
      ["h-2026-11-27T13", "h-2026-11-26T22", "h-2026-11-25T22", "h-2026-11-24T22", "h-2026-11-23T22", "h-2026-11-22T22", "h-2026-11-21T22"],
    ],
    // New York in November is UTC-5: the local day Nov 26 ends with 23:00 EST = Nov 27 04:00 UTC
    [
      "keepDaily 7",
      { keepDaily: 7 },
      "America/New_York",
      ["h-2026-11-27T13", "h-2026-11-27T04", "h-2026-11-26T04", "h-2026-11-25T04", "h-2026-11-24T04", "h-2026-11-23T04", "h-2026-11-22T04"],
    ],
    ["keepHourly 5", { keepHourly: 5 }, "UTC", ["h-2026-11-27T13", "h-2026-11-27T12", "h-2026-11-27T11", "h-2026-11-27T10", "h-2026-11-27T09"]],
    // weeks end on Sunday 23:00: W47 on Nov 22, W46 on Nov 15, W45 on Nov 8
    ["keepWeekly 4", { keepWeekly: 4 }, "UTC", ["h-2026-11-27T13", "h-2026-11-22T23", "h-2026-11-15T23", "h-2026-11-08T23"]],
    ["keepMonthly 3", { keepMonthly: 3 }, "UTC", ["h-2026-11-27T13", "h-2026-10-31T23", "h-2026-09-30T23"]],
    // only three years hold backups
    ["keepYearly 5", { keepYearly: 5 }, "UTC", ["h-2026-11-27T13", "h-2025-12-31T23", "h-2024-12-31T23"]],
    // New York's local year 2025 ends at 2026-01-01 04:00 UTC
    ["keepYearly 5", { keepYearly: 5 }, "America/New_York", ["h-2026-11-27T13", "h-2026-01-01T04", "h-2025-01-01T04"]],
    // last 3 keeps 13, 12, 11; daily: Nov 27 already kept, takes 26 and 25
    ["keepLast 3 + keepDaily 2", { keepLast: 3, keepDaily: 2 }, "UTC", ["h-2026-11-27T13", "h-2026-11-27T12", "h-2026-11-27T11", "h-2026-11-26T23", "h-2026-11-25T23"]],
    // last 13, 12; hourly 11, 10, 09; daily 26, 25, 24 (27 kept); weekly W48 kept, takes W47 (Sun 22), W46 (Sun 15);
    // monthly 2026-11 kept, takes Oct, Sep; yearly 2026 kept, takes 2025, 2024
    [
      "all rules",
      { keepLast: 2, keepHourly: 3, keepDaily: 3, keepWeekly: 2, keepMonthly: 2, keepYearly: 2 },
      "UTC",
      [
        "h-2026-11-27T13", "h-2026-11-27T12", "h-2026-11-27T11", "h-2026-11-27T10", "h-2026-11-27T09",
        "h-2026-11-26T23", "h-2026-11-25T23", "h-2026-11-24T23", "h-2026-11-22T23", "h-2026-11-15T23",
        "h-2026-10-31T23", "h-2026-09-30T23", "h-2025-12-31T23", "h-2024-12-31T23",
      ],
    ],
    // every month from 2026-11 back to 2024-11 holds backups: 25 of them, so 30 keeps 25
    [
      "keepMonthly 30",
      { keepMonthly: 30 },
      "UTC",
      [
        "h-2026-11-27T13", "h-2026-10-31T23", "h-2026-09-30T23", "h-2026-08-31T23", "h-2026-07-31T23",
        "h-2026-06-30T23", "h-2026-05-31T23", "h-2026-04-30T23", "h-2026-03-31T23", "h-2026-02-28T23",
        "h-2026-01-31T23", "h-2025-12-31T23", "h-2025-11-30T23", "h-2025-10-31T23", "h-2025-09-30T23",
        "h-2025-08-31T23", "h-2025-07-31T23", "h-2025-06-30T23", "h-2025-05-31T23", "h-2025-04-30T23",
        "h-2025-03-31T23", "h-2025-02-28T23", "h-2025-01-31T23", "h-2024-12-31T23", "h-2024-11-30T23",
      ],
    ],
  ])("%s in %s", (_name, rules, zone, expected) => {
    expect(keptIds(decideRetention(history, rules, { timeZone: zone }))).toEqual(expected);
  });

  it("keepDaily 7 keeps exactly the last backup of each of the 7 newest local days", () => {
    // Property form of the table rows above, for any zone: 7 kept, on 7 distinct days, each the newest of its day.
    for (const zone of ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]) {
      const ds = decideRetention(history, { keepDaily: 7 }, { timeZone: zone });
      const kept = ds.filter((d) => d.keep);
      const days = kept.map((d) => periodKey("daily", d.time, zone));
      expect(new Set(days).size).toBe(7);
      const newestOfDay = new Map<string, string>();
      for (const d of ds) if (!newestOfDay.has(periodKey("daily", d.time, zone))) newestOfDay.set(periodKey("daily", d.time, zone), d.id);
      expect(kept.map((d) => d.id)).toEqual([...newestOfDay.values()].slice(0, 7));
    }
  });

  it("removes the rest of a taken day and leaves everything past the last taken day unselected", () => {
    const ds = byId(decideRetention(history, { keepDaily: 1 }, { timeZone: "UTC" }));
    expect(ds.get("h-2026-11-27T12")?.reason).toBe("removed: daily 2026-11-27 already kept by a newer backup");
    expect(ds.get("h-2026-11-27T00")?.reason).toBe("removed: daily 2026-11-27 already kept by a newer backup");
    expect(ds.get("h-2026-11-26T23")?.reason).toBe("removed: not selected by any rule");
  });

  it("does not count days or weeks without backups", () => {
    // no backups Nov 20 00:00 - Nov 24 23:00 (UTC)
    const gappy = hourly("2026-10-01T00:00:00Z", "2026-11-27T13:00:00Z", { from: "2026-11-20T00:00:00Z", to: "2026-11-24T23:00:00Z" });
    expect(keptIds(decideRetention(gappy, { keepDaily: 7 }, { timeZone: "UTC" }))).toEqual([
      "h-2026-11-27T13", "h-2026-11-26T23", "h-2026-11-25T23", "h-2026-11-19T23", "h-2026-11-18T23", "h-2026-11-17T23", "h-2026-11-16T23",
    ]);
    // no backups in all of W47 (Mon Nov 16 - Sun Nov 22)
    const noW47 = hourly("2026-10-01T00:00:00Z", "2026-11-27T13:00:00Z", { from: "2026-11-16T00:00:00Z", to: "2026-11-22T23:00:00Z" });
    expect(keptIds(decideRetention(noW47, { keepWeekly: 3 }, { timeZone: "UTC" }))).toEqual([
      "h-2026-11-27T13", "h-2026-11-15T23", "h-2026-11-08T23",
    ]);
  });

  it("keeps protected backups outside every rule's count", () => {
    const withProtected = history.map((i) =>
      i.id === "h-2026-11-27T13" || i.id === "h-2025-03-03T03" ? { ...i, protected: true } : i,
    );
    // the newest is protected: last 2 goes to 12 and 11; an old protected one stays
    expect(keptIds(decideRetention(withProtected, { keepLast: 2 }, { timeZone: "UTC" }))).toEqual([
      "h-2026-11-27T13", "h-2026-11-27T12", "h-2026-11-27T11", "h-2025-03-03T03",
    ]);
    // the protected newest does not make Nov 27 "already kept": daily takes 12 for Nov 27
    expect(keptIds(decideRetention(withProtected, { keepDaily: 2 }, { timeZone: "UTC" }))).toEqual([
      "h-2026-11-27T13", "h-2026-11-27T12", "h-2026-11-26T23", "h-2025-03-03T03",
    ]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
describe("decideRetention across DST changes", () => {
  it("Berlin fall-back: one hourly period for the repeated 02:00 hour, its newer pass kept", () => {
    // UTC 23Z (Oct 24) = 01:00 CEST, 00Z = 02:00 CEST, 01Z = 02:00 CET, 02Z = 03:00 CET
    const items = hourly("2026-10-24T20:00:00Z", "2026-10-25T02:00:00Z");
    const ds = decideRetention(items, { keepHourly: 3 }, { timeZone: "Europe/Berlin" });
    expect(keptIds(ds)).toEqual(["h-2026-10-25T02", "h-2026-10-25T01", "h-2026-10-24T23"]);
    expect(byId(ds).get("h-2026-10-25T00")).toMatchObject({
      keep: false,
      rule: "hourly",
      period: "2026-10-25T02",
      reason: "removed: hourly 2026-10-25T02 already kept by a newer backup",
    });
    expect(ds.filter((d) => d.keep).map((d) => d.period)).toEqual(["2026-10-25T03", "2026-10-25T02", "2026-10-25T01"]);
  });

  it("Berlin spring-forward: the skipped 02:00 hour is no period", () => {
    // 00Z = 01:00 CET, 01Z = 03:00 CEST, 02Z = 04:00 CEST
    const items = hourly("2026-03-28T20:00:00Z", "2026-03-29T02:00:00Z");
    const ds = decideRetention(items, { keepHourly: 3 }, { timeZone: "Europe/Berlin" });
    expect(keptIds(ds)).toEqual(["h-2026-03-29T02", "h-2026-03-29T01", "h-2026-03-29T00"]);
    expect(ds.filter((d) => d.keep).map((d) => d.period)).toEqual(["2026-03-29T04", "2026-03-29T03", "2026-03-29T01"]);
  });

  it("New York fall-back: the repeated 01:00 hour", () => {
    // 04Z = 00:00 EDT, 05Z = 01:00 EDT, 06Z = 01:00 EST, 07Z = 02:00 EST
    const items = hourly("2026-11-01T00:00:00Z", "2026-11-01T07:00:00Z");
    const ds = decideRetention(items, { keepHourly: 3 }, { timeZone: "America/New_York" });
    expect(keptIds(ds)).toEqual(["h-2026-11-01T07", "h-2026-11-01T06", "h-2026-11-01T04"]);
    expect(byId(ds).get("h-2026-11-01T05")?.reason).toBe("removed: hourly 2026-11-01T01 already kept by a newer backup");
  });

  it("New York spring-forward: the skipped 02:00 hour", () => {
    // 06Z = 01:00 EST, 07Z = 03:00 EDT, 08Z = 04:00 EDT
    const items = hourly("2026-03-08T00:00:00Z", "2026-03-08T08:00:00Z");
    const ds = decideRetention(items, { keepHourly: 3 }, { timeZone: "America/New_York" });
    expect(keptIds(ds)).toEqual(["h-2026-03-08T08", "h-2026-03-08T07", "h-2026-03-08T06"]);
    expect(ds.filter((d) => d.keep).map((d) => d.period)).toEqual(["2026-03-08T04", "2026-03-08T03", "2026-03-08T01"]);
  });

  it("keepDaily 7 across the Berlin fall-back keeps 23:00 local on both sides (21Z in CEST, 22Z in CET)", () => {
    const items = hourly("2026-10-15T00:00:00Z", "2026-10-27T12:00:00Z");
    expect(keptIds(decideRetention(items, { keepDaily: 7 }, { timeZone: "Europe/Berlin" }))).toEqual([
      "h-2026-10-27T12", "h-2026-10-26T22", "h-2026-10-25T22", "h-2026-10-24T21", "h-2026-10-23T21", "h-2026-10-22T21", "h-2026-10-21T21",
    ]);
  });

  it("keepDaily across the New York spring-forward keeps 23:00 local on both sides (04Z in EST, 03Z in EDT)", () => {
    const items = hourly("2026-03-01T00:00:00Z", "2026-03-10T12:00:00Z");
    // newest 12Z Mar 10 = 08:00 EDT; Mar 9 and 8 end at 23:00 EDT = 03Z next day; Mar 7 ends at 23:00 EST = 04Z Mar 8
    expect(keptIds(decideRetention(items, { keepDaily: 4 }, { timeZone: "America/New_York" }))).toEqual([
      "h-2026-03-10T12", "h-2026-03-10T03", "h-2026-03-09T03", "h-2026-03-08T04",
    ]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
describe("rules and inputs that cannot be decided on", () => {
  it.each<[RetentionRules, boolean]>([
    [{}, false],
    [{ keepLast: 0, keepHourly: 0, keepDaily: 0, keepWeekly: 0, keepMonthly: 0, keepYearly: 0 }, false],
    [{ keepLast: undefined }, false],
    [{ keepLast: 1 }, true],
    [{ keepYearly: 1 }, true],
    [{ keepDaily: 0, keepWeekly: 2 }, true],
  ])("retentionKeepsSomething(%j) is %s", (rules, expected) => {
    expect(retentionKeepsSomething(rules)).toBe(expected);
  });

  it("throws EmptyRetentionError, a usage error that says what to set, when no rule keeps anything", () => {
    for (const rules of [{}, { keepLast: 0, keepDaily: 0 }]) {
      for (const items of [[], smallItems()]) {
        expect(() => decideRetention(items, rules)).toThrow(EmptyRetentionError);
      }
    }
    try {
      decideRetention(smallItems(), {});
      expect.unreachable("decideRetention accepted rules that keep nothing");
    } catch (error) {
      expect(error).toBeInstanceOf(UsageError);
      expect(error).toBeInstanceOf(Error);
      expect((error as Error).message).toMatch(/keeps nothing.*set at least one of them above 0/);
    }
  });

  it.each<[string, RetentionRules, RegExp]>([
    ["negative", { keepDaily: -1 }, /keepDaily must be a whole number of 0 or more, got -1/],
    ["fractional", { keepDaily: 1.5 }, /keepDaily must be a whole number of 0 or more, got 1.5/],
    ["NaN", { keepWeekly: Number.NaN }, /keepWeekly must be a whole number/],
    ["a string", { keepLast: "3" as unknown as number }, /keepLast must be a whole number/],
    ["misspelt", { keepLast: 1, keepDayly: 7 } as RetentionRules, /unknown retention rule "keepDayly"/],
  ])("refuses a %s count", (_name, rules, message) => {
    expect(() => decideRetention(smallItems(), rules)).toThrow(RetentionInputError);
    expect(() => decideRetention(smallItems(), rules)).toThrow(message);
  });

  it("refuses invalid times, duplicate ids, missing ids and unknown zones with errors a person can act on", () => {
    const t = new Date("2026-01-01T00:00:00Z");
    const cases: [RetentionItem[], { timeZone?: string } | undefined, RegExp][] = [
      [[{ id: "a", time: new Date("garbage") }], undefined, /backup "a" has no valid time/],
      [[{ id: "a", time: t }, { id: "a", time: t }], undefined, /backup id "a" appears twice/],
      [[{ id: "", time: t }], undefined, /has no id/],
      [[{ id: "a", time: t }], { timeZone: "Europe/Atlantis" }, /unknown time zone "Europe\/Atlantis": use an IANA zone name/],
    ];
    for (const [items, opts, message] of cases) {
      let thrown: unknown;
      try {
        decideRetention(items, { keepLast: 1 }, opts);
      } catch (error) {
        thrown = error;
      }
      expect(thrown).toBeInstanceOf(RetentionInputError);
      expect(thrown).toBeInstanceOf(KvmBackupError);
      expect((thrown as Error).message).toMatch(message);
    }
  });
});

describe("formatDecision", () => {
  it.each<[RetentionDecision, string]>([
    [{ id: "x", time: new Date(0), keep: true, rule: "daily", period: "2026-11-27", reason: "" }, "kept: daily 2026-11-27"],
    [{ id: "x", time: new Date(0), keep: true, rule: "last", period: "2", reason: "" }, "kept: last 2"],
    [{ id: "x", time: new Date(0), keep: true, rule: "protected", period: null, reason: "" }, "kept: protected"],
    [{ id: "x", time: new Date(0), keep: false, rule: null, period: null, reason: "" }, "removed: not selected by any rule"],
    [
      { id: "x", time: new Date(0), keep: false, rule: "hourly", period: "2026-11-27T13", reason: "" },
      "removed: hourly 2026-11-27T13 already kept by a newer backup",
    ],
  ])("formats %j as %s", (decision, expected) => {
    expect(formatDecision(decision)).toBe(expected);
  });
});
