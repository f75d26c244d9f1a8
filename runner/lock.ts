/**
 * One run per VM at a time. The lock file holds the owner's pid and start time; a lock whose owner is gone
 * (kill -9, reboot) is stale and taken over, so a crash never blocks the next night's backup.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { KvmBackupError } from "./errors.ts";
import { runtimeDir } from "./staging.ts";

export class LockedError extends KvmBackupError {}

interface Owner {
  pid: number;
  startTime: string | null;
  command: string;
  since: string;
}

function processStartTime(pid: number): string | null {
  try {
    // Field 22 of /proc/<pid>/stat; the comm field may contain spaces, so split after its closing paren.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

function alive(owner: Owner): boolean {
  const start = processStartTime(owner.pid);
  return start !== null && (owner.startTime === null || start === owner.startTime);
}

/** Is the owner recorded in this lock file still running? false for a missing, half-written or stale file. */
export function lockOwnerAlive(file: string): boolean {
  try {
    return alive(JSON.parse(readFileSync(file, "utf8")) as Owner);
  } catch {
    return false;
  }
}

export interface Lock {
  release(): void;
}

export function acquireLock(staging: string, name: string, what: string): Lock {
  const dir = join(runtimeDir(staging), "locks");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.lock`);
  const me: Owner = { pid: process.pid, startTime: processStartTime(process.pid), command: process.argv.slice(2).join(" "), since: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(file, "wx", 0o600);
      writeSync(fd, JSON.stringify(me));
      closeSync(fd);
      let released = false;
      return {
        release() {
          if (!released) rmSync(file, { force: true });
          released = true;
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    let owner: Owner | null = null;
    try {
      owner = JSON.parse(readFileSync(file, "utf8")) as Owner;
    } catch {
      owner = null; // half-written by a crashed run: stale
    }
    if (owner && alive(owner)) {
      throw new LockedError(
        `${what} is locked by pid ${owner.pid} (kvm-backup ${owner.command}, since ${owner.since}); wait for it to finish, or if that process is not kvm-backup, remove ${file}`,
      );
    }
    rmSync(file, { force: true });
  }
  throw new LockedError(`could not take the lock ${file} after removing a stale one three times; another run is racing for it`);
}
