import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { LockedError } from "../lock.ts";
import { lockBackup } from "../ship.ts";
import { ID_RE, listBackups, type StoredBackup } from "../staging.ts";
import { verifyDisk } from "../verifyBackup.ts";
import { verifyTargetCommand } from "../targets/verifyCopies.ts";
import type { Command } from "./command.ts";
import { selectVms } from "./vmSelection.ts";

export const verify: Command = {
  name: "verify",
  summary: "decompress staged backups and check every SHA-256 against the manifest (exit 1 if any is damaged)",
  usage: "kvm-backup verify [--vm NAME ...] [--target NAME] (ID | --all)\n  ID may be VM/ID. Prints one line per disk: ok, or DAMAGED with what differs.\n  --target: check the copies on that target instead, on the target's side (size and SHA-256 of every file).",
  async run(argv, ctx) {
    const { values, positionals } = parseArgs({ args: argv, options: { vm: { type: "string", multiple: true }, all: { type: "boolean", default: false }, target: { type: "string" } }, allowPositionals: true });
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
    if (values.target !== undefined) return verifyTargetCommand(cfg, values.target, { log: ctx.log.child({ host: cfg.host }), vms, id: id ?? undefined, stdout: ctx.stdout });
    const backups: StoredBackup[] = vms.flatMap((vm) => listBackups(cfg.staging.path, vm)).filter((b) => id === null || b.id === id);
    if (!backups.length) throw new UsageError(id ? `no complete backup ${id} in staging ${cfg.staging.path}` : `no complete backups in staging ${cfg.staging.path}`);
    const log = ctx.log.child({ host: cfg.host });
    let bad = 0;
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
        for (const d of b.manifest.disks) {
          const v = await verifyDisk(b, d);
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
    return bad ? ExitCode.backupFailed : ExitCode.ok;
  },
};
