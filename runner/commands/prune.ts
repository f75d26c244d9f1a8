import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { formatPruneLine, pruneAll } from "../prune.ts";
import type { Command } from "./command.ts";

export const prune: Command = {
  name: "prune",
  summary: "remove backups retention no longer keeps, in staging and on every target (--dry-run: only explain)",
  usage:
    "kvm-backup prune [--dry-run] [--vm NAME ...] [--target NAME ... | --staging-only]\n" +
    "  Prints one line per backup: where, VM/id, keep or remove, and the reason.",
  async run(argv, ctx) {
    const { values } = parseArgs({
      args: argv,
      options: {
        "dry-run": { type: "boolean", default: false },
        vm: { type: "string", multiple: true },
        target: { type: "string", multiple: true },
        "staging-only": { type: "boolean", default: false },
      },
    });
    const cfg = loadHostConfig(ctx.configFile);
    for (const t of values.target ?? []) if (!(t in cfg.targets)) throw new UsageError(`unknown target "${t}" (known: ${Object.keys(cfg.targets).join(", ") || "none"})`);
    for (const v of values.vm ?? []) if (!(v in cfg.vms)) throw new UsageError(`unknown VM "${v}" (known: ${Object.keys(cfg.vms).join(", ") || "none"})`);
    const dryRun = values["dry-run"] ?? false;
    if (dryRun) ctx.stdout("dry run: nothing is removed\n");
    const report = await pruneAll(cfg, {
      log: ctx.log.child({ host: cfg.host }),
      dryRun,
      vms: values.vm,
      targets: values["staging-only"] ? [] : values.target,
      // Only targets named: leave staging alone.
      staging: values.target === undefined,
      onLine: (l) => ctx.stdout(formatPruneLine(l) + "\n"),
    });
    for (const f of report.failedTargets) ctx.stdout(`${f.target.padEnd(10)} NOT PRUNED: ${f.message}\n`);
    return report.failedTargets.length || report.lines.some((l) => l.error) ? ExitCode.backupFailed : ExitCode.ok;
  },
};
