/**
 * Prune: staging and every target, each by its rules, with one decision and one reason per backup.
 *
 * Staging keeps the host config's staging.keepLast newest backups of each VM, and on top of that, whatever the
 * rules say:
 *   - a backup not yet shipped and verified on every target of its policy is kept;
 *   - for a policy without targets staging is the only copy, so that policy's retention applies there too;
 *   - a backup whose policy is gone from the config is kept (its targets are unknown);
 *   - protected backups are kept; a backup locked by ship or verify is kept for this run.
 * A target keeps, per VM and per policy, what the policy's retention keeps (decideRetention, PBS semantics),
 * and never loses its newest verified backup of a VM, even if retention changed.
 *
 * Removal renames the directory to .trash-<id> first and deletes it after, so a crash never leaves a
 * half-deleted directory that still looks like a backup; leftover trash is deleted on the next prune.
 * Partial directories (staging <id>.partial, target .incoming-<id>) older than the VM's newest complete
 * backup are removed too.
 */
import { closeSync, fsyncSync, openSync, renameSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { isShippedTo, protectedKey, readProtected, readState } from "./backupState.ts";
import type { HostConfig } from "./config/schema.ts";
import type { KvmBackupError } from "./errors.ts";
import { type Lock, LockedError } from "./lock.ts";
import type { Logger } from "./log.ts";
import { decideRetention, type RetentionRules } from "./retention.ts";
import { lockBackup, shipAll, targetsOf } from "./ship.ts";
import { idTime, listBackups, listPartials, listTrash, PARTIAL_SUFFIX, readManifest, type StoredBackup, TRASH_PREFIX } from "./staging.ts";
import { Manifest } from "./manifest.ts";
import { RepositoryPruner } from "./repository/pruneRepository.ts";
import { readDamaged } from "./targets/damaged.ts";
import { openTarget, usedTargets } from "./targets/openTarget.ts";
import { TargetError } from "./targets/target.ts";

export interface PruneLine {
  /** "staging" or the target name. */
  where: string;
  vm: string;
  id: string;
  /** backup, or a leftover: partial (staging .partial / target .incoming-), trash */
  kind: "backup" | "partial" | "trash";
  keep: boolean;
  reason: string;
  /** Set when the removal was attempted and failed. */
  error?: string;
}

export interface PruneOptions {
  log: Logger;
  dryRun: boolean;
  vms?: string[];
  /** Which targets to prune (default: all used by a policy); [] for staging only. */
  targets?: string[];
  staging?: boolean;
  /** Called with every decision as it is made (the command prints them). */
  onLine?: (line: PruneLine) => void;
}

export interface PruneReport {
  lines: PruneLine[];
  /** Targets that could not be pruned at all (unreachable etc.), with the reason. */
  failedTargets: { target: string; message: string }[];
}

interface Candidate {
  id: string;
  policy: string | undefined;
  protected: boolean;
}

/** Retention decisions keyed by id; `rules` per policy, over the candidates of that policy only. */
function decideByPolicy(cands: Candidate[], rulesOf: (policy: string) => RetentionRules | undefined): Map<string, { keep: boolean; reason: string }> {
  const out = new Map<string, { keep: boolean; reason: string }>();
  const groups = new Map<string, Candidate[]>();
  for (const c of cands) {
    const key = c.policy ?? "";
    groups.set(key, [...(groups.get(key) ?? []), c]);
  }
  for (const [policy, group] of groups) {
    const rules = policy ? rulesOf(policy) : undefined;
    if (!rules) {
      for (const c of group) out.set(c.id, { keep: true, reason: policy ? `kept: policy "${policy}" is not in the config (or no longer uses this place), so no retention applies` : "kept: its manifest could not be read, so its policy is unknown" });
      continue;
    }
    for (const d of decideRetention(group.map((c) => ({ id: c.id, time: idTime(c.id), protected: c.protected })), rules)) {
      out.set(d.id, { keep: d.keep, reason: `${d.reason}${policy ? ` (policy ${policy})` : ""}` });
    }
  }
  return out;
}

function tryLock(staging: string, vm: string, id: string): Lock | string {
  try {
    return lockBackup(staging, vm, id, "prune");
  } catch (e) {
    if (e instanceof LockedError) return e.message;
    throw e;
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Rename to .trash-<name>, make the rename durable, then delete. */
function trashAndDelete(path: string): void {
  const dir = join(path, "..");
  const trash = join(dir, TRASH_PREFIX + basename(path));
  renameSync(path, trash);
  fsyncDir(dir);
  rmSync(trash, { recursive: true, force: true });
}

function emit(report: PruneReport, opts: PruneOptions, line: PruneLine): void {
  report.lines.push(line);
  opts.onLine?.(line);
  if (!opts.dryRun) {
    const msg = `${line.where} ${line.vm}/${line.id}${line.kind === "backup" ? "" : ` (${line.kind})`}: ${line.reason}${line.error ? `; FAILED: ${line.error}` : ""}`;
    if (line.error) opts.log.error("prune.failed", msg, { vm: line.vm });
    else opts.log.info(line.keep ? "prune.keep" : "prune.remove", msg, { vm: line.vm });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Staging

export function stagingDecisions(cfg: HostConfig, vm: string, backups: StoredBackup[], protectedSet: Set<string>): Map<string, { keep: boolean; reason: string }> {
  const cands = backups.map((b) => ({
    id: b.id,
    policy: b.manifest.policy,
    protected: readState(b.dir).protected || protectedSet.has(protectedKey(vm, b.id)),
  }));
  const out = new Map<string, { keep: boolean; reason: string }>();
  if (!cands.length) return out;
  for (const d of decideRetention(cands.map((c) => ({ id: c.id, time: idTime(c.id), protected: c.protected })), { keepLast: cfg.staging.keepLast })) {
    out.set(d.id, { keep: d.keep, reason: d.keep ? `${d.reason} (staging keepLast ${cfg.staging.keepLast})` : `${d.reason} (staging keepLast ${cfg.staging.keepLast})` });
  }
  // Policies without targets: staging is the only copy, their retention decides as well.
  const local = decideByPolicy(
    cands.filter((c) => cfg.policies[c.policy!]?.targets.length === 0),
    (p) => cfg.policies[p]?.retention,
  );
  for (const b of backups) {
    const d = out.get(b.id)!;
    if (d.keep) continue;
    const targets = targetsOf(cfg, b);
    if (targets === undefined) {
      out.set(b.id, { keep: true, reason: `kept: policy "${b.manifest.policy}" is not in the config, so its targets are unknown and it may be the only copy` });
      continue;
    }
    const state = readState(b.dir);
    const missing = targets.filter((t) => !isShippedTo(state, t));
    if (missing.length) {
      out.set(b.id, { keep: true, reason: `kept: not yet shipped to ${missing.join(", ")} (${d.reason})` });
      continue;
    }
    const l = local.get(b.id);
    if (l?.keep) out.set(b.id, { keep: true, reason: `${l.reason}; policy has no targets, staging is its only copy` });
  }
  return out;
}

function pruneStagingVm(cfg: HostConfig, vm: string, opts: PruneOptions, report: PruneReport, repoRemoved: string[]): void {
  const staging = cfg.staging.path;
  const protectedSet = readProtected(staging);
  const backups = listBackups(staging, vm);
  const decisions = stagingDecisions(cfg, vm, backups, protectedSet);
  for (const b of [...backups].reverse()) {
    const d = decisions.get(b.id)!;
    const line: PruneLine = { where: "staging", vm, id: b.id, kind: "backup", keep: d.keep, reason: d.reason };
    if (!d.keep && !opts.dryRun) {
      const lock = tryLock(staging, vm, b.id);
      if (typeof lock === "string") {
        line.keep = true;
        line.reason = `kept for now: ${lock} (${d.reason})`;
      } else {
        try {
          trashAndDelete(b.dir);
          // Its data in the staging repository is forgotten after every VM's directories (forgetInStaging).
          if (b.manifest.format === "repository") repoRemoved.push(b.id);
        } catch (e) {
          line.error = (e as Error).message;
        } finally {
          lock.release();
        }
      }
    }
    emit(report, opts, line);
  }
  const newest = backups.at(-1)?.id;
  for (const p of listPartials(staging, vm)) {
    const id = basename(p).slice(0, -PARTIAL_SUFFIX.length);
    if (newest === undefined || !(id < newest)) continue;
    const line: PruneLine = { where: "staging", vm, id, kind: "partial", keep: false, reason: `removed: unfinished backup older than the newest complete backup ${newest}` };
    if (!opts.dryRun) {
      try {
        trashAndDelete(p);
      } catch (e) {
        line.error = (e as Error).message;
      }
    }
    emit(report, opts, line);
  }
  for (const t of listTrash(staging, vm)) {
    const line: PruneLine = { where: "staging", vm, id: basename(t).slice(TRASH_PREFIX.length), kind: "trash", keep: false, reason: "removed: left over from an interrupted removal" };
    if (!opts.dryRun) rmSync(t, { recursive: true, force: true });
    emit(report, opts, line);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Targets

async function policyOnTarget(cfg: HostConfig, vm: string, id: string, readText: () => Promise<string>): Promise<string | undefined> {
  try {
    return readManifest(join(cfg.staging.path, vm, id)).policy;
  } catch {
    /* not in staging any more: ask the target */
  }
  try {
    const m = Manifest.safeParse(JSON.parse(await readText()));
    return m.success ? m.data.policy : undefined;
  } catch (e) {
    if (e instanceof TargetError) throw e;
    return undefined;
  }
}

async function pruneTargetVm(cfg: HostConfig, name: string, vm: string, opts: PruneOptions, report: PruneReport, repo: RepositoryPruner | null): Promise<void> {
  const staging = cfg.staging.path;
  const target = openTarget(cfg, name);
  const files = await target.list(vm);
  // Both formats of a VM on this target are one history for retention (a policy may have changed format).
  const inRepo = new Map((repo?.backups(vm) ?? []).map((b) => [b.id, b]));
  const listing = { ...files, backups: [...new Set([...files.backups, ...inRepo.keys()])].sort() };
  const protectedSet = readProtected(staging);
  const damaged = readDamaged(staging, name);
  const cands: Candidate[] = [];
  for (const id of listing.backups) {
    cands.push({
      id,
      policy: inRepo.has(id) ? inRepo.get(id)!.policy : await policyOnTarget(cfg, vm, id, () => target.readManifestText(vm, id)),
      protected: readState(join(staging, vm, id)).protected || protectedSet.has(protectedKey(vm, id)),
    });
  }
  const decisions = decideByPolicy(cands, (p) => (cfg.policies[p]?.targets.includes(name) ? cfg.policies[p]!.retention : undefined));
  // The newest copy on this target that is not known to be damaged stays, whatever the rules say.
  const isDamaged = (id: string) => `${vm}/${id}` in damaged || readState(join(staging, vm, id)).targets[name]?.verified === false;
  const newestVerified = [...listing.backups].reverse().find((id) => !isDamaged(id));
  for (const id of [...listing.backups].reverse()) {
    const d = decisions.get(id)!;
    const line: PruneLine = { where: name, vm, id, kind: "backup", keep: d.keep, reason: d.reason };
    if (!d.keep && id === newestVerified) {
      line.keep = true;
      line.reason = `kept: newest verified backup on this target (${d.reason})`;
    }
    if (!line.keep && !opts.dryRun) {
      const lock = tryLock(staging, vm, id);
      if (typeof lock === "string") {
        line.keep = true;
        line.reason = `kept for now: ${lock} (${d.reason})`;
      } else {
        try {
          const rb = inRepo.get(id);
          if (rb) await repo!.remove(rb, `removing ${vm}/${id} from ${name}`);
          else await target.remove(vm, id, "final");
        } catch (e) {
          line.error = (e as Error).message;
        } finally {
          lock.release();
        }
      }
    }
    emit(report, opts, line);
  }
  const newest = listing.backups.at(-1);
  for (const id of listing.incoming) {
    if (newest === undefined || !(id < newest)) continue;
    const line: PruneLine = { where: name, vm, id, kind: "partial", keep: false, reason: `removed: unfinished copy older than the newest complete backup ${newest}` };
    if (!opts.dryRun) {
      const lock = tryLock(staging, vm, id);
      if (typeof lock === "string") {
        line.keep = true;
        line.reason = `kept for now: ${lock}`;
      } else {
        try {
          await target.remove(vm, id, "incoming");
        } catch (e) {
          line.error = (e as Error).message;
        } finally {
          lock.release();
        }
      }
    }
    emit(report, opts, line);
  }
  for (const b of repo?.leftovers(vm) ?? []) {
    if (newest === undefined || !(b.id < newest)) continue;
    const line: PruneLine = { where: name, vm, id: b.id, kind: "partial", keep: false, reason: `removed: unfinished copy in the repository, older than the newest complete backup ${newest}` };
    if (!opts.dryRun) {
      try {
        await repo!.remove(b, `removing the unfinished copy ${vm}/${b.id} from ${name}`);
      } catch (e) {
        line.error = (e as Error).message;
      }
    }
    emit(report, opts, line);
  }
  for (const id of listing.trash) {
    const line: PruneLine = { where: name, vm, id, kind: "trash", keep: false, reason: "removed: left over from an interrupted removal" };
    if (!opts.dryRun) {
      try {
        await target.removeTrash(vm, id);
      } catch (e) {
        line.error = (e as Error).message;
      }
    }
    emit(report, opts, line);
  }
}

export async function pruneAll(cfg: HostConfig, opts: PruneOptions): Promise<PruneReport> {
  const report: PruneReport = { lines: [], failedTargets: [] };
  const vms = opts.vms ?? Object.keys(cfg.vms);
  if (opts.staging ?? true) {
    const repoRemoved = new Map<string, string[]>();
    for (const vm of vms) {
      const removed: string[] = [];
      pruneStagingVm(cfg, vm, opts, report, removed);
      repoRemoved.set(vm, removed);
    }
    await forgetInStaging(cfg, repoRemoved, opts, report);
  }
  for (const name of opts.targets ?? usedTargets(cfg)) {
    const target = openTarget(cfg, name);
    try {
      await target.check();
      const repo = await RepositoryPruner.target(cfg, name);
      for (const vm of vms) await pruneTargetVm(cfg, name, vm, opts, report, repo);
      if (!opts.dryRun) await repo?.finish(opts.log.child({ target: name }));
    } catch (e) {
      if (!(e instanceof TargetError)) throw e;
      opts.log.error("prune.target-failed", `${(e as KvmBackupError).message}; nothing more is removed there in this run`, { target: name });
      report.failedTargets.push({ target: name, message: e.message });
    }
  }
  return report;
}

/**
 * The staging repository's side of staging prune: the snapshots of the repository backups whose directories were
 * just removed, and leftovers of unfinished backups older than the VM's newest complete one (a backup running
 * now is newer, so it is never touched); then one `restic prune`. A failure here leaves snapshots without a
 * backup directory, which are never a backup and are removed by the next prune or backup run.
 */
async function forgetInStaging(cfg: HostConfig, removed: Map<string, string[]>, opts: PruneOptions, report: PruneReport): Promise<void> {
  let repo: RepositoryPruner | null;
  try {
    repo = await RepositoryPruner.staging(cfg);
  } catch (e) {
    if ([...removed.values()].some((ids) => ids.length)) {
      const line: PruneLine = { where: "staging", vm: "-", id: "repository", kind: "trash", keep: false, reason: "removed backups' data in the staging repository", error: (e as Error).message };
      emit(report, opts, line);
    }
    return;
  }
  if (!repo) return;
  for (const [vm, ids] of removed) {
    const complete = new Set(listBackups(cfg.staging.path, vm).map((b) => b.id));
    const newest = [...complete].sort().at(-1);
    const gone = ids.map((id) => ({ id, reason: "removed: the data of the removed backup in the staging repository" }));
    for (const b of repo.leftovers(vm).concat(repo.backups(vm))) {
      if (complete.has(b.id) || ids.includes(b.id) || newest === undefined || !(b.id < newest)) continue;
      gone.push({ id: b.id, reason: `removed: snapshots in the staging repository without a backup directory, older than the newest complete backup ${newest}` });
    }
    for (const g of gone) {
      const b = repo.find(vm, g.id);
      if (!b) continue;
      const line: PruneLine = { where: "staging", vm, id: g.id, kind: "trash", keep: false, reason: g.reason };
      if (!opts.dryRun) {
        try {
          await repo.remove(b, `removing ${vm}/${g.id} from the staging repository`);
        } catch (e) {
          line.error = (e as Error).message;
        }
      }
      emit(report, opts, line);
    }
  }
  if (!opts.dryRun) {
    try {
      await repo.finish(opts.log);
    } catch (e) {
      emit(report, opts, { where: "staging", vm: "-", id: "repository", kind: "trash", keep: false, reason: "restic prune of the staging repository", error: (e as Error).message });
    }
  }
}

/** One line of `prune --dry-run` / `prune` output. */
export function formatPruneLine(l: PruneLine): string {
  const what = l.kind === "backup" ? l.id : `${l.id} (${l.kind})`;
  return `${l.where.padEnd(10)} ${l.vm}/${what.padEnd(18)} ${l.keep ? "keep  " : "remove"} ${l.reason}${l.error ? ` -- FAILED: ${l.error}` : ""}`;
}

// ---------------------------------------------------------------------------------------------------------------
// After the backups of `kvm-backup run`: ship, then prune. Prune runs even when a target failed (it never removes
// what is not shipped), so staging and the healthy targets are still kept in check.

export async function shipThenPrune(cfg: HostConfig, log: Logger, opts: { vms?: string[] } = {}): Promise<{ ok: boolean }> {
  const shipped = await shipAll(cfg, { log, vms: opts.vms });
  const report = await pruneAll(cfg, { log, dryRun: false, vms: opts.vms });
  const ok = !shipped.some((o) => o.result === "failed") && report.failedTargets.length === 0 && !report.lines.some((l) => l.error);
  return { ok };
}
