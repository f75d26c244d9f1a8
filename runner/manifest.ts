/**
 * manifest.json: written last, by an atomic rename of the whole backup directory. Its presence is what makes a
 * directory a backup; everything needed to verify and restore the backup without the host config is in it.
 */
import { z } from "zod";

export const MANIFEST_FILE = "manifest.json";
export const MANIFEST_VERSION = 1;

/** What every format records of a disk. */
const diskCommon = {
  /** Target name in the guest (vda) or the name in the explicit disks map. */
  name: z.string(),
  /** Where the disk lived on the host when the backup was taken (image path or LV device). */
  source: z.string(),
  /** Format of the source image (raw, qcow2); what is stored is always the guest-visible raw bytes. */
  format: z.string(),
  virtualSize: z.number().int().nonnegative(),
  bytesRead: z.number().int().nonnegative(),
  /** image: the compressed file's size; repository: the new data the disk added to the repository (after dedup and compression). */
  bytesStored: z.number().int().nonnegative(),
  /** SHA-256 of the guest-visible (uncompressed, raw) bytes. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
};

export const ManifestDisk = z.object({
  ...diskCommon,
  /** SHA-256 of the stored file as it lies on disk: what `ship` checks on a target. */
  storedSha256: z.string().regex(/^[0-9a-f]{64}$/),
  /** File name inside the backup directory, e.g. vda.raw.zst */
  file: z.string(),
  compression: z.object({ type: z.enum(["zstd", "gzip", "none"]), level: z.number().int().optional() }),
});

/**
 * A disk of a repository-format backup: its guest-visible bytes are one file, `path`, in the restic snapshot
 * `snapshot` of the staging repository (tagged with the backup id, so copies on targets are found by tag).
 */
export const RepositoryDisk = z.object({
  ...diskCommon,
  repository: z.object({
    /** The staging repository's snapshot id (64 hex); copies on targets carry it as `original`. */
    snapshot: z.string().regex(/^[0-9a-f]{64}$/),
    /** The snapshot's tree id: content-addressed, identical in every repository the snapshot is copied to. */
    tree: z.string().regex(/^[0-9a-f]{64}$/),
    /** File inside the snapshot: <vm>/<disk>.raw */
    path: z.string(),
  }),
  /** ingest "staged": size of the zstd image staged before the ingest (what the next backup needs on staging). */
  stagedBytes: z.number().int().nonnegative().optional(),
});

const manifestCommon = {
  manifestVersion: z.literal(MANIFEST_VERSION),
  id: z.string(),
  host: z.string(),
  vm: z.string(),
  policy: z.string(),
  method: z.enum(["lvm", "libvirt"]),
  runnerVersion: z.string(),
  startedAt: z.string(),
  finishedAt: z.string(),
  snapshot: z.object({
    /** none: the domain was shut off, its images were read as they are. */
    kind: z.enum(["libvirt-external", "lvm", "none"]),
    createdAt: z.string().nullable(),
    removedAt: z.string().nullable(),
    /** Snapshot creation to removal, the time the VM ran with a snapshot/overlay. */
    windowMs: z.number().int().nonnegative().nullable(),
    quiesced: z.boolean(),
    /** LVM only: highest fill seen while the snapshot lived. */
    peakFillPercent: z.number().nullable().optional(),
  }),
  /** domain.xml saved with the backup (libvirt domains), for restore and drills. */
  domainXml: z.string().nullable(),
};

export const ImageManifest = z.object({ ...manifestCommon, format: z.literal("image"), disks: z.array(ManifestDisk).min(1) });
export const RepositoryManifest = z.object({ ...manifestCommon, format: z.literal("repository"), disks: z.array(RepositoryDisk).min(1) });
export const Manifest = z.discriminatedUnion("format", [ImageManifest, RepositoryManifest]);

export type Manifest = z.infer<typeof Manifest>;
export type ImageManifest = z.infer<typeof ImageManifest>;
export type RepositoryManifest = z.infer<typeof RepositoryManifest>;
export type ManifestDisk = z.infer<typeof ManifestDisk>;
export type RepositoryDisk = z.infer<typeof RepositoryDisk>;

/** Bytes a backup added to its storage: the compressed images, or the repository's new data. */
export function storedBytes(m: Manifest): number {
  return (m.disks as Array<{ bytesStored: number }>).reduce((s, d) => s + d.bytesStored, 0);
}

/** Every file of a backup that must exist on a target, with its size and checksum (manifest.json last). */
export function payloadFiles(m: ImageManifest): { file: string; size: number; sha256: string }[] {
  return m.disks.map((d) => ({ file: d.file, size: d.bytesStored, sha256: d.storedSha256 }));
}
