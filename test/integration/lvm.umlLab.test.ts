/**
 * The UML fixture itself: a script's exit code and output come back, a hung guest is killed at the deadline with
 * its console and output in the error, and no UML process outlives the run.
 */
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { describe, it } from "vitest";
import { cleanRun, runUml, UmlError } from "../lab/umlLab.ts";

function umlProcesses(dir: string): number[] {
  return readdirSync("/proc").filter((p) => /^\d+$/.test(p)).flatMap((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, "utf8").includes(dir) ? [Number(p)] : [];
    } catch {
      return [];
    }
  });
}

// Two guests side by side: the hung one takes its whole deadline, the other one runs meanwhile.
describe.concurrent("UML lab fixture", () => {
  it("returns the script's exit code and output, with dm-snapshot loaded and LVM usable", async ({ expect }) => {
    const r = await runUml({ name: "uml-ok", timeoutMs: 120_000, script: "grep -c '^dm_snapshot ' /proc/modules\npvcreate -q /dev/ubda\necho hello from $(uname -r)\nexit 7\n" });
    expect(r.exitCode, r.output).toBe(7);
    expect(r.output).toMatch(/^1$/m);
    expect(r.output).toMatch(/hello from 6\.1\./);
    expect(r.bootMs).toBeGreaterThan(0);
    expect(umlProcesses(r.dir)).toEqual([]);
    console.log(`UML boot to script: ${r.bootMs} ms, whole run ${r.totalMs} ms`);
    cleanRun(r);
  });

  it("kills a guest that passes its deadline and reports its console and output", async ({ expect }) => {
    let err: unknown;
    try {
      // Boot to the script takes ~0.5 s (a few s on a loaded machine): the deadline comes well after the echo.
      await runUml({ name: "uml-hang", timeoutMs: 10_000, script: "echo about to hang\nsleep 600\n" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UmlError);
    expect((err as Error).message).toMatch(/timed out after 10000 ms/);
    expect((err as Error).message).toMatch(/about to hang/);
    expect((err as Error).message).toMatch(/--- console ---/);
    const dir = /\(dir (\S+)\)/.exec((err as Error).message)![1]!;
    expect(umlProcesses(dir)).toEqual([]);
    rmSync(dir, { recursive: true, force: true });
  });
});
