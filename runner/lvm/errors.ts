/**
 * Failures specific to the LVM method. Each says which disk, LV or VG is concerned and what to do about it.
 */
import { ExitCode, KvmBackupError } from "../errors.ts";

/** `lvs`/`vgs` printed something this runner cannot read: a different LVM version or a broken installation. */
export class LvmReportError extends KvmBackupError {
  constructor(message: string) {
    super(message, ExitCode.backupFailed);
  }
}

/**
 * The snapshot filled up to the policy's limit (or became invalid) while it lived; the backup was stopped so that
 * the snapshot never reaches 100 %. `fillPercent` is the level it reached.
 */
export class SnapshotOverflowError extends KvmBackupError {
  readonly fillPercent: number;
  readonly snapshot: string;
  /** limit: stopped at maxFillPercent; invalid: LVM marked it invalid; unreadable/gone: the guard lost sight of it. */
  readonly kind: "limit" | "invalid" | "unreadable" | "gone";
  constructor(message: string, details: { fillPercent: number; snapshot: string; kind: SnapshotOverflowError["kind"] }) {
    super(message, ExitCode.backupFailed);
    this.fillPercent = details.fillPercent;
    this.snapshot = details.snapshot;
    this.kind = details.kind;
  }
}
