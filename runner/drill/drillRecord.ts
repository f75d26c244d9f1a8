/**
 * The outcome of the last restore drill per VM (<staging>/.kvm-backup/drills/<vm>.json), for `status` and the
 * Prometheus textfile. The backup's own state.json records its drill too, but a drilled backup is pruned in
 * time while "when did a restore of this VM last work" must stay answerable. Replaced by a rename: a crash
 * leaves the old or the new record.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { DrillState } from "../backupState.ts";
import { runtimeDir } from "../staging.ts";

export interface DrillRecord extends DrillState {
  vm: string;
  /** The backup drilled; null when the drill failed before one was chosen (no backup at all). */
  id: string | null;
}

function file(staging: string, vm: string): string {
  return join(runtimeDir(staging), "drills", `${vm}.json`);
}

export function writeDrillRecord(staging: string, r: DrillRecord): void {
  mkdirSync(join(runtimeDir(staging), "drills"), { recursive: true });
  const f = file(staging, r.vm);
  writeFileSync(`${f}.${process.pid}.tmp`, JSON.stringify(r) + "\n");
  renameSync(`${f}.${process.pid}.tmp`, f);
}

export function readDrillRecord(staging: string, vm: string): DrillRecord | null {
  try {
    return JSON.parse(readFileSync(file(staging, vm), "utf8")) as DrillRecord;
  } catch {
    return null;
  }
}
