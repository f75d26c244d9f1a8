import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { ExitCode } from "../errors.ts";
import { formatTargetStatus, targetStatus } from "../ship.ts";
import type { Command } from "./command.ts";

/** The targets section of `status` on its own (reads staging only, never contacts a target). */
export const shipStatus: Command = {
  name: "ship-status",
  summary: "per target: backups waiting to be shipped, since when, and the last error (no network access)",
  usage: "kvm-backup ship-status [--json]",
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { json: { type: "boolean", default: false } } });
    const rows = targetStatus(loadHostConfig(ctx.configFile));
    ctx.stdout(values.json ? JSON.stringify(rows, null, 2) + "\n" : formatTargetStatus(rows));
    return ExitCode.ok;
  },
};
