/**
 * verify --target for the repository format: every complete backup in the target's repository is compared with
 * its manifest (the staging copy's, or else the one in the repository): each disk's snapshot must be a copy of
 * the manifest's snapshot with the same tree. Then `restic check` once, reading a share of the data
 * (--read-data-subset, default 5 %): chunks are content-addressed (SHA-256), so what it reads is checked
 * against its own id. Outcomes are recorded like those of image copies (damaged.json, the staging state).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { targetState, updateState } from "../backupState.ts";
import { policyFormat, type HostConfig } from "../config/schema.ts";
import { LockedError } from "../lock.ts";
import type { Logger } from "../log.ts";
import { MANIFEST_FILE, type RepositoryManifest } from "../manifest.ts";
import { lockBackup } from "../ship.ts";
import { listBackups } from "../staging.ts";
import { clearDamaged, markDamaged } from "../targets/damaged.ts";
import type { VerifyOutcome } from "../targets/verifyCopies.ts";
import { groupBackups, readRepositoryManifest } from "./backups.ts";
import { manifestProblems } from "./readRepository.ts";
import { targetRepository } from "./repositories.ts";

export const TARGET_READ_DATA_SUBSET = "5%";

function record(staging: string, name: string, vm: string, id: string, problem: string | null): void {
  const staged = listBackups(staging, vm).find((b) => b.id === id);
  if (problem === null) clearDamaged(staging, name, `${vm}/${id}`);
  else markDamaged(staging, name, `${vm}/${id}`, [problem]);
  if (!staged || !existsSync(join(staged.dir, MANIFEST_FILE))) return;
  updateState(staged.dir, (s) => {
    const t = targetState(s, name);
    if (problem === null) {
      t.verifiedAt = new Date().toISOString();
      if (t.shippedAt) t.verified = true;
    } else {
      t.verified = false;
      t.lastError = { at: new Date().toISOString(), message: problem };
    }
  });
}

export async function verifyRepositoryCopies(cfg: HostConfig, name: string, opts: { log: Logger; vms?: string[]; id?: string; readDataSubset?: string }): Promise<VerifyOutcome[]> {
  if (!Object.values(cfg.policies).some((p) => policyFormat(p) === "repository" && p.targets.includes(name))) return [];
  const staging = cfg.staging.path;
  const repo = targetRepository(cfg, name);
  if (!(await repo.exists())) return [];
  const snaps = await repo.snapshots(`verifying ${name}`);
  const out: VerifyOutcome[] = [];
  const checked: VerifyOutcome[] = [];
  for (const vm of opts.vms ?? Object.keys(cfg.vms)) {
    for (const b of groupBackups(snaps, vm).filter((x) => x.manifest !== undefined)) {
      if (opts.id !== undefined && b.id !== opts.id) continue;
      let lock;
      try {
        lock = lockBackup(staging, vm, b.id, `verify on ${name}`);
      } catch (e) {
        if (!(e instanceof LockedError)) throw e;
        out.push({ vm, id: b.id, result: "skipped", message: e.message });
        continue;
      }
      try {
        const staged = listBackups(staging, vm).find((x) => x.id === b.id);
        let m: RepositoryManifest | null = staged?.manifest.format === "repository" ? staged.manifest : null;
        let problem: string | null = null;
        try {
          m ??= await readRepositoryManifest(repo, b);
        } catch (e) {
          problem = (e as Error).message;
        }
        if (m) {
          const p = manifestProblems(b, m);
          if (p.length) problem = `target "${name}": ${vm}/${b.id} differs from its manifest: ${p.join("; ")}`;
        }
        record(staging, name, vm, b.id, problem);
        const o: VerifyOutcome = problem === null ? { vm, id: b.id, result: "ok" } : { vm, id: b.id, result: "damaged", message: problem };
        if (problem !== null) opts.log.error("verify.damaged", problem, { vm });
        else checked.push(o);
        out.push(o);
      } finally {
        lock.release();
      }
    }
  }
  const subset = opts.readDataSubset ?? TARGET_READ_DATA_SUBSET;
  const failed = await repo.check(subset, `verifying ${name}`);
  if (failed !== null) {
    // Which backups lost data is not known from a failed check: none of this repository's backups counts as
    // verified until a check passes again (`restic check` on the repository shows the details).
    const msg = `restic check --read-data-subset=${subset} of ${repo.where} failed: ${failed}; run restic check there to see which data is damaged`;
    opts.log.error("verify.damaged", msg);
    for (const o of checked) {
      o.result = "damaged";
      o.message = msg;
      record(staging, name, o.vm, o.id, msg);
    }
  } else {
    opts.log.info("verify.ok", `${repo.where}: restic check --read-data-subset=${subset} passed`);
  }
  return out;
}
