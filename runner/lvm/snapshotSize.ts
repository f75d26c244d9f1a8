/**
 * Snapshot sizes from the policy: a byte size ("2GiB") or a share of the origin ("20%"), rounded UP to whole
 * extents, because LVM rounds up too and the preflight must check the space LVM will really take.
 */
import { parseSize } from "../config/sizes.ts";

export type SizeSpec = string | number;

export function roundUpToExtents(bytes: number, extentBytes: number): number {
  if (!(extentBytes > 0)) throw new Error(`extent size must be positive, got ${extentBytes}`);
  return Math.max(1, Math.ceil(bytes / extentBytes)) * extentBytes;
}

/** Bytes for a size spec, percent of `originBytes`, not yet rounded. */
export function sizeBytes(spec: SizeSpec, originBytes: number): number {
  if (typeof spec === "string" && /%\s*$/.test(spec)) {
    const pct = Number(spec.replace(/%\s*$/, ""));
    if (!(pct > 0 && pct <= 100)) throw new Error(`"${spec}" is not a percent between 0 and 100`);
    return Math.ceil((originBytes * pct) / 100);
  }
  return parseSize(spec);
}

export function resolveSnapshotSize(spec: SizeSpec, originBytes: number, extentBytes: number): number {
  return roundUpToExtents(sizeBytes(spec, originBytes), extentBytes);
}

export interface ExtendPlan {
  /** Bytes to add at each step; null: the policy does not extend. */
  stepBytes: number | null;
  /** The snapshot never grows beyond this. */
  ceilingBytes: number;
}

/**
 * Without `extendMax`, the ceiling is the origin's size: a snapshot as large as its origin can hold every block
 * the VM may change, so growing it further is pointless.
 */
export function resolveExtendPlan(extendBy: SizeSpec | undefined, extendMax: SizeSpec | undefined, originBytes: number, extentBytes: number): ExtendPlan {
  const ceiling = roundUpToExtents(extendMax === undefined ? originBytes : sizeBytes(extendMax, originBytes), extentBytes);
  return {
    stepBytes: extendBy === undefined ? null : roundUpToExtents(sizeBytes(extendBy, originBytes), extentBytes),
    ceilingBytes: ceiling,
  };
}
