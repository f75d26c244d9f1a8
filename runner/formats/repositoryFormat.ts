/**
 * format: repository. The disks go into the host's staging restic repository (<staging>/.repository): each disk
 * one snapshot of one file <vm>/<disk>.raw, deduplicated against everything the repository holds, compressed
 * and encrypted by restic; then the manifest itself as one more snapshot, last (repository/backups.ts). The
 * backup directory <staging>/<vm>/<id>/ still holds manifest.json, domain.xml and state.json, so list, status,
 * protect and the ship bookkeeping are the same for both formats.
 *
 * Two ways to ingest (policy repository.ingest; the README explains the default from the benchmark):
 *   staged  inside the window the disk is streamed exactly like the image format, into <id>.partial/<disk>.raw.zst;
 *           after the snapshot is removed, `zstd -d` feeds restic directly (a pipe between the two children) and
 *           the staged image is deleted. The window is the image format's; staging needs room for the image.
 *   direct  inside the window restic itself reads the frozen image (stream.ts hands it the image in place of the
 *           compressor); no staged image, but the window lasts as long as restic's chunking and encryption.
 * In both, the number of bytes restic processed must equal the disk's size, and the disk's SHA-256 is the one
 * the stream computed from the frozen image (what restore and verify compare against).
 */
import { closeSync, existsSync, openSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { repositoryOptions } from "../config/schema.ts";
import { KvmBackupError, PreflightError } from "../errors.ts";
import { spawn } from "../exec.ts";
import type { Lock } from "../lock.ts";
import type { RepositoryDisk } from "../manifest.ts";
import { storedBytes } from "../manifest.ts";
import { decompressorCommand, storedFileName, streamDisk, StreamError, withLimits } from "../stream.ts";
import { diskPath, diskTags, groupBackups, manifestPath, manifestTags, textStream } from "../repository/backups.ts";
import { stagingRepository, stagingRepositoryPath } from "../repository/repositories.ts";
import { MIN_RESTIC_VERSION, parseBackupSummary, parseResticVersion, RepositoryError, RepositoryMissingError, type Restic, RUNNER_TAG } from "../repository/restic.ts";
import { run } from "../exec.ts";
import { versionAtLeast } from "../libvirt/virsh.ts";
import type { BackupFormatStrategy, FormatContext, StreamedDisk } from "./format.ts";
import { allocatedBytes } from "./imageFormat.ts";

const SUMMARY_SUFFIX = ".restic.json";

/**
 * Direct ingest: the staging repository's shared lock, taken in prepare (before the snapshot: waiting for a prune
 * of another run must never happen inside the window) and released when the disks are in (or the backup failed).
 */
const directLocks = new Map<string, Lock>();

function releaseDirectLock(id: string): void {
  directLocks.get(id)?.release();
  directLocks.delete(id);
}

/** restic on PATH and at least 0.14 (compression); throws a PreflightError saying what to install. */
export async function checkResticVersion(): Promise<string> {
  const r = await run("restic", ["version"], { timeoutMs: 30_000, allowFailure: true }).catch((e: Error) => ({ exitCode: -1, stdout: "", stderr: e.message }));
  const v = r.exitCode === 0 ? parseResticVersion(r.stdout) : null;
  if (v === null) throw new PreflightError(`restic is not installed or does not run (${r.stderr.trim() || "no version"}); format: repository needs restic ${MIN_RESTIC_VERSION} or newer (apt-get install restic)`);
  if (!versionAtLeast(v, MIN_RESTIC_VERSION)) throw new PreflightError(`restic ${v} is too old: format: repository needs ${MIN_RESTIC_VERSION} or newer (the first with compression); upgrade restic`);
  return v;
}

function repoOf(ctx: FormatContext): Restic {
  return stagingRepository(ctx.config);
}

function tagsOf(ctx: FormatContext, disk: string): string[] {
  return diskTags(ctx.vm, disk, ctx.backupId, ctx.policyName);
}

/** Runs restic backup --stdin fed by `stdin`, and checks it processed exactly `size` bytes. */
async function ingest(
  ctx: FormatContext,
  repo: Restic,
  disk: string,
  size: number,
  stdin: Parameters<Restic["backup"]>[0]["stdin"],
  signal: AbortSignal,
  feeder?: { child: ReturnType<typeof spawn>; name: string },
): Promise<{ snapshotId: string; dataAdded: number }> {
  const opts = repositoryOptions(ctx.policy);
  const b = repo.backup({ filename: diskPath(ctx.vm, disk), host: ctx.config.host, tags: tagsOf(ctx, disk), compression: opts.compression, stdin, limits: (c) => withLimits(ctx.policy.limits, c) });
  const onAbort = () => (b.kill(), feeder?.child.kill("SIGKILL"));
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    const [summary, fed] = await Promise.all([b.done.catch((e: unknown) => e), feeder ? Promise.allSettled([feeder.child]).then(([r]) => r) : Promise.resolve(undefined)]);
    if (signal.aborted) throw signal.reason;
    if (fed && (fed.status === "rejected" || fed.value.exitCode !== 0 || fed.value.signal)) {
      const why = fed.status === "rejected" ? String(fed.reason) : `exit ${fed.value.exitCode ?? fed.value.signal}: ${String(fed.value.stderr ?? "").trim() || "no message"}`;
      throw new StreamError(`disk ${disk}: ${feeder!.name} failed while feeding restic (${why}); the staged image may be damaged`);
    }
    if (summary instanceof Error) throw summary;
    const s = summary as { snapshotId: string; dataAdded: number; bytesProcessed: number };
    if (s.bytesProcessed !== size) {
      throw new StreamError(`disk ${disk}: restic stored ${s.bytesProcessed} bytes, but the disk has ${size}; the backup would be incomplete`);
    }
    return s;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

export const repositoryFormat: BackupFormatStrategy = {
  name: "repository",

  async prepare(ctx) {
    await checkResticVersion();
    try {
      const repo = repoOf(ctx);
      try {
        // Opens the repository (so a wrong password fails here, before the snapshot) and removes the stale locks
        // a killed restic left.
        await repo.unlockStale("before the backup");
      } catch (e) {
        if (!(e instanceof RepositoryMissingError)) throw e;
        await repo.init();
        ctx.log.info("repository.created", `created the staging repository ${repo.loc.repo} (restic, compressed, encrypted with the repository password)`);
      }
      if (repositoryOptions(ctx.policy).ingest === "direct") directLocks.set(ctx.backupId, await repo.lock("shared", `backing up ${ctx.vm}`));
    } catch (e) {
      if (e instanceof KvmBackupError && !(e instanceof PreflightError)) throw new PreflightError(e.message, { cause: e });
      throw e;
    }
  },

  spaceEstimate(disks, last, policy) {
    // New data in the repository: the last backup's plus 10 %, or at worst the allocated bytes; staged ingest
    // also needs the staged image until it is ingested (the last one's size plus 10 %, or the allocated bytes).
    const prev = last?.manifest.format === "repository" ? last.manifest : undefined;
    const added = prev ? Math.ceil(storedBytes(prev) * 1.1) : allocatedBytes(disks);
    if (repositoryOptions(policy).ingest === "direct") return added;
    const staged = prev?.disks.every((d) => d.stagedBytes !== undefined) ? Math.ceil(prev.disks.reduce((s, d) => s + d.stagedBytes!, 0) * 1.1) : allocatedBytes(disks);
    return added + staged;
  },

  async streamDisk(ctx, d, partial, signal): Promise<StreamedDisk> {
    const opts = repositoryOptions(ctx.policy);
    const log = ctx.log.child({ disk: d.name });
    if (opts.ingest === "staged") {
      const file = storedFileName(d.name, ctx.policy.compression.type);
      const result = await streamDisk({ disk: d, outFile: join(partial, file), compression: ctx.policy.compression, limits: ctx.policy.limits, signal, log });
      return { disk: d, result, file };
    }
    const repo = repoOf(ctx);
    const file = `${d.name}${SUMMARY_SUFFIX}`;
    if (!directLocks.has(ctx.backupId)) throw new RepositoryError(`disk ${d.name}: the staging repository is not locked for this backup (prepare did not run)`);
    const command = { file: "restic", args: repo.backupArgs({ filename: diskPath(ctx.vm, d.name), host: ctx.config.host, tags: tagsOf(ctx, d.name), compression: opts.compression }), env: repo.env() };
    const result = await streamDisk({ disk: d, outFile: join(partial, file), compression: ctx.policy.compression, limits: ctx.policy.limits, signal, log, command });
    return { disk: d, result, file };
  },

  async finishDisks(ctx, streamed, partial, signal): Promise<RepositoryDisk[]> {
    const repo = repoOf(ctx);
    const opts = repositoryOptions(ctx.policy);
    const added = new Map<string, { snapshotId: string; dataAdded: number; stagedBytes?: number }>();
    for (const sd of streamed) {
      const d = sd.disk;
      const path = join(partial, sd.file);
      if (opts.ingest === "direct") {
        releaseDirectLock(ctx.backupId);
        const s = parseBackupSummary(readFileSync(path, "utf8"));
        if (!s) throw new RepositoryError(`disk ${d.name}: restic did not report a saved snapshot (${path})`);
        if (s.bytesProcessed !== d.virtualSize) throw new StreamError(`disk ${d.name}: restic stored ${s.bytesProcessed} bytes, but the disk has ${d.virtualSize}; the backup would be incomplete`);
        added.set(d.name, s);
        rmSync(path, { force: true });
        continue;
      }
      const started = Date.now();
      const stagedBytes = statSync(path).size;
      const dec = decompressorCommand(ctx.policy.compression.type, path);
      const lock = await repo.lock("shared", `ingesting ${ctx.vm}/${d.name}`, undefined, repo.loc.timeoutMs, signal);
      let fd: number | null = null;
      try {
        let s;
        if (dec) {
          const limited = withLimits(ctx.policy.limits, dec);
          const child = spawn(limited.file, limited.args, { stdin: "ignore", stdout: "pipe", stderr: "pipe", buffer: true, reject: false });
          // restic reads the decompressor's pipe itself; the runner never touches the bytes.
          const b = ingest(ctx, repo, d.name, d.virtualSize, child.stdout!, signal, { child, name: dec.file });
          child.stdout!.destroy();
          s = await b;
        } else {
          fd = openSync(path, "r");
          s = await ingest(ctx, repo, d.name, d.virtualSize, fd, signal);
        }
        added.set(d.name, { ...s, stagedBytes });
      } finally {
        if (fd !== null) closeSync(fd);
        lock.release();
      }
      rmSync(path, { force: true });
      const secs = (Date.now() - started) / 1000;
      ctx.log.info("repository.ingest.done", `disk ${d.name}: ingested into the staging repository in ${secs.toFixed(1)} s, ${added.get(d.name)!.dataAdded} bytes of new data`, {
        disk: d.name,
        seconds: secs,
        dataAdded: added.get(d.name)!.dataAdded,
      });
    }
    // Full ids and trees (backup prints a short id): one listing of this backup's snapshots.
    const [b] = groupBackups(await repo.snapshots(`listing ${ctx.vm}/${ctx.backupId}`, [RUNNER_TAG, `id=${ctx.backupId}`, `vm=${ctx.vm}`]), ctx.vm);
    return streamed.map(({ disk: d, result: r }) => {
      const a = added.get(d.name)!;
      const snap = b?.disks.get(d.name);
      if (!snap || !snap.id.startsWith(a.snapshotId)) throw new RepositoryError(`disk ${d.name}: the snapshot restic reported (${a.snapshotId}) is not in the staging repository`);
      return {
        name: d.name,
        source: d.source,
        format: d.format,
        virtualSize: d.virtualSize,
        bytesRead: r.bytesRead,
        bytesStored: a.dataAdded,
        sha256: r.sha256,
        repository: { snapshot: snap.id, tree: snap.tree, path: diskPath(ctx.vm, d.name) },
        ...(a.stagedBytes !== undefined ? { stagedBytes: a.stagedBytes } : {}),
      };
    });
  },

  async commit(ctx, _manifest, manifestText) {
    const repo = repoOf(ctx);
    const lock = await repo.lock("shared", `saving the manifest of ${ctx.vm}/${ctx.backupId}`);
    try {
      const b = repo.backup({ filename: manifestPath(ctx.vm), host: ctx.config.host, tags: manifestTags(ctx.vm, ctx.backupId, ctx.policyName), compression: "auto", stdin: "pipe" });
      textStream(manifestText).pipe(b.stdin!);
      await b.done;
    } finally {
      lock.release();
    }
  },

  async abandon(ctx) {
    releaseDirectLock(ctx.backupId);
    const repo = repoOf(ctx);
    const [b] = groupBackups(await repo.snapshots(`cleaning up ${ctx.vm}/${ctx.backupId}`, [RUNNER_TAG, `id=${ctx.backupId}`, `vm=${ctx.vm}`]), ctx.vm);
    if (b) {
      await repo.forget(b.all.map((s) => s.id), `removing the snapshots of the failed backup ${ctx.vm}/${ctx.backupId}`);
      ctx.log.warn("repository.abandoned", `forgot ${b.all.length} snapshot(s) of the failed backup ${ctx.vm}/${ctx.backupId} in the staging repository; \`kvm-backup prune\` frees their space`);
    }
  },

  async recover(ctx, completeIds) {
    const done: string[] = [];
    try {
      const repo = repoOf(ctx);
      if (!existsSync(stagingRepositoryPath(ctx.config.staging.path))) return done;
      const leftovers = groupBackups(await repo.snapshots(`looking for leftovers of ${ctx.vm}`, [RUNNER_TAG, `vm=${ctx.vm}`]), ctx.vm).filter((b) => !completeIds.has(b.id) && b.id !== ctx.backupId);
      for (const b of leftovers) {
        await repo.forget(b.all.map((s) => s.id), `removing the leftovers of ${ctx.vm}/${b.id}`);
        done.push(`forgot ${b.all.length} snapshot(s) of the unfinished backup ${ctx.vm}/${b.id} in the staging repository`);
      }
    } catch (e) {
      // Leftovers are never backups and cost only space: a busy repository must not stop tonight's backup.
      if (!(e instanceof KvmBackupError)) throw e;
      ctx.log.warn("backup.recover", `could not remove leftovers of unfinished backups from the staging repository (${e.message}); the next run or prune does it`);
    }
    for (const d of done) ctx.log.warn("backup.recover", d);
    return done;
  },
};
