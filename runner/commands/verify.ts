import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { LockedError } from "../lock.ts";
import { lockBackup } from "../ship.ts";
import { ID_RE, listBackups, type StoredBackup } from "../staging.ts";
import { verifyDisk } from "../verifyBackup.ts";
import { verifyTargetCommand } from "../targets/verifyCopies.ts";
import { verifyRepositoryDisk } from "../repository/readRepository.ts";
import { stagingRepository } from "../repository/repositories.ts";
import { READ_DATA_SUBSET_RE, type Restic } from "../repository/restic.ts";
import type { Command } from "./command.ts";
import { selectVms } from "./vmSelection.ts";

export const verify: Command = {
  name: "verify",
  summary: "decompress staged backups and check every SHA-256 against the manifest (exit 1 if any is damaged)",
  usage:
    "kvm-backup verify [--vm NAME ...] [--target NAME] [--read-data-subset N%] (ID | --all)\n  ID may be VM/ID. Prints one line per disk: ok, or DAMAGED with what differs.\n  --target: check the copies on that target instead, on the target's side (size and SHA-256 of every file).\n" +
    "  Repository format: each disk is read back out of the repository and compared with its SHA-256; on a target,\n" +
    "  the snapshots are compared with the manifest. Then `restic check` runs once per repository, reading this\n" +
    "  share of the repository's data too (restic's --read-data-subset: 5%, 1/10, 2G; default: staging none, targets 5%).",
  async run(argv, ctx) {
    const { values, positionals } = parseArgs({ args: argv, options: { vm: { type: "string", multiple: true }, all: { type: "boolean", default: false }, target: { type: "string" }, "read-data-subset": { type: "string" } }, allowPositionals: true });
    const subset = values["read-data-subset"];
    if (subset !== undefined && !READ_DATA_SUBSET_RE.test(subset)) throw new UsageError(`--read-data-subset "${subset}" is not a share restic understands: a percent (5%), a fraction n/t (1/10) or a size (2G)`);
    if ((positionals.length !== 1) === !values.all || positionals.length > 1) throw new UsageError("give one backup id (or VM/ID), or --all");
    const cfg = loadHostConfig(ctx.configFile);
    let vms = selectVms(cfg, values.vm);
    let id: string | null = null;
    if (positionals[0]) {
      const [a, b] = positionals[0].split("/");
      if (b !== undefined) vms = selectVms(cfg, [a!]);
      id = b ?? a!;
      if (!ID_RE.test(id)) throw new UsageError(`"${id}" is not a backup id (like 20261127T020000Z); \`kvm-backup list\` shows them`);
    }
    if (values.target !== undefined) return verifyTargetCommand(cfg, values.target, { log: ctx.log.child({ host: cfg.host }), vms, id: id ?? undefined, stdout: ctx.stdout, readDataSubset: subset });
    const backups: StoredBackup[] = vms.flatMap((vm) => listBackups(cfg.staging.path, vm)).filter((b) => id === null || b.id === id);
    if (!backups.length) throw new UsageError(id ? `no complete backup ${id} in staging ${cfg.staging.path}` : `no complete backups in staging ${cfg.staging.path}`);
    const log = ctx.log.child({ host: cfg.host });
    let bad = 0;
    let repo: Restic | undefined;
    for (const b of backups) {
      let lock;
      try {
        lock = lockBackup(cfg.staging.path, b.vm, b.id, "verify");
      } catch (e) {
        if (!(e instanceof LockedError)) throw e;
        bad++;
        ctx.stdout(`${b.vm}/${b.id} NOT CHECKED: ${e.message}\n`);
        continue;
      }
      try {
        const m = b.manifest;
        const verdicts = m.format === "repository" ? m.disks.map((d) => async () => verifyRepositoryDisk((repo ??= stagingRepository(cfg)), d.repository.snapshot, d)) : m.disks.map((d) => async () => verifyDisk({ ...b, manifest: m }, d));
        for (const [i, d] of m.disks.entries()) {
          const v = await verdicts[i]!();
          if (!v.ok) {
            bad++;
            log.error("verify.damaged", `${b.vm}/${b.id} disk ${d.name}: ${v.problem}`, { vm: b.vm, id: b.id, disk: d.name });
          }
          ctx.stdout(`${b.vm}/${b.id} ${d.name} ${v.ok ? "ok" : `DAMAGED: ${v.problem}`}\n`);
        }
      } finally {
        lock.release();
      }
    }
    if (repo) {
      // The repository's own structure (and a share of its data), once for all its backups.
      const problem = await repo.check(subset, "verify");
      if (problem !== null) {
        bad++;
        log.error("verify.damaged", `${repo.where}: restic check failed: ${problem}`);
      }
      ctx.stdout(`${repo.where} ${problem === null ? "ok" : `DAMAGED: restic check failed: ${problem}`}\n`);
    }
    return bad ? ExitCode.backupFailed : ExitCode.ok;
  },
};
