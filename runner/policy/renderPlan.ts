/** `policy plan` as a table a person reads at a glance, as markdown, and as JSON. */
import { formatBytes } from "../config/sizes.ts";
import type { Plan } from "./plan.ts";
import type { Format } from "./renderDiff.ts";

const day = (iso: string | null) => (iso ? iso.slice(0, 16).replace("T", " ") : "-");
const bytes = (b: number | null) => (b === null ? "?" : formatBytes(b));

function rows(p: Plan): string[][] {
  const header = ["VM", "policy", "schedule", "next runs", "max gap", "staging", "each target", "oldest kept", "targets", "size"];
  const body = p.vms.flatMap((v) =>
    v.policies.map((q) => [
      `${v.host}/${v.vm}`,
      q.policy,
      q.schedule,
      q.nextRuns.map(day).join(", "),
      q.largestGap,
      `${v.staging.count}`,
      `${q.onTargets.count}`,
      day(q.onTargets.oldest),
      q.targets.join(", ") || "none",
      bytes(v.bytes),
    ]),
  );
  return [header, ...body];
}

function targetRows(p: Plan): string[][] {
  return [
    ["target", "where", "backups", "storage"],
    ...p.targets.map((t) => [t.target, t.where, String(t.backups), t.unknownVms.length ? `${t.bytes === null ? "?" : `≥ ${bytes(t.bytes)}`} (no size for ${t.unknownVms.join(", ")})` : bytes(t.bytes)]),
  ];
}

function table(r: string[][]): string[] {
  const w = r[0]!.map((_, i) => Math.max(...r.map((row) => row[i]!.length)));
  return r.map((row) => row.map((c, i) => c.padEnd(w[i]!)).join("  ").trimEnd());
}

function mdTable(r: string[][]): string[] {
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  return [`| ${r[0]!.join(" | ")} |`, `|${r[0]!.map(() => "---").join("|")}|`, ...r.slice(1).map((row) => `| ${row.map(esc).join(" | ")} |`)];
}

function notes(p: Plan): string[] {
  const hist = [...new Set(p.vms.flatMap((v) => v.policies.map((q) => q.history)))];
  return [
    `Next runs computed by ${p.calendar}, times in UTC; time zone for schedules and retention periods: ${p.timeZone}.`,
    "Kept backups are the steady state of a typical history: " + hist.join("; ") + ".",
    "Staging: the host's staging.keepLast newest (plus the policy's retention when the policy has no target); one more while a run writes.",
    "Storage: kept backups x the VM's newest backup size (every backup is a full compressed image).",
  ];
}

export function renderPlan(p: Plan, format: Format): string {
  if (format === "json") return JSON.stringify(p, null, 2) + "\n";
  if (format === "markdown") {
    return [`### kvm-backup policy plan (${p.now})`, "", ...mdTable(rows(p)), "", ...mdTable(targetRows(p)), "", ...notes(p).map((n) => `- ${n}`)].join("\n") + "\n";
  }
  return [`policy plan at ${p.now}`, "", ...table(rows(p)), "", ...table(targetRows(p)), "", ...notes(p)].join("\n") + "\n";
}
