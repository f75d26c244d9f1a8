/**
 * Checking a staged backup against its manifest: the stored file's own SHA-256 (what lies on disk), then the
 * decompressed guest-visible bytes' SHA-256 and length. Both, because a damaged stored file can still decompress
 * (gzip/none), and a decompressor can fail on a file whose damage the first check already names.
 */
import { type Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ManifestDisk } from "./manifest.ts";
import { sha256File } from "./ship.ts";
import type { StoredBackup } from "./staging.ts";
import { HashCounter, openStored } from "./stream.ts";
import { join } from "node:path";

export interface DiskVerdict {
  disk: string;
  ok: boolean;
  problem?: string;
}

/** Decompresses one stored disk into `sink` (or nowhere), hashing the guest-visible bytes on the way. */
export async function readStoredDisk(dir: string, d: ManifestDisk, sink?: Writable): Promise<{ sha256: string; bytes: number }> {
  return hashedCopy(openStored(join(dir, d.file), d.compression.type), sink);
}

/** Copies a reader's bytes (a decompressor, `restic dump`) into `sink` (or nowhere), hashing them; kills it on failure. */
export async function hashedCopy(src: { stream: Readable; done: Promise<void>; kill: () => void }, sink?: Writable): Promise<{ sha256: string; bytes: number }> {
  const hash = new HashCounter();
  const devNull = new Writable({ write: (_c, _e, cb) => cb(), highWaterMark: 4 << 20 });
  try {
    await Promise.all([pipeline(src.stream, hash, sink ?? devNull), src.done]);
  } catch (e) {
    src.kill();
    throw e;
  }
  return { sha256: hash.digest(), bytes: hash.bytes };
}

export async function verifyDisk(b: StoredBackup, d: ManifestDisk): Promise<DiskVerdict> {
  const file = join(b.dir, d.file);
  try {
    const stored = await sha256File(file);
    if (stored !== d.storedSha256) return { disk: d.name, ok: false, problem: `the stored file ${file} is damaged: its SHA-256 is ${stored}, the manifest says ${d.storedSha256}` };
    const r = await readStoredDisk(b.dir, d);
    if (r.bytes !== d.virtualSize) return { disk: d.name, ok: false, problem: `${file} decompresses to ${r.bytes} bytes, the disk has ${d.virtualSize}` };
    if (r.sha256 !== d.sha256) return { disk: d.name, ok: false, problem: `the image in ${file} does not match: SHA-256 ${r.sha256}, the manifest says ${d.sha256}` };
    return { disk: d.name, ok: true };
  } catch (e) {
    return { disk: d.name, ok: false, problem: `${file}: ${(e as Error).message}` };
  }
}

