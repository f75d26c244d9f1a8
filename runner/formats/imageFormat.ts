/**
 * format: image. Each disk is one compressed image file in the backup directory: streamed inside the window,
 * then (after the snapshot is removed) made durable and checksummed as stored, the checksum ship verifies on
 * targets. Nothing lives outside the directory, so abandoning and recovering are the pipeline's partial cleanup.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import type { ManifestDisk } from "../manifest.ts";
import { storedBytes } from "../manifest.ts";
import type { DiskToBackup } from "../snapshot/backend.ts";
import type { StoredBackup } from "../staging.ts";
import { sealStoredFile, storedFileName, streamDisk } from "../stream.ts";
import type { BackupFormatStrategy, FormatContext, StreamedDisk } from "./format.ts";

/** The allocated bytes of the disks' images (a block device or a sparse file counts what it could hold). */
export function allocatedBytes(disks: DiskToBackup[]): number {
  let sum = 0;
  for (const d of disks) {
    try {
      const st = statSync(d.source);
      sum += st.isFile() ? Math.min(st.blocks * 512, d.virtualSize) : d.virtualSize;
    } catch {
      sum += d.virtualSize;
    }
  }
  return sum;
}

export const imageFormat: BackupFormatStrategy = {
  name: "image",

  async prepare() {},

  spaceEstimate(disks, last: StoredBackup | undefined) {
    // The last image backup plus 10 %, or else the allocated image bytes.
    if (last?.manifest.format === "image") return Math.ceil(storedBytes(last.manifest) * 1.1);
    return allocatedBytes(disks);
  },

  async streamDisk(ctx: FormatContext, d, partial, signal): Promise<StreamedDisk> {
    const file = storedFileName(d.name, ctx.policy.compression.type);
    const result = await streamDisk({ disk: d, outFile: join(partial, file), compression: ctx.policy.compression, limits: ctx.policy.limits, signal, log: ctx.log.child({ disk: d.name }) });
    return { disk: d, result, file };
  },

  async finishDisks(ctx, streamed, partial): Promise<ManifestDisk[]> {
    const c = ctx.policy.compression;
    const out: ManifestDisk[] = [];
    for (const { disk: d, file, result: r } of streamed) {
      const sealed = await sealStoredFile(join(partial, file));
      out.push({
        name: d.name,
        source: d.source,
        format: d.format,
        virtualSize: d.virtualSize,
        bytesRead: r.bytesRead,
        bytesStored: sealed.bytes,
        sha256: r.sha256,
        storedSha256: sealed.sha256,
        file,
        compression: c.type === "none" ? { type: "none" } : { type: c.type, level: c.level },
      });
    }
    return out;
  },

  async commit() {},
  async abandon() {},
  async recover() {
    return [];
  },
};
