import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { UsageError } from "../errors.ts";
import { verifyTargetCommand } from "../targets/verifyCopies.ts";
import type { Command } from "./command.ts";

/** Same as `kvm-backup verify --target NAME`, under its own name. */
export const verifyTarget: Command = {
  name: "verify-target",
  summary: "check the backups on a target against their manifests, on the target's side (exit 1 if any is damaged)",
  usage: "kvm-backup verify-target --target NAME [--vm NAME ...] [--id ID]\n  Same as: kvm-backup verify --target NAME [--vm NAME ...] (ID | --all)",
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { target: { type: "string" }, vm: { type: "string", multiple: true }, id: { type: "string" } } });
    const cfg = loadHostConfig(ctx.configFile);
    if (!values.target) throw new UsageError(`--target NAME is required (known: ${Object.keys(cfg.targets).join(", ") || "none"})`);
    for (const v of values.vm ?? []) if (!(v in cfg.vms)) throw new UsageError(`unknown VM "${v}" (known: ${Object.keys(cfg.vms).join(", ") || "none"})`);
    return verifyTargetCommand(cfg, values.target, { log: ctx.log.child({ host: cfg.host }), vms: values.vm, id: values.id, stdout: ctx.stdout });
  },
};
