import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { verifyTarget as verifyOn } from "../targets/verifyCopies.ts";
import type { Command } from "./command.ts";

export const verifyTarget: Command = {
  name: "verify-target",
  summary: "check the backups on a target against their manifests, on the target's side (exit 1 if any is damaged)",
  usage: "kvm-backup verify-target --target NAME [--vm NAME ...] [--id ID]",
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { target: { type: "string" }, vm: { type: "string", multiple: true }, id: { type: "string" } } });
    const cfg = loadHostConfig(ctx.configFile);
    if (!values.target) throw new UsageError(`--target NAME is required (known: ${Object.keys(cfg.targets).join(", ") || "none"})`);
    if (!(values.target in cfg.targets)) throw new UsageError(`unknown target "${values.target}" (known: ${Object.keys(cfg.targets).join(", ") || "none"})`);
    for (const v of values.vm ?? []) if (!(v in cfg.vms)) throw new UsageError(`unknown VM "${v}" (known: ${Object.keys(cfg.vms).join(", ") || "none"})`);
    const outcomes = await verifyOn(cfg, values.target, { log: ctx.log.child({ host: cfg.host }), vms: values.vm, id: values.id });
    for (const o of outcomes) ctx.stdout(`${values.target} ${o.vm}/${o.id} ${o.result}${o.message ? `: ${o.message}` : ""}\n`);
    if (values.id !== undefined && outcomes.length === 0) throw new UsageError(`target "${values.target}" holds no backup ${values.id}`);
    return outcomes.some((o) => o.result !== "ok") ? ExitCode.backupFailed : ExitCode.ok;
  },
};
