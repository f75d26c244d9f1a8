/**
 * How the LVM integration tests start a backup inside UML and read what it produced: the real runner,
 * `node dist/kvm-backup.mjs --config CONFIG run --no-ship --vm VM` (built once per test run), its JSON log lines
 * and the manifest it commits. A run named N leaves N.log (everything it printed) and N.rc (its exit code) in $LAB.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ensureBundle } from "../lab/bundle.ts";
import { GUEST_STAGING } from "./lvmLab.ts";

export interface BackupRun {
  /** Starts the backup in the background; sets $pid to the runner's own pid (for kill -9). */
  background: string;
  /** Waits for the background run and records its exit code. */
  wait: string;
  /** Runs the backup in the foreground and records its exit code. */
  foreground: string;
}

let runner: string | null = null;

export async function backupRun(vm: string, name = "run", config = "config.json"): Promise<BackupRun> {
  const env = "KVM_BACKUP_LOG=json KVM_BACKUP_DEBUG=1";
  const cmd = `${env} node ${(runner ??= ensureBundle())} --config $LAB/${config} run --no-ship --vm ${vm}`;
  // The host reads what the run left in the guest's staging (see GUEST_STAGING).
  const copy = `rm -rf $LAB/staging && mkdir -p $LAB/staging && cp -a ${GUEST_STAGING}/. $LAB/staging/\n`;
  return {
    background: `${cmd} > $LAB/${name}.log 2>&1 &\npid=$!\n`,
    wait: `rc=0; wait $pid || rc=$?; echo $rc > $LAB/${name}.rc\n${copy}`,
    foreground: `rc=0; ${cmd} > $LAB/${name}.log 2>&1 || rc=$?; echo $rc > $LAB/${name}.rc\n${copy}`,
  };
}

export interface BackupResult {
  exitCode: number | null;
  /** The failure message, when the run failed. */
  error: string | null;
  /** The stored (compressed) file of a disk. */
  diskFile(name: string): string;
  peakFillPercent: number | null;
  /** When the snapshot was removed (epoch ms); the stream ended before. */
  removedMs: number | null;
  windowMs: number | null;
  /** The guard's abort, if any. */
  abort: { t: number; fillPercent: number; message: string } | null;
  /** What recovery did at the start of the run. */
  recovered: string[];
  log: string;
}

interface LogLine {
  ts: string;
  level: string;
  event: string;
  msg: string;
  [k: string]: unknown;
}

function logLines(text: string): LogLine[] {
  return text.split("\n").flatMap((l) => {
    if (!l.startsWith("{")) return [];
    try {
      return [JSON.parse(l) as LogLine];
    } catch {
      return [];
    }
  });
}

function newestBackup(staging: string, vm: string): { dir: string; manifest: Record<string, any> } | null {
  const vmDir = join(staging, vm);
  if (!existsSync(vmDir)) return null;
  const ids = readdirSync(vmDir).filter((n) => /^\d{8}T\d{6}Z(-\d+)?$/.test(n) && existsSync(join(vmDir, n, "manifest.json"))).sort();
  const id = ids.at(-1);
  return id ? { dir: join(vmDir, id), manifest: JSON.parse(readFileSync(join(vmDir, id, "manifest.json"), "utf8")) } : null;
}

export function backupResult(dir: string, vm: string, name = "run"): BackupResult {
  const read = (f: string) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f), "utf8") : "");
  const log = read(`${name}.log`);
  const rcText = read(`${name}.rc`).trim();
  const lines = logLines(log);
  const at = (event: string) => {
    const l = lines.filter((x) => x.event === event).at(-1);
    return l ? Date.parse(l.ts) : null;
  };
  const abortLine = lines.find((l) => l.event === "lvm.guard.abort");
  const common = {
    abort: abortLine ? { t: Date.parse(abortLine.ts), fillPercent: Number(abortLine.fillPercent), message: abortLine.msg } : null,
    recovered: lines.filter((l) => l.event === "lvm.recover").map((l) => l.msg),
    removedMs: at("lvm.snapshot.removed"),
    log,
  };
  const backup = newestBackup(join(dir, "staging"), vm);
  const failure = lines.filter((l) => l.level === "error").at(-1);
  return {
    ...common,
    exitCode: rcText === "" ? null : Number(rcText),
    error: failure?.msg ?? null,
    diskFile: (disk) => {
      const d = backup?.manifest.disks?.find((x: { name: string }) => x.name === disk);
      if (!backup || !d) throw new Error(`no committed backup with disk ${disk} in ${join(dir, "staging", vm)}; log:\n${log.slice(-3000)}`);
      return join(backup.dir, d.file);
    },
    peakFillPercent: backup?.manifest.snapshot?.peakFillPercent ?? null,
    windowMs: backup?.manifest.snapshot?.windowMs ?? null,
  };
}
