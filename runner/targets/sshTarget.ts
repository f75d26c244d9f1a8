/**
 * An ssh target: rsync over ssh into .incoming-<id>/, sha256sum on the remote side, rename there.
 *
 * ssh is always started with an explicit, complete set of options (-F /dev/null: no user or system ssh_config
 * can weaken them): the host key is pinned through a known_hosts file generated from the config's hostKey with
 * StrictHostKeyChecking yes, only the configured key file is offered, nothing asks questions (BatchMode), and
 * ConnectTimeout plus ServerAliveInterval/CountMax end a transfer whose remote stopped answering.
 *
 * Remote commands are argument lists built from validated names (target.ts) and single-quoted one by one.
 */
import { createHash } from "node:crypto";
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import type { HostTarget } from "../config/schema.ts";
import type { RunResult } from "../exec.ts";
import { runtimeDir } from "../staging.ts";
import { boundedRun } from "./boundedRun.ts";
import { type ExecOptions, ShellTarget } from "./shellTarget.ts";
import {
  HostKeyMismatchError,
  type TargetContext,
  TargetError,
  TargetFullError,
  TargetSetupError,
  TargetTimeoutError,
  targetTimeoutMs,
  TargetUnreachableError,
} from "./target.ts";

type SshConfig = Extract<HostTarget, { type: "ssh" }>;

const CONNECT_TIMEOUT_S = 10;
const ALIVE_COUNT_MAX = 3;
const CONTROL_PERSIST_S = 15;

/** A shorter target timeout also tightens the keep-alive: from every 2 s (tests) up to every 15 s (default 2h). */
export function aliveIntervalSeconds(timeoutMs: number): number {
  return Math.min(15, Math.max(2, Math.round(timeoutMs / 10_000)));
}

/** Quote one argument for the remote POSIX shell. */
export function shellQuote(arg: string): string {
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** The known_hosts line: pinned to an alias, so it matches whatever address or port the config uses. */
export function knownHostsLine(alias: string, hostKey: string): string {
  const [type, key] = hostKey.trim().split(/\s+/);
  return `${alias} ${type} ${key}\n`;
}

export class SshTarget extends ShellTarget {
  readonly kind = "ssh" as const;
  readonly where: string;
  private readonly cfg: SshConfig;
  private readonly knownHosts: string;
  private readonly alias: string;

  constructor(name: string, cfg: SshConfig, ctx: TargetContext) {
    super(name, cfg.path, ctx.host, targetTimeoutMs(cfg));
    this.cfg = cfg;
    this.where = `ssh ${cfg.user}@${cfg.host}:${cfg.port}${cfg.path}`;
    this.knownHosts = join(runtimeDir(ctx.staging), "ssh", `${name}.known_hosts`);
    this.alias = `kvm-backup-target-${name}`;
    // One connection per target serves every command of a run (a handshake costs ~1 s on a busy host). The
    // socket name covers everything the connection was authenticated with, so a changed hostKey or key file
    // never reuses a connection made under the old one.
    const identity = createHash("sha256").update(JSON.stringify([name, cfg.host, cfg.port, cfg.user, cfg.hostKey, cfg.keyFile])).digest("hex").slice(0, 16);
    const socket = join(runtimeDir(ctx.staging), "ssh", `${identity}.mux`);
    // A Unix socket path has at most 107 bytes; under a very long staging path, go without sharing.
    this.controlPath = socket.length <= 100 ? socket : undefined;
  }

  private readonly controlPath: string | undefined;

  /** Options shared by every ssh invocation (plain ssh and rsync's -e); no value contains a space. */
  sshOptions(): string[] {
    const alive = aliveIntervalSeconds(this.timeoutMs);
    const o = (k: string, v: string | number) => ["-o", `${k}=${v}`];
    return [
      "-F", "/dev/null",
      ...o("BatchMode", "yes"),
      ...o("StrictHostKeyChecking", "yes"),
      ...o("UserKnownHostsFile", this.knownHosts),
      ...o("GlobalKnownHostsFile", "/dev/null"),
      ...o("HostKeyAlias", this.alias),
      ...o("CheckHostIP", "no"),
      ...o("UpdateHostKeys", "no"),
      ...o("IdentitiesOnly", "yes"),
      ...o("IdentityFile", this.cfg.keyFile),
      ...o("IdentityAgent", "none"),
      ...o("PasswordAuthentication", "no"),
      ...o("KbdInteractiveAuthentication", "no"),
      ...o("ConnectTimeout", CONNECT_TIMEOUT_S),
      ...o("ServerAliveInterval", alive),
      ...o("ServerAliveCountMax", ALIVE_COUNT_MAX),
      ...o("LogLevel", "ERROR"),
      ...(this.controlPath === undefined
        ? o("ControlMaster", "no")
        : [
            ...o("ControlMaster", "auto"),
            ...o("ControlPath", this.controlPath),
            // Idle seconds before the shared connection closes: it outlives a run by at most this, even after kill -9.
            ...o("ControlPersist", CONTROL_PERSIST_S),
          ]),
      "-p", String(this.cfg.port),
      "-l", this.cfg.user,
    ];
  }

  /** The key must exist and be readable by its owner only; ssh would refuse it too, but with a worse message. */
  private checkKeyFile(): void {
    let mode: number;
    try {
      mode = statSync(this.cfg.keyFile).mode;
    } catch (e) {
      throw new TargetSetupError(
        `target "${this.name}": cannot read the ssh key file ${this.cfg.keyFile} (${(e as NodeJS.ErrnoException).code}); it is installed by \`pulumi up\` from the target's privateKey`,
        this.name,
      );
    }
    if ((mode & 0o077) !== 0) {
      throw new TargetSetupError(
        `target "${this.name}": refusing the ssh key file ${this.cfg.keyFile}: its mode is ${(mode & 0o777).toString(8).padStart(4, "0")}, ` +
          `readable by others; run \`chmod 600 ${this.cfg.keyFile}\` (and check who could have read it)`,
        this.name,
      );
    }
  }

  /** (Re)write the known_hosts file from the pinned key, atomically, so a stale or edited file is never used. */
  private writeKnownHosts(): void {
    mkdirSync(join(this.knownHosts, ".."), { recursive: true, mode: 0o700 });
    const tmp = `${this.knownHosts}.${process.pid}.tmp`;
    const fd = openSync(tmp, "w", 0o600);
    try {
      writeSync(fd, knownHostsLine(this.alias, this.cfg.hostKey));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.knownHosts);
  }

  async check(): Promise<void> {
    this.checkKeyFile();
    this.writeKnownHosts();
    const res = await this.exec(["test", "-d", this.cfg.path], { timeoutMs: this.shortMs, allowFailure: true });
    if (res.exitCode !== 0) {
      throw new TargetSetupError(
        `target "${this.name}" (${this.where}): the directory ${this.cfg.path} does not exist on the server; create it there (owned by ${this.cfg.user}) or fix targets.${this.name}.path`,
        this.name,
      );
    }
  }

  /** Turn ssh's failure (exit 255) into an error that says what is wrong and what to do. */
  private sshFailure(stderr: string, timedOut: boolean, timeoutMs = this.shortMs): TargetError {
    const at = `target "${this.name}" (${this.where})`;
    const text = stderr.trim().split("\n").filter((l) => l.trim() !== "").slice(-3).join(" / ");
    if (/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No [A-Z0-9-]+ host key is known/i.test(stderr)) {
      return new HostKeyMismatchError(
        `${at}: refusing to connect: the server's host key does not match the pinned targets.${this.name}.hostKey. ` +
          `If the server's key really changed, check the new key out of band (ssh-keyscan -p ${this.cfg.port} ${this.cfg.host} on a trusted path) and update hostKey in the stack; ` +
          `otherwise someone may be intercepting the connection. Nothing was sent. (ssh: ${text})`,
        this.name,
      );
    }
    if (/Permission denied/i.test(stderr)) {
      return new TargetSetupError(
        `${at}: the server refused the key ${this.cfg.keyFile} for user ${this.cfg.user}; add its public key to ~${this.cfg.user}/.ssh/authorized_keys on the server (ssh: ${text})`,
        this.name,
      );
    }
    if (timedOut) {
      return new TargetTimeoutError(`${at}: did not answer within ${Math.round(timeoutMs / 1000)} s; check the server and the network, the backup is retried on the next run`, this.name);
    }
    return new TargetUnreachableError(
      `${at}: cannot connect or the connection broke (${text || "no message"}); check that the server is up and reachable, the backup is retried on the next run`,
      this.name,
    );
  }

  protected async exec(argv: string[], opts: ExecOptions): Promise<RunResult> {
    const remote = argv.map(shellQuote).join(" ");
    let res: RunResult;
    try {
      res = await boundedRun(this.name, "ssh", [...this.sshOptions(), this.cfg.host, "--", remote], { timeoutMs: opts.timeoutMs, allowFailure: true });
    } catch (e) {
      if (e instanceof TargetTimeoutError) throw this.sshFailure("", true, opts.timeoutMs);
      throw e;
    }
    if (res.exitCode === 255) throw this.sshFailure(res.stderr, false, opts.timeoutMs);
    if (res.exitCode !== 0 && !opts.allowFailure) this.fail(argv[0]!, res);
    return res;
  }

  protected async fetchFiles(paths: string[], localDir: string): Promise<void> {
    const host = this.cfg.host.includes(":") ? `[${this.cfg.host}]` : this.cfg.host;
    const ioTimeout = Math.max(30, aliveIntervalSeconds(this.timeoutMs) * (ALIVE_COUNT_MAX + 2));
    const args = ["--times", `--timeout=${ioTimeout}`, "-e", ["ssh", ...this.sshOptions()].join(" "), "--", ...paths.map((p) => `${host}:${p}`), `${localDir}/`];
    let res: RunResult;
    try {
      res = await boundedRun(this.name, "rsync", args, { timeoutMs: this.timeoutMs, allowFailure: true });
    } catch (e) {
      if (e instanceof TargetTimeoutError) throw this.sshFailure("", true, this.timeoutMs);
      throw e;
    }
    if (res.exitCode === 0) return;
    if (/Host key verification failed|REMOTE HOST IDENTIFICATION|Permission denied|Connection refused|Connection timed out/i.test(res.stderr) || res.exitCode === 255) {
      throw this.sshFailure(res.stderr, false);
    }
    this.fail(`copying ${paths.join(" ")} to ${localDir}`, res);
  }

  protected async copyFiles(localFiles: string[], destDir: string): Promise<void> {
    const host = this.cfg.host.includes(":") ? `[${this.cfg.host}]` : this.cfg.host;
    const ioTimeout = Math.max(30, aliveIntervalSeconds(this.timeoutMs) * (ALIVE_COUNT_MAX + 2));
    const args = [
      "--partial",
      // Compare by content, not by size and time: a resumed or damaged file must be brought to the exact bytes.
      "--ignore-times",
      "--times",
      "--chmod=F0640",
      `--timeout=${ioTimeout}`,
      "-e", ["ssh", ...this.sshOptions()].join(" "),
      "--",
      ...localFiles,
      `${host}:${destDir}/`,
    ];
    let res: RunResult;
    try {
      res = await boundedRun(this.name, "rsync", args, { timeoutMs: this.timeoutMs, allowFailure: true });
    } catch (e) {
      if (e instanceof TargetTimeoutError) {
        throw new TargetTimeoutError(
          `target "${this.name}" (${this.where}): the transfer did not finish within the target's timeout (${Math.round(this.timeoutMs / 1000)} s); the partial copy is kept and resumed on the next run`,
          this.name,
        );
      }
      throw e;
    }
    if (res.exitCode === 0) return;
    if (/No space left on device|Disk quota exceeded/i.test(res.stderr)) {
      throw new TargetFullError(`target "${this.name}" (${this.where}): no space left on the target while copying into ${destDir}; free space there or adjust retention, the backup is retried on the next run`, this.name);
    }
    if (/Host key verification failed|REMOTE HOST IDENTIFICATION|Permission denied|Connection refused|Connection timed out/i.test(res.stderr)) {
      throw this.sshFailure(res.stderr, false);
    }
    if (/Timeout, server|Connection reset|Broken pipe|connection unexpectedly closed/i.test(res.stderr) || res.exitCode === 255 || res.exitCode === 12 || res.exitCode === 30) {
      const alive = aliveIntervalSeconds(this.timeoutMs) * ALIVE_COUNT_MAX;
      const text = res.stderr.trim().split("\n").filter((l) => l.trim() !== "").slice(-2).join(" / ");
      throw new TargetUnreachableError(
        `target "${this.name}" (${this.where}): the connection broke during the transfer (the server went away, or stopped answering for ${alive} s); ` +
          `the partial copy is kept and resumed on the next run (rsync: ${text})`,
        this.name,
      );
    }
    this.fail("rsync", res);
  }
}
