/**
 * The effective policy of every VM on every host of a stack: what actually decides how the VM is backed up,
 * with names resolved (policy names to their settings, target names to where they point). Two stacks that
 * differ only in order, comments or YAML style have equal effective policies.
 */
import { policyNames, type StackFileConfig } from "../config/schema.ts";
import type { RetentionRules } from "../retention.ts";

export interface EffectivePolicy {
  name: string;
  method: string;
  schedule: string;
  retention: RetentionRules;
  targets: string[];
  /** Every other setting (compression, limits, snapshot, randomizedDelay), compared field by field. */
  settings: Record<string, unknown>;
}

export interface EffectiveVm {
  stack: string;
  host: string;
  vm: string;
  /** "host/vm", the name acknowledgements use. */
  key: string;
  policies: EffectivePolicy[];
  /** Target name -> "ssh user@host:port/path" or "path /mnt/x". */
  targetWhere: Record<string, string>;
  staging: { path: string; keepLast: number };
  disks: unknown;
}

export function targetWhere(t: { type: string; [k: string]: unknown }): string {
  return t.type === "ssh" ? `ssh ${String(t.user)}@${String(t.host)}:${String(t.port)}${String(t.path)}` : `path ${String(t.path)}`;
}

export function effectiveVms(stack: string, cfg: StackFileConfig): Map<string, EffectiveVm> {
  const out = new Map<string, EffectiveVm>();
  for (const [host, h] of Object.entries(cfg.hosts)) {
    for (const [vm, v] of Object.entries(h.vms)) {
      const policies = policyNames(v).flatMap((name): EffectivePolicy[] => {
        const p = cfg.policies[name];
        if (!p) return [];
        const { method, schedule, retention, targets, ...rest } = p;
        return [{ name, method, schedule, retention: retention as RetentionRules, targets: [...targets], settings: rest as Record<string, unknown> }];
      });
      const where: Record<string, string> = {};
      for (const t of policies.flatMap((p) => p.targets)) {
        const def = cfg.targets[t];
        if (def) where[t] = targetWhere(def as { type: string });
      }
      out.set(`${host}/${vm}`, {
        stack,
        host,
        vm,
        key: `${host}/${vm}`,
        policies,
        targetWhere: where,
        staging: { path: h.staging.path, keepLast: h.staging.keepLast },
        disks: v.disks,
      });
    }
  }
  return out;
}

/** Every target a VM's backups go to, over all its policies, sorted. */
export function targetsOf(vm: EffectiveVm): string[] {
  return [...new Set(vm.policies.flatMap((p) => p.targets))].sort();
}
