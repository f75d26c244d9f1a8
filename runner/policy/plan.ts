/**
 * What a stack will do over time: per VM the next runs, the backups retention keeps at steady state on
 * staging and on every target (the typical history of steadyState.ts), and, with measured sizes, the storage
 * each target needs. Every backup is a full compressed image, so storage = kept backups x newest size.
 */
import type { StackFileConfig } from "../config/schema.ts";
import type { RetentionItem, RetentionRules } from "../retention.ts";
import { effectiveVms } from "./effective.ts";
import { type CalendarSource, formatSpan, largestGap, nextRuns } from "./schedule.ts";
import { type Sizes, sizeFor } from "./sizes.ts";
import { backupId, describeHistory, type Keep, keptBy, newest, ofPolicy, retentionSpanDays, steadyStateWith, typicalHistory, union } from "./steadyState.ts";

export interface PlanPolicy {
  policy: string;
  method: string;
  schedule: string;
  retention: RetentionRules;
  nextRuns: string[];
  largestGap: string;
  history: string;
  historyDays: number;
  /** Steady state on each target of the policy: backup times, newest first. */
  onTargets: { count: number; oldest: string | null; newest: string | null; kept: string[] };
  targets: string[];
}

export interface PlanVm {
  stack: string;
  host: string;
  vm: string;
  bytes: number | null;
  policies: PlanPolicy[];
  staging: { keepLast: number; count: number; bytes: number | null };
}

export interface PlanTarget {
  target: string;
  where: string;
  backups: number;
  bytes: number | null;
  /** VMs without a measured size: bytes is then a lower bound. */
  unknownVms: string[];
}

export interface Plan {
  now: string;
  calendar: CalendarSource;
  timeZone: string;
  vms: PlanVm[];
  targets: PlanTarget[];
}

export async function planStacks(
  stacks: Array<{ stack: string; config: StackFileConfig }>,
  opts: { now: Date; days?: number; sizes?: Sizes; runs?: number; preferSystemd?: boolean },
): Promise<Plan> {
  const vms: PlanVm[] = [];
  const targets = new Map<string, PlanTarget>();
  const sources = new Set<CalendarSource>();
  for (const { stack, config } of stacks) {
    for (const vm of effectiveVms(stack, config).values()) {
      const bytes = opts.sizes ? sizeFor(opts.sizes, vm.host, vm.vm) : null;
      const policies: PlanPolicy[] = [];
      const stagingRuns: RetentionItem[] = [];
      const stagingOnly: Keep[] = [];
      for (const p of vm.policies) {
        const next = await nextRuns(p.schedule, opts.now, opts.runs ?? 3, { preferSystemd: opts.preferSystemd });
        sources.add(next.source);
        const days = opts.days ?? retentionSpanDays(p.retention, [p.schedule], opts.now);
        const h = typicalHistory([p.schedule], opts.now, days);
        const kept = steadyStateWith(h.runs, keptBy(p.retention)).map((i) => i.time).sort((a, b) => b.getTime() - a.getTime());
        stagingRuns.push(...h.runs.map((time) => ({ id: `${p.name}@${backupId(time)}`, time })));
        if (!p.targets.length) stagingOnly.push(ofPolicy(p.name, keptBy(p.retention)));
        policies.push({
          policy: p.name,
          method: p.method,
          schedule: p.schedule,
          retention: p.retention,
          nextRuns: next.times.map((t) => t.toISOString()),
          largestGap: formatSpan(largestGap([p.schedule], opts.now).ms),
          history: describeHistory(h),
          historyDays: days,
          onTargets: {
            count: kept.length,
            newest: kept[0]?.toISOString() ?? null,
            oldest: kept.at(-1)?.toISOString() ?? null,
            kept: kept.map((t) => t.toISOString()),
          },
          targets: [...p.targets],
        });
        for (const t of p.targets) {
          const row = targets.get(t) ?? { target: t, where: vm.targetWhere[t] ?? "?", backups: 0, bytes: 0, unknownVms: [] };
          row.backups += kept.length;
          if (bytes === null) {
            if (!row.unknownVms.includes(vm.key)) row.unknownVms.push(vm.key);
          } else row.bytes = (row.bytes ?? 0) + kept.length * bytes;
          targets.set(t, row);
        }
      }
      // Staging keeps the VM's keepLast newest; a policy without targets has staging as its only copy, so its
      // retention applies there too (prune.ts).
      stagingRuns.sort((a, b) => a.time.getTime() - b.time.getTime());
      const stagingCount = steadyStateWith(stagingRuns, union(newest(vm.staging.keepLast), ...stagingOnly)).length;
      vms.push({
        stack,
        host: vm.host,
        vm: vm.vm,
        bytes,
        policies,
        staging: { keepLast: vm.staging.keepLast, count: stagingCount, bytes: bytes === null ? null : stagingCount * bytes },
      });
    }
  }
  const rows = [...targets.values()].sort((a, b) => a.target.localeCompare(b.target));
  for (const r of rows) if (r.unknownVms.length && r.bytes === 0) r.bytes = null;
  return {
    now: opts.now.toISOString(),
    calendar: sources.has("calendar.ts") ? "calendar.ts" : "systemd-analyze",
    timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone,
    vms,
    targets: rows,
  };
}
