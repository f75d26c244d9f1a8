/**
 * A command against a target must end, even when the target does not: a process blocked on a hung network
 * filesystem may not die even from SIGKILL until the server answers, and a killed child's own children may keep
 * its output pipes open. execa's timeout kills the child; this adds a hard deadline on top, after which the
 * runner lets go of the child entirely (its pipes closed, no longer keeping the runner alive) and reports the
 * target as hung. The child is left to end by itself when the target comes back.
 */
import { spawn, type RunOptions, type RunResult } from "../exec.ts";
import { TargetError, TargetTimeoutError } from "./target.ts";

/** After the timeout execa sends SIGTERM, and SIGKILL 5 s later; past that, waiting longer does not help. */
export const GRACE_MS = 8_000;

export async function boundedRun(
  target: string,
  file: string,
  args: readonly string[],
  opts: RunOptions & { timeoutMs: number },
): Promise<RunResult> {
  const started = Date.now();
  const child = spawn(file, args, {
    timeout: opts.timeoutMs,
    input: opts.input,
    env: opts.env,
    cwd: opts.cwd,
    cancelSignal: opts.signal,
    reject: false,
    stripFinalNewline: false,
    extendEnv: true,
  });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      // Let go: without this, the child's handle and pipes would keep the runner's event loop (and so the
      // whole run) alive for as long as the target hangs.
      try {
        child.kill("SIGKILL");
      } catch {
        /* already gone */
      }
      child.stdin?.destroy();
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.unref();
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
  let res;
  try {
    res = await Promise.race([child, deadline]);
  } finally {
    clearTimeout(timer);
  }
  const result: RunResult = { stdout: String(res.stdout ?? ""), stderr: String(res.stderr ?? ""), exitCode: res.exitCode ?? -1 };
  if (result.exitCode < 0) {
    // No exit code: the child was killed (by the timeout, or a signal) or never started.
    if (res.timedOut || Date.now() - started >= opts.timeoutMs - 100) {
      throw new TargetTimeoutError(
        `target "${target}": \`${file}\` did not finish within ${Math.round(opts.timeoutMs / 1000)} s and was killed; the target is hung or too slow, the work is retried on the next run`,
        target,
      );
    }
    const why =
      (res as { code?: string }).code === "ENOENT"
        ? "is not installed or not on PATH; install it (see `kvm-backup doctor`)"
        : `was killed by ${res.signal ?? "a signal"}${result.stderr.trim() ? `: ${result.stderr.trim()}` : ""}`;
    throw new TargetError(`target "${target}": \`${file}\` ${why}`, target);
  }
  if (result.exitCode !== 0 && !opts.allowFailure) {
    throw new TargetError(`target "${target}": \`${file}\` failed with exit code ${result.exitCode}: ${result.stderr.trim().split("\n").slice(-4).join(" / ")}`, target);
  }
  return result;
}
