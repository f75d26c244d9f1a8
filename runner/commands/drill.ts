import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { DurationSyntaxError, parseDuration } from "../config/duration.ts";
import { ExitCode, KvmBackupError, UsageError } from "../errors.ts";
import { drillVm, type DrillOutcome } from "../drill/drill.ts";
import { ID_RE } from "../staging.ts";
import type { Command } from "./command.ts";
import { selectVms } from "./vmSelection.ts";

function durationMs(value: string, option: string): number {
  try {
    return parseDuration(value) * 1000;
  } catch (e) {
    if (e instanceof DurationSyntaxError) throw new UsageError(`${option}: ${e.message}`);
    throw e;
  }
}

export const drill: Command = {
  name: "drill",
  summary: "restore drill: boot the newest backup in a scratch domain without network, wait for the guest to answer, remove it",
  usage:
    "kvm-backup drill [--vm NAME ... | --policy NAME] [--id ID] [--from staging|TARGET] [--timeout DURATION] [--wait DURATION]\n" +
    "  Restores the backup (default: the newest complete one in staging; --from TARGET: the copy on that target,\n" +
    "  its newest image backup unless --id) into scratch space on the staging disk,\n" +
    "  starts it as a transient domain kvm-backup-drill-<vm> (no network, new UUID, restored disks only), passes\n" +
    "  when the guest agent answers guest-ping (or a console line matches drill.consolePattern) within\n" +
    "  drill.bootTimeout (--timeout overrides), then destroys the domain and deletes the scratch files.\n" +
    "  Without --vm: the VMs whose policy (--policy: that policy) has a drill schedule. --wait: how long to wait\n" +
    "  for a backup of the VM that holds its lock (default 1h). The result is kept for `kvm-backup status`.\n" +
    "  Exit 0 every drill passed; 1 a drill failed or could not run; 2 usage or config error.",
  async run(argv, ctx) {
    const { values } = parseArgs({
      args: argv,
      options: { vm: { type: "string", multiple: true }, policy: { type: "string" }, id: { type: "string" }, from: { type: "string" }, timeout: { type: "string" }, wait: { type: "string" } },
    });
    const cfg = loadHostConfig(ctx.configFile);
    if (values.policy !== undefined && !(values.policy in cfg.policies)) {
      throw new UsageError(`unknown policy "${values.policy}" (known: ${Object.keys(cfg.policies).join(", ") || "none"})`);
    }
    if (values.id !== undefined && !ID_RE.test(values.id)) throw new UsageError(`"${values.id}" is not a backup id (like 20261127T020000Z)`);
    let vms: string[];
    if (values.vm?.length) {
      vms = selectVms(cfg, values.vm);
    } else {
      const usesDrill = (v: string) => ([] as string[]).concat(cfg.vms[v]!.policy).some((p) => (!values.policy || p === values.policy) && cfg.policies[p]?.drill !== undefined);
      vms = Object.keys(cfg.vms).filter(usesDrill);
      if (!vms.length) throw new UsageError(`no VM${values.policy ? ` of policy ${values.policy}` : ""} has a policy with a drill schedule (policies.<name>.drill); name the VM with --vm to drill it anyway`);
    }
    if (values.id !== undefined && vms.length !== 1) throw new UsageError("--id needs exactly one --vm");
    const from = values.from === undefined || values.from === "staging" ? undefined : values.from;
    if (from !== undefined && !(from in cfg.targets)) throw new UsageError(`--from: unknown target "${from}" (known: staging, ${Object.keys(cfg.targets).join(", ") || "no targets are configured"})`);
    const bootTimeoutMs = values.timeout !== undefined ? durationMs(values.timeout, "--timeout") : undefined;
    const lockWaitMs = values.wait !== undefined ? durationMs(values.wait, "--wait") : undefined;

    const log = ctx.log.child({ host: cfg.host });
    const ctrl = new AbortController();
    const onSignal = (sig: NodeJS.Signals) => {
      log.warn("drill.signal", `received ${sig}: stopping the drill and removing its scratch domain and files`);
      ctrl.abort(new KvmBackupError(`interrupted by ${sig}`));
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    const outcomes: DrillOutcome[] = [];
    try {
      for (const vm of vms) {
        if (ctrl.signal.aborted) break;
        const o = await drillVm(cfg, vm, { log, signal: ctrl.signal, id: values.id, from, bootTimeoutMs, lockWaitMs });
        outcomes.push(o);
        ctx.stdout(o.ok ? `${vm} drill passed: backup ${o.id}${from ? ` from ${from}` : ""}, ${o.answeredBy === "console" ? "console line" : "guest agent answered"} after ${o.answerSeconds} s\n` : `${vm} drill FAILED: ${o.error}\n`);
      }
    } finally {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    }
    const failed = outcomes.filter((o) => !o.ok);
    if (!failed.length) return ExitCode.ok;
    if (failed.every((o) => o.exitCode === ExitCode.usage)) return ExitCode.usage;
    return ExitCode.backupFailed;
  },
};
