/**
 * The one pipeline, for both snapshot back-ends and both backup formats, per VM:
 *   lock -> recover (what a crashed run left) -> preflight (back-end + local staging with room) -> snapshot ->
 *   stream every disk into <id>.partial -> ALWAYS remove the snapshot -> manifest.json -> rename to <id>.
 * The format (formats/*: image files, or a restic repository) decides only where a disk's bytes go and what
 * happens to them after the snapshot is removed. A failure of one VM is logged and returned; the caller goes on
 * with the next VM.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { parseDuration } from "./config/duration.ts";
import { parseSize } from "./config/sizes.ts";
import { policyNames, type HostConfig } from "./config/schema.ts";
import { ExitCode, KvmBackupError, type ExitCodeValue } from "./errors.ts";
import { acquireLock, type Lock } from "./lock.ts";
import { checkLocalStaging } from "./localFs.ts";
import type { Logger } from "./log.ts";
import { Manifest, MANIFEST_FILE, MANIFEST_VERSION } from "./manifest.ts";
import { LibvirtSnapshotBackend } from "./snapshot/libvirtSnapshot.ts";
import { LvmSnapshotBackend } from "./snapshot/lvmSnapshot.ts";
import type { SnapshotBackend, VmContext } from "./snapshot/backend.ts";
import { backupDir, listBackups, listPartials, newBackupId, partialDir, vmDir } from "./staging.ts";
import type { FormatContext, StreamedDisk } from "./formats/format.ts";
import { formatFor } from "./formats/strategy.ts";
import { VERSION } from "./version.ts";
import { writeRunRecord } from "./runRecord.ts";

export const DOMAIN_XML_FILE = "domain.xml";

export function backendFor(method: "libvirt" | "lvm"): SnapshotBackend {
  return method === "lvm" ? new LvmSnapshotBackend() : new LibvirtSnapshotBackend();
}

/** The lock one VM's backup, recovery, restore and drill share. */
export function lockVm(staging: string, vm: string, what: string): Lock {
  return acquireLock(staging, `vm-${vm}`, `VM ${vm} (${what})`);
}

export interface VmRunResult {
  vm: string;
  policy: string;
  ok: boolean;
  id?: string;
  error?: string;
  exitCode: ExitCodeValue;
}

export interface RunOptions {
  log: Logger;
  /** Stops every stream and removes the snapshot (SIGTERM/SIGINT of the runner). */
  signal?: AbortSignal;
  now?: () => Date;
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function writeFileSynced(path: string, text: string): void {
  const fd = openSync(path, "wx", 0o600);
  try {
    writeFileSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Deletes the .partial directories of a VM: never backups, left by a crashed run. Caller holds the VM lock. */
export function removePartials(staging: string, vm: string, log: Logger): string[] {
  const done: string[] = [];
  for (const p of listPartials(staging, vm)) {
    rmSync(p, { recursive: true, force: true });
    done.push(`deleted the unfinished backup directory ${p}`);
  }
  for (const d of done) log.warn("backup.recover", d);
  return done;
}

/** One linked abort signal: the runner's own (SIGTERM) and the policy's time limit. */
function linkedAbort(parent: AbortSignal | undefined, timeoutMs: number, vm: string): { ctrl: AbortController; dispose: () => void } {
  const ctrl = new AbortController();
  const onParent = () => ctrl.abort(parent!.reason);
  if (parent?.aborted) onParent();
  parent?.addEventListener("abort", onParent, { once: true });
  const timer = setTimeout(
    () => ctrl.abort(new KvmBackupError(`VM ${vm}: the backup took longer than limits.timeout (${Math.round(timeoutMs / 1000)} s) and was stopped; raise limits.timeout or look for a slow disk`)),
    timeoutMs,
  );
  timer.unref();
  return { ctrl, dispose: () => (clearTimeout(timer), parent?.removeEventListener("abort", onParent)) };
}

export async function backupVm(config: HostConfig, vm: string, policyName: string, opts: RunOptions): Promise<VmRunResult> {
  const staging = config.staging.path;
  const policy = config.policies[policyName]!;
  const vmConfig = config.vms[vm]!;
  const log = opts.log.child({ vm, policy: policyName });
  const startedAt = (opts.now ?? (() => new Date()))();
  let lock: Lock | null = null;
  let partial: string | null = null;
  // Set once the format has prepared (it may hold a repository lock from then on), so a failure hands exactly
  // this backup back to it.
  let prepared: { format: ReturnType<typeof formatFor>; fctx: FormatContext } | null = null;
  let dispose = () => {};
  try {
    mkdirSync(vmDir(staging, vm), { recursive: true });
    lock = lockVm(staging, vm, `backup, policy ${policyName}`);
    const backupId = newBackupId(startedAt, (id) => {
      try {
        statSync(backupDir(staging, vm, id));
        return true;
      } catch {
        try {
          statSync(partialDir(staging, vm, id));
          return true;
        } catch {
          return false;
        }
      }
    });
    const backend = backendFor(policy.method);
    const ctx: VmContext = { config, vm, vmConfig, policyName, policy, backupId, log };
    const format = formatFor(policy);
    const fctx: FormatContext = { config, vm, policyName, policy, backupId, log };
    log.info("backup.start", `backing up VM ${vm} with policy ${policyName} (${policy.method})`, { id: backupId });

    // 1. Repair first: a crashed run may have left the VM on an overlay / with a snapshot.
    await backend.recover(ctx);
    removePartials(staging, vm, log);
    // What a killed run left outside <id>.partial (repository snapshots); a failure here only warns.
    await format.recover(fctx, new Set(listBackups(staging, vm).map((b) => b.id)));

    // 2. Preflight: nothing is changed on the VM until all of it passed.
    await checkLocalStaging(staging, 0, "the backup");
    const disks = await backend.preflight(ctx);
    await format.prepare(fctx);
    prepared = { format, fctx };
    const estimate = format.spaceEstimate(disks, listBackups(staging, vm).at(-1), policy);
    await checkLocalStaging(staging, estimate + parseSize(config.staging.minFree), `the backup of ${vm} (about ${estimate} bytes) plus staging.minFree (${config.staging.minFree})`);
    const domainXml = await backend.domainXml(ctx);

    partial = partialDir(staging, vm, backupId);
    mkdirSync(partial);
    const linked = linkedAbort(opts.signal, parseDuration(policy.limits.timeout) * 1000, vm);
    const ctrl = linked.ctrl;
    dispose = linked.dispose;

    // 3. Snapshot; from here on the snapshot is removed whatever happens.
    const snap = await backend.snapshot(ctx, disks);
    const streamed: StreamedDisk[] = [];
    let peakFillPercent: number | null = null;
    let removedAt: Date | null = null;
    let streamError: unknown = null;
    let removeError: unknown = null;
    try {
      const guard = snap.guard?.((reason) => ctrl.abort(reason));
      try {
        for (const d of snap.disks) {
          const started = Date.now();
          const sd = await format.streamDisk(fctx, d, partial, ctrl.signal);
          const r = sd.result;
          const secs = (Date.now() - started) / 1000;
          log.info("stream.disk.done", `disk ${d.name}: ${r.bytesRead} bytes read and compressed in ${secs.toFixed(1)} s (${(r.bytesRead / 1e6 / Math.max(secs, 0.001)).toFixed(0)} MB/s)`, {
            disk: d.name,
            bytesRead: r.bytesRead,
            seconds: secs,
          });
          streamed.push(sd);
        }
      } finally {
        if (guard) peakFillPercent = (await guard.stop()).peakFillPercent;
      }
      // An abort that arrived after the last byte still means the snapshot was not trustworthy to the end.
      if (ctrl.signal.aborted) throw ctrl.signal.reason;
    } catch (e) {
      streamError = e;
    } finally {
      dispose();
      try {
        await snap.remove();
      } catch (e) {
        removeError = e;
      }
      removedAt = new Date();
    }
    if (streamError) {
      if (removeError) log.error("snapshot.remove.failed", (removeError as Error).message);
      throw streamError;
    }

    // After the snapshot is removed, so none of it lengthens the window: image files made durable and their
    // stored checksum (what targets check); for a repository, the ingest of staged images.
    const finish = linkedAbort(opts.signal, parseDuration(policy.limits.timeout) * 1000, vm);
    dispose = finish.dispose;
    const manifestDisks = await format.finishDisks(fctx, streamed, partial, finish.ctrl.signal);

    // 4. Commit: manifest last, then one rename makes the directory a backup.
    if (domainXml !== null) writeFileSynced(join(partial, DOMAIN_XML_FILE), domainXml);
    const manifest: Manifest = Manifest.parse({
      manifestVersion: MANIFEST_VERSION,
      id: backupId,
      host: config.host,
      vm,
      policy: policyName,
      method: policy.method,
      format: format.name,
      runnerVersion: VERSION,
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      snapshot: {
        kind: snap.kind,
        createdAt: snap.kind === "none" ? null : snap.createdAt.toISOString(),
        removedAt: snap.kind === "none" ? null : removedAt.toISOString(),
        windowMs: snap.kind === "none" ? null : Math.max(0, removedAt.getTime() - snap.createdAt.getTime()),
        quiesced: snap.quiesced,
        peakFillPercent: policy.method === "lvm" ? peakFillPercent : undefined,
      },
      domainXml,
      disks: manifestDisks,
    });
    const manifestText = JSON.stringify(manifest, null, 2) + "\n";
    writeFileSynced(join(partial, MANIFEST_FILE), manifestText);
    await format.commit(fctx, manifest, manifestText);
    fsyncDir(partial);
    const final = backupDir(staging, vm, backupId);
    renameSync(partial, final);
    partial = null;
    fsyncDir(dirname(final));
    log.info("backup.committed", `backup ${vm}/${backupId} complete: ${manifestDisks.length} disk(s), snapshot window ${manifest.snapshot.windowMs ?? 0} ms`, {
      id: backupId,
      windowMs: manifest.snapshot.windowMs,
      dir: final,
    });
    if (removeError) throw removeError; // the backup is good, but the VM is not back on its own disks: fail loudly
    return { vm, policy: policyName, ok: true, id: backupId, exitCode: ExitCode.ok };
  } catch (e) {
    if (partial) rmSync(partial, { recursive: true, force: true });
    if (prepared) {
      // What the format holds or put outside <id>.partial (a repository lock, snapshots); if this fails too, the
      // next run's recovery does it.
      await prepared.format
        .abandon(prepared.fctx)
        .catch((x: Error) => log.warn("backup.abandon", `could not clean up after the failed backup: ${x.message}; the next run does it`));
    }
    const exitCode = e instanceof KvmBackupError ? e.exitCode : ExitCode.backupFailed;
    const message = (e as Error).message ?? String(e);
    log.error("backup.failed", `backup of VM ${vm} failed: ${message}`, { exitCode });
    if (!(e instanceof KvmBackupError)) log.debug("backup.crash", (e as Error).stack ?? String(e));
    return { vm, policy: policyName, ok: false, error: message, exitCode };
  } finally {
    dispose();
    lock?.release();
  }
}

/** Every selected VM, one after the other; one VM's failure does not stop the others. */
export async function runBackups(config: HostConfig, sel: { vms?: string[]; policy?: string }, opts: RunOptions): Promise<VmRunResult[]> {
  const results: VmRunResult[] = [];
  for (const vm of sel.vms?.length ? sel.vms : Object.keys(config.vms)) {
    const names = policyNames(config.vms[vm]!);
    const chosen = sel.policy ? names.filter((p) => p === sel.policy) : names.slice(0, 1);
    for (const p of chosen) {
      if (opts.signal?.aborted) break;
      const r = await backupVm(config, vm, p, opts);
      results.push(r);
      try {
        writeRunRecord(config.staging.path, { vm, policy: p, at: new Date().toISOString(), ok: r.ok, id: r.id, error: r.error });
      } catch (e) {
        opts.log.warn("run.record", `could not record the outcome of ${vm} for \`kvm-backup status\`: ${(e as Error).message}`);
      }
    }
  }
  return results;
}

/** 0 when all succeeded; 3 when every failure was a preflight (nothing was changed); else 1. */
export function overallExitCode(results: VmRunResult[]): ExitCodeValue {
  const failed = results.filter((r) => !r.ok);
  if (!failed.length) return ExitCode.ok;
  if (failed.every((r) => r.exitCode === ExitCode.preflight)) return ExitCode.preflight;
  if (failed.every((r) => r.exitCode === ExitCode.usage)) return ExitCode.usage;
  return ExitCode.backupFailed;
}
