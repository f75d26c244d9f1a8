/**
 * Ship: every complete backup in staging goes to every target of the policy that made it, unless that target
 * already holds a verified copy. Per backup and target:
 *   1. a copy already at <id>/ on the target (a run killed after the rename) is checked and, if good, recorded;
 *      a bad one is renamed back to .incoming-<id>/ and repaired by the copy below;
 *   2. copy into .incoming-<id>/ (rsync --partial: an interrupted copy resumes), flushed to disk;
 *   3. size and SHA-256 of every file, computed on the target's side, against the manifest (and manifest.json
 *      itself against the staging copy);
 *   4. rename to <id>/, then record "shipped and verified" in the staging copy's state.json.
 * Targets are independent: one that is down, full or hung is recorded in the state (last error, pending since)
 * and skipped for the rest of this run; the others continue. Each backup is locked while it is shipped, so
 * prune never removes it in the middle.
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { isShippedTo, isStateFileName, readState, targetState, updateState } from "./backupState.ts";
import type { HostConfig } from "./config/schema.ts";
import { acquireLock, type Lock, LockedError } from "./lock.ts";
import type { Logger } from "./log.ts";
import { MANIFEST_FILE } from "./manifest.ts";
import { listBackups, type StoredBackup } from "./staging.ts";
import { shipRepositoryBackup } from "./repository/shipRepository.ts";
import { clearDamaged } from "./targets/damaged.ts";
import { openTarget, usedTargets } from "./targets/openTarget.ts";
import {
  compareFacts,
  expectedFiles,
  type FileFacts,
  type Place,
  type Target,
  TargetError,
  type TargetListing,
  TargetVerifyError,
} from "./targets/target.ts";

export type ShipResult = "shipped" | "already-there" | "failed" | "skipped";

export interface ShipOutcome {
  target: string;
  vm: string;
  id: string;
  result: ShipResult;
  message?: string;
  ms?: number;
}

export interface ShipOptions {
  log: Logger;
  /** Only these targets (default: every target a policy uses). */
  targets?: string[];
  /** Only these VMs (default: every VM of the config). */
  vms?: string[];
}

/** The name prune and verify use too: a backup locked under it is being shipped or verified. */
export function backupLockName(vm: string, id: string): string {
  return `backup-${vm}-${id}`;
}

export function lockBackup(staging: string, vm: string, id: string, what: string): Lock {
  return acquireLock(staging, backupLockName(vm, id), `backup ${vm}/${id} (${what})`);
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** Files of a staged backup that go to a target: every regular file but the state; manifest.json last. */
export function filesToShip(dir: string): string[] {
  const names = readdirSync(dir).filter((n) => !isStateFileName(n) && !n.startsWith(".") && statSync(join(dir, n)).isFile());
  return names.sort((a, b) => (a === MANIFEST_FILE ? 1 : b === MANIFEST_FILE ? -1 : a < b ? -1 : a > b ? 1 : 0));
}

/** What the target must hold for this staged backup: the manifest's disks, plus every other file as it is in staging. */
export async function expectedForStaged(b: StoredBackup): Promise<Map<string, FileFacts>> {
  const expected = expectedFiles(b.manifest);
  for (const name of filesToShip(b.dir)) {
    if (expected.has(name)) continue;
    const path = join(b.dir, name);
    expected.set(name, { size: statSync(path).size, sha256: await sha256File(path) });
  }
  return expected;
}

/** Check a copy on the target against what it must be; throws TargetVerifyError listing every difference. */
export async function checkCopy(target: Target, vm: string, id: string, place: Place, expected: Map<string, FileFacts>): Promise<void> {
  const actual = await target.facts(vm, id, place, [...expected.keys()]);
  const problems = compareFacts(expected, actual);
  if (problems.length) {
    throw new TargetVerifyError(`target "${target.name}" (${target.where}): ${vm}/${id} differs from its manifest: ${problems.join("; ")}`, target.name);
  }
}

/** Targets a staged backup must reach; undefined when its policy is no longer in the config (then it is kept). */
export function targetsOf(cfg: HostConfig, b: StoredBackup): string[] | undefined {
  return cfg.policies[b.manifest.policy]?.targets;
}

/** Every staged backup that still has to reach `target`, newest first (the newest is the most valuable). */
function pendingFor(cfg: HostConfig, target: string, vms: string[]): StoredBackup[] {
  const out: StoredBackup[] = [];
  for (const vm of vms) {
    for (const b of listBackups(cfg.staging.path, vm)) {
      if (!targetsOf(cfg, b)?.includes(target)) continue;
      if (!isShippedTo(readState(b.dir), target)) out.push(b);
    }
  }
  return out.sort((a, b) => (a.id === b.id ? 0 : a.id < b.id ? 1 : -1));
}

function recordFailure(b: StoredBackup, target: string, message: string, attempted: boolean): void {
  const now = new Date().toISOString();
  updateState(b.dir, (s) => {
    const t = targetState(s, target);
    t.pendingSince ??= now;
    if (attempted) t.lastAttemptAt = now;
    t.lastError = { at: now, message };
  });
}

async function shipOne(target: Target, b: StoredBackup, listing: TargetListing, log: Logger): Promise<ShipResult> {
  const expected = await expectedForStaged(b);
  if (listing.backups.includes(b.id)) {
    try {
      await checkCopy(target, b.vm, b.id, "final", expected);
      return "already-there";
    } catch (e) {
      if (!(e instanceof TargetVerifyError)) throw e;
      log.warn("ship.repair", `${e.message}; copying it again`);
      if (listing.incoming.includes(b.id)) await target.remove(b.vm, b.id, "incoming");
      await target.rename(b.vm, b.id, "reopen");
    }
  }
  await target.upload(b.vm, b.id, filesToShip(b.dir).map((n) => join(b.dir, n)));
  await checkCopy(target, b.vm, b.id, "incoming", expected);
  await target.rename(b.vm, b.id, "commit");
  return "shipped";
}

/** Errors after which this target is not tried again in this run (the next backups would fail the same way). */
function stopsTarget(e: unknown): boolean {
  return e instanceof TargetError && !(e instanceof TargetVerifyError);
}

export async function shipAll(cfg: HostConfig, opts: ShipOptions): Promise<ShipOutcome[]> {
  const vms = opts.vms ?? Object.keys(cfg.vms);
  const outcomes: ShipOutcome[] = [];
  for (const b of vms.flatMap((vm) => listBackups(cfg.staging.path, vm))) {
    if (targetsOf(cfg, b) === undefined) {
      opts.log.warn("ship.unknown-policy", `${b.vm}/${b.id} was made by policy "${b.manifest.policy}", which is not in the config; it is not shipped and stays in staging until the policy is back or it is removed by hand`, { vm: b.vm });
    }
  }
  for (const name of opts.targets ?? usedTargets(cfg)) {
    const log = opts.log.child({ target: name });
    const pending = pendingFor(cfg, name, vms);
    if (!pending.length) {
      log.info("ship.nothing", `target ${name}: every backup is already shipped`);
      continue;
    }
    const target = openTarget(cfg, name);
    try {
      await target.check();
    } catch (e) {
      const msg = (e as Error).message;
      log.error("ship.target-unusable", msg);
      for (const b of pending) {
        recordFailure(b, name, msg, true);
        outcomes.push({ target: name, vm: b.vm, id: b.id, result: "failed", message: msg });
      }
      continue;
    }
    const listings = new Map<string, TargetListing>();
    let stopped: string | undefined;
    for (const b of pending) {
      if (stopped !== undefined) {
        recordFailure(b, name, `not attempted: ${stopped}`, false);
        outcomes.push({ target: name, vm: b.vm, id: b.id, result: "failed", message: `not attempted: ${stopped}` });
        continue;
      }
      let lock: Lock;
      try {
        lock = lockBackup(cfg.staging.path, b.vm, b.id, `ship to ${name}`);
      } catch (e) {
        if (!(e instanceof LockedError)) throw e;
        log.warn("ship.locked", `${b.vm}/${b.id}: ${e.message}; skipped in this run`, { vm: b.vm });
        outcomes.push({ target: name, vm: b.vm, id: b.id, result: "skipped", message: e.message });
        continue;
      }
      const started = Date.now();
      // Between listing and locking, another run may have shipped (and prune removed) this backup.
      if (!existsSync(join(b.dir, MANIFEST_FILE)) || isShippedTo(readState(b.dir), name)) {
        lock.release();
        continue;
      }
      try {
        updateState(b.dir, (s) => {
          const t = targetState(s, name);
          t.pendingSince ??= new Date().toISOString();
        });
        log.info("ship.start", `shipping ${b.vm}/${b.id} to ${name} (${target.where})`, { vm: b.vm, id: b.id });
        let result: ShipResult;
        if (b.manifest.format === "repository") {
          result = await shipRepositoryBackup(cfg, name, { ...b, manifest: b.manifest }, log);
        } else {
          let listing = listings.get(b.vm);
          if (!listing) listings.set(b.vm, (listing = await target.list(b.vm)));
          result = await shipOne(target, b, listing, log);
        }
        const now = new Date().toISOString();
        updateState(b.dir, (s) => {
          const t = targetState(s, name);
          t.pendingSince ??= now;
          t.shippedAt = now;
          t.verifiedAt = now;
          t.verified = true;
          t.lastAttemptAt = now;
          delete t.lastError;
        });
        clearDamaged(cfg.staging.path, name, `${b.vm}/${b.id}`);
        const ms = Date.now() - started;
        log.info("ship.done", `${b.vm}/${b.id} ${result === "shipped" ? "shipped to" : "was already complete on"} ${name} and verified (${(ms / 1000).toFixed(1)} s)`, { vm: b.vm, id: b.id, ms });
        outcomes.push({ target: name, vm: b.vm, id: b.id, result, ms });
      } catch (e) {
        if (!(e instanceof TargetError)) throw e;
        const msg = e.message;
        log.error("ship.failed", `${b.vm}/${b.id}: ${msg}`, { vm: b.vm, id: b.id, ms: Date.now() - started });
        recordFailure(b, name, msg, true);
        outcomes.push({ target: name, vm: b.vm, id: b.id, result: "failed", message: msg, ms: Date.now() - started });
        if (stopsTarget(e)) stopped = `an earlier backup failed on this target in the same run (${msg})`;
      } finally {
        lock.release();
      }
    }
  }
  return outcomes;
}

// ---------------------------------------------------------------------------------------------------------------
// Status: per target, what is waiting in staging and since when. Reads only staging (no network).

export interface TargetPending {
  target: string;
  where: string;
  pending: { vm: string; id: string; since: string | undefined; lastError: string | undefined }[];
  lastShippedAt: string | undefined;
}

export function targetStatus(cfg: HostConfig): TargetPending[] {
  const rows = new Map<string, TargetPending>();
  for (const name of usedTargets(cfg)) {
    rows.set(name, { target: name, where: openTarget(cfg, name).where, pending: [], lastShippedAt: undefined });
  }
  for (const vm of Object.keys(cfg.vms)) {
    for (const b of listBackups(cfg.staging.path, vm)) {
      const s = readState(b.dir);
      for (const name of targetsOf(cfg, b) ?? []) {
        const row = rows.get(name);
        if (!row) continue;
        const ts = s.targets[name];
        if (isShippedTo(s, name)) {
          if (ts?.shippedAt && (!row.lastShippedAt || ts.shippedAt > row.lastShippedAt)) row.lastShippedAt = ts.shippedAt;
        } else {
          // Not attempted yet: due since the backup was finished.
          row.pending.push({ vm, id: b.id, since: ts?.pendingSince ?? b.manifest.finishedAt, lastError: ts?.lastError?.message });
        }
      }
    }
  }
  return [...rows.values()];
}

/** The "targets" section of `kvm-backup status`. */
export function formatTargetStatus(rows: TargetPending[]): string {
  if (!rows.length) return "targets: none configured\n";
  const lines = ["targets:"];
  for (const r of rows) {
    const oldest = r.pending.map((p) => p.since).filter((s): s is string => s !== undefined).sort()[0];
    const head = r.pending.length
      ? `${r.pending.length} backup${r.pending.length > 1 ? "s" : ""} pending${oldest ? ` since ${oldest}` : " (not attempted yet)"}`
      : "up to date";
    lines.push(`  ${r.target} (${r.where}): ${head}; last shipped ${r.lastShippedAt ?? "never"}`);
    for (const p of r.pending) {
      lines.push(`    ${p.vm}/${p.id} pending${p.since ? ` since ${p.since}` : ""}${p.lastError ? `: ${p.lastError}` : ""}`);
    }
  }
  return lines.join("\n") + "\n";
}
