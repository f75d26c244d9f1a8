/**
 * A drill restores each disk into a SPARSE raw file: blocks of zeros are skipped (holes), so a mostly empty
 * 500 GiB disk costs what its data costs, not 500 GiB. The bytes still pass the manifest's SHA-256 on the way
 * (the reader hashes what it decompresses or dumps), so the image the drill boots is the backup, bit for bit.
 *
 * The staging disk is shared with the backups: every 256 MiB written the free space is checked, and the restore
 * stops before staging falls below `minFreeBytes` (staging.minFree), which the next backup counts on.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from "node:fs";
import { Writable } from "node:stream";
import { formatBytes } from "../config/sizes.ts";
import { KvmBackupError } from "../errors.ts";
import { fsFacts } from "../localFs.ts";
import type { DiskReader } from "../commands/restore.ts";
import type { ManifestDisk, RepositoryDisk } from "../manifest.ts";

const BLOCK = 64 * 1024;
const ZERO = Buffer.alloc(BLOCK);
const SPACE_CHECK_EVERY = 256 << 20;

export class StagingSpaceError extends KvmBackupError {}

/** Writes what it receives at increasing offsets, skipping all-zero blocks; the length is set at the end. */
class SparseFileSink extends Writable {
  private fd: number;
  private pos = 0;
  private sinceCheck = 0;
  written = 0;

  constructor(
    path: string,
    private readonly checkSpace: () => Promise<void>,
  ) {
    super({ highWaterMark: 4 << 20 });
    this.fd = openSync(path, "w", 0o600);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    try {
      for (let off = 0; off < chunk.length; off += BLOCK) {
        const n = Math.min(BLOCK, chunk.length - off);
        const block = chunk.subarray(off, off + n);
        if (!block.equals(n === BLOCK ? ZERO : ZERO.subarray(0, n))) {
          writeSync(this.fd, block, 0, n, this.pos);
          this.written += n;
          this.sinceCheck += n;
        }
        this.pos += n;
      }
    } catch (e) {
      cb(e as Error);
      return;
    }
    if (this.sinceCheck < SPACE_CHECK_EVERY) return cb();
    this.sinceCheck = 0;
    this.checkSpace().then(() => cb(), cb);
  }

  override _final(cb: (e?: Error | null) => void): void {
    try {
      ftruncateSync(this.fd, this.pos);
      cb();
    } catch (e) {
      cb(e as Error);
    }
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    try {
      closeSync(this.fd);
    } catch {
      /* already closed */
    }
    cb(err);
  }
}

/** Restores disk `d` (its bytes from `read`) into the sparse raw file `to`; throws when the image does not match. */
export async function restoreSparse(read: DiskReader, d: ManifestDisk | RepositoryDisk, to: string, staging: string, minFreeBytes: number, signal?: AbortSignal): Promise<{ allocatedBytes: number }> {
  const checkSpace = async () => {
    const f = await fsFacts(staging);
    if (f.freeBytes < minFreeBytes) {
      throw new StagingSpaceError(
        `restoring disk ${d.name} for the drill stopped: staging ${staging} has only ${formatBytes(f.freeBytes)} free, below staging.minFree (${formatBytes(minFreeBytes)}), which the backups need; free space on staging or drill on a host with more room`,
      );
    }
  };
  await checkSpace();
  const sink = new SparseFileSink(to, checkSpace);
  // Stopping the sink fails the reader's pipeline, which kills its decompressor (or restic).
  const onAbort = () => sink.destroy(signal!.reason instanceof Error ? signal!.reason : new KvmBackupError("the restore was stopped"));
  signal?.addEventListener("abort", onAbort, { once: true });
  let r;
  try {
    if (signal?.aborted) throw signal.reason;
    r = await read(sink);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  if (r.sha256 !== d.sha256 || r.bytes !== d.virtualSize) {
    throw new KvmBackupError(
      `the restored image of disk ${d.name} does not match the manifest (SHA-256 ${r.sha256}, ${r.bytes} bytes; expected ${d.sha256}, ${d.virtualSize} bytes): the backup is damaged; \`kvm-backup verify\` names the file`,
    );
  }
  return { allocatedBytes: sink.written };
}
