/**
 * A real OpenSSH server on 127.0.0.1, used as the ssh target. Everything lives in one temp directory with
 * ABSOLUTE paths (relative HostKey/PidFile/AuthorizedKeysFile make every connection fail with
 * "kex_exchange_identification: read: Connection reset by peer"). It generates its host key and one client key;
 * the client logs in as root with that key only.
 *
 * startSshd/stopSshd work from the info alone, so a test (another process than the global setup) can take the
 * server down and bring it back on the same port with the same keys.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";

export interface SshdLabInfo {
  host: string;
  port: number;
  user: string;
  /** "ssh-ed25519 AAAA..." as the config pins it. */
  hostKey: string;
  /** Private key the runner uses (mode 0600). */
  clientKeyFile: string;
  /** A directory on the "remote" side the targets may use (absolute, exists). */
  remoteRoot: string;
  dir: string;
  configFile: string;
  pidFile: string;
  logFile: string;
}

const SSHD = "/usr/sbin/sshd";

function need(tool: string, pkg: string): void {
  const r = spawnSync("sh", ["-c", `command -v ${tool}`]);
  if (r.status !== 0 && !existsSync(tool)) throw new Error(`sshd lab: ${tool} is missing; install the Debian package ${pkg} (scripts/lab-packages.txt)`);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export function sshdPid(info: SshdLabInfo): number | undefined {
  try {
    const pid = Number(readFileSync(info.pidFile, "utf8").trim());
    if (!pid) return undefined;
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

function sshArgs(info: SshdLabInfo): string[] {
  return [
    "-F", "/dev/null",
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=5",
    "-o", "IdentitiesOnly=yes",
    "-i", info.clientKeyFile,
    "-p", String(info.port),
    `${info.user}@${info.host}`,
  ];
}

/** Run a command on the lab server (for test setup and checks, not for the code under test). */
export function sshLab(info: SshdLabInfo, command: string): string {
  return execFileSync("ssh", [...sshArgs(info), command], { encoding: "utf8", timeout: 30_000 });
}

async function waitUntilServing(info: SshdLabInfo, deadlineMs: number): Promise<void> {
  const until = Date.now() + deadlineMs;
  let last = "";
  while (Date.now() < until) {
    const r = spawnSync("ssh", [...sshArgs(info), "true"], { encoding: "utf8", timeout: 10_000 });
    if (r.status === 0) return;
    last = `${r.stderr ?? ""}`.trim();
    await new Promise((res) => setTimeout(res, 200));
  }
  let log = "";
  try {
    log = readFileSync(info.logFile, "utf8");
  } catch {
    log = "(no log)";
  }
  throw new Error(`sshd lab: the server on ${info.host}:${info.port} did not accept a login within ${deadlineMs / 1000} s (last ssh error: ${last})\n--- ${info.logFile}\n${log}`);
}

/** Start (or restart) the server described by info; waits until a login works. */
export async function startSshd(info: SshdLabInfo, deadlineMs = 20_000): Promise<void> {
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  if (sshdPid(info) !== undefined) return;
  const r = spawnSync(SSHD, ["-f", info.configFile, "-E", info.logFile], { encoding: "utf8", timeout: 15_000 });
  if (r.status !== 0) {
    throw new Error(`sshd lab: ${SSHD} -f ${info.configFile} failed (exit ${r.status}): ${r.stderr}\n--- ${info.logFile}\n${existsSync(info.logFile) ? readFileSync(info.logFile, "utf8") : ""}`);
  }
  await waitUntilServing(info, deadlineMs);
}

/** Stop the listening server by its PID (connections it already serves end with it only if they are killed too). */
export async function stopSshd(info: SshdLabInfo, alsoSessions = true): Promise<void> {
  const pid = sshdPid(info);
  if (pid === undefined) return;
  const sessions = alsoSessions ? descendants(pid) : [];
  process.kill(pid, "SIGTERM");
  for (const p of sessions) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  const until = Date.now() + 10_000;
  while (Date.now() < until) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  process.kill(pid, "SIGKILL");
}

/** Every process below `pid` (children first, then theirs), from /proc. */
export function descendants(pid: number): number[] {
  const out = spawnSync("ps", ["-e", "-o", "pid=,ppid="], { encoding: "utf8" }).stdout;
  const children = new Map<number, number[]>();
  for (const line of out.split("\n")) {
    const [p, pp] = line.trim().split(/\s+/).map(Number);
    if (!p || pp === undefined) continue;
    children.set(pp, [...(children.get(pp) ?? []), p]);
  }
  const result: number[] = [];
  const queue = [...(children.get(pid) ?? [])];
  while (queue.length) {
    const p = queue.shift()!;
    result.push(p);
    queue.push(...(children.get(p) ?? []));
  }
  return result;
}

/** `extraConfig`: more sshd_config lines, e.g. `SetEnv PATH=...` for a host that lacks a tool. */
export async function startSshdLab(opts: { extraConfig?: string[] } = {}): Promise<{ info: SshdLabInfo; stop: () => Promise<void> }> {
  need(SSHD, "openssh-server");
  need("ssh", "openssh-client");
  need("ssh-keygen", "openssh-client");
  need("rsync", "rsync");
  const dir = mkdtempSync("/tmp/kvmb-sshd-");
  const hostKeyFile = join(dir, "host_ed25519");
  const clientKeyFile = join(dir, "client_ed25519");
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "kvm-backup-lab-host", "-f", hostKeyFile]);
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "kvm-backup-lab-client", "-f", clientKeyFile]);
  writeFileSync(join(dir, "authorized_keys"), readFileSync(`${clientKeyFile}.pub`));
  const remoteRoot = join(dir, "remote");
  mkdirSync(remoteRoot);
  const port = await freePort();
  const info: SshdLabInfo = {
    host: "127.0.0.1",
    port,
    user: "root",
    hostKey: readFileSync(`${hostKeyFile}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" "),
    clientKeyFile,
    remoteRoot,
    dir,
    configFile: join(dir, "sshd_config"),
    pidFile: join(dir, "sshd.pid"),
    logFile: join(dir, "sshd.log"),
  };
  writeFileSync(
    info.configFile,
    [
      `ListenAddress ${info.host}`,
      `Port ${port}`,
      `HostKey ${hostKeyFile}`,
      `PidFile ${info.pidFile}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      "StrictModes no",
      "UsePAM no",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PubkeyAuthentication yes",
      "PermitRootLogin prohibit-password",
      "MaxStartups 100",
      // For the sshfs mount that plays a hung network filesystem (a path target whose server freezes).
      "Subsystem sftp internal-sftp",
      "LogLevel VERBOSE",
      ...(opts.extraConfig ?? []),
      "",
    ].join("\n"),
  );
  await startSshd(info);
  return {
    info,
    stop: async () => {
      await stopSshd(info);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

declare module "vitest" {
  export interface ProvidedContext {
    sshd: SshdLabInfo;
  }
}
