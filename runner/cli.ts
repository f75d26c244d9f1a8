#!/usr/bin/env node
/**
 * kvm-backup: the host-side runner and the operator's offline tools, one CLI.
 * Exit codes: 0 success, 1 a backup (or other work) failed, 2 usage or config error, 3 preflight failed.
 */
import { ExitCode, KvmBackupError } from "./errors.ts";
import { Logger } from "./log.ts";
import { VERSION } from "./version.ts";
import { commands } from "./commands/index.ts";
import { HOST_CONFIG_FILE } from "./config/hostConfig.ts";

function help(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    `kvm-backup ${VERSION}: backups of running KVM virtual machines`,
    "",
    "usage: kvm-backup [--config FILE] COMMAND [options]",
    "",
    "commands:",
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    `--config FILE   host config (default ${HOST_CONFIG_FILE}, or $KVM_BACKUP_CONFIG)`,
    "kvm-backup COMMAND --help shows the options of a command.",
    "exit codes: 0 success, 1 a backup failed, 2 usage or config error, 3 preflight failed",
  ].join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const log = new Logger();
  const stdout = (t: string) => void process.stdout.write(t);
  let configFile = process.env.KVM_BACKUP_CONFIG || HOST_CONFIG_FILE;
  const args = [...argv];
  while (args[0]?.startsWith("-")) {
    const a = args.shift()!;
    if (a === "--help" || a === "-h") return stdout(help() + "\n"), 0;
    if (a === "--version" || a === "-V") return stdout(VERSION + "\n"), 0;
    if (a === "--config") configFile = args.shift() ?? "";
    else if (a.startsWith("--config=")) configFile = a.slice("--config=".length);
    else {
      process.stderr.write(`unknown option ${a}\n\n${help()}\n`);
      return ExitCode.usage;
    }
  }
  const name = args.shift();
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) {
    process.stderr.write(`${name ? `unknown command "${name}"` : "no command given"}\n\n${help()}\n`);
    return ExitCode.usage;
  }
  if (args.includes("--help") || args.includes("-h")) return stdout(`${cmd.summary}\n\nusage: ${cmd.usage}\n`), 0;
  try {
    return await cmd.run(args, { log, configFile, stdout });
  } catch (e) {
    if (e instanceof KvmBackupError) {
      log.error("command.failed", e.message, { command: cmd.name, exitCode: e.exitCode });
      return e.exitCode;
    }
    if ((e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`${(e as Error).message}\n\nusage: ${cmd.usage}\n`);
      return ExitCode.usage;
    }
    log.error("command.crashed", `unexpected error: ${(e as Error).stack ?? String(e)}`, { command: cmd.name });
    return ExitCode.backupFailed;
  }
}

process.exitCode = await main(process.argv.slice(2));
