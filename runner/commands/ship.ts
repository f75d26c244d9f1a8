import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { shipAll } from "../ship.ts";
import type { Command } from "./command.ts";

export const ship: Command = {
  name: "ship",
  summary: "copy staged backups to their targets, verify them there (exit 1 if any target failed)",
  usage: "kvm-backup ship [--target NAME ...] [--vm NAME ...]\n  Ships every complete backup in staging that a target of its policy does not hold yet.",
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { target: { type: "string", multiple: true }, vm: { type: "string", multiple: true } } });
    const cfg = loadHostConfig(ctx.configFile);
    for (const t of values.target ?? []) if (!(t in cfg.targets)) throw new UsageError(`unknown target "${t}" (known: ${Object.keys(cfg.targets).join(", ") || "none"})`);
    for (const v of values.vm ?? []) if (!(v in cfg.vms)) throw new UsageError(`unknown VM "${v}" (known: ${Object.keys(cfg.vms).join(", ") || "none"})`);
    const outcomes = await shipAll(cfg, { log: ctx.log.child({ host: cfg.host }), targets: values.target, vms: values.vm });
    for (const o of outcomes) ctx.stdout(`${o.target} ${o.vm}/${o.id} ${o.result}${o.message ? `: ${o.message}` : ""}\n`);
    return outcomes.some((o) => o.result === "failed") ? ExitCode.backupFailed : ExitCode.ok;
  },
};
