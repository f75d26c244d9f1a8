/**
 * Freezing the guest's filesystems around snapshot creation (`virsh domfsfreeze`/`domfsthaw`, via the QEMU guest
 * agent). A frozen guest stalls every write, so the thaw is guaranteed three ways: `finally` in the caller, a
 * watchdog timer that thaws even if snapshot creation hangs, and a journal file that makes the next run thaw a
 * domain this runner left frozen (kill -9 between freeze and thaw).
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { run } from "../exec.ts";
import type { Logger } from "../log.ts";
import { runtimeDir } from "../staging.ts";

export interface FreezeJournal {
  domain: string;
  uri: string;
  pid: number;
  since: string;
}

export function freezeJournalPath(staging: string, vm: string): string {
  return join(runtimeDir(staging), "frozen", `${vm}.json`);
}

export async function agentAnswers(uri: string, domain: string): Promise<boolean> {
  const res = await run("virsh", ["-c", uri, "qemu-agent-command", domain, '{"execute":"guest-ping"}', "--timeout", "5"], {
    timeoutMs: 15_000,
    allowFailure: true,
  });
  return res.exitCode === 0;
}

async function thaw(uri: string, domain: string): Promise<void> {
  await run("virsh", ["-c", uri, "domfsthaw", domain], { timeoutMs: 60_000 });
}

export interface FrozenGuest {
  /** Thaws (idempotent); throws only when the thaw itself failed, after retries. */
  thaw(): Promise<void>;
}

/** Freezes the guest; the caller must call thaw() in a finally. `maxFrozenMs` is the watchdog. */
export async function freezeGuest(staging: string, vm: string, uri: string, domain: string, log: Logger, maxFrozenMs = 60_000): Promise<FrozenGuest> {
  const journal = freezeJournalPath(staging, vm);
  mkdirSync(join(runtimeDir(staging), "frozen"), { recursive: true });
  writeFileSync(journal, JSON.stringify({ domain, uri, pid: process.pid, since: new Date().toISOString() } satisfies FreezeJournal));
  let thawing: Promise<void> | null = null;
  const doThaw = () =>
    (thawing ??= (async () => {
      let last: unknown;
      for (let i = 0; i < 3; i++) {
        try {
          await thaw(uri, domain);
          rmSync(journal, { force: true });
          return;
        } catch (e) {
          last = e;
        }
      }
      log.error("lvm.thaw.failed", `could not thaw the filesystems of domain ${domain}: ${(last as Error).message}; run \`virsh -c ${uri} domfsthaw ${domain}\` now`);
      throw last;
    })());
  try {
    await run("virsh", ["-c", uri, "domfsfreeze", domain], { timeoutMs: 60_000 });
  } catch (e) {
    // A freeze that timed out may still have frozen some filesystems.
    await doThaw().catch(() => undefined);
    throw e;
  }
  const watchdog = setTimeout(() => {
    log.error("lvm.freeze.watchdog", `domain ${domain} was frozen for ${maxFrozenMs / 1000} s; thawing it now`);
    void doThaw().catch(() => undefined);
  }, maxFrozenMs);
  return {
    thaw: async () => {
      clearTimeout(watchdog);
      await doThaw();
    },
  };
}

/** Recovery: thaw a domain an earlier run left frozen. Returns what it did. */
export async function thawLeftFrozen(staging: string, vm: string): Promise<string[]> {
  const journal = freezeJournalPath(staging, vm);
  if (!existsSync(journal)) return [];
  let j: FreezeJournal;
  try {
    j = JSON.parse(readFileSync(journal, "utf8")) as FreezeJournal;
  } catch {
    rmSync(journal, { force: true });
    return [`removed an unreadable freeze journal ${journal}`];
  }
  // domfsthaw on a domain that is not frozen succeeds (it thaws zero filesystems); a domain that is gone is not frozen.
  const res = await run("virsh", ["-c", j.uri, "domfsthaw", j.domain], { timeoutMs: 60_000, allowFailure: true });
  if (res.exitCode !== 0) {
    const state = await run("virsh", ["-c", j.uri, "domstate", j.domain], { timeoutMs: 30_000, allowFailure: true });
    if (state.exitCode === 0 && /running|paused/.test(state.stdout)) {
      // Keep the journal so every run tries again, but do not block the backup: a snapshot of a frozen guest is
      // still consistent, and no backup at all would be worse. The operator is told what to run.
      return [
        `could not thaw domain ${j.domain}, which the run of pid ${j.pid} froze at ${j.since}: ${res.stderr.trim() || `exit ${res.exitCode}`}; if its filesystems are still frozen, run \`virsh -c ${j.uri} domfsthaw ${j.domain}\``,
      ];
    }
  }
  rmSync(journal, { force: true });
  return [`thawed the filesystems of domain ${j.domain}, left frozen by the run of pid ${j.pid} at ${j.since}`];
}
