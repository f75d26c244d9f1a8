/**
 * How the LVM integration tests start a backup inside UML and read what it produced. Until the pipeline lands,
 * the back-end is driven by test/lab/lvmDriver.ts in the pipeline's order; the result is read from its JSON.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { driverBundle } from "../lab/umlRunner.ts";

export interface BackupResult {
  exitCode: number;
  error: string | null;
  diskFile(name: string): string;
  peakFillPercent: number | null;
  streamEndMs: number | null;
  windowMs: number | null;
  recovered: string[];
  events: { name: string; t: number; [k: string]: unknown }[];
}

/** Shell command line (inside UML) that backs up `vm` with $LAB/config.json; RESULT names the result file. */
export async function backupCommand(vm: string, result = "result.json", config = "config.json"): Promise<string> {
  return `node ${await driverBundle()} $LAB/${config} ${vm} $LAB/${result}`;
}

export function backupResult(dir: string, _vm: string, result = "result.json"): BackupResult {
  const file = join(dir, result);
  if (!existsSync(file)) throw new Error(`the backup wrote no ${file}: it crashed or never ran`);
  const r = JSON.parse(readFileSync(file, "utf8")) as {
    exitCode: number;
    error?: { message: string };
    dir?: string;
    peak?: number | null;
    recovered?: string[];
    events: BackupResult["events"];
  };
  const at = (name: string) => r.events.filter((e) => e.name === name).at(-1)?.t ?? null;
  const created = at("snapshot-created");
  const removed = at("snapshot-removed");
  return {
    exitCode: r.exitCode,
    error: r.error?.message ?? null,
    diskFile: (name) => join(r.dir ?? "/nonexistent", `${name}.raw.zst`),
    peakFillPercent: r.peak ?? null,
    streamEndMs: at("stream-end"),
    windowMs: created !== null && removed !== null ? removed - created : null,
    recovered: r.recovered ?? [],
    events: r.events,
  };
}
