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
  /**
   * Like `background`, but the run's first compressor waits at a gate until `releaseStream`: the stream starts
   * (the runner's checksum reader reads ahead, up to its lead over the compressor), yet it cannot end, and the
   * snapshot lives, until the test lets the compressor go, however fast or slow the guest is. The guard keeps
   * watching meanwhile. The gate is a `zstd` on the run's PATH that waits on a FIFO, then execs the real zstd in
   * the same process, so the runner's own kill and parent-death signal reach it as they would reach zstd.
   */
  heldBackground: string;
  /** After `background`: waits until the run logged that its snapshots exist. */
  waitForSnapshot: string;
  /** After `(held)Background`: waits until the run streams (its snapshots exist, filesystem snapshots are mounted). */
  waitForStream: string;
  /** After `heldBackground`: opens the gate (race-free: the FIFO's writer waits for the compressor to arrive). */
  releaseStream: string;
  /** Waits for the background run and records its exit code. */
  wait: string;
  /** Runs the backup in the foreground and records its exit code. */
  foreground: string;
}

let runner: string | null = null;

/**
 * Shell function `await_event LOG EVENT`: blocks until LOG has a line of EVENT; fails when the run ($pid) ended
 * first or after 180 s. It follows the log with one `tail -f` instead of a loop of commands: in UML every exec
 * costs ~0.1-0.5 s of the guest's one CPU, which a polling loop would take from the runner it waits for.
 */
const AWAIT_EVENT = `await_event() {
  rm -f /tmp/follow.fifo && mkfifo /tmp/follow.fifo
  tail -s 0.2 -n +1 --pid=$pid -f "$1" > /tmp/follow.fifo & tailpid=$!
  found=0; timeout 180 grep -m1 -q '"event":"'"$2"'"' < /tmp/follow.fifo || found=$?
  kill $tailpid 2>/dev/null || true; wait $tailpid 2>/dev/null || true
  [ $found = 0 ] || { echo "no $2 in $1 (the run ended, or 180 s passed)"; exit 1; }
}
`;

const GATE = "/tmp/stream-gate";
/** The gate: the first compressing zstd of the run reads a line from the FIFO before it becomes zstd. */
const GATE_SETUP = `rm -rf ${GATE} && mkdir -p ${GATE} && mkfifo ${GATE}/open
cat > ${GATE}/zstd <<'GATE'
#!/bin/sh
case " $* " in *" -d "*) ;; *) if mkdir ${GATE}/passed 2>/dev/null; then read go < ${GATE}/open || true; fi ;; esac
PATH=\${PATH#${GATE}:} exec zstd "$@"
GATE
chmod +x ${GATE}/zstd
`;

export async function backupRun(vm: string, name = "run", config = "config.json"): Promise<BackupRun> {
  const env = "KVM_BACKUP_LOG=json KVM_BACKUP_DEBUG=1";
  const cmd = `${env} node ${(runner ??= ensureBundle())} --config $LAB/${config} run --no-ship --vm ${vm}`;
  // The host reads what the run left in the guest's staging (see GUEST_STAGING).
  const copy = `rm -rf $LAB/staging && mkdir -p $LAB/staging && cp -a ${GUEST_STAGING}/. $LAB/staging/\n`;
  const log = `$LAB/${name}.log`;
  return {
    background: `${AWAIT_EVENT}${cmd} > ${log} 2>&1 &\npid=$!\n`,
    heldBackground: `${AWAIT_EVENT}${GATE_SETUP}PATH=${GATE}:$PATH ${cmd} > ${log} 2>&1 &\npid=$!\n`,
    waitForSnapshot: `await_event ${log} lvm.snapshot.created\ndate +%s%3N > $LAB/snapshot-seen\n`,
    // The first progress line comes with the first bytes the checksum reader hashed; it does not wait for a held
    // compressor (it stays at most its lead ahead of it).
    waitForStream: `await_event ${log} stream.progress\n`,
    releaseStream: `echo go > ${GATE}/open &\n`,
    wait: `rc=0; wait $pid || rc=$?; echo $rc > $LAB/${name}.rc\n${copy}`,
    foreground: `rc=0; ${cmd} > ${log} 2>&1 || rc=$?; echo $rc > $LAB/${name}.rc\n${copy}`,
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
