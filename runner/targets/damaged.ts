/**
 * Backups that `verify-target` found damaged on a target, remembered on the host
 * (<staging>/.kvm-backup/targets/<target>.damaged.json). Every <id>/ on a target was verified once before its
 * rename; this list is how prune knows which of them no longer count as "verified" when it protects a target's
 * newest verified backup. A successful ship or verify of the backup takes it off the list.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import { runtimeDir } from "../staging.ts";

export interface DamagedEntry {
  at: string;
  problems: string[];
}

function file(staging: string, target: string): string {
  return join(runtimeDir(staging), "targets", `${target}.damaged.json`);
}

export function readDamaged(staging: string, target: string): Record<string, DamagedEntry> {
  try {
    const raw = JSON.parse(readFileSync(file(staging, target), "utf8")) as { damaged?: Record<string, DamagedEntry> };
    return raw.damaged && typeof raw.damaged === "object" ? raw.damaged : {};
  } catch {
    return {};
  }
}

function write(staging: string, target: string, damaged: Record<string, DamagedEntry>): void {
  const f = file(staging, target);
  mkdirSync(join(f, ".."), { recursive: true });
  const tmp = `${f}.${process.pid}.tmp`;
  const fd = openSync(tmp, "w", 0o644);
  try {
    writeSync(fd, JSON.stringify({ damaged }, null, 2) + "\n");
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, f);
}

export function markDamaged(staging: string, target: string, key: string, problems: string[]): void {
  const d = readDamaged(staging, target);
  d[key] = { at: new Date().toISOString(), problems };
  write(staging, target, d);
}

export function clearDamaged(staging: string, target: string, key: string): void {
  const d = readDamaged(staging, target);
  if (!(key in d)) return;
  delete d[key];
  write(staging, target, d);
}
