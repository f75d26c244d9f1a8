/**
 * The stream step: read one frozen image, hash the guest-visible bytes in Node (SHA-256 runs faster than zstd
 * here), feed them to the compressor, and write its output straight into the backup's .partial directory while
 * hashing the stored bytes too (what `ship` checks on targets). Raw images and block devices are read directly;
 * qcow2 and other formats through `nbdcopy -- [ qemu-nbd -r -f FMT FILE ] -`, which presents the guest view
 * (backing chain included) as a raw byte stream (qemu-img cannot write to a pipe).
 *
 * Node does the reading (not the compressor): a read error (EIO on an invalid LVM snapshot) is then a failed
 * stream, never a short image. The caller can stop the stream at any moment with its AbortSignal (the LVM fill
 * guard, the run's time limit, SIGTERM); the children are killed and the promise rejects with the reason.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { open } from "node:fs/promises";
import { Transform, type Readable, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Compression, Policy } from "./config/schema.ts";
import { KvmBackupError } from "./errors.ts";
import { spawn } from "./exec.ts";
import type { Logger } from "./log.ts";
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
  bytesRead: number;
  bytesStored: number;
  sha256: string;
  storedSha256: string;
}

export interface StreamOptions {
  disk: FrozenDisk;
  outFile: string;
  compression: Compression;
  limits?: Limits;
  signal: AbortSignal;
  log: Logger;
}

type Child = ReturnType<typeof spawn>;

function collectStderr(child: Child): () => string {
  let text = "";
  child.stderr?.on("data", (b: Buffer) => {
    if (text.length < 8192) text += b.toString();
  });
  return () => text.trim();
}

function describeWriteError(e: NodeJS.ErrnoException, outFile: string): string {
  if (e.code === "ENOSPC") return `the staging disk is full: writing ${outFile} failed (ENOSPC); free space in staging (kvm-backup prune) or raise staging.minFree so the preflight catches it`;
  if (e.code === "EDQUOT") return `the disk quota of the staging path is exhausted while writing ${outFile}`;
  return `writing ${outFile} failed: ${e.message}`;
}

/** Opens the reader of a frozen image: a file/device stream, or nbdcopy for qcow2 and other formats. */
function openSource(disk: FrozenDisk): { stream: Readable; child: Child | null; stderr: () => string } {
  if (disk.format === "raw") return { stream: createReadStream(disk.readPath, { highWaterMark: 4 << 20 }), child: null, stderr: () => "" };
  const child = spawn("nbdcopy", ["--", "[", "qemu-nbd", "-r", "-f", disk.format, disk.readPath, "]", "-"], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    buffer: false,
    reject: false,
  });
  return { stream: child.stdout!, child, stderr: collectStderr(child) };
}

/** Makes a stored file durable (before the manifest is written). */
export async function syncFile(path: string): Promise<void> {
  const fh = await open(path, "r+");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function streamDisk(opts: StreamOptions): Promise<StreamResult> {
  const { disk, outFile, signal, log } = opts;
  if (signal.aborted) throw signal.reason;
  const progress = log.progress("stream.progress", disk.virtualSize);
  const inHash = new HashCounter((n) => progress.update(n));
  const outHash = new HashCounter();
  const file = createWriteStream(outFile, { flags: "wx", highWaterMark: 4 << 20 });
  let writeError: NodeJS.ErrnoException | null = null;
  file.on("error", (e) => (writeError ??= e as NodeJS.ErrnoException));
  const source = openSource(disk);
  const compCmd = compressorCommand(opts.compression);
  const limited = compCmd ? withLimits(opts.limits, compCmd) : null;
  const comp = limited ? spawn(limited.file, limited.args, { stdin: "pipe", stdout: "pipe", stderr: "pipe", buffer: false, reject: false }) : null;
  const compStderr = comp ? collectStderr(comp) : () => "";
  const children = [source.child, comp].filter((c): c is Child => c !== null);
  const onAbort = () => {
    for (const c of children) c.kill("SIGKILL");
    source.stream.destroy();
    file.destroy();
  };
  signal.addEventListener("abort", onAbort, { once: true });
  const pipes: Promise<unknown>[] = comp
    ? [pipeline(source.stream, inHash, comp.stdin as Writable), pipeline(comp.stdout as Readable, outHash, file)]
    : [pipeline(source.stream, inHash, outHash, file)];
  try {
    const [pipeResults, exits] = await Promise.all([Promise.allSettled(pipes), Promise.all(children.map((c) => c))]);
    if (signal.aborted) throw signal.reason;
    if (writeError) throw new StreamError(`disk ${disk.name}: ${describeWriteError(writeError, outFile)}`);
    const [srcExit, compExit] = source.child ? [exits[0], exits[1]] : [undefined, exits[0]];
    if (srcExit && (srcExit.exitCode !== 0 || srcExit.signal)) {
      throw new StreamError(`disk ${disk.name}: reading ${disk.readPath} (${disk.format}) with nbdcopy/qemu-nbd failed (exit ${srcExit.exitCode ?? srcExit.signal}): ${source.stderr() || "no message"}`);
    }
    if (compExit && (compExit.exitCode !== 0 || compExit.signal)) {
      throw new StreamError(`disk ${disk.name}: the compressor ${compCmd!.file} failed (exit ${compExit.exitCode ?? compExit.signal}): ${compStderr() || "no message"}`);
    }
    const failed = pipeResults.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      const e = failed.reason as NodeJS.ErrnoException;
      throw new StreamError(`disk ${disk.name}: reading ${disk.readPath} failed: ${e.message}`, undefined, { cause: e });
    }
    if (inHash.bytes !== disk.virtualSize) {
      throw new StreamError(`disk ${disk.name}: read ${inHash.bytes} bytes from ${disk.readPath}, but the image has ${disk.virtualSize}; the backup would be incomplete`);
    }
    // No fsync here: the pipeline syncs the files after the snapshot is removed, before the manifest.
    return { bytesRead: inHash.bytes, bytesStored: outHash.bytes, sha256: inHash.digest(), storedSha256: outHash.digest() };
  } catch (e) {
    for (const c of children) c.kill("SIGKILL");
    throw e;
  } finally {
    signal.removeEventListener("abort", onAbort);
    progress.finish();
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
