/**
 * Prune for the repository format: prune.ts decides (the same retention function, the same rules about what is
 * never removed); this applies its decisions to a restic repository with `restic forget <snapshot ids>` and,
 * once at the end, `restic prune`. restic's own --keep-* rules are never used.
 *
 * A backup is removed manifest snapshot first: from that moment it is no longer a backup (an id without its
 * manifest snapshot never is), so a run killed in between leaves only a leftover, which the next prune removes.
 */
import { policyFormat, type HostConfig } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { groupBackups, type RepositoryBackup } from "./backups.ts";
import { stagingRepository, stagingRepositoryPath, targetRepository } from "./repositories.ts";
import type { Restic } from "./restic.ts";
import { existsSync } from "node:fs";

export class RepositoryPruner {
  private removed = 0;

  private constructor(
    readonly repo: Restic,
    private readonly all: RepositoryBackup[],
  ) {}

  /** The staging repository, if there is one. */
  static async staging(cfg: HostConfig): Promise<RepositoryPruner | null> {
    if (!existsSync(stagingRepositoryPath(cfg.staging.path)) || cfg.repositoryPasswordFile === undefined) return null;
    const repo = stagingRepository(cfg);
    return new RepositoryPruner(repo, groupBackups(await repo.snapshots("listing the staging repository for prune")));
  }

  /** A target's repository, if a repository-format policy ships there and the repository exists. */
  static async target(cfg: HostConfig, name: string): Promise<RepositoryPruner | null> {
    const used = Object.values(cfg.policies).some((p) => policyFormat(p) === "repository" && p.targets.includes(name));
    if (!used) return null;
    const repo = targetRepository(cfg, name);
    if (!(await repo.exists())) return null;
    return new RepositoryPruner(repo, groupBackups(await repo.snapshots(`listing target ${name} for prune`)));
  }

  /** Complete backups (with their manifest snapshot) of a VM, oldest first. */
  backups(vm: string): RepositoryBackup[] {
    return this.all.filter((b) => b.vm === vm && b.manifest !== undefined);
  }

  /** Snapshots of ids without a manifest snapshot: unfinished copies or backups, never backups. */
  leftovers(vm: string): RepositoryBackup[] {
    return this.all.filter((b) => b.vm === vm && b.manifest === undefined);
  }

  find(vm: string, id: string): RepositoryBackup | undefined {
    return this.all.find((b) => b.vm === vm && b.id === id);
  }

  /** Forget a backup: its manifest snapshot first, then the rest. */
  async remove(b: RepositoryBackup, what: string): Promise<void> {
    if (b.manifest) await this.repo.forget([b.manifest.id], what);
    const rest = b.all.filter((s) => s !== b.manifest).map((s) => s.id);
    await this.repo.forget(rest, what);
    this.removed++;
  }

  /** `restic prune` once, if anything was forgotten: frees the space of chunks no snapshot uses any more. */
  async finish(log: Logger): Promise<void> {
    if (!this.removed) return;
    const started = Date.now();
    await this.repo.prune(`pruning ${this.repo.where}`);
    log.info("prune.repository", `${this.repo.where}: restic prune removed the data of ${this.removed} backup(s) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
}
