/**
 * Names of the overlays the runner creates: `<base image><OVERLAY_MARK><backup id>`, next to the base image.
 * The mark is used by nothing else, so recovery can find a crashed run's overlays from the base image alone and
 * never mistakes someone else's snapshot for its own.
 */
import { readdirSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export const OVERLAY_MARK = ".kvm-backup-overlay-";

export function overlayPath(base: string, backupId: string): string {
  return `${base}${OVERLAY_MARK}${backupId}`;
}

/** The base image an overlay of ours belongs to, or null when the path is not one of our overlays. */
export function overlayBase(path: string): string | null {
  const i = path.lastIndexOf(OVERLAY_MARK);
  if (i <= 0) return null;
  const id = path.slice(i + OVERLAY_MARK.length);
  return /^\d{8}T\d{6}Z(?:-\d+)?$/.test(id) ? path.slice(0, i) : null;
}

/** Our overlays of `base` lying next to it (any age). */
export function overlaysNextTo(base: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dirname(base));
  } catch {
    return [];
  }
  const prefix = basename(base) + OVERLAY_MARK;
  return names.filter((n) => n.startsWith(prefix) && overlayBase(join(dirname(base), n)) === base).map((n) => join(dirname(base), n));
}
