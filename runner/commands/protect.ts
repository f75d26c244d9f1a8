import { existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { protectedKey, readProtected, updateState, writeProtected } from "../backupState.ts";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { MANIFEST_FILE } from "../manifest.ts";
import { backupDir, ID_RE } from "../staging.ts";
import type { Command } from "./command.ts";

export const protect: Command = {
  name: "protect",
  summary: "protect a backup from pruning (in staging and on every target), or lift it with --remove",
  usage:
    "kvm-backup protect [--vm NAME] [--remove] ID\n" +
    "  A protected backup is never removed by prune and counts for no retention rule. --vm is needed when\n" +
    "  several VMs have a backup with this id or none is in staging any more.",
  async run(argv, ctx) {
    const { values, positionals } = parseArgs({ args: argv, options: { vm: { type: "string" }, remove: { type: "boolean", default: false } }, allowPositionals: true });
    const [id, ...extra] = positionals;
    if (!id || extra.length) throw new UsageError("give exactly one backup id, e.g. kvm-backup protect --vm web01 20261127T020000Z");
    if (!ID_RE.test(id)) throw new UsageError(`"${id}" is not a backup id (like 20261127T020000Z); \`kvm-backup status\` lists them`);
    const cfg = loadHostConfig(ctx.configFile);
    const staging = cfg.staging.path;
    let vms: string[];
    if (values.vm !== undefined) {
      if (!(values.vm in cfg.vms)) throw new UsageError(`unknown VM "${values.vm}" (known: ${Object.keys(cfg.vms).join(", ") || "none"})`);
      vms = [values.vm];
    } else {
      vms = Object.keys(cfg.vms).filter((vm) => existsSync(`${backupDir(staging, vm, id)}/${MANIFEST_FILE}`));
      if (vms.length === 0) throw new UsageError(`no backup ${id} in staging; if it is only on a target, name its VM: kvm-backup protect --vm VM ${id}`);
      if (vms.length > 1) throw new UsageError(`several VMs have a backup ${id} (${vms.join(", ")}); choose one with --vm`);
    }
    const vm = vms[0]!;
    const on = !values.remove;
    const keys = readProtected(staging);
    if (on) keys.add(protectedKey(vm, id));
    else keys.delete(protectedKey(vm, id));
    writeProtected(staging, keys);
    const dir = backupDir(staging, vm, id);
    const inStaging = existsSync(`${dir}/${MANIFEST_FILE}`);
    if (inStaging) updateState(dir, (s) => void (s.protected = on));
    ctx.stdout(`${vm}/${id}: ${on ? "protected" : "no longer protected"}${inStaging ? "" : " (not in staging; applies on the targets that hold it)"}\n`);
    return ExitCode.ok;
  },
};
