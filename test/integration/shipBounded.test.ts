/**
 * Every command against a target ends: a child that ignores SIGTERM (like a process stuck on a hung mount) is
 * killed after the timeout, and the runner reports the target as hung instead of waiting.
 */
import { describe, expect, it } from "vitest";
import { boundedRun } from "../../runner/targets/boundedRun.ts";
import { TargetError, TargetTimeoutError } from "../../runner/targets/target.ts";

describe("boundedRun", () => {
  it("kills a child that ignores SIGTERM and reports a timeout", async () => {
    const started = Date.now();
    const err = await boundedRun("mnt", "sh", ["-c", "trap '' TERM; exec sleep 60"], { timeoutMs: 1000 }).catch((e: unknown) => e);
    const ms = Date.now() - started;
    expect(err).toBeInstanceOf(TargetTimeoutError);
    expect((err as Error).message).toMatch(/target "mnt": `sh` did not finish within 1 s and was killed/);
    // 1 s timeout + 5 s until SIGKILL, well before the 60 s sleep
    expect(ms).toBeGreaterThanOrEqual(1000);
    expect(ms).toBeLessThan(10_000);
  });

  it("stops waiting at the hard deadline when the killed child's output stays open (a grandchild holds it)", async () => {
    const started = Date.now();
    const err = await boundedRun("mnt", "sh", ["-c", "sleep 40; true"], { timeoutMs: 1000 }).catch((e: unknown) => e);
    const ms = Date.now() - started;
    expect(err).toBeInstanceOf(TargetTimeoutError);
    expect((err as Error).message).toMatch(/`sh` did not end 9 s after it was started, even after being killed/);
    expect(ms).toBeGreaterThanOrEqual(9_000);
    expect(ms).toBeLessThan(18_000);
  });

  it("returns the output of a child that ends in time, and a missing tool is a clear error", async () => {
    const res = await boundedRun("mnt", "sh", ["-c", "echo hi; exit 3"], { timeoutMs: 5000, allowFailure: true });
    expect(res).toMatchObject({ stdout: "hi\n", exitCode: 3 });
    await expect(boundedRun("mnt", "sh", ["-c", "exit 3"], { timeoutMs: 5000 })).rejects.toThrow(/`sh` failed with exit code 3/);
    const missing = await boundedRun("mnt", "no-such-tool-kvmb", [], { timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(TargetError);
    expect(missing).not.toBeInstanceOf(TargetTimeoutError);
    expect((missing as Error).message).toMatch(/`no-such-tool-kvmb` is not installed or not on PATH; install it/);
  });
});
