/**
 * Runs a Type=oneshot service's ExecStart= the way systemd 252 starts it, for a machine without systemd as
 * PID 1: argv split from the unit line (no shell), the environment systemd gives a system service without
 * User= (PATH from `systemd-path search-binaries-default`, INVOCATION_ID, nothing inherited from the caller),
 * working directory /, stdin /dev/null, Nice= and IOSchedulingClass=/IOSchedulingPriority= applied (through
 * nice and ionice, which exec the command, so the process IS the command), its own process group standing in
 * for the cgroup, and TimeoutStartSec= enforced with KillMode=mixed (SIGTERM to the main process, SIGKILL to
 * the rest after TimeoutStopSec=).
 *
 * Not applied, and reported in `notApplied`: CPUQuota= (a cgroup controller only systemd sets up). The unit
 * syntax this handles is what the deploy renders; anything else (quotes, specifiers, prefixes) is refused.
 */
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { getPriority } from "node:os";
import { parseDuration } from "../../runner/config/duration.ts";

export interface ServiceSpec {
  argv: string[];
  nice: number | undefined;
  ioClass: string | undefined;
  ioPriority: number | undefined;
  timeoutStartSec: number;
  timeoutStopSec: number;
  notApplied: string[];
}

export interface ServiceRun {
  spec: ServiceSpec;
  env: Record<string, string>;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** Sampled from the running main process once it was the command: niceness and `ionice -p` output. */
  observed: { nice?: number; io?: string };
  timedOut: boolean;
}

const IO_CLASS: Record<string, string> = { realtime: "1", "best-effort": "2", idle: "3" };
const APPLIED = new Set(["Type", "ExecStart", "Nice", "IOSchedulingClass", "IOSchedulingPriority", "TimeoutStartSec", "TimeoutStopSec", "KillMode"]);

/** The [Service] section's directives of a unit file's text. */
export function serviceDirectives(text: string): Map<string, string> {
  const out = new Map<string, string>();
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    if (/^\[.*\]$/.test(line)) {
      section = line;
      continue;
    }
    if (section !== "[Service]") continue;
    const eq = line.indexOf("=");
    if (eq < 0 || line.endsWith("\\")) throw new Error(`unit line not understood by this harness: ${line}`);
    const key = line.slice(0, eq).trim();
    if (out.has(key)) throw new Error(`${key}= appears twice; this harness handles one of each`);
    out.set(key, line.slice(eq + 1).trim());
  }
  return out;
}

export function serviceSpec(text: string): ServiceSpec {
  const d = serviceDirectives(text);
  if (d.get("Type") !== "oneshot") throw new Error(`the service is Type=${d.get("Type") ?? "(unset)"}, not oneshot`);
  const exec = d.get("ExecStart");
  if (!exec) throw new Error("the service has no ExecStart=");
  if (/["'\\%$]/.test(exec) || /^[@\-:+!]/.test(exec)) throw new Error(`ExecStart=${exec}: quoting, specifiers and prefixes are not handled by this harness`);
  const argv = exec.split(/\s+/);
  if (!argv[0]!.startsWith("/")) throw new Error(`ExecStart=${exec}: systemd needs an absolute path here`);
  const km = d.get("KillMode") ?? "control-group";
  if (km !== "mixed") throw new Error(`KillMode=${km}: this harness carries out KillMode=mixed only`);
  return {
    argv,
    nice: d.has("Nice") ? Number(d.get("Nice")) : undefined,
    ioClass: d.get("IOSchedulingClass"),
    ioPriority: d.has("IOSchedulingPriority") ? Number(d.get("IOSchedulingPriority")) : undefined,
    timeoutStartSec: parseDuration(d.get("TimeoutStartSec") ?? "90s"),
    timeoutStopSec: parseDuration(d.get("TimeoutStopSec") ?? "90s"),
    notApplied: [...d].filter(([k]) => !APPLIED.has(k)).map(([k, v]) => `${k}=${v}`),
  };
}

/** The PATH systemd gives services, from systemd itself. */
export function systemdDefaultPath(): string {
  try {
    return execFileSync("systemd-path", ["search-binaries-default"], { encoding: "utf8" }).trim();
  } catch (e) {
    throw new Error(`systemd-path search-binaries-default failed (${(e as Error).message}); install the Debian package systemd`);
  }
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    /* gone */
  }
}

/**
 * Starts the service described by the unit file and waits for it, like `systemctl start` of a oneshot.
 * `maxMs` caps the wait below the unit's own TimeoutStartSec= (tests have shorter budgets); hitting either
 * is handled the same way.
 */
export async function runServiceLikeSystemd(unitFile: string, opts: { maxMs?: number } = {}): Promise<ServiceRun> {
  const spec = serviceSpec(readFileSync(unitFile, "utf8"));
  const env = { PATH: systemdDefaultPath(), INVOCATION_ID: randomBytes(16).toString("hex") };
  const wrap: string[] = [];
  if (spec.ioClass !== undefined) {
    const cls = IO_CLASS[spec.ioClass];
    if (!cls) throw new Error(`IOSchedulingClass=${spec.ioClass} is not known`);
    wrap.push("ionice", "-c", cls, ...(cls !== "3" && spec.ioPriority !== undefined ? ["-n", String(spec.ioPriority)] : []), "--");
  }
  if (spec.nice !== undefined) wrap.push("nice", "-n", String(spec.nice - getPriority()), "--");
  const [cmd, ...args] = [...wrap, ...spec.argv];
  const started = Date.now();
  const child = spawn(cmd!, args, { cwd: "/", env, stdio: ["ignore", "pipe", "pipe"], detached: true });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d));
  child.stderr!.on("data", (d: Buffer) => (stderr += d));
  const observed: ServiceRun["observed"] = {};
  const sample = setInterval(() => {
    const pid = child.pid!;
    // ionice and nice exec the command (env execs node): once the process is node, the wrappers are done.
    const comm = `/proc/${pid}/comm`;
    if (!existsSync(comm) || readFileSync(comm, "utf8").trim() !== "node") return;
    try {
      observed.nice = getPriority(pid);
      observed.io = execFileSync("ionice", ["-p", String(pid)], { encoding: "utf8" }).trim();
    } catch {
      /* exited meanwhile */
    }
    clearInterval(sample);
  }, 20);
  let timedOut = false;
  const limitMs = Math.min(spec.timeoutStartSec * 1000, opts.maxMs ?? Infinity);
  const timer = setTimeout(() => {
    timedOut = true;
    // KillMode=mixed: SIGTERM to the main process only, SIGKILL to all that is left after TimeoutStopSec=.
    try {
      process.kill(child.pid!, "SIGTERM");
    } catch {
      /* gone */
    }
    setTimeout(() => killGroup(child.pid!, "SIGKILL"), Math.min(spec.timeoutStopSec * 1000, 30_000)).unref();
  }, limitMs);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    child.on("close", (c, s) => resolve([c, s]));
    child.on("error", (e) => {
      stderr += `${cmd} could not be started (${e.message}); install the Debian package util-linux (ionice) or coreutils (nice)\n`;
      resolve([null, null]);
    });
  });
  clearTimeout(timer);
  clearInterval(sample);
  // The cgroup ends with the service: whatever the main process left behind goes too.
  killGroup(child.pid!, "SIGKILL");
  return { spec, env, code, signal, stdout, stderr, ms: Date.now() - started, observed, timedOut };
}
