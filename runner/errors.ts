/**
 * Every failure the runner reports is one of these: a message a person can act on (what, where, what to do)
 * and the exit code documented in the README.
 */
export const ExitCode = {
  ok: 0,
  backupFailed: 1,
  usage: 2,
  preflight: 3,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export class KvmBackupError extends Error {
  readonly exitCode: ExitCodeValue;
  constructor(message: string, exitCode: ExitCodeValue = ExitCode.backupFailed, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.exitCode = exitCode;
  }
}

/** Bad command line or bad config: nothing was changed. */
export class UsageError extends KvmBackupError {
  constructor(message: string) {
    super(message, ExitCode.usage);
  }
}

/** A check before the snapshot failed: nothing was changed on the VM. */
export class PreflightError extends KvmBackupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, ExitCode.preflight, options);
  }
}
