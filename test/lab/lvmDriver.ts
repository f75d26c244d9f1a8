/**
 * Test-only stand-in for the pipeline while it is being built: drives the lvm back-end through recover ->
 * preflight -> snapshot -> guard -> stream (zstd, one disk after the other) -> remove, exactly in the order the
 * pipeline calls it, and writes what happened to a JSON file. Bundled by esbuild and run with the host's Node
 * inside UML: `node lvmDriver.mjs CONFIG VM RESULT.json`.
 */
import { spawn } from "node:child_process";
import { closeSync, createWriteStream, mkdirSync, openSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseHostConfig } from "../../runner/config/hostConfig.ts";
import { policyNames } from "../../runner/config/schema.ts";
import { KvmBackupError } from "../../runner/errors.ts";
import { Logger } from "../../runner/log.ts";
import { LvmSnapshotBackend } from "../../runner/snapshot/lvmSnapshot.ts";
import type { VmContext } from "../../runner/snapshot/backend.ts";

const [configFile, vm, resultFile] = process.argv.slice(2) as [string, string, string];
const config = parseHostConfig(readFileSync(configFile, "utf8"), configFile);
const vmConfig = config.vms[vm]!;
const policyName = policyNames(vmConfig)[0]!;
const backupId = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
const ctx: VmContext = { config, vm, vmConfig, policyName, policy: config.policies[policyName]!, backupId, log: new Logger({ vm }), };
const backend = new LvmSnapshotBackend();
const result: Record<string, unknown> = { backupId, events: [] as unknown[] };
const event = (name: string, extra: Record<string, unknown> = {}) => (result.events as unknown[]).push({ name, t: Date.now(), ...extra });
const save = () => writeFileSync(resultFile, JSON.stringify(result, null, 2));

let exitCode = 0;
try {
  result.recovered = await backend.recover(ctx);
  const disks = await backend.preflight(ctx);
  event("preflight-ok", { disks });
  const snap = await backend.snapshot(ctx, disks);
  event("snapshot-created", { disks: snap.disks, quiesced: snap.quiesced });
  const partial = join(config.staging.path, vm, backupId + ".partial");
  mkdirSync(partial, { recursive: true });
  let aborted: Error | null = null;
  let child: ReturnType<typeof spawn> | null = null;
  const guard = snap.guard!((e) => {
    aborted = e;
    event("guard-abort", { message: e.message, fillPercent: (e as { fillPercent?: number }).fillPercent });
    child?.kill("SIGKILL");
  });
  try {
    for (const d of snap.disks) {
      event("stream-start", { disk: d.name });
      // zstd ignores block devices given by name; read them on stdin like the pipeline does.
      const input = openSync(d.readPath, "r");
      // Like the pipeline's limits.nice: the compressor must not starve the runner's own fill guard of CPU.
      child = spawn("nice", ["-n", String(ctx.policy.limits.nice), "zstd", "-q", "-c", "-1"], { stdio: [input, "pipe", "pipe"] });
      child.on("spawn", () => closeSync(input));
      child.stdout!.pipe(createWriteStream(join(partial, `${d.name}.raw.zst`)));
      let stderr = "";
      child.stderr!.on("data", (b: Buffer) => (stderr += b));
      const code: number | null = await new Promise((res) => child!.on("close", (c) => res(c)));
      event("stream-end", { disk: d.name, code, stderr });
      if (aborted) throw aborted;
      if (code !== 0) throw new KvmBackupError(`zstd exited ${code} reading ${d.readPath}: ${stderr.trim()}`);
    }
    result.peak = (await guard.stop()).peakFillPercent;
  } catch (e) {
    rmSync(partial, { recursive: true, force: true });
    throw e;
  } finally {
    await snap.remove();
    event("snapshot-removed");
  }
  result.dir = partial;
} catch (e) {
  exitCode = e instanceof KvmBackupError ? e.exitCode : 1;
  result.error = { name: (e as Error).name, message: (e as Error).message };
}
result.exitCode = exitCode;
save();
process.exitCode = exitCode;
