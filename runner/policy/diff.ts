/**
 * What a change to the stacks does to every VM, in words, with the risky consequences flagged:
 * retention reduced, coverage lost, target removed, method changed, a schedule gap of more than a day.
 * Order, comments and YAML style never show up: effective policies are compared, not text.
 */
import type { RiskyChangeKind, StackFileConfig } from "../config/schema.ts";
import type { RetentionRules } from "../retention.ts";
import { decideRetention } from "../retention.ts";
import { type EffectivePolicy, type EffectiveVm, effectiveVms, targetsOf } from "./effective.ts";
import { formatSpan, largestGap } from "./schedule.ts";
import { describeHistory, keptBy, retentionSpanDays, steadyStateWith, typicalHistory } from "./steadyState.ts";

const DAY_MS = 86_400_000;
const RULES = ["keepLast", "keepHourly", "keepDaily", "keepWeekly", "keepMonthly", "keepYearly"] as const;

export interface Acknowledgement {
  vm?: string;
  change: RiskyChangeKind;
  reason: string;
}

export interface Change {
  /** null: harmless, shown but not flagged. */
  risk: RiskyChangeKind | null;
  text: string;
  /** Set when a new acknowledgement in this change covers the risk. */
  acknowledged?: Acknowledgement;
  /** For retention-reduced: how many existing backups the new rules remove from the typical history. */
  removes?: { count: number; of: number; history: string };
}

export interface VmDiff {
  stack: string;
  host: string;
  vm: string;
  status: "added" | "removed" | "changed";
  changes: Change[];
}

export interface StackSide {
  stack: string;
  /** null: the stack file does not exist on this side. */
  config: StackFileConfig | null;
}

export interface PolicyDiff {
  base: string;
  now: string;
  stacks: Array<{ stack: string; status: "added" | "removed" | "changed" | "unchanged" }>;
  vms: VmDiff[];
  acknowledgements: {
    /** New in this change: they acknowledge risky changes. */
    applied: Array<Acknowledgement & { stack: string; used: number }>;
    /** Already at the base: shown, acknowledge nothing. */
    earlier: Array<Acknowledgement & { stack: string }>;
  };
  risky: number;
  unacknowledged: number;
}

const fmtRules = (r: RetentionRules): string =>
  RULES.filter((k) => r[k] !== undefined && r[k] !== 0).map((k) => `${k} ${r[k]}`).join(", ") || "nothing";

function describePolicies(vm: EffectiveVm): string {
  return vm.policies
    .map((p) => `policy ${p.name} (${p.method}, "${p.schedule}", ${fmtRules(p.retention)}, targets: ${p.targets.join(", ") || "none"})`)
    .join("; ");
}

/** Existing backups (old rules' steady state on the old schedule) that the new rules remove. */
export function retentionRemoves(oldP: EffectivePolicy, newRules: RetentionRules, now: Date): { count: number; of: number; history: string } {
  const days = retentionSpanDays(oldP.retention, [oldP.schedule], now);
  const h = typicalHistory([oldP.schedule], now, days);
  const existing = steadyStateWith(h.runs, keptBy(oldP.retention));
  const kept = decideRetention(existing, newRules).filter((d) => d.keep).length;
  return { count: existing.length - kept, of: existing.length, history: describeHistory(h) };
}

function stable(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stable).join(",")}]`;
  if (v && typeof v === "object") return `{${Object.keys(v).sort().map((k) => `${k}:${stable((v as Record<string, unknown>)[k])}`).join(",")}}`;
  return JSON.stringify(v);
}

function settingChanges(prefix: string, a: unknown, b: unknown, out: Change[]): void {
  if (stable(a) === stable(b)) return;
  const isObj = (x: unknown) => x !== null && typeof x === "object" && !Array.isArray(x);
  if (isObj(a) && isObj(b)) {
    const keys = [...new Set([...Object.keys(a as object), ...Object.keys(b as object)])].sort();
    for (const k of keys) settingChanges(prefix ? `${prefix}.${k}` : k, (a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], out);
    return;
  }
  const show = (x: unknown) => (x === undefined ? "(unset)" : typeof x === "string" ? x : JSON.stringify(x));
  out.push({ risk: null, text: `${prefix}: ${show(a)} → ${show(b)}` });
}

/** Old and new policies of one VM, paired: by name, and a lone old with a lone new one (a rename). */
function pairPolicies(o: EffectivePolicy[], n: EffectivePolicy[]): Array<[EffectivePolicy | undefined, EffectivePolicy | undefined]> {
  const pairs: Array<[EffectivePolicy | undefined, EffectivePolicy | undefined]> = [];
  const restO = o.filter((p) => !n.some((q) => q.name === p.name));
  const restN = n.filter((p) => !o.some((q) => q.name === p.name));
  for (const p of o) {
    const q = n.find((x) => x.name === p.name);
    if (q) pairs.push([p, q]);
  }
  if (restO.length === 1 && restN.length === 1) pairs.push([restO[0], restN[0]]);
  else {
    for (const p of restO) pairs.push([p, undefined]);
    for (const q of restN) pairs.push([undefined, q]);
  }
  return pairs;
}

function compareVm(o: EffectiveVm, n: EffectiveVm, now: Date): Change[] {
  const changes: Change[] = [];
  const oMethod = [...new Set(o.policies.map((p) => p.method))].join("+");
  const nMethod = [...new Set(n.policies.map((p) => p.method))].join("+");
  if (oMethod !== nMethod) {
    changes.push({ risk: "method-changed", text: `method ${oMethod} → ${nMethod}: the existing backups remain, but the backup chain starts anew with the next run` });
  }
  const oT = targetsOf(o);
  const nT = targetsOf(n);
  if (oT.length && !nT.length) {
    changes.push({ risk: "coverage-lost", text: `no target any more (was: ${oT.join(", ")}): new backups stay only on the host's staging disk` });
  } else {
    for (const t of oT.filter((t) => !nT.includes(t))) {
      changes.push({ risk: "target-removed", text: `target ${t} removed (${o.targetWhere[t] ?? "?"}): no new backups are shipped there` });
    }
  }
  for (const t of nT.filter((t) => !oT.includes(t))) changes.push({ risk: null, text: `target ${t} added (${n.targetWhere[t] ?? "?"})` });
  for (const t of nT.filter((t) => oT.includes(t) && o.targetWhere[t] !== n.targetWhere[t])) {
    changes.push({ risk: null, text: `target ${t} now points to ${n.targetWhere[t]} (was ${o.targetWhere[t]})` });
  }
  for (const [p, q] of pairPolicies(o.policies, n.policies)) {
    if (p && !q) {
      changes.push({ risk: null, text: `policy ${p.name} no longer applies (its backups in staging are kept, see prune)` });
      continue;
    }
    if (!p && q) {
      changes.push({ risk: null, text: `policy ${q.name} added ("${q.schedule}", ${fmtRules(q.retention)})` });
      continue;
    }
    const a = p!;
    const b = q!;
    const label = a.name === b.name ? `policy ${a.name}` : `policy ${a.name} → ${b.name}`;
    if (a.name !== b.name) changes.push({ risk: null, text: `${label}: renamed` });
    if (a.schedule !== b.schedule) changes.push({ risk: null, text: `${label}: schedule "${a.schedule}" → "${b.schedule}"` });
    if (stable(a.retention) !== stable(b.retention)) {
      const lowered = RULES.filter((k) => (b.retention[k] ?? 0) < (a.retention[k] ?? 0));
      const removes = retentionRemoves(a, b.retention, now);
      const words = `${label}: retention ${fmtRules(a.retention)} → ${fmtRules(b.retention)}`;
      if (lowered.length || removes.count > 0) {
        changes.push({
          risk: "retention-reduced",
          text: `${words}: removes ${removes.count} of the ${removes.of} backups a typical history holds on each target (${removes.history})`,
          removes,
        });
      } else changes.push({ risk: null, text: words });
    }
    const before: Change[] = [];
    if (a.method === b.method) settingChanges("", a.settings, b.settings, before);
    else {
      // Snapshot settings of different methods have nothing in common: one line instead of a field-by-field list.
      const { snapshot: sa, ...ra } = a.settings;
      const { snapshot: sb, ...rb } = b.settings;
      settingChanges("", ra, rb, before);
      before.push({ risk: null, text: `snapshot (${a.method}) ${JSON.stringify(sa)} → (${b.method}) ${JSON.stringify(sb)}` });
    }
    for (const c of before) changes.push({ risk: null, text: `${label}: ${c.text}` });
  }
  if (o.staging.keepLast !== n.staging.keepLast) {
    changes.push({ risk: null, text: `staging keepLast ${o.staging.keepLast} → ${n.staging.keepLast} (host ${n.host})` });
  }
  const oSched = o.policies.map((p) => p.schedule);
  const nSched = n.policies.map((p) => p.schedule);
  if (stable([...oSched].sort()) !== stable([...nSched].sort()) && nSched.length) {
    const gNew = largestGap(nSched, now);
    const gOld = oSched.length ? largestGap(oSched, now) : { ms: 0 };
    if (gNew.ms > DAY_MS && gNew.ms > gOld.ms) {
      const when = gNew.after ? ` (${gNew.after.toISOString()} to ${gNew.before?.toISOString() ?? "never"})` : "";
      changes.push({
        risk: "schedule-gap",
        text: `the schedule leaves up to ${formatSpan(gNew.ms)} between backups over the next year${when}, was ${formatSpan(gOld.ms)}`,
      });
    }
  }
  if (stable(o.disks) !== stable(n.disks)) changes.push({ risk: null, text: `disks ${JSON.stringify(o.disks ?? "all")} → ${JSON.stringify(n.disks ?? "all")}` });
  return changes;
}

function acksOf(cfg: StackFileConfig | null): Acknowledgement[] {
  return ((cfg as { acknowledge?: Acknowledgement[] } | null)?.acknowledge ?? []).map((a) => ({ ...(a.vm ? { vm: a.vm } : {}), change: a.change, reason: a.reason }));
}

function covers(a: Acknowledgement, vm: VmDiff, risk: RiskyChangeKind): boolean {
  return a.change === risk && (a.vm === undefined || a.vm === vm.host || a.vm === `${vm.host}/${vm.vm}`);
}

/** Compares the stacks on both sides; `now` is the reference time for schedules and typical histories. */
export function diffStacks(base: StackSide[], head: StackSide[], opts: { baseLabel: string; now: Date }): PolicyDiff {
  const names = [...new Set([...base.map((s) => s.stack), ...head.map((s) => s.stack)])].sort();
  const result: PolicyDiff = {
    base: opts.baseLabel,
    now: opts.now.toISOString(),
    stacks: [],
    vms: [],
    acknowledgements: { applied: [], earlier: [] },
    risky: 0,
    unacknowledged: 0,
  };
  for (const stack of names) {
    const b = base.find((s) => s.stack === stack)?.config ?? null;
    const h = head.find((s) => s.stack === stack)?.config ?? null;
    const oldVms = b ? effectiveVms(stack, b) : new Map<string, EffectiveVm>();
    const newVms = h ? effectiveVms(stack, h) : new Map<string, EffectiveVm>();
    const vmDiffs: VmDiff[] = [];
    const hostsNow = new Set(h ? Object.keys(h.hosts) : []);
    for (const key of [...new Set([...oldVms.keys(), ...newVms.keys()])].sort()) {
      const o = oldVms.get(key);
      const n = newVms.get(key);
      const [host, vm] = key.split("/") as [string, string];
      if (o && !n) {
        const why = !h ? `the stack file ${stack} is deleted` : !hostsNow.has(host) ? `host ${host} is removed from the stack` : `the VM is removed from host ${host}`;
        vmDiffs.push({ stack, host, vm, status: "removed", changes: [{ risk: "coverage-lost", text: `no longer backed up: ${why} (was: ${describePolicies(o)})` }] });
      } else if (!o && n) {
        const gap = largestGap(n.policies.map((p) => p.schedule), opts.now);
        vmDiffs.push({
          stack, host, vm, status: "added",
          changes: [{ risk: null, text: `new VM: ${describePolicies(n)}; largest gap between backups ${formatSpan(gap.ms)}` }],
        });
      } else if (o && n) {
        const changes = compareVm(o, n, opts.now);
        if (changes.length) vmDiffs.push({ stack, host, vm, status: "changed", changes });
      }
    }
    const earlier = acksOf(b);
    const fresh = acksOf(h).filter((a) => !earlier.some((e) => stable(e) === stable(a)));
    const applied = fresh.map((a) => ({ ...a, stack, used: 0 }));
    for (const d of vmDiffs) {
      for (const c of d.changes) {
        if (!c.risk) continue;
        result.risky++;
        const ack = applied.find((a) => covers(a, d, c.risk!));
        if (ack) {
          ack.used++;
          c.acknowledged = { ...(ack.vm ? { vm: ack.vm } : {}), change: ack.change, reason: ack.reason };
        } else result.unacknowledged++;
      }
    }
    result.acknowledgements.applied.push(...applied);
    result.acknowledgements.earlier.push(...earlier.filter((e) => acksOf(h).some((a) => stable(a) === stable(e))).map((a) => ({ ...a, stack })));
    result.vms.push(...vmDiffs);
    result.stacks.push({ stack, status: !b ? "added" : !h ? "removed" : vmDiffs.length ? "changed" : "unchanged" });
  }
  return result;
}
