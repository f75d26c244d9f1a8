/**
 * How the libvirt integration tests drive the REAL runner: the bundle `dist/kvm-backup.mjs` as a separate
 * process (so kill -9 is real) with a host config file the test writes, JSON log lines on stderr.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { HostConfigInput } from "../../runner/config/schema.ts";
import { ensureBundle } from "../lab/bundle.ts";
import type { LibvirtLabInfo } from "../lab/libvirtLab.ts";

/** Defined in ../lab/bundle.ts; re-exported for the tests that import it from here. */
export { ensureBundle };

export interface LogLine {
  ts: string;
  level: string;
  event: string;
  msg: string;
  [k: string]: unknown;
}

export function logLines(text: string): LogLine[] {
  return text.split("\n").flatMap((l) => {
    if (!l.startsWith("{")) return [];
    try {
      return [JSON.parse(l) as LogLine];
    } catch {
      return [];
    }
  });
}

export interface ConfigOptions {
  staging: string;
  vm: string;
  quiesce?: "auto" | "required" | "off";
  compression?: HostConfigInput["policies"][string]["compression"];
  minFree?: string;
  disks?: string[];
}

export function writeConfig(lab: LibvirtLabInfo, file: string, o: ConfigOptions): string {
  const cfg: HostConfigInput = {
    version: 1,
    host: "lab",
    libvirtUri: lab.uri,
    staging: { path: o.staging, minFree: o.minFree ?? "0", keepLast: 5 },
    policies: {
      nightly: {
        method: "libvirt",
        schedule: "daily",
        retention: { keepLast: 5 },
        compression: o.compression ?? { type: "zstd", level: 3, threads: 0 },
        snapshot: { quiesce: o.quiesce ?? "auto" },
      },
    },
    vms: { [o.vm]: { policy: "nightly", ...(o.disks ? { disks: o.disks } : {}) } },
  };
  writeFileSync(file, JSON.stringify(cfg, null, 2));
  return file;
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
  lines: LogLine[];
}

const ENV = { ...process.env, KVM_BACKUP_LOG: "json", KVM_BACKUP_PROGRESS_MS: "200" };

/** The runner, to its end; `env` adds to (or replaces, e.g. PATH) the environment it gets. */
export function cli(config: string, args: string[], timeoutMs = 180_000, env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, [ensureBundle(), "--config", config, ...args], { encoding: "utf8", env: { ...ENV, ...env }, timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "", lines: logLines(r.stderr ?? "") };
}

/** A run in the background; `until(event)` resolves when the runner logged that event. */
export function cliBackground(config: string, args: string[]): {
  child: ChildProcess;
  stderr: () => string;
  until: (event: string, timeoutMs?: number) => Promise<LogLine>;
  exited: Promise<number | null>;
} {
  const child = spawn("node", [ensureBundle(), "--config", config, ...args], { env: ENV, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  child.stdout!.resume();
  const exited = new Promise<number | null>((res) => child.on("close", (code) => res(code)));
  const until = async (event: string, timeoutMs = 120_000) => {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const hit = logLines(err).find((l) => l.event === event);
      if (hit) return hit;
      if (child.exitCode !== null || child.signalCode !== null) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`the runner did not log ${event} (exit ${child.exitCode ?? child.signalCode}); its log:\n${err.slice(-4000)}`);
  };
  return { child, stderr: () => err, until, exited };
}

/** Our overlay files lying next to the domain's images. */
export function overlayFiles(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.includes(".kvm-backup-overlay-"));
}

export function partials(staging: string, vm: string): string[] {
  const d = join(staging, vm);
  return existsSync(d) ? readdirSync(d).filter((n) => n.endsWith(".partial")) : [];
}

export function backups(staging: string, vm: string): string[] {
  const d = join(staging, vm);
  return existsSync(d) ? readdirSync(d).filter((n) => /^\d{8}T\d{6}Z(-\d+)?$/.test(n) && existsSync(join(d, n, "manifest.json"))).sort() : [];
}

export function mkdirp(p: string): string {
  mkdirSync(p, { recursive: true });
  return p;
}

/** `qemu-img compare` of two images (exit 0 identical, 1 different); -U because one may be in use. */
export function imagesEqual(a: string, aFmt: string, b: string, bFmt: string): { equal: boolean; output: string } {
  const r = spawnSync("qemu-img", ["compare", "-U", "-f", aFmt, "-F", bFmt, a, b], { encoding: "utf8", timeout: 120_000 });
  if (r.status !== 0 && r.status !== 1) throw new Error(`qemu-img compare failed (exit ${r.status}): ${r.stderr}`);
  return { equal: r.status === 0, output: `${r.stdout}${r.stderr}` };
}

/** Does the image hold `pattern` over [offset, offset+len)? Read with qemu-io -r -U (the image may be in use). */
export function holdsPattern(image: string, fmt: string, pattern: number, offset: string, len: string): boolean {
  const r = spawnSync("qemu-io", ["-r", "-U", "-f", fmt, "-c", `read -P 0x${pattern.toString(16)} ${offset} ${len}`, image], { encoding: "utf8", timeout: 60_000 });
  if (/Pattern verification failed/.test(r.stdout + r.stderr)) return false;
  if (r.status !== 0) throw new Error(`qemu-io failed (exit ${r.status}): ${r.stdout}${r.stderr}`);
  return true;
}
