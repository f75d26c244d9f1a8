/**
 * The stream step: compress one frozen image into the backup's .partial directory and compute the SHA-256 of its
 * guest-visible bytes, while the snapshot lives. Node stays out of the compressor's data path, which is what makes
 * the stream as fast as the compressor alone (a hop through Node's child pipes cost 3-4x; see the README's
 * benchmark):
 *   - the compressor reads the image itself: a raw image or block device as its stdin (a file descriptor), qcow2
 *     and other formats from `nbdcopy -- [ qemu-nbd -r -f FMT FILE ] -` (the guest view, backing chain included;
 *     qemu-img cannot write to a pipe), and writes straight into the stored file (its stdout);
 *   - Node reads the same guest view a second time (the raw file again, or a second nbdcopy) and hashes it, kept at
 *     most LEAD bytes ahead of the compressor's read offset (from /proc), so both read the same pages of the page
 *     cache and a large image is read from disk once.
 * The image is frozen, so both reads see the same bytes; `verify` checks the stored data against this SHA-256.
 * The stored file's own SHA-256 (what targets check) is computed after the snapshot is removed (sealStoredFile).
 * With `compression: none` Node copies and hashes in one pass.
 *
 * Failure is never a short image: a read error (EIO on an invalid LVM snapshot) fails the compressor, the reader
 * or the checksum reader; the hashed length and the compressor's final offset must equal the image size. Nothing
 * waits on anything forever: the compressor waits only on the kernel (file in, file out) or on its nbdcopy, the
 * checksum reader only on the compressor's progress while the compressor lives, and a stream without progress
 * for `stallMs` is stopped. The caller can stop the stream at any moment with its AbortSignal (the LVM fill guard,
 * the run's time limit, SIGTERM); the children are killed and the promise rejects with the reason.
 */
import { createHash } from "node:crypto";
import { closeSync, createReadStream, createWriteStream, openSync } from "node:fs";
import { open } from "node:fs/promises";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Compression, Policy } from "./config/schema.ts";
import { KvmBackupError } from "./errors.ts";
import { spawn } from "./exec.ts";
import type { Logger } from "./log.ts";
import { bytesReadBy, fdOffset } from "./readPosition.ts";
import type { FrozenDisk } from "./snapshot/backend.ts";

export type CompressionType = Compression["type"];
export type Limits = Pick<Policy["limits"], "nice" | "ioClass" | "ioPriority">;

export class StreamError extends KvmBackupError {}

export function storedFileName(disk: string, type: CompressionType): string {
  return `${disk}.raw${type === "zstd" ? ".zst" : type === "gzip" ? ".gz" : ""}`;
}

export function compressorCommand(c: Compression): { file: string; args: string[] } | null {
  if (c.type === "zstd") return { file: "zstd", args: ["-q", "-c", `-T${c.threads}`, `-${c.level}`] };
  if (c.type === "gzip") return { file: "gzip", args: ["-c", `-${c.level}`] };
  return null;
}

export function decompressorCommand(type: CompressionType, file: string): { file: string; args: string[] } | null {
  if (type === "zstd") return { file: "zstd", args: ["-q", "-d", "-c", "--", file] };
  if (type === "gzip") return { file: "gzip", args: ["-d", "-c", "--", file] };
  return null;
}

/** ionice + nice around a command, as the policy's limits say. */
export function withLimits(limits: Limits | undefined, cmd: { file: string; args: string[] }): { file: string; args: string[] } {
  if (!limits) return cmd;
  const io = limits.ioClass === "idle" ? ["-c", "3"] : ["-c", limits.ioClass === "realtime" ? "1" : "2", "-n", String(limits.ioPriority)];
  return { file: "ionice", args: [...io, "nice", "-n", String(limits.nice), cmd.file, ...cmd.args] };
}

/**
 * The command, made to die with the runner: `setpriv --pdeathsig KILL` (util-linux) sets the parent-death signal,
 * which survives the exec of ionice/nice/the tool. Without it a kill -9 of the runner would leave the compressor
 * and nbdcopy/qemu-nbd running on: qemu-nbd's lock on the base image then makes the next run's blockcommit fail
 * ("Failed to get write lock"), and an orphaned compressor keeps writing into a deleted partial.
 */
export function diesWithRunner(cmd: { file: string; args: string[] }): { file: string; args: string[] } {
  return { file: "setpriv", args: ["--pdeathsig", "KILL", "--", cmd.file, ...cmd.args] };
}

/** Counts and hashes what passes through. */
export class HashCounter extends Transform {
  readonly hash = createHash("sha256");
  bytes = 0;
  constructor(private readonly onBytes?: (total: number) => void) {
    super({ highWaterMark: 4 << 20 });
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    this.onBytes?.(this.bytes);
    cb(null, chunk);
  }
  digest(): string {
    return this.hash.digest("hex");
  }
}

export interface StreamResult {
  /** Guest-visible bytes read (= the image's virtual size). */
  bytesRead: number;
  /** SHA-256 of the guest-visible bytes. */
  sha256: string;
}

export interface StreamOptions {
  disk: FrozenDisk;
  outFile: string;
  compression: Compression;
  limits?: Limits;
  signal: AbortSignal;
  log: Logger;
  /** Stop a stream that made no progress for this long (a hung disk or reader). Default 120 s. */
  stallMs?: number;
  /**
   * Hand the image to this command instead of the compressor (the repository format's direct ingest: restic
   * backup --stdin); it reads the image as its stdin like the compressor, its stdout goes to outFile.
   */
  command?: { file: string; args: string[]; env?: Record<string, string | undefined> };
}

/** How far the checksum reader may run ahead of the compressor: well inside the page cache, a few reads deep. */
export const LEAD_BYTES = 64 << 20;
const READ_CHUNK = 4 << 20;
const DEFAULT_STALL_MS = 120_000;

type Child = ReturnType<typeof spawn>;
type ChildResult = Awaited<Child>;

function collectStderr(child: Child): () => string {
  let text = "";
  child.stderr?.on("data", (b: Buffer) => {
    if (text.length < 8192) text += b.toString();
  });
  return () => text.trim();
}

function describeWriteError(code: string | undefined, message: string, outFile: string): string {
  if (code === "ENOSPC") return `the staging disk is full: writing ${outFile} failed (ENOSPC); free space in staging (kvm-backup prune) or raise staging.minFree so the preflight catches it`;
  if (code === "EDQUOT") return `the disk quota of the staging path is exhausted while writing ${outFile} (EDQUOT)`;
  return `writing ${outFile} failed: ${message}`;
}

/** The errno a compressor's message names when it could not write its output. */
function writeErrnoOf(stderr: string): string | undefined {
  if (/no space left on device/i.test(stderr)) return "ENOSPC";
  if (/disk quota exceeded/i.test(stderr)) return "EDQUOT";
  return undefined;
}

function failedExit(r: PromiseSettledResult<ChildResult> | undefined): string | null {
  if (!r) return null;
  if (r.status === "rejected") return String((r.reason as Error)?.message ?? r.reason);
  const x = r.value;
  if (x.exitCode === 0 && !x.signal) return null;
  if (x.exitCode === undefined && !x.signal) return `could not be started: ${(x as { shortMessage?: string }).shortMessage ?? x.message ?? "unknown error"}`;
  return `exit ${x.exitCode ?? x.signal}`;
}

/** `nbdcopy` presenting the guest view of a non-raw image as raw bytes on its stdout. */
function nbdReader(disk: FrozenDisk): Child {
  const cmd = diesWithRunner({ file: "nbdcopy", args: ["--", "[", "qemu-nbd", "-r", "-f", disk.format, disk.readPath, "]", "-"] });
  return spawn(cmd.file, cmd.args, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    buffer: false,
    reject: false,
  });
}

/** Makes a stored file durable and returns its size and SHA-256 (after the snapshot is removed, before the manifest). */
export async function sealStoredFile(path: string): Promise<{ bytes: number; sha256: string }> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
    const hash = createHash("sha256");
    let bytes = 0;
    for await (const chunk of fh.createReadStream({ highWaterMark: READ_CHUNK, autoClose: false })) {
      hash.update(chunk as Buffer);
      bytes += (chunk as Buffer).length;
    }
    return { bytes, sha256: hash.digest("hex") };
  } finally {
    await fh.close();
  }
}

const sleep = (ms: number) => new Promise<void>((res) => setTimeout(res, ms));

/** Calls `onStall` once `progress()` has not moved for `stallMs`. Returns the function that stops watching. */
function watchForStall(progress: () => number, stallMs: number, onStall: () => void): () => void {
  let last = -1;
  let since = Date.now();
  const timer = setInterval(() => {
    const now = progress();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= stallMs) {
      clearInterval(timer);
      onStall();
    }
  }, Math.min(1000, Math.max(50, stallMs / 4)));
  return () => clearInterval(timer);
}

function stallError(disk: FrozenDisk, stallMs: number, where: string): StreamError {
  return new StreamError(
    `disk ${disk.name}: the stream made no progress for ${Math.round(stallMs / 1000)} s (${where}); a hung disk or reader process (look at ${disk.readPath} and dmesg); it was stopped so that the snapshot is removed`,
  );
}

export async function streamDisk(opts: StreamOptions): Promise<StreamResult> {
  const { disk, outFile, signal, log } = opts;
  if (signal.aborted) throw signal.reason;
  const compCmd = opts.command ?? compressorCommand(opts.compression);
  const limited = compCmd ? diesWithRunner(withLimits(opts.limits, compCmd)) : null;
  const progress = log.progress("stream.progress", disk.virtualSize);
  const children: Child[] = [];
  const fds: number[] = [];
  let stopReason: unknown = null;
  let stopped = false;
  let hashSource: Readable | null = null;
  /** Kills every child and ends the checksum reader; `reason` null: a child failed, its exit says why. */
  const stop = (reason: unknown) => {
    stopped = true;
    stopReason ??= reason;
    for (const c of children) c.kill("SIGKILL");
    hashSource?.destroy();
  };
  const onAbort = () => stop(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  let unwatch = () => {};
  try {
    if (!limited) return await copyUncompressed(opts, progress, stop, (s) => (hashSource = s), children);

    // The compressor's input: the raw image itself, or nbdcopy #1.
    let feeder: Child | null = null;
    let feederStderr = () => "";
    let srcFd: number | null = null;
    if (disk.format === "raw") {
      srcFd = openSync(disk.readPath, "r");
      fds.push(srcFd);
    } else {
      feeder = nbdReader(disk);
      children.push(feeder);
      feederStderr = collectStderr(feeder);
    }
    const outFd = openSync(outFile, "wx");
    fds.push(outFd);
    // execa hands any descriptor number to child_process as it is; its types only list 0-9, hence the casts.
    const comp = spawn(limited.file, limited.args, { stdin: (srcFd ?? feeder!.stdout!) as 0, stdout: outFd as 1, stderr: "pipe", buffer: false, reject: false, env: opts.command?.env });
    children.push(comp);
    const compStderr = collectStderr(comp);
    // The children hold their own copies; ours would only keep a pipe open (and must never be read from).
    feeder?.stdout?.destroy();
    closeSync(fds.pop()!);
    const compPos = srcFd !== null ? () => fdOffset(srcFd) : () => bytesReadBy(comp.pid);
    let compDone = false;
    const compResult = Promise.allSettled([comp]).then(([r]) => ((compDone = true), r));
    const feederResult = feeder ? Promise.allSettled([feeder]).then(([r]) => r) : Promise.resolve(undefined);
    // A compressor or reader that fails stops the others at once (no full read of an image nobody compresses).
    void compResult.then((r) => failedExit(r) && stop(null));
    void feederResult.then((r) => failedExit(r) && stop(null));

    // The checksum reader: the raw image again, or nbdcopy #2.
    let reader: Child | null = null;
    let readerStderr = () => "";
    if (srcFd !== null) {
      hashSource = createReadStream(disk.readPath, { start: 0, highWaterMark: READ_CHUNK });
    } else {
      reader = nbdReader(disk);
      children.push(reader);
      readerStderr = collectStderr(reader);
      hashSource = reader.stdout!;
    }
    const readerResult = reader ? Promise.allSettled([reader]).then(([r]) => r) : Promise.resolve(undefined);
    const hash = createHash("sha256");
    let hashed = 0;

    const stallMs = opts.stallMs ?? DEFAULT_STALL_MS;
    unwatch = watchForStall(
      () => (compPos() ?? 0) + hashed,
      stallMs,
      () => stop(stallError(disk, stallMs, `the compressor has read ${compPos() ?? "?"} of ${disk.virtualSize} bytes, the checksum reader ${hashed}`)),
    );

    let hashError: unknown = null;
    try {
      for await (const chunk of hashSource) {
        hash.update(chunk as Buffer);
        hashed += (chunk as Buffer).length;
        progress.update(hashed);
        // Stay close behind the compressor; it never waits for us, so this cannot deadlock.
        while (!compDone && !stopped) {
          const pos = compPos();
          if (pos === null || hashed - pos <= LEAD_BYTES) break;
          await sleep(5);
        }
      }
    } catch (e) {
      // A reader we ended ourselves (a child failed) is not the cause; that child's exit is.
      if (!stopped) {
        hashError = e;
        stop(null);
      }
    }
    const [cr, fr, rr] = await Promise.all([compResult, feederResult, readerResult]);
    if (signal.aborted) throw signal.reason;
    if (stopReason) throw stopReason;
    const compFail = failedExit(cr);
    const errno = compFail ? writeErrnoOf(compStderr()) : undefined;
    if (errno) throw new StreamError(`disk ${disk.name}: ${describeWriteError(errno, compStderr(), outFile)}`);
    const feederFail = failedExit(fr) ?? failedExit(rr);
    if (feederFail) {
      throw new StreamError(`disk ${disk.name}: reading ${disk.readPath} (${disk.format}) with nbdcopy/qemu-nbd failed (${feederFail}): ${feederStderr() || readerStderr() || "no message"}`);
    }
    if (hashError) {
      const e = hashError as NodeJS.ErrnoException;
      throw new StreamError(`disk ${disk.name}: reading ${disk.readPath} failed: ${e.message}`, undefined, { cause: e });
    }
    if (compFail) throw new StreamError(`disk ${disk.name}: the compressor ${compCmd!.file} failed (${compFail}): ${compStderr() || "no message"}`);
    if (hashed !== disk.virtualSize) {
      throw new StreamError(`disk ${disk.name}: read ${hashed} bytes from ${disk.readPath}, but the image has ${disk.virtualSize}; the backup would be incomplete`);
    }
    const compRead = srcFd !== null ? fdOffset(srcFd) : null;
    if (compRead !== null && compRead !== disk.virtualSize) {
      throw new StreamError(`disk ${disk.name}: the compressor stopped at byte ${compRead} of ${disk.virtualSize} of ${disk.readPath}; the backup would be incomplete`);
    }
    return { bytesRead: hashed, sha256: hash.digest("hex") };
  } catch (e) {
    for (const c of children) c.kill("SIGKILL");
    throw e;
  } finally {
    unwatch();
    for (const fd of fds) closeSync(fd);
    signal.removeEventListener("abort", onAbort);
    progress.finish();
  }
}

/** compression: none: one read, hashed and written by Node (there is no compressor to hand the image to). */
async function copyUncompressed(
  opts: StreamOptions,
  progress: ReturnType<Logger["progress"]>,
  stop: (reason: unknown) => void,
  setSource: (s: Readable) => void,
  children: Child[],
): Promise<StreamResult> {
  const { disk, outFile } = opts;
  const reader = disk.format === "raw" ? null : nbdReader(disk);
  if (reader) children.push(reader);
  const readerStderr = reader ? collectStderr(reader) : () => "";
  const source = reader ? reader.stdout! : createReadStream(disk.readPath, { highWaterMark: READ_CHUNK });
  setSource(source);
  const hash = new HashCounter((n) => progress.update(n));
  const file = createWriteStream(outFile, { flags: "wx", highWaterMark: READ_CHUNK });
  let writeError: NodeJS.ErrnoException | null = null;
  file.on("error", (e) => (writeError ??= e as NodeJS.ErrnoException));
  const stallMs = opts.stallMs ?? DEFAULT_STALL_MS;
  const unwatch = watchForStall(
    () => hash.bytes,
    stallMs,
    () => {
      const e = stallError(disk, stallMs, `${hash.bytes} of ${disk.virtualSize} bytes read`);
      stop(e);
      file.destroy(e);
    },
  );
  try {
    const [piped, exit] = await Promise.all([pipeline(source, hash, file).then(() => null, (e: unknown) => e), reader ? Promise.allSettled([reader]).then(([r]) => r) : undefined]);
    if (opts.signal.aborted) throw opts.signal.reason;
    if (writeError) throw new StreamError(`disk ${disk.name}: ${describeWriteError((writeError as NodeJS.ErrnoException).code, (writeError as Error).message, outFile)}`);
    const readerFail = failedExit(exit);
    if (readerFail) throw new StreamError(`disk ${disk.name}: reading ${disk.readPath} (${disk.format}) with nbdcopy/qemu-nbd failed (${readerFail}): ${readerStderr() || "no message"}`);
    if (piped) {
      if (piped instanceof StreamError) throw piped;
      throw new StreamError(`disk ${disk.name}: reading ${disk.readPath} failed: ${(piped as Error).message}`, undefined, { cause: piped });
    }
    if (hash.bytes !== disk.virtualSize) {
      throw new StreamError(`disk ${disk.name}: read ${hash.bytes} bytes from ${disk.readPath}, but the image has ${disk.virtualSize}; the backup would be incomplete`);
    }
    return { bytesRead: hash.bytes, sha256: hash.digest() };
  } finally {
    unwatch();
  }
}

/**
 * The guest-visible bytes of a stored image, decompressed, as a stream (verify, restore). `done` resolves when
 * the decompressor exited cleanly and rejects with its message otherwise.
 */
export function openStored(path: string, type: CompressionType): { stream: Readable; done: Promise<void>; kill: () => void } {
  const cmd = decompressorCommand(type, path);
  if (!cmd) return { stream: createReadStream(path, { highWaterMark: 4 << 20 }), done: Promise.resolve(), kill: () => undefined };
  const child = spawn(cmd.file, cmd.args, { stdin: "ignore", stdout: "pipe", stderr: "pipe", buffer: false, reject: false });
  const stderr = collectStderr(child);
  const done = child.then((r) => {
    if (r.exitCode !== 0 || r.signal) throw new StreamError(`\`${cmd.file} ${cmd.args.join(" ")}\` failed (exit ${r.exitCode ?? r.signal}): ${stderr() || "no message"}`);
  });
  return { stream: child.stdout!, done, kill: () => void child.kill("SIGKILL") };
}
