/**
 * A running Debian guest (image: guestImage.ts) in the libvirt lab: direct kernel boot, virtio disks vda (root)
 * and vdb (/data), the guest agent channel, the serial console into a file, and no network interface. TCG only
 * (no /dev/kvm here): `type='qemu'` and QEMU's own CPU model; the guest answers guest-ping after 20-60 s
 * depending on the machine's load, so tests boot as few guests as they can and share one.
 *
 * Also: commands in the guest through the agent (guest-exec), and reading an ext4 image without mounting it
 * (debugfs, dumpe2fs), for checks on restored images.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { GuestImage } from "./guestImage.ts";
import { virshLab, virshLabTry, type LibvirtLabInfo } from "./libvirtLab.ts";

export interface RealGuest {
  name: string;
  dir: string;
  /** vda (root, qcow2) and vdb (data, qcow2) */
  disks: { vda: string; vdb: string };
  console: string;
  xmlFile: string;
}

export function realGuestXml(name: string, image: GuestImage, disks: { vda: string; vdb: string }, consoleLog: string): string {
  const disk = (target: string, path: string) =>
    `    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${path}'/><target dev='${target}' bus='virtio'/></disk>`;
  return [
    "<domain type='qemu'>",
    `  <name>${name}</name>`,
    "  <memory unit='MiB'>256</memory>",
    "  <vcpu>1</vcpu>",
    "  <os>",
    "    <type arch='x86_64' machine='q35'>hvm</type>",
    `    <kernel>${image.kernel}</kernel>`,
    `    <initrd>${image.initrd}</initrd>`,
    // rootdelay: a root filesystem that cannot be recognised fails after 10 s instead of initramfs-tools' 30 s.
    "    <cmdline>root=/dev/vda rw console=ttyS0 quiet rootdelay=10</cmdline>",
    "  </os>",
    "  <clock offset='utc'/>",
    "  <on_poweroff>destroy</on_poweroff>",
    "  <on_crash>destroy</on_crash>",
    "  <devices>",
    "    <emulator>/usr/bin/qemu-system-x86_64</emulator>",
    disk("vda", disks.vda),
    disk("vdb", disks.vdb),
    "    <controller type='usb' model='none'/>",
    "    <memballoon model='none'/>",
    `    <serial type='file'><source path='${consoleLog}'/><target port='0'/></serial>`,
    "    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
    "  </devices>",
    "</domain>",
    "",
  ].join("\n");
}

/** Copies the image's disks into `dir` and starts the guest (transient). Does not wait for it. */
export function startRealGuest(lab: LibvirtLabInfo, image: GuestImage, name: string, dir: string): RealGuest {
  mkdirSync(dir, { recursive: true });
  const disks = { vda: join(dir, "vda.qcow2"), vdb: join(dir, "vdb.qcow2") };
  copyFileSync(image.root, disks.vda);
  copyFileSync(image.data, disks.vdb);
  const consoleLog = join(dir, "console.log");
  const xmlFile = join(dir, "domain.xml");
  writeFileSync(xmlFile, realGuestXml(name, image, disks, consoleLog));
  virshLab(lab, ["create", xmlFile]);
  return { name, dir, disks, console: consoleLog, xmlFile };
}

export function consoleTail(g: { console: string }, chars = 3000): string {
  try {
    return readFileSync(g.console, "utf8").slice(-chars);
  } catch {
    return "(no console log)";
  }
}

export function agentPing(lab: LibvirtLabInfo, name: string): boolean {
  return virshLabTry(lab, ["qemu-agent-command", name, '{"execute":"guest-ping"}', "--timeout", "5"], 15_000).status === 0;
}

/** Polls guest-ping until it answers; returns the seconds it took. Fails with the console's tail. */
export async function waitForAgent(lab: LibvirtLabInfo, g: RealGuest, deadlineMs = 200_000): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < deadlineMs) {
    if (agentPing(lab, g.name)) return (Date.now() - started) / 1000;
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`the guest ${g.name} did not answer guest-ping within ${deadlineMs / 1000} s; console:\n${consoleTail(g)}`);
}

function agent(lab: LibvirtLabInfo, name: string, cmd: object): Record<string, unknown> {
  const out = virshLab(lab, ["qemu-agent-command", name, JSON.stringify(cmd), "--timeout", "30"], 60_000);
  return (JSON.parse(out) as { return: Record<string, unknown> }).return;
}

/** Runs `sh -c script` in the guest through the agent; returns its exit code and output. */
export async function guestExec(lab: LibvirtLabInfo, name: string, script: string, deadlineMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const { pid } = agent(lab, name, { execute: "guest-exec", arguments: { path: "/bin/sh", arg: ["-c", script], "capture-output": true } }) as { pid: number };
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    const s = agent(lab, name, { execute: "guest-exec-status", arguments: { pid } }) as { exited: boolean; exitcode?: number; "out-data"?: string; "err-data"?: string };
    if (s.exited) {
      const dec = (b?: string) => (b ? Buffer.from(b, "base64").toString("utf8") : "");
      return { code: s.exitcode ?? -1, stdout: dec(s["out-data"]), stderr: dec(s["err-data"]) };
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`guest command did not finish within ${deadlineMs / 1000} s in ${name}: ${script}`);
}

/** The guest's clock minus the host's, in seconds (guest-get-time), to compare guest timestamps with host times. */
export function guestClockOffset(lab: LibvirtLabInfo, name: string): number {
  const before = Date.now();
  const ns = agent(lab, name, { execute: "guest-get-time" }) as unknown as number;
  const after = Date.now();
  return Number(ns) / 1e9 - (before + after) / 2000;
}

/** A file of an ext4 image (raw), read without mounting or replaying the journal (debugfs -R cat). */
export function ext4ReadFile(image: string, path: string): string {
  return execFileSync("debugfs", ["-R", `cat ${path}`, image], { encoding: "utf8", timeout: 60_000, stdio: ["ignore", "pipe", "pipe"] });
}

/** The ext4 features of an image (dumpe2fs -h); `needs_recovery` means the journal holds unreplayed writes. */
export function ext4Features(image: string): string[] {
  const r = spawnSync("dumpe2fs", ["-h", image], { encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) throw new Error(`dumpe2fs -h ${image} failed (exit ${r.status}): ${r.stderr}`);
  const line = /^Filesystem features:\s*(.*)$/m.exec(r.stdout)?.[1] ?? "";
  return line.split(/\s+/).filter(Boolean);
}
