import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { policyFormat, policyNames } from "../config/schema.ts";
import { ExitCode } from "../errors.ts";
import { backendFor, lockVm, removePartials } from "../pipeline.ts";
import { removeDrillLeftovers } from "../drill/scratch.ts";
import { repositoryFormat } from "../formats/repositoryFormat.ts";
import { listBackups } from "../staging.ts";
import type { Command } from "./command.ts";
import { selectVms } from "./vmSelection.ts";

export const recover: Command = {
  name: "recover",
  summary: "repair what an interrupted run left: commit overlays back, remove snapshots and unfinished backups",
  usage: "kvm-backup recover [--vm NAME ...]\n  `run` does this first by itself; this is the same step alone. Prints what it repaired.",
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { vm: { type: "string", multiple: true } } });
    const cfg = loadHostConfig(ctx.configFile);
    const log = ctx.log.child({ host: cfg.host });
    let failed = false;
    for (const vm of selectVms(cfg, values.vm)) {
      const policyName = policyNames(cfg.vms[vm]!)[0]!;
      const policy = cfg.policies[policyName]!;
      const vlog = log.child({ vm });
      let lock = null;
      try {
        lock = lockVm(cfg.staging.path, vm, "recover");
        const done = await backendFor(policy.method).recover({ config: cfg, vm, vmConfig: cfg.vms[vm]!, policyName, policy, backupId: "recover", log: vlog });
        done.push(...removePartials(cfg.staging.path, vm, vlog));
        // Snapshots of unfinished backups in the staging repository (format: repository).
        if (policyNames(cfg.vms[vm]!).some((p) => policyFormat(cfg.policies[p]!) === "repository")) {
          done.push(...(await repositoryFormat.recover({ config: cfg, vm, policyName, policy, backupId: "recover", log: vlog }, new Set(listBackups(cfg.staging.path, vm).map((b) => b.id)))));
        }
        done.push(...(await removeDrillLeftovers(cfg.libvirtUri, cfg.staging.path, vm, vlog)));
        ctx.stdout(done.length ? done.map((d) => `${vm}: ${d}\n`).join("") : `${vm}: nothing to repair\n`);
      } catch (e) {
        failed = true;
        vlog.error("recover.failed", `recovery of VM ${vm} failed: ${(e as Error).message}`);
      } finally {
        lock?.release();
      }
    }
    return failed ? ExitCode.backupFailed : ExitCode.ok;
  },
};
