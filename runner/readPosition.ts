/**
 * How far a child process has read, from /proc, without touching its data: the offset of a file description we
 * share with it (`/proc/self/fdinfo/FD`, pos), or the bytes a process has read in total (`/proc/PID/io`, rchar).
 * The stream step uses it to keep its checksum reader close behind the compressor (both then read the same pages
 * of the page cache) and to tell a stalled stream from a slow one. null when /proc does not say (not Linux, gone).
 */
import { readFileSync } from "node:fs";

function field(path: string, name: string): number | null {
  try {
    const m = new RegExp(`^${name}:\\s*(\\d+)`, "m").exec(readFileSync(path, "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** The current offset of our file descriptor `fd` (shared with a child that inherited it). */
export function fdOffset(fd: number): number | null {
  return field(`/proc/self/fdinfo/${fd}`, "pos");
}

/** Bytes process `pid` has read through read(2) and friends so far (its own libraries included: a few KiB). */
export function bytesReadBy(pid: number | undefined): number | null {
  return pid === undefined ? null : field(`/proc/${pid}/io`, "rchar");
}
