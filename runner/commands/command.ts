import type { Logger } from "../log.ts";

/** One subcommand: its own options (node:util parseArgs), help text and action returning the exit code. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  run(argv: string[], ctx: CommandContext): Promise<number>;
}

export interface CommandContext {
  log: Logger;
  /** --config FILE given before the subcommand, or the default /etc/kvm-backup/config.json */
  configFile: string;
  stdout: (text: string) => void;
}
