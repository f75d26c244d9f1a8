/**
 * A private libvirt for the tests: virtlogd + libvirtd started in their OWN mount namespace (`unshare -m`), with
 * lab directories bind-mounted over /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and a
 * lab qemu.conf over /etc/libvirt/qemu.conf. Several engineers' test runs on one machine therefore never share a
 * libvirtd, and the machine's own libvirt (if any) is never touched. Clients outside the namespace reach the
 * daemon through the bind-mounted socket: `qemu:///system?socket=<lab>/run/libvirt-sock`.
 *
 * No /dev/kvm on the lab machines: domains are `<domain type='qemu'>` (TCG), q35, 128 MiB, no OS (they sit in
 * firmware), no graphics. QEMU runs as root (lab qemu.conf), so images anywhere under /tmp work.
 *
 * Everything works from the info alone, so a test process (not the global setup) can use it too.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readPid } from "./daemonPid.ts";

export interface LibvirtLabInfo {
  dir: string;
  /** The URI every client (and the runner's host config) uses. */
  uri: string;
  socket: string;
  libvirtdPidFile: string;
  virtlogdPidFile: string;
  logFile: string;
}

const BIND_DIRS: Array<[string, string]> = [
  ["run", "/run/libvirt"],
  ["lib", "/var/lib/libvirt"],
  ["cache", "/var/cache/libvirt"],
  ["log", "/var/log/libvirt"],
];

function need(tool: string, pkg: string): void {
  const r = spawnSync("sh", ["-c", 'command -v "$1"', "sh", tool]);
  if (r.status !== 0) throw new Error(`libvirt lab: ${tool} is missing; install the Debian package ${pkg} (scripts/lab-packages.txt)`);
}

function tailOf(file: string, chars = 4000): string {
  try {
    return readFileSync(file, "utf8").slice(-chars);
  } catch {
    return "(no log)";
  }
}

/** virsh against the lab daemon (test setup and checks; the code under test calls virsh itself). */
export function virshLab(info: LibvirtLabInfo, args: string[], timeoutMs = 60_000): string {
  return execFileSync("virsh", ["-c", info.uri, ...args], { encoding: "utf8", timeout: timeoutMs, stdio: ["ignore", "pipe", "pipe"] });
}

export function virshLabTry(info: LibvirtLabInfo, args: string[], timeoutMs = 60_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("virsh", ["-c", info.uri, ...args], { encoding: "utf8", timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

async function waitForDaemon(info: LibvirtLabInfo, deadlineMs: number): Promise<void> {
  const until = Date.now() + deadlineMs;
  let last = "";
  while (Date.now() < until) {
    if (existsSync(info.socket)) {
      const r = spawnSync("virsh", ["-c", info.uri, "version"], { encoding: "utf8", timeout: 30_000 });
      if (r.status === 0 && /Running hypervisor: QEMU/.test(r.stdout)) return;
      last = (r.stderr ?? "").trim();
    }
    await new Promise((res) => setTimeout(res, 200));
  }
  throw new Error(
    `libvirt lab: libvirtd did not answer on ${info.socket} within ${deadlineMs / 1000} s (last virsh error: ${last || "no socket"})\n--- ${info.logFile}\n${tailOf(info.logFile)}\n--- virtlogd\n${tailOf(join(info.dir, "virtlogd.log"))}`,
  );
}

export async function startLibvirtLab(deadlineMs = 90_000): Promise<{ info: LibvirtLabInfo; stop: () => Promise<void> }> {
  need("libvirtd", "libvirt-daemon-system");
  need("virtlogd", "libvirt-daemon-system");
  need("virsh", "libvirt-clients");
  need("qemu-system-x86_64", "qemu-system-x86");
  need("qemu-img", "qemu-utils");
  need("unshare", "util-linux");
  // Characters the host config's libvirtUri accepts: mkdtemp adds [A-Za-z0-9].
  const dir = mkdtempSync("/tmp/kvmb-libvirt-");
  for (const [sub] of BIND_DIRS) mkdirSync(join(dir, sub));
  const info: LibvirtLabInfo = {
    dir,
    socket: join(dir, "run", "libvirt-sock"),
    uri: `qemu:///system?socket=${join(dir, "run", "libvirt-sock")}`,
    libvirtdPidFile: join(dir, "libvirtd.pid"),
    virtlogdPidFile: join(dir, "virtlogd.pid"),
    logFile: join(dir, "libvirtd.log"),
  };
  writeFileSync(
    join(dir, "qemu.conf"),
    ['user = "root"', 'group = "root"', "dynamic_ownership = 0", "remember_owner = 0", 'security_driver = "none"', ""].join("\n"),
  );
  writeFileSync(join(dir, "libvirtd.conf"), [`log_outputs = "3:file:${info.logFile}"`, "log_filters = \"\"", ""].join("\n"));
  writeFileSync(join(dir, "virtlogd.conf"), [`log_outputs = "3:file:${join(dir, "virtlogd.log")}"`, ""].join("\n"));
  // The script only sets up the namespace and starts the daemons; they keep the namespace alive after it exits.
  const script = [
    "set -eu",
    'L="$1"',
    "mount --make-rprivate /",
    "mkdir -p /run/libvirt",
    ...BIND_DIRS.map(([sub, target]) => `mount --bind "$L/${sub}" ${target}`),
    'mount --bind "$L/qemu.conf" /etc/libvirt/qemu.conf',
    'virtlogd -d -f "$L/virtlogd.conf" -p "$L/virtlogd.pid"',
    'libvirtd -d -f "$L/libvirtd.conf" -p "$L/libvirtd.pid"',
  ].join("\n");
  writeFileSync(join(dir, "start.sh"), script);
  const stop = async () => stopLibvirtLab(info);
  const r = spawnSync("unshare", ["-m", "--propagation", "private", "sh", join(dir, "start.sh"), dir], { encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) {
    await stop();
    throw new Error(`libvirt lab: starting the daemons in a private mount namespace failed (exit ${r.status}): ${r.stderr}\n--- ${info.logFile}\n${tailOf(info.logFile)}`);
  }
  try {
    await waitForDaemon(info, deadlineMs);
  } catch (e) {
    await stop();
    throw e;
  }
  return { info, stop };
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  return false;
}

async function killPid(pid: number | undefined): Promise<void> {
  if (pid === undefined) return;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  if (!(await waitGone(pid, 10_000))) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone */
    }
    await waitGone(pid, 5_000);
  }
}

/** Destroys every lab domain, then stops QEMUs left by PID, libvirtd and virtlogd by PID, and removes the lab. */
export async function stopLibvirtLab(info: LibvirtLabInfo, removeDir = true): Promise<void> {
  if (readPid(info.libvirtdPidFile) !== undefined) {
    const names = virshLabTry(info, ["list", "--name"], 30_000).stdout.split("\n").map((s) => s.trim()).filter(Boolean);
    for (const n of names) virshLabTry(info, ["destroy", n], 30_000);
  }
  // QEMUs whose libvirtd is gone: their pid files are in the lab's /run/libvirt/qemu.
  const qemuRun = join(info.dir, "run", "qemu");
  if (existsSync(qemuRun)) {
    for (const f of readdirSync(qemuRun).filter((n) => n.endsWith(".pid"))) await killPid(readPid(join(qemuRun, f)));
  }
  await killPid(readPid(info.libvirtdPidFile));
  await killPid(readPid(info.virtlogdPidFile));
  if (removeDir) rmSync(info.dir, { recursive: true, force: true });
}

export interface TestDisk {
  target: string;
  path: string;
  format: "qcow2" | "raw";
  size: number;
  /** SHA-256 of the guest-visible bytes as created. */
  sha256: string;
}

export interface TestDomain {
  name: string;
  dir: string;
  xml: string;
  disks: TestDisk[];
}

/** Deterministic bytes (not compressible to nothing): a seeded SHA-256 counter stream. */
export function knownBytes(seed: string, length: number): Buffer {
  const out = Buffer.alloc(length);
  let off = 0;
  for (let i = 0; off < length; i++) {
    const h = createHash("sha256").update(`${seed}:${i}`).digest();
    off += h.copy(out, off);
  }
  return out;
}

function rawWithKnownData(path: string, size: number, seed: string): void {
  // Half known data, half zeros, like a real disk.
  const buf = Buffer.alloc(size);
  knownBytes(seed, Math.floor(size / 2)).copy(buf, 0);
  writeFileSync(path, buf);
}

export function sha256OfFile(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** A domain definition; a disk of `type: "block"` is a block device (`<source dev=…>`), else an image file. */
export function domainXml(name: string, disks: Array<{ target: string; path: string; format: string; type?: "file" | "block" }>): string {
  return [
    "<domain type='qemu'>",
    `  <name>${name}</name>`,
    "  <memory unit='MiB'>128</memory>",
    "  <vcpu>1</vcpu>",
    "  <os><type arch='x86_64' machine='q35'>hvm</type></os>",
    "  <devices>",
    "    <emulator>/usr/bin/qemu-system-x86_64</emulator>",
    ...disks.map(
      (d) =>
        `    <disk type='${d.type ?? "file"}' device='disk'><driver name='qemu' type='${d.format}'/><source ${d.type === "block" ? "dev" : "file"}='${d.path}'/><target dev='${d.target}' bus='virtio'/></disk>`,
    ),
    "  </devices>",
    "</domain>",
    "",
  ].join("\n");
}

/**
 * Creates a running transient domain with one qcow2 disk (vda) and one raw disk (vdb), both holding known data,
 * in `dir` (default: a new directory in the lab). `persistent` defines it first (for shut-off tests).
 */
export function createTestDomain(
  info: LibvirtLabInfo,
  name: string,
  opts: { dir?: string; qcow2Bytes?: number; rawBytes?: number; start?: boolean; persistent?: boolean } = {},
): TestDomain {
  const dir = opts.dir ?? join(info.dir, "domains", name);
  mkdirSync(dir, { recursive: true });
  const qcow2Bytes = opts.qcow2Bytes ?? 16 << 20;
  const rawBytes = opts.rawBytes ?? 8 << 20;
  const seedRaw = join(dir, "vda.seed.raw");
  rawWithKnownData(seedRaw, qcow2Bytes, `${name}-vda`);
  const vda = join(dir, "vda.qcow2");
  execFileSync("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", seedRaw, vda], { timeout: 120_000 });
  const vdaSha = sha256OfFile(seedRaw);
  rmSync(seedRaw);
  const vdb = join(dir, "vdb.raw");
  rawWithKnownData(vdb, rawBytes, `${name}-vdb`);
  const disks: TestDisk[] = [
    { target: "vda", path: vda, format: "qcow2", size: qcow2Bytes, sha256: vdaSha },
    { target: "vdb", path: vdb, format: "raw", size: rawBytes, sha256: sha256OfFile(vdb) },
  ];
  const xml = domainXml(name, disks);
  const xmlFile = join(dir, "domain.xml");
  writeFileSync(xmlFile, xml);
  if (opts.persistent) {
    virshLab(info, ["define", xmlFile]);
    if (opts.start !== false) virshLab(info, ["start", name]);
  } else if (opts.start !== false) {
    virshLab(info, ["create", xmlFile]);
  }
  return { name, dir, xml, disks };
}

/** Destroys (and undefines, if persistent) a lab domain; ignores one that is already gone. */
export function removeTestDomain(info: LibvirtLabInfo, name: string): void {
  virshLabTry(info, ["destroy", name], 30_000);
  virshLabTry(info, ["undefine", name], 30_000);
}

export function domainState(info: LibvirtLabInfo, name: string): string {
  const r = virshLabTry(info, ["domstate", name], 30_000);
  return r.status === 0 ? r.stdout.trim() : `missing (${r.stderr.trim()})`;
}

/** The current source of every disk target (the domain is on an overlay when a source is not the base image). */
export function domainSources(info: LibvirtLabInfo, name: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of virshLab(info, ["domblklist", name]).split("\n").slice(2)) {
    const m = /^\s*(\S+)\s+(.+?)\s*$/.exec(line);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** A guest write through QEMU's monitor (no OS needed): `pattern` over [offset, offset+length) of virtio-diskN. */
export function guestWrite(info: LibvirtLabInfo, name: string, diskIndex: number, pattern: number, offset: string, length: string): void {
  const cmd = `qemu-io -d /machine/peripheral/virtio-disk${diskIndex}/virtio-backend "write -P 0x${pattern.toString(16)} ${offset} ${length}"`;
  const out = virshLab(info, ["qemu-monitor-command", name, "--hmp", cmd]);
  if (/error|failed/i.test(out)) throw new Error(`guest write on ${name} disk ${diskIndex} failed: ${out}`);
}

declare module "vitest" {
  export interface ProvidedContext {
    libvirt: LibvirtLabInfo;
  }
}
