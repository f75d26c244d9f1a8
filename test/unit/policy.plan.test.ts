import { describe, expect, it } from "vitest";
import { StackFileConfig } from "../../runner/config/schema.ts";
import { planStacks } from "../../runner/policy/plan.ts";
import { renderPlan } from "../../runner/policy/renderPlan.ts";
import { largestGap, nextRuns, parseSystemdAnalyze } from "../../runner/policy/schedule.ts";
import { parseSizes } from "../../runner/policy/sizes.ts";
import { decideRetention, type RetentionRules } from "../../runner/retention.ts";
import { baseStack } from "./policyFixtures.ts";

const NOW = new Date("2026-11-28T12:00:00Z");
const DAY = 86_400_000;

function stackWith(mutate: (c: Record<string, any>) => void = () => {}) {
  const c = baseStack();
  mutate(c);
  return [{ stack: "prod", config: StackFileConfig.parse(c) }];
}

/** An independent history: every run of a daily 02:00 (or hourly) schedule over `days` days, built by hand. */
function simulated(days: number, stepMs: number, firstOffsetMs: number) {
  const from = NOW.getTime() - days * DAY;
  const items = [];
  const start = Math.ceil((from - firstOffsetMs) / stepMs) * stepMs + firstOffsetMs;
  for (let t = start; t <= NOW.getTime(); t += stepMs) if (t >= from) items.push({ id: new Date(t).toISOString(), time: new Date(t) });
  return items;
}

describe("policy plan: steady state over a year matches decideRetention on a simulated history", () => {
  const cases: Array<[string, string, RetentionRules, number, number]> = [
    ["daily 02:00", "*-*-* 02:00", { keepDaily: 7, keepWeekly: 4, keepMonthly: 12 }, DAY, 2 * 3_600_000],
    ["daily 02:00, keepLast", "*-*-* 02:00", { keepLast: 3, keepDaily: 10, keepYearly: 1 }, DAY, 2 * 3_600_000],
    ["hourly", "hourly", { keepLast: 6, keepHourly: 24, keepDaily: 7, keepWeekly: 8 }, 3_600_000, 0],
  ];
  for (const [name, schedule, rules, step, offset] of cases) {
    it(name, async () => {
      const stacks = stackWith((c) => {
        c.policies.nightly.schedule = schedule;
        c.policies.nightly.retention = rules;
      });
      const plan = await planStacks(stacks, { now: NOW, days: 365, preferSystemd: false });
      // `kvm-backup run` prunes after every backup, so the simulation does too: decideRetention over what is left.
      let present: Array<{ id: string; time: Date }> = [];
      for (const b of simulated(365, step, offset)) {
        present = decideRetention([...present, b], rules).filter((d) => d.keep).map((d) => ({ id: d.id, time: d.time }));
      }
      const expected = present.map((d) => d.time.toISOString());
      const web01 = plan.vms.find((v) => v.vm === "web01")!;
      expect(web01.policies[0]!.onTargets.kept).toEqual(expected);
      expect(web01.policies[0]!.onTargets.count).toBeGreaterThan(5);
    });
  }
});

it("pruning after every run is not pruning the whole history once (why plan simulates run by run)", async () => {
  // Weekly takes a week's newest backup and marks the rest of that week removed; by the time the week leaves
  // keepWeekly, the month's last day is gone, so monthly keeps the last kept Sunday instead (PBS semantics).
  const rules = { keepDaily: 7, keepWeekly: 4, keepMonthly: 12 };
  const stacks = stackWith((c) => (c.policies.nightly.retention = rules));
  const plan = await planStacks(stacks, { now: NOW, days: 365, preferSystemd: false });
  const once = decideRetention(simulated(365, DAY, 2 * 3_600_000), rules).filter((d) => d.keep).map((d) => d.time.toISOString());
  const kept = plan.vms[0]!.policies[0]!.onTargets.kept;
  expect(kept).toHaveLength(once.length);
  expect(kept).toContain("2026-09-27T02:00:00.000Z");
  expect(once).toContain("2026-09-30T02:00:00.000Z");
  expect(kept).not.toContain("2026-09-30T02:00:00.000Z");
});

describe("policy plan: staging, targets and sizes", () => {
  it("staging keeps keepLast; each target the policy's steady state; storage = kept x measured size", async () => {
    const sizes = parseSizes(
      [
        { host: "kvm01", vms: [{ vm: "web01", lastStoredBytes: 1_000_000 }, { vm: "db01", lastStoredBytes: null }] },
        { host: "kvm02", vms: { app01: { lastBackupBytes: 2_000_000 } } },
      ],
      "status.json",
    );
    const plan = await planStacks(stackWith(), { now: NOW, sizes, preferSystemd: false });
    const web01 = plan.vms.find((v) => v.vm === "web01")!;
    const kept = web01.policies[0]!.onTargets.count;
    expect(web01.staging).toEqual({ keepLast: 2, count: 2, bytes: 2_000_000 });
    expect(plan.vms.find((v) => v.vm === "app01")!.staging).toEqual({ keepLast: 2, count: 2, bytes: 4_000_000 });
    expect(plan.targets.map((t) => [t.target, t.backups, t.bytes, t.unknownVms])).toEqual([
      ["nas", 3 * kept, kept * 3_000_000, ["kvm01/db01"]],
      ["offsite", 3 * kept, kept * 3_000_000, ["kvm01/db01"]],
    ]);
    const text = renderPlan(plan, "text");
    expect(text).toContain("(no size for kvm01/db01)");
    expect(text).toContain("Next runs computed by calendar.ts");
  });

  it("a policy without targets keeps its retention on staging too", async () => {
    const plan = await planStacks(stackWith((c) => (c.policies.nightly.targets = [])), { now: NOW, preferSystemd: false });
    const web01 = plan.vms.find((v) => v.vm === "web01")!;
    expect(web01.staging.count).toBe(web01.policies[0]!.onTargets.count);
    expect(plan.targets).toEqual([]);
  });

  it("a sizes file that is not status --json is refused with what to pass", () => {
    expect(() => parseSizes({ foo: 1 }, "x.json")).toThrow(/x.json: expected the output of `kvm-backup status --json`/);
  });
});

describe("schedules", () => {
  it("largest gap over a year", () => {
    expect(largestGap(["*-*-* 02:00"], NOW).ms).toBe(DAY);
    expect(largestGap(["Mon..Fri *-*-* 02:00"], NOW).ms).toBe(3 * DAY);
    expect(largestGap(["Sun *-*-* 03:00"], NOW).ms).toBe(7 * DAY);
    expect(largestGap(["Mon..Fri *-*-* 02:00", "Sat,Sun *-*-* 12:00"], NOW).ms).toBe(34 * 3_600_000);
    expect(largestGap(["yearly"], NOW).ms).toBe(365 * DAY);
  });

  it("systemd-analyze and calendar.ts agree on the next runs", async () => {
    for (const s of ["*-*-* 02:00", "Mon..Fri *-*-* 01:30", "hourly", "*-*-1 04:00"]) {
      const a = await nextRuns(s, NOW, 5);
      const b = await nextRuns(s, NOW, 5, { preferSystemd: false });
      expect(a.source, "systemd-analyze is part of the machine (systemd)").toBe("systemd-analyze");
      expect(b.source).toBe("calendar.ts");
      expect(a.times.map((t) => t.toISOString())).toEqual(b.times.map((t) => t.toISOString()));
    }
  });

  it("reads systemd-analyze output, preferring the (in UTC) lines", () => {
    const recorded = [
      "  Original form: *-*-* 02:00",
      "Normalized form: *-*-* 02:00:00",
      "    Next elapse: Sun 2026-11-29 02:00:00 CET",
      "       (in UTC): Sun 2026-11-29 01:00:00 UTC",
      "       From now: 8h left",
      "       Iter. #2: Mon 2026-11-30 02:00:00 CET",
      "       (in UTC): Mon 2026-11-30 01:00:00 UTC",
    ].join("\n");
    expect(parseSystemdAnalyze(recorded)!.map((d) => d.toISOString())).toEqual(["2026-11-29T01:00:00.000Z", "2026-11-30T01:00:00.000Z"]);
  });
});
