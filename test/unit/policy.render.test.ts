import { describe, expect, it } from "vitest";
import { StackFileConfig } from "../../runner/config/schema.ts";
import { diffStacks } from "../../runner/policy/diff.ts";
import { planStacks } from "../../runner/policy/plan.ts";
import { renderDiffMarkdown } from "../../runner/policy/renderDiff.ts";
import { renderPlan } from "../../runner/policy/renderPlan.ts";
import { parseSizes } from "../../runner/policy/sizes.ts";
import { baseStack } from "./policyFixtures.ts";

const NOW = new Date("2026-11-28T12:00:00Z");
const parse = (c: Record<string, any>) => StackFileConfig.parse(c);

describe("markdown is stable (snapshots)", () => {
  it("policy diff with every kind of change", () => {
    const head = baseStack();
    head.policies.nightly.retention.keepDaily = 7;
    head.policies.weekly = { ...head.policies.nightly, method: "lvm", schedule: "Sun *-*-* 03:00", targets: ["nas"] };
    head.hosts.kvm02.vms.app01.policy = "weekly";
    delete head.hosts.kvm01.vms.db01;
    head.hosts.kvm01.vms.web02 = { policy: "nightly" };
    head.acknowledge = [{ vm: "kvm01/db01", change: "coverage-lost", reason: "db01 is decommissioned (OPS-42)" }];
    const d = diffStacks([{ stack: "prod", config: parse(baseStack()) }], [{ stack: "prod", config: parse(head) }], { baseLabel: "main", now: NOW });
    expect(d.risky).toBe(6);
    expect(d.unacknowledged).toBe(5);
    expect(renderDiffMarkdown(d)).toMatchSnapshot();
  });

  it("policy diff without changes", () => {
    const d = diffStacks([{ stack: "prod", config: parse(baseStack()) }], [{ stack: "prod", config: parse(baseStack()) }], { baseLabel: "main", now: NOW });
    expect(renderDiffMarkdown(d)).toMatchSnapshot();
  });

  it("policy plan", async () => {
    const sizes = parseSizes({ host: "kvm01", vms: [{ vm: "web01", lastStoredBytes: 5 * 1024 ** 3 }, { vm: "db01", lastStoredBytes: 20 * 1024 ** 3 }] }, "s.json");
    const plan = await planStacks([{ stack: "prod", config: parse(baseStack()) }], { now: NOW, sizes, preferSystemd: false });
    expect(renderPlan(plan, "markdown")).toMatchSnapshot();
  });
});
