import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode, KvmBackupError } from "../errors.ts";
import { DEFAULT_TEXTFILE, prometheusText, statusText, vmStatuses, writeTextfileAtomically } from "../statusReport.ts";
import type { Command } from "./command.ts";
import { formatTargetStatus, targetStatus } from "../ship.ts";

export const status: Command = {
  name: "status",
  summary: "last successful backup and its age per VM; also writes the Prometheus textfile",
  usage:
    `kvm-backup status [--json] [--textfile PATH | --no-textfile]\n` +
    `  --textfile: where node_exporter's textfile collector reads (default ${DEFAULT_TEXTFILE}), written atomically.`,
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { json: { type: "boolean", default: false }, textfile: { type: "string" }, "no-textfile": { type: "boolean", default: false } } });
    const cfg = loadHostConfig(ctx.configFile);
    const rows = vmStatuses(cfg);
    ctx.stdout(values.json ? JSON.stringify({ host: cfg.host, vms: rows, targets: targetStatus(cfg) }, null, 2) + "\n" : statusText(rows) + formatTargetStatus(targetStatus(cfg)));
    if (!values["no-textfile"]) {
      const path = values.textfile ?? DEFAULT_TEXTFILE;
      try {
        writeTextfileAtomically(path, prometheusText(cfg.host, rows));
      } catch (e) {
        throw new KvmBackupError(`could not write the Prometheus textfile ${path}: ${(e as Error).message}; pass --textfile PATH or --no-textfile`);
      }
    }
    return ExitCode.ok;
  },
};
