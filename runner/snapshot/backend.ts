/**
 * One pipeline (snapshot -> stream -> cleanup -> manifest), two snapshot back-ends. A back-end knows how to
 * freeze a VM's disks and how to undo that, including after a crash; it knows nothing about compression,
 * staging or manifests.
 */
import type { HostConfig, Policy, Vm } from "../config/schema.ts";
import type { Logger } from "../log.ts";

export interface DiskToBackup {
  /** Target name in the guest (vda) or the key of the explicit `disks` map. */
  name: string;
  /** Where the disk lives on the host: an image path or an LV device path. */
  source: string;
  /** The image format as QEMU reads it: raw (files and block devices) or qcow2. */
  format: string;
  virtualSize: number;
}

export interface FrozenDisk extends DiskToBackup {
  /** What the stream step reads: a file or block device holding the frozen image, in `format`. */
  readPath: string;
}

export interface VmContext {
  config: HostConfig;
  vm: string;
  vmConfig: Vm;
  policyName: string;
  policy: Policy;
  /** The backup id of this run (used to name overlays so recovery can find them). */
  backupId: string;
  log: Logger;
}

export interface SnapshotGuard {
  /** Stops watching; resolves with what was seen. */
  stop(): Promise<{ peakFillPercent: number | null }>;
}

export interface Snapshot {
  kind: "libvirt-external" | "lvm" | "none";
  disks: FrozenDisk[];
  quiesced: boolean;
  createdAt: Date;
  /**
   * Watches the snapshot while it lives (LVM fill level). Calls `abort` with the reason when the stream must stop
   * before the snapshot is lost; the pipeline then removes the snapshot and the partial output.
   */
  guard?(abort: (reason: Error) => void): SnapshotGuard;
  /** Removes the snapshot and puts the VM back on its own disks. Called exactly once, also after failures. */
  remove(): Promise<void>;
}

export interface SnapshotBackend {
  readonly method: "libvirt" | "lvm";
  /** Repairs what an earlier crashed run left for this VM (overlays, snapshots, a frozen guest). Returns what it did. */
  recover(ctx: VmContext): Promise<string[]>;
  /** Everything checkable before a snapshot is taken; throws PreflightError. Returns the disks to back up. */
  preflight(ctx: VmContext): Promise<DiskToBackup[]>;
  /** One consistent snapshot of all the given disks. On failure nothing is left behind. */
  snapshot(ctx: VmContext, disks: DiskToBackup[]): Promise<Snapshot>;
  /** The domain definition to keep with the backup, when there is one. */
  domainXml(ctx: VmContext): Promise<string | null>;
}
