/**
 * Per VM: the last successful backup and its age, the last attempt's outcome. Rendered as text, JSON, and a
 * Prometheus textfile for node_exporter's textfile collector (written atomically: a scrape never sees half).
 */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { HostConfig } from "./config/schema.ts";
import { readRunRecord } from "./runRecord.ts";
import { readDrillRecord } from "./drill/drillRecord.ts";
import { idTime, listBackups } from "./staging.ts";

export const DEFAULT_TEXTFILE = "/var/lib/prometheus/node-exporter/kvm_backup.prom";

export interface VmStatus {
  vm: string;
  backups: number;
  lastSuccessId: string | null;
  lastSuccessAt: string | null;
  ageSeconds: number | null;
  lastWindowMs: number | null;
  lastStoredBytes: number | null;
  peakFillPercent: number | null;
  lastRun: { at: string; ok: boolean; error?: string } | null;
  /** The last restore drill (`kvm-backup drill`) and its age. */
  lastDrill?: { at: string; ok: boolean; id: string | null; ageSeconds: number; answerSeconds: number | null; error?: string } | null;
}

export function vmStatuses(cfg: HostConfig, now = new Date()): VmStatus[] {
  return Object.keys(cfg.vms).map((vm) => {
    const backups = listBackups(cfg.staging.path, vm);
    const last = backups.at(-1);
    const run = readRunRecord(cfg.staging.path, vm);
    const at = last ? new Date(last.manifest.finishedAt) : null;
    const drill = readDrillRecord(cfg.staging.path, vm);
    return {
      vm,
      backups: backups.length,
      lastSuccessId: last?.id ?? null,
      lastSuccessAt: at?.toISOString() ?? null,
      ageSeconds: at ? Math.max(0, Math.round((now.getTime() - at.getTime()) / 1000)) : null,
      lastWindowMs: last?.manifest.snapshot.windowMs ?? null,
      lastStoredBytes: last ? last.manifest.disks.reduce((s, d) => s + d.bytesStored, 0) : null,
      peakFillPercent: last?.manifest.snapshot.peakFillPercent ?? null,
      lastRun: run ? { at: run.at, ok: run.ok, error: run.error } : null,
      lastDrill: drill
        ? { at: drill.at, ok: drill.ok, id: drill.id, ageSeconds: Math.max(0, Math.round((now.getTime() - Date.parse(drill.at)) / 1000)), answerSeconds: drill.answerSeconds, error: drill.error }
        : null,
    };
  });
}

function esc(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

export function prometheusText(host: string, rows: VmStatus[]): string {
  const metrics: Array<[string, string, string, (r: VmStatus) => number | null]> = [
    ["kvm_backup_last_success_timestamp_seconds", "gauge", "When the newest complete backup in staging finished (unix time).", (r) => (r.lastSuccessAt ? Date.parse(r.lastSuccessAt) / 1000 : null)],
    ["kvm_backup_last_success_age_seconds", "gauge", "Age of the newest complete backup in staging when status ran.", (r) => r.ageSeconds],
    ["kvm_backup_last_run_success", "gauge", "1 if the last backup attempt succeeded, 0 if it failed.", (r) => (r.lastRun ? (r.lastRun.ok ? 1 : 0) : null)],
    ["kvm_backup_last_run_timestamp_seconds", "gauge", "When the last backup attempt ended (unix time).", (r) => (r.lastRun ? Date.parse(r.lastRun.at) / 1000 : null)],
    ["kvm_backup_snapshot_window_seconds", "gauge", "Snapshot creation to removal of the newest backup.", (r) => (r.lastWindowMs === null ? null : r.lastWindowMs / 1000)],
    ["kvm_backup_stored_bytes", "gauge", "Bytes stored (compressed) by the newest backup.", (r) => r.lastStoredBytes],
    ["kvm_backup_snapshot_peak_fill_percent", "gauge", "LVM: highest snapshot fill seen during the newest backup.", (r) => r.peakFillPercent],
    ["kvm_backup_staged_backups", "gauge", "Complete backups in staging.", (r) => r.backups],
    ["kvm_backup_last_drill_success", "gauge", "1 if the last restore drill booted the backup and the guest answered, 0 if not.", (r) => (r.lastDrill ? (r.lastDrill.ok ? 1 : 0) : null)],
    ["kvm_backup_last_drill_timestamp_seconds", "gauge", "When the last restore drill ended (unix time).", (r) => (r.lastDrill ? Date.parse(r.lastDrill.at) / 1000 : null)],
    ["kvm_backup_last_drill_age_seconds", "gauge", "Age of the last restore drill when status ran.", (r) => r.lastDrill?.ageSeconds ?? null],
    ["kvm_backup_last_drill_answer_seconds", "gauge", "Start of the drill domain until its guest answered, last passed drill.", (r) => (r.lastDrill?.ok ? r.lastDrill.answerSeconds : null)],
  ];
  const out: string[] = [];
  for (const [name, type, help, value] of metrics) {
    const lines = rows.flatMap((r) => {
      const v = value(r);
      return v === null ? [] : [`${name}{host="${esc(host)}",vm="${esc(r.vm)}"} ${v}`];
    });
    if (!lines.length) continue;
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
  }
  return out.join("\n") + "\n";
}

export function writeTextfileAtomically(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode: 0o644 });
  renameSync(tmp, path);
}

function ago(s: number): string {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

export function statusText(rows: VmStatus[]): string {
  return rows
    .map((r) => {
      const last = r.lastSuccessId ? `last backup ${r.lastSuccessId} (${ago(r.ageSeconds!)} ago, window ${r.lastWindowMs ?? "-"} ms${r.peakFillPercent !== null ? `, peak fill ${r.peakFillPercent} %` : ""})` : "NO BACKUP in staging";
      const run = r.lastRun ? (r.lastRun.ok ? "last run ok" : `LAST RUN FAILED at ${r.lastRun.at}: ${r.lastRun.error ?? "?"}`) : "never run";
      const drill = r.lastDrill
        ? r.lastDrill.ok
          ? `; last drill passed ${ago(r.lastDrill.ageSeconds)} ago (backup ${r.lastDrill.id}, answered after ${r.lastDrill.answerSeconds} s)`
          : `; LAST DRILL FAILED ${ago(r.lastDrill.ageSeconds)} ago: ${r.lastDrill.error ?? "?"}`
        : "";
      return `${r.vm}: ${last}; ${r.backups} staged; ${run}${drill}`;
    })
    .join("\n") + "\n";
}
