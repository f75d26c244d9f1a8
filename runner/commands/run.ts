import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, KvmBackupError, UsageError } from "../errors.ts";
import { overallExitCode, runBackups } from "../pipeline.ts";
import { shipThenPrune } from "../prune.ts";
import { removeDrillLeftoversBeforeRun } from "../drill/scratch.ts";
import type { Command } from "./command.ts";
import { selectVms } from "./vmSelection.ts";

export const run: Command = {
  name: "run",
  summary: "back up VMs now: snapshot, stream to staging, remove the snapshot, then ship and prune",
  usage:
    "kvm-backup run [--policy NAME] [--vm NAME ...] [--no-ship]\n" +
    "  Without --vm: every VM of the config. Without --policy: each VM's first policy; with it, only VMs using it.\n" +
    "  --no-ship: stage the backups only (ship and prune later with `kvm-backup ship` / `prune`).\n" +
    "  Exit 0 all backed up; 1 a backup (or shipping) failed; 3 every failure was a preflight (nothing changed).",
  async run(argv, ctx) {
    const { values } = parseArgs({
      args: argv,
      options: { policy: { type: "string" }, vm: { type: "string", multiple: true }, "no-ship": { type: "boolean", default: false } },
    });
    const cfg = loadHostConfig(ctx.configFile);
    if (values.policy !== undefined && !(values.policy in cfg.policies)) {
      throw new UsageError(`unknown policy "${values.policy}" (known: ${Object.keys(cfg.policies).join(", ") || "none"})`);
    }
    let vms = selectVms(cfg, values.vm);
    if (values.policy) {
      const p = values.policy;
      vms = vms.filter((v) => ([] as string[]).concat(cfg.vms[v]!.policy).includes(p));
      if (!vms.length) throw new UsageError(`no selected VM uses the policy "${p}"`);
    }
    const log = ctx.log.child({ host: cfg.host });
    const ctrl = new AbortController();
    const onSignal = (sig: NodeJS.Signals) => {
      log.warn("run.signal", `received ${sig}: stopping the stream and removing the snapshot`);
      ctrl.abort(new KvmBackupError(`interrupted by ${sig}; the snapshot was removed and nothing was committed`));
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    try {
      await removeDrillLeftoversBeforeRun(cfg, vms, log);
      const results = await runBackups(cfg, { vms, policy: values.policy }, { log, signal: ctrl.signal });
      for (const r of results) ctx.stdout(`${r.vm} ${r.ok ? `ok ${r.id}` : `FAILED: ${r.error}`}\n`);
      let code = overallExitCode(results);
      if (!values["no-ship"] && !ctrl.signal.aborted) {
        const shipped = await shipThenPrune(cfg, log, { vms });
        if (!shipped.ok && code === ExitCode.ok) code = ExitCode.backupFailed;
      }
      return code;
    } finally {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    }
  },
};
