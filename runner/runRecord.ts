/**
 * The outcome of the last backup attempt per VM (<staging>/.kvm-backup/runs/<vm>.json), so `status` and the
 * Prometheus textfile can say "the last run failed" even though a failed run leaves no backup behind.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { runtimeDir } from "./staging.ts";

export interface RunRecord {
  vm: string;
  policy: string;
  at: string;
  ok: boolean;
  id?: string;
  error?: string;
}

function file(staging: string, vm: string): string {
  return join(runtimeDir(staging), "runs", `${vm}.json`);
}

export function writeRunRecord(staging: string, r: RunRecord): void {
  mkdirSync(join(runtimeDir(staging), "runs"), { recursive: true });
  const f = file(staging, r.vm);
  writeFileSync(`${f}.tmp`, JSON.stringify(r) + "\n");
  renameSync(`${f}.tmp`, f);
}

export function readRunRecord(staging: string, vm: string): RunRecord | null {
  try {
    return JSON.parse(readFileSync(file(staging, vm), "utf8")) as RunRecord;
  } catch {
    return null;
  }
}
