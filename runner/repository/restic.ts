/**
 * restic, the way the runner uses it: one class per repository (the staging repository or a target's), every
 * command an argument array with a timeout, the password only as RESTIC_PASSWORD_FILE in the child's
 * environment (never an argument, never in a log), and restic's failures turned into messages that say what is
 * wrong and what to do.
 *
 * Every command first takes the runner's own repository lock (repoLock.ts): shared for backup, copy, dump and
 * listing, exclusive for forget, prune and check, as restic itself locks. A restic lock left by a killed restic
 * (kill -9) is stale; when restic reports the repository locked, `restic unlock` (which removes stale locks
 * only) runs once and the command is retried.
 *
 * Commands against a target run through boundedRun (a hung NFS mount or ssh connection cannot hang the runner)
 * and fail with TargetErrors, so ship and prune treat a repository target like any other target.
 */
import type { Readable, Writable } from "node:stream";
import { KvmBackupError } from "../errors.ts";
import { run, spawn, type RunResult } from "../exec.ts";
import type { Lock } from "../lock.ts";
import { boundedRun } from "../targets/boundedRun.ts";
import { HostKeyMismatchError, TargetError, TargetFullError, TargetSetupError, TargetUnreachableError } from "../targets/target.ts";
import { lockRepository } from "./repoLock.ts";

/** restic 0.14 is the first with compression (repository format 2). */
export const MIN_RESTIC_VERSION = "0.14.0";

/** Tag that marks every snapshot the runner makes; the others are key=value. */
export const RUNNER_TAG = "kvm-backup";

/** What restic's check --read-data-subset accepts: n/t, a percent, or a size. */
export const READ_DATA_SUBSET_RE = /^(?:\d+\/\d+|\d+(?:\.\d+)?%|\d+[KMGT]?)$/;

export class RepositoryError extends KvmBackupError {}
/** The password file does not open the repository. */
export class RepositoryPasswordError extends RepositoryError {}
/** There is no repository at the location (restic init was never run there). */
export class RepositoryMissingError extends RepositoryError {}

export interface ResticLocation {
  /** The -r value: a local path or sftp:... */
  repo: string;
  /** Extended options (-o key=value), e.g. the sftp command. */
  options: string[];
  /** For messages: "staging repository /srv/staging/.repository", "target nas (ssh ...)". */
  where: string;
  /** Name of the runner's lock for this repository ("staging", "target-nas"). */
  lockName: string;
  /** Set for a target's repository: errors are TargetErrors for this target and commands are bounded. */
  target: string | null;
  /** Budget of one ordinary command. */
  timeoutMs: number;
  /** restic's cache for remote repositories; null: --no-cache (a local repository needs none). */
  cacheDir: string | null;
  /** More environment for the child (an s3 repository's keys: the environment, never an argument). */
  env?: Record<string, string | undefined>;
}

export interface ResticSnapshot {
  id: string;
  tree: string;
  time: string;
  paths: string[];
  hostname: string;
  tags: string[];
  original?: string;
}

/** key=value tags of a snapshot, as a map ("vm" -> "web01"). */
export function tagMap(s: ResticSnapshot): Map<string, string> {
  const out = new Map<string, string>();
  for (const t of s.tags ?? []) {
    const i = t.indexOf("=");
    if (i > 0) out.set(t.slice(0, i), t.slice(i + 1));
  }
  return out;
}

export function parseSnapshots(stdout: string): ResticSnapshot[] {
  const raw = JSON.parse(stdout.trim() || "[]") as unknown;
  if (raw === null) return [];
  if (!Array.isArray(raw)) throw new Error("restic snapshots --json did not print a list");
  return raw.map((s: Record<string, unknown>) => ({
    id: String(s.id),
    tree: String(s.tree),
    time: String(s.time),
    paths: Array.isArray(s.paths) ? s.paths.map(String) : [],
    hostname: String(s.hostname ?? ""),
    tags: Array.isArray(s.tags) ? s.tags.map(String) : [],
    ...(typeof s.original === "string" ? { original: s.original } : {}),
  }));
}

/** `restic version` output: "restic 0.14.0 compiled with go1.19.8 on linux/amd64". */
export function parseResticVersion(stdout: string): string | null {
  return /^restic (\d+\.\d+\.\d+)/m.exec(stdout)?.[1] ?? null;
}

/** The summary line of `restic backup --json`. */
export function parseBackupSummary(stdout: string): { snapshotId: string; dataAdded: number; bytesProcessed: number } | null {
  for (const line of stdout.split("\n").reverse()) {
    if (!line.startsWith("{")) continue;
    try {
      const j = JSON.parse(line) as { message_type?: string; snapshot_id?: string; data_added?: number; total_bytes_processed?: number };
      if (j.message_type === "summary" && j.snapshot_id) return { snapshotId: j.snapshot_id, dataAdded: j.data_added ?? 0, bytesProcessed: j.total_bytes_processed ?? 0 };
    } catch {
      /* a status line cut short: keep looking */
    }
  }
  return null;
}

function lastLines(text: string, n = 4): string {
  return text.trim().split("\n").filter((l) => l.trim() !== "").slice(-n).join(" / ");
}

/** The child's environment: our password file, nothing an operator's shell may have set for restic. */
export function resticEnv(passwordFile: string, fromPasswordFile?: string): Record<string, string | undefined> {
  return {
    RESTIC_PASSWORD_FILE: passwordFile,
    RESTIC_PASSWORD: undefined,
    RESTIC_PASSWORD_COMMAND: undefined,
    RESTIC_REPOSITORY: undefined,
    RESTIC_REPOSITORY_FILE: undefined,
    RESTIC_FROM_PASSWORD: undefined,
    RESTIC_FROM_PASSWORD_COMMAND: undefined,
    RESTIC_FROM_PASSWORD_FILE: fromPasswordFile,
    RESTIC_FROM_REPOSITORY: undefined,
    RESTIC_KEY_HINT: undefined,
    RESTIC_CACHE_DIR: undefined,
    RESTIC_PROGRESS_FPS: undefined,
    // restic prints its messages in English either way; keep the parsers' assumptions true.
    LC_ALL: "C",
  };
}

export interface ResticCommandOptions {
  mode: "shared" | "exclusive";
  /** What this is for (messages, lock waits). */
  what: string;
  timeoutMs?: number;
  /** RESTIC_FROM_PASSWORD_FILE for copy / init --copy-chunker-params. */
  fromPasswordFile?: string;
  /** Also lock this other repository (copy: the source), shared. */
  alsoLock?: Restic;
  allowFailure?: boolean;
}

export class Restic {
  constructor(
    readonly loc: ResticLocation,
    readonly passwordFile: string,
    private readonly staging: string,
  ) {}

  get where(): string {
    return this.loc.where;
  }

  /** Global arguments: repository, options, cache. */
  globalArgs(): string[] {
    return ["-r", this.loc.repo, ...this.loc.options.flatMap((o) => ["-o", o]), ...(this.loc.cacheDir ? ["--cache-dir", this.loc.cacheDir] : ["--no-cache"])];
  }

  /** An error of this repository's kind: a TargetError for a target, a RepositoryError for staging. */
  private error(message: string, kind: "generic" | "password" | "missing" | "unreachable" | "hostkey" | "full" = "generic"): KvmBackupError {
    const text = `${this.loc.where}: ${message}`;
    if (this.loc.target !== null) {
      if (kind === "unreachable") return new TargetUnreachableError(text, this.loc.target);
      if (kind === "hostkey") return new HostKeyMismatchError(text, this.loc.target);
      if (kind === "full") return new TargetFullError(text, this.loc.target);
      if (kind === "password") return new TargetSetupError(text, this.loc.target);
      return new TargetError(text, this.loc.target);
    }
    if (kind === "password") return new RepositoryPasswordError(text);
    if (kind === "missing") return new RepositoryMissingError(text);
    return new RepositoryError(text);
  }

  /** restic's failure, classified; `args0` is the subcommand. */
  failure(sub: string, res: RunResult): KvmBackupError {
    const err = res.stderr;
    if (/wrong password or no key found/i.test(err)) {
      return this.error(
        `the repository password (${this.passwordFile}) does not open this repository. It must be the password the repository was created with ` +
          "(the stack's repositoryPassword, installed by `pulumi up`); if it was changed, put the old one back. Nothing was changed",
        "password",
      );
    }
    // An s3 repository: the gateway's answers as restic (minio-go) prints them. Before "no repository": restic
    // adds that hint to any failure to read the config, a refused key included.
    if (/InvalidAccessKeyId|SignatureDoesNotMatch|Access Key Id you provided does not exist|request signature we calculated does not match/i.test(err)) {
      return this.error(`the gateway refused the access keys (restic ${sub}: ${lastLines(err, 2)}); check the target's accessKeyId and secretAccessKey in the stack, then \`pulumi up\``, "password");
    }
    if (/Access Denied|AccessDenied/i.test(err)) {
      // A HEAD request (restic's Stat) gets a bare 403 for a wrong key too: name both causes.
      return this.error(`the gateway denied access (restic ${sub}: ${lastLines(err, 2)}); check the target's accessKeyId and secretAccessKey in the stack, and that these keys may read, write, list and delete in this bucket and prefix`, "password");
    }
    if (/unable to open config file|Is there a repository at the following location/i.test(err)) {
      return this.error(`there is no restic repository here (restic ${sub}: ${lastLines(err, 2)})`, "missing");
    }
    if (/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No [A-Z0-9-]+ host key is known/i.test(err)) {
      return this.error(
        `refusing to connect: the server's host key does not match the pinned hostKey; check the new key out of band and update it in the stack, otherwise someone may be intercepting the connection (restic ${sub}: ${lastLines(err, 2)})`,
        "hostkey",
      );
    }
    if (/no space left on device|disk quota exceeded|QuotaExceeded/i.test(err)) return this.error(`no space left (restic ${sub}: ${lastLines(err, 2)}); free space there or adjust retention`, "full");
    if (/ssh command exited|subprocess ssh|Connection refused|Connection timed out|Connection reset|Broken pipe|connection lost|Timeout, server|i\/o timeout|context deadline exceeded|no such host/i.test(err)) {
      return this.error(`cannot connect or the connection broke (restic ${sub}: ${lastLines(err, 3)}); check the server, the backup is retried on the next run`, "unreachable");
    }
    return this.error(`restic ${sub} failed (exit ${res.exitCode}): ${lastLines(err) || "no message"}`);
  }

  private async exec(args: string[], opts: ResticCommandOptions): Promise<RunResult> {
    const timeoutMs = opts.timeoutMs ?? this.loc.timeoutMs;
    const env = { ...resticEnv(this.passwordFile, opts.fromPasswordFile), ...this.loc.env };
    if (this.loc.target !== null) return boundedRun(this.loc.target, "restic", args, { timeoutMs, env, allowFailure: true });
    return run("restic", args, { timeoutMs, env, allowFailure: true });
  }

  /** Takes the runner's lock(s) for a command; the caller releases. */
  async lock(mode: "shared" | "exclusive", what: string, alsoLock?: Restic, waitMs = this.loc.timeoutMs, signal?: AbortSignal): Promise<Lock> {
    // Always the other (source) repository first: every process takes them in the same order.
    const other = alsoLock ? await lockRepository(this.staging, alsoLock.loc.lockName, "shared", what, waitMs, signal) : null;
    try {
      const mine = await lockRepository(this.staging, this.loc.lockName, mode, what, waitMs, signal);
      return { release: () => (mine.release(), other?.release()) };
    } catch (e) {
      other?.release();
      throw e;
    }
  }

  /** One restic command, locked, retried once after `restic unlock` when a stale restic lock is in the way. */
  async command(sub: string, args: string[], opts: ResticCommandOptions): Promise<RunResult> {
    const lock = await this.lock(opts.mode, opts.what, opts.alsoLock);
    try {
      const full = [...this.globalArgs(), sub, ...args];
      let res = await this.exec(full, opts);
      if (res.exitCode !== 0 && /repository is already locked/i.test(res.stderr)) {
        // Under our own lock no other run of ours uses the repository: a restic lock here is stale (a killed
        // restic) or someone else's. `restic unlock` removes only stale ones.
        await this.exec([...this.globalArgs(), "unlock"], { ...opts, fromPasswordFile: undefined });
        if (opts.alsoLock) await opts.alsoLock.exec([...opts.alsoLock.globalArgs(), "unlock"], { ...opts, fromPasswordFile: undefined });
        res = await this.exec(full, opts);
        if (res.exitCode !== 0 && /repository is already locked/i.test(res.stderr)) {
          throw this.error(`${opts.what}: the repository is locked by another restic process that is still running (${lastLines(res.stderr, 2)}); wait for it or stop it`);
        }
      }
      if (res.exitCode !== 0 && !opts.allowFailure) throw this.failure(sub, res);
      return res;
    } finally {
      lock.release();
    }
  }

  /** `restic unlock`: removes the stale locks a killed restic left (never a live one). */
  async unlockStale(what: string): Promise<void> {
    await this.command("unlock", [], { mode: "shared", what });
  }

  /** Does a repository exist here (and does the password open it)? false only when restic says there is none. */
  async exists(): Promise<boolean> {
    const res = await this.command("cat", ["config"], { mode: "shared", what: "looking for the repository", allowFailure: true });
    if (res.exitCode === 0) return true;
    const e = this.failure("cat config", res);
    if (e instanceof RepositoryMissingError || (this.loc.target !== null && /there is no restic repository here/.test(e.message))) return false;
    throw e;
  }

  /** `restic init`; `chunkerFrom` makes the new repository chunk like that one (copies then deduplicate). */
  async init(chunkerFrom?: Restic): Promise<void> {
    const args = ["--repository-version", "2"];
    if (chunkerFrom) args.push("--copy-chunker-params", "--from-repo", chunkerFrom.loc.repo, ...chunkerFrom.loc.options.flatMap((o) => ["-o", o]));
    await this.command("init", args, { mode: "exclusive", what: "creating the repository", fromPasswordFile: chunkerFrom?.passwordFile, alsoLock: chunkerFrom });
  }

  async snapshots(what: string, tags: string[] = [RUNNER_TAG]): Promise<ResticSnapshot[]> {
    const res = await this.command("snapshots", ["--json", ...(tags.length ? ["--tag", tags.join(",")] : [])], { mode: "shared", what });
    try {
      return parseSnapshots(res.stdout);
    } catch (e) {
      throw this.error(`restic snapshots printed something that is not its JSON list (${(e as Error).message})`);
    }
  }

  async forget(ids: string[], what: string): Promise<void> {
    if (ids.length) await this.command("forget", ids, { mode: "exclusive", what });
  }

  async prune(what: string): Promise<void> {
    await this.command("prune", [], { mode: "exclusive", what, timeoutMs: Math.max(this.loc.timeoutMs, 3_600_000) });
  }

  /** `restic check` (structure; with a subset also reads that share of the data). Returns the failure text, or null. */
  async check(readDataSubset: string | undefined, what: string): Promise<string | null> {
    const res = await this.command("check", readDataSubset ? [`--read-data-subset=${readDataSubset}`] : [], {
      mode: "exclusive",
      what,
      allowFailure: true,
      timeoutMs: Math.max(this.loc.timeoutMs, 3_600_000),
    });
    if (res.exitCode === 0) return null;
    const e = this.failure("check", res);
    if (!/restic check failed/.test(e.message)) throw e;
    return lastLines(`${res.stdout}\n${res.stderr}`, 6);
  }

  /** `restic copy` of the given snapshots from `from` into this repository. */
  async copyFrom(from: Restic, ids: string[], what: string): Promise<void> {
    await this.command("copy", ["--from-repo", from.loc.repo, ...from.loc.options.flatMap((o) => ["-o", o]), ...ids], {
      mode: "shared",
      what,
      fromPasswordFile: from.passwordFile,
      alsoLock: from,
    });
  }

  /** The arguments of `restic backup --stdin` for one file (the caller adds nothing; the password is in env()). */
  backupArgs(o: { filename: string; host: string; tags: string[]; compression: string }): string[] {
    return [...this.globalArgs(), "--compression", o.compression, "backup", "--stdin", "--stdin-filename", o.filename, "--host", o.host, "--tag", [RUNNER_TAG, ...o.tags].join(","), "--json", "--quiet"];
  }

  /** The child environment of every restic command on this repository. */
  env(): Record<string, string | undefined> {
    return { ...resticEnv(this.passwordFile), ...this.loc.env };
  }

  /**
   * `restic backup --stdin` of one file whose bytes come from `stdin`: a readable with a file descriptor (another
   * child's stdout: handed to restic directly, no copy through the runner), or "pipe" (then write to the
   * returned `stdin` and end it). `done` resolves with the summary once restic saved the snapshot; `kill` stops
   * restic, which then saves nothing. The caller holds the repository lock (lock("shared")).
   */
  backup(o: { filename: string; host: string; tags: string[]; compression: string; stdin: Readable | "pipe" | number; limits?: (cmd: { file: string; args: string[] }) => { file: string; args: string[] } }): {
    stdin: Writable | null;
    done: Promise<{ snapshotId: string; dataAdded: number; bytesProcessed: number }>;
    kill: () => void;
  } {
    const args = this.backupArgs(o);
    const cmd = o.limits ? o.limits({ file: "restic", args }) : { file: "restic", args };
    // execa's option types take each kind of stdin on its own.
    const stdin = o.stdin as "pipe";
    const child = spawn(cmd.file, cmd.args, { stdin, stdout: "pipe", stderr: "pipe", buffer: false, reject: false, env: this.env(), extendEnv: true });
    let out = "";
    let err = "";
    child.stdout!.on("data", (b: Buffer) => {
      if (out.length < 1 << 20) out += b.toString();
    });
    child.stderr!.on("data", (b: Buffer) => {
      if (err.length < 16384) err += b.toString();
    });
    const done = child.then((r) => {
      if (r.exitCode !== 0 || r.signal) {
        if (/repository is already locked/i.test(err)) {
          throw this.error(`backing up ${o.filename}: a stale restic lock is in the way (${lastLines(err, 2)}); the next run removes it (restic unlock) and backs up again`);
        }
        throw this.failure("backup", { stdout: out, stderr: err, exitCode: r.exitCode ?? -1 });
      }
      const summary = parseBackupSummary(out);
      if (!summary) throw this.error(`restic backup ended without its summary line; output: ${lastLines(out + err)}`);
      return summary;
    });
    done.catch(() => {});
    return { stdin: child.stdin ?? null, done, kill: () => void child.kill("SIGKILL") };
  }

  /** `restic dump SNAPSHOT PATH` as a stream; `done` rejects with restic's message when it failed. */
  async dump(snapshot: string, path: string, what: string): Promise<{ stream: Readable; done: Promise<void>; kill: () => void }> {
    const lock = await this.lock("shared", what);
    const child = spawn("restic", [...this.globalArgs(), "dump", snapshot, path], { stdin: "ignore", stdout: "pipe", stderr: "pipe", buffer: false, reject: false, env: this.env(), extendEnv: true });
    let err = "";
    child.stderr!.on("data", (b: Buffer) => {
      if (err.length < 16384) err += b.toString();
    });
    const done = child.then((r) => {
      lock.release();
      if (r.exitCode !== 0 || r.signal) throw this.failure("dump", { stdout: "", stderr: err || `killed by ${r.signal}`, exitCode: r.exitCode ?? -1 });
    });
    done.catch(() => {});
    return { stream: child.stdout!, done, kill: () => void child.kill("SIGKILL") };
  }
}
