/**
 * state.json inside a staged backup: what happened to it after it was made. Per target: since when it waits to
 * be shipped, when it was shipped and verified there, the last error. Plus the protected flag.
 *
 * The manifest describes the backup and never changes; this file changes on every ship/verify/protect, so it is
 * kept apart, never shipped, and always replaced by an atomic rename (a crash leaves the old or the new file,
 * never half of one). A missing or unreadable state.json means "nothing shipped yet", which errs on the side of
 * keeping the backup.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { runtimeDir, STATE_FILE } from "./staging.ts";

export const STATE_VERSION = 1;

export interface TargetShipState {
  /** When the backup first became due for this target (the first ship attempt that found it missing). */
  pendingSince?: string;
  /** Set once the copy on the target was checked file by file against the manifest. */
  shippedAt?: string;
  verifiedAt?: string;
  /** false after `verify-target` found the copy on the target damaged: ship sends it again. */
  verified?: boolean;
  lastAttemptAt?: string;
  lastError?: { at: string; message: string };
}

/** The last restore drill of this backup (`kvm-backup drill`). */
export interface DrillState {
  at: string;
  ok: boolean;
  /** Seconds from the scratch domain's start until the guest answered; null when it did not. */
  answerSeconds: number | null;
  answeredBy: "guest-agent" | "console" | null;
  /** staging, or the target the backup was fetched from. */
  from: string;
  error?: string;
}

export interface BackupState {
  stateVersion: number;
  protected: boolean;
  targets: Record<string, TargetShipState>;
  drill?: DrillState;
}

export function emptyState(): BackupState {
  return { stateVersion: STATE_VERSION, protected: false, targets: {} };
}

export function stateFile(backupDir: string): string {
  return join(backupDir, STATE_FILE);
}

export function readState(backupDir: string): BackupState {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(stateFile(backupDir), "utf8"));
  } catch {
    return emptyState();
  }
  const r = raw as Partial<BackupState> | null;
  if (r === null || typeof r !== "object") return emptyState();
  const targets: Record<string, TargetShipState> = {};
  if (r.targets && typeof r.targets === "object") {
    for (const [name, t] of Object.entries(r.targets)) if (t && typeof t === "object") targets[name] = { ...t };
  }
  const drill = r.drill && typeof r.drill === "object" ? { ...r.drill } : undefined;
  return { stateVersion: STATE_VERSION, protected: r.protected === true, targets, ...(drill ? { drill } : {}) };
}

/** Write the whole state: temp file, fsync, rename over state.json, fsync the directory. */
export function writeState(backupDir: string, state: BackupState): void {
  const file = stateFile(backupDir);
  const tmp = join(backupDir, `.${STATE_FILE}.${process.pid}.tmp`);
  try {
    const fd = openSync(tmp, "w", 0o644);
    try {
      writeSync(fd, JSON.stringify(state, null, 2) + "\n");
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  const dfd = openSync(backupDir, "r");
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/** Read, change, write back. The caller holds the backup's lock, so there is no concurrent writer. */
export function updateState(backupDir: string, change: (s: BackupState) => void): BackupState {
  const s = readState(backupDir);
  change(s);
  writeState(backupDir, s);
  return s;
}

export function targetState(s: BackupState, target: string): TargetShipState {
  return (s.targets[target] ??= {});
}

/** Shipped and verified there, and not found damaged since. */
export function isShippedTo(s: BackupState, target: string): boolean {
  const t = s.targets[target];
  return t !== undefined && t.shippedAt !== undefined && t.verified === true;
}

/** Is this a file that belongs to the state, not to the backup (never shipped)? */
export function isStateFileName(name: string): boolean {
  return name === STATE_FILE || (name.startsWith(`.${STATE_FILE}.`) && name.endsWith(".tmp"));
}

// ---------------------------------------------------------------------------------------------------------------
// Protection that outlives the staging copy: `kvm-backup protect` also records the backup here, because once
// staging has pruned its copy (state.json included) the targets still hold it and prune must still spare it.

const PROTECTED_FILE = "protected.json";

function protectedFile(staging: string): string {
  return join(runtimeDir(staging), PROTECTED_FILE);
}

export function readProtected(staging: string): Set<string> {
  try {
    const raw = JSON.parse(readFileSync(protectedFile(staging), "utf8")) as { backups?: unknown };
    return new Set(Array.isArray(raw.backups) ? raw.backups.filter((x): x is string => typeof x === "string") : []);
  } catch {
    return new Set();
  }
}

export function protectedKey(vm: string, id: string): string {
  return `${vm}/${id}`;
}

export function writeProtected(staging: string, keys: Set<string>): void {
  const dir = runtimeDir(staging);
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `.${PROTECTED_FILE}.${process.pid}.tmp`);
  const fd = openSync(tmp, "w", 0o644);
  try {
    writeSync(fd, JSON.stringify({ backups: [...keys].sort() }, null, 2) + "\n");
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, protectedFile(staging));
}
