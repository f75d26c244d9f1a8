/**
 * A command against a target must end, even when the target does not: a hung NFS server can leave a child in
 * uninterruptible sleep where even SIGKILL waits, and a killed child's own children may keep its output pipes
 * open. execa's timeout kills the child; this adds a hard deadline on top, after which the runner stops waiting
 * for the child at all and reports the target as not answering.
 */
import { run, type RunOptions, type RunResult } from "../exec.ts";
import { TargetError, TargetTimeoutError } from "./target.ts";

/** Extra time after the timeout for the child to die from SIGTERM/SIGKILL before we give up waiting. */
const GRACE_MS = 15_000;

export async function boundedRun(
  target: string,
  file: string,
  args: readonly string[],
  opts: RunOptions & { timeoutMs: number },
): Promise<RunResult> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new TargetTimeoutError(
          `target "${target}": \`${file}\` did not end ${Math.round((opts.timeoutMs + GRACE_MS) / 1000)} s after it was started, even after being killed; ` +
            "the target (mount or server) is hung; check it, the backup stays in staging and is shipped on the next run",
          target,
        ),
      );
    }, opts.timeoutMs + GRACE_MS);
    timer.unref();
  });
  const started = Date.now();
  let res: RunResult;
  try {
    res = await Promise.race([run(file, args, { ...opts, allowFailure: true }), deadline]);
  } finally {
    clearTimeout(timer);
  }
  if (res.exitCode < 0) {
    // run() reports no exit code for a child that was killed or never started.
    if (Date.now() - started >= opts.timeoutMs - 100) {
      throw new TargetTimeoutError(
        `target "${target}": \`${file}\` did not finish within ${Math.round(opts.timeoutMs / 1000)} s and was killed; the target is hung or too slow, the work is retried on the next run`,
        target,
      );
    }
    throw new TargetError(`target "${target}": \`${file}\` could not be started or was killed by a signal${res.stderr.trim() ? `: ${res.stderr.trim()}` : ""}; is it installed (see \`kvm-backup doctor\`)?`, target);
  }
  if (res.exitCode !== 0 && !opts.allowFailure) {
    throw new TargetError(`target "${target}": \`${file}\` failed with exit code ${res.exitCode}: ${res.stderr.trim().split("\n").slice(-4).join(" / ")}`, target);
  }
  return res;
}
