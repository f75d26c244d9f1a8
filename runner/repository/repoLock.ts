/**
 * Waiting, shared/exclusive access to one restic repository among the runner's own processes on this host.
 *
 * restic 0.14 locks a repository itself, but it never waits: a backup that starts while another run prunes the
 * same repository fails at once ("repository is already locked exclusively"), and that failure would come in
 * the middle of a snapshot window. So every restic command of the runner first takes this lock, the way restic
 * would: backup, copy, dump and listing shared; forget, prune and check exclusive. Holders are lock files of
 * lock.ts (pid + start time), so a holder killed with -9 is stale and never blocks the next run.
 *
 * Protocol (both sides create, then check, so they cannot both pass): a shared holder writes its own file and
 * backs off while a live exclusive holder exists; the exclusive holder takes its file, then waits until no live
 * shared holder is left (new shared holders back off meanwhile).
 */
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { KvmBackupError } from "../errors.ts";
import { acquireLock, type Lock, LockedError, lockOwnerAlive } from "../lock.ts";
import { runtimeDir } from "../staging.ts";

export class RepositoryBusyError extends KvmBackupError {}

const POLL_MS = 250;
let counter = 0;

function locksDir(staging: string): string {
  return join(runtimeDir(staging), "locks");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function exclusiveName(repo: string): string {
  return `restic-${repo}-exclusive`;
}

function sharedPrefix(repo: string): string {
  return `restic-${repo}-shared-`;
}

/** Live shared holders other than `mine`; stale files are removed on the way. */
function liveShared(staging: string, repo: string, mine?: string): number {
  let n = 0;
  let names: string[];
  try {
    names = readdirSync(locksDir(staging));
  } catch {
    return 0;
  }
  for (const f of names) {
    if (!f.startsWith(sharedPrefix(repo)) || !f.endsWith(".lock") || f === mine) continue;
    const path = join(locksDir(staging), f);
    if (lockOwnerAlive(path)) n++;
    else rmSync(path, { force: true });
  }
  return n;
}

/**
 * Takes the repository lock `repo` (a short name: "staging", "target-nas") in `mode`, waiting up to `waitMs`.
 * `what` names the waiting operation in the error.
 */
export async function lockRepository(staging: string, repo: string, mode: "shared" | "exclusive", what: string, waitMs: number, signal?: AbortSignal): Promise<Lock> {
  const deadline = Date.now() + waitMs;
  const busy = () =>
    new RepositoryBusyError(
      `${what}: the ${repo} repository stayed busy for ${Math.round(waitMs / 1000)} s (another kvm-backup run holds it ${mode === "shared" ? "for prune or check" : "for a backup, copy or restore"}); it is tried again on the next run`,
    );
  if (mode === "exclusive") {
    let lock: Lock | null = null;
    for (;;) {
      if (signal?.aborted) throw signal.reason;
      try {
        lock = acquireLock(staging, exclusiveName(repo), `the ${repo} repository (${what})`);
        break;
      } catch (e) {
        if (!(e instanceof LockedError)) throw e;
      }
      if (Date.now() > deadline) throw busy();
      await sleep(POLL_MS);
    }
    while (liveShared(staging, repo) > 0) {
      if (signal?.aborted || Date.now() > deadline) {
        lock.release();
        if (signal?.aborted) throw signal.reason;
        throw busy();
      }
      await sleep(POLL_MS);
    }
    return lock;
  }
  for (;;) {
    if (signal?.aborted) throw signal.reason;
    const name = `${sharedPrefix(repo)}${process.pid}-${++counter}`;
    const lock = acquireLock(staging, name, `the ${repo} repository (${what})`);
    if (!lockOwnerAlive(join(locksDir(staging), `${exclusiveName(repo)}.lock`))) return lock;
    lock.release();
    if (Date.now() > deadline) throw busy();
    await sleep(POLL_MS);
  }
}
