/**
 * Every external command goes through here: argument arrays (never a shell), a timeout, and a failure message
 * that names the command and the tail of what it printed. Secrets must never be arguments: pass them in files.
 */
import { execa, type Options, type ResultPromise } from "execa";
import { KvmBackupError, type ExitCodeValue, ExitCode } from "./errors.ts";

export class CommandError extends KvmBackupError {
  readonly command: string;
  readonly commandExitCode: number | undefined;
  readonly stderr: string;
  readonly timedOut: boolean;
  constructor(message: string, details: { command: string; exitCode?: number; stderr: string; timedOut: boolean }, exitCode: ExitCodeValue = ExitCode.backupFailed) {
    super(message, exitCode);
    this.command = details.command;
    this.commandExitCode = details.exitCode;
    this.stderr = details.stderr;
    this.timedOut = details.timedOut;
  }
}

export interface RunOptions {
  /** Milliseconds; every call has one, so a hung tool cannot hang the runner. */
  timeoutMs?: number;
  input?: string;
  env?: Record<string, string | undefined>;
  cwd?: string;
  signal?: AbortSignal;
  /** Return the result instead of throwing on a non-zero exit. */
  allowFailure?: boolean;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export const DEFAULT_TIMEOUT_MS = 120_000;

export function commandLine(file: string, args: readonly string[]): string {
  return [file, ...args].map((a) => (/^[A-Za-z0-9_./:=@%+,-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(" ");
}

function tail(text: string, lines = 8): string {
  return text.trim().split("\n").slice(-lines).join("\n");
}

export async function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const shown = commandLine(file, args);
  const res = await execa(file, args, {
    timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    input: opts.input,
    env: opts.env,
    cwd: opts.cwd,
    cancelSignal: opts.signal,
    reject: false,
    stripFinalNewline: false,
    // Tools print their messages in the C locale, which is what the parsers and the messages expect.
    extendEnv: true,
    forceKillAfterDelay: 5_000,
  } satisfies Options);
  const result = { stdout: String(res.stdout ?? ""), stderr: String(res.stderr ?? ""), exitCode: res.exitCode ?? -1 };
  if (res.failed && !opts.allowFailure) {
    if ((res as { code?: string }).code === "ENOENT") {
      throw new CommandError(`\`${file}\` is not installed or not on PATH (needed for: ${shown}); run \`kvm-backup doctor\` for what to install`, {
        command: shown,
        stderr: "",
        timedOut: false,
      });
    }
    const why = res.timedOut
      ? `timed out after ${Math.round((opts.timeoutMs ?? DEFAULT_TIMEOUT_MS) / 1000)} s`
      : res.isCanceled
        ? "was cancelled"
        : res.signal
          ? `was killed by ${res.signal}`
          : `failed with exit code ${res.exitCode}`;
    throw new CommandError(`\`${shown}\` ${why}${result.stderr.trim() ? `: ${tail(result.stderr)}` : ""}`, {
      command: shown,
      exitCode: res.exitCode,
      stderr: result.stderr,
      timedOut: Boolean(res.timedOut),
    });
  }
  return result;
}

/** For long-running children whose streams the caller wires itself (the stream step). */
export function spawn(file: string, args: readonly string[], options: Options): ResultPromise {
  return execa(file, args, { forceKillAfterDelay: 5_000, ...options });
}
