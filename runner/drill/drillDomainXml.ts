/**
 * The scratch domain of a restore drill, made from the domain XML saved with the backup. Whatever the original
 * had, the drill domain must not reach anything the original uses or anything outside the host:
 *   - a new name and UUID (so nothing can mistake it for the original), no <metadata>, no static security labels;
 *   - NO network interface, host device, USB/SCSI redirection, shared host directory, vsock, TPM or lease;
 *   - every backed-up disk points at its restored copy in the scratch directory (raw); every other disk is left
 *     out, CD-ROMs and floppies are empty (an original disk is never attached, not even read-only);
 *   - one serial port logging to a file in the scratch directory (console lines for the drill and for the
 *     operator), the guest agent channel without the original's socket path; no other channel or parallel port;
 *   - UEFI variables from a copy in the scratch directory (or a fresh store from the template), never the
 *     original's file; no graphics (nobody watches), powering off or crashing ends the domain.
 * `checkDrillDomain` checks the live XML libvirt reports for the created (still paused) domain against the
 * same rules before the guest runs an instruction: the rules are enforced on what libvirt made of the XML.
 */
import { DOMParser, type Element, onErrorStopParsing, XMLSerializer } from "@xmldom/xmldom";
import { posix } from "node:path";

export const AGENT_CHANNEL = "org.qemu.guest_agent.0";

/** Devices the drill domain never gets. */
const REMOVED_DEVICES = ["interface", "hostdev", "redirdev", "redirfilter", "smartcard", "filesystem", "shmem", "tpm", "vsock", "lease", "parallel", "graphics", "audio", "sound"];

export class DrillXmlError extends Error {}

export interface DrillDomainOptions {
  name: string;
  uuid: string;
  /** Restored raw image per disk target (vda -> /staging/.kvm-backup/drill-scratch/vm/vda.raw). */
  disks: Record<string, string>;
  scratchDir: string;
  consoleLog: string;
  /** Where the copy of the original's UEFI variables goes (the caller copies the file), if the domain has one. */
  nvram?: string;
  memoryKiB?: number;
  vcpus?: number;
  description?: string;
}

export interface DrillDomain {
  xml: string;
  /** What the domain had that the drill leaves out, in words (logged). */
  removed: string[];
  /** The original's UEFI variable file, if any (to copy into `nvram`). */
  originalNvram: string | null;
  hasAgentChannel: boolean;
}

function parse(xml: string, what: string): Element {
  let doc;
  try {
    doc = new DOMParser({ onError: onErrorStopParsing }).parseFromString(xml, "text/xml");
  } catch (e) {
    throw new DrillXmlError(`${what} is not well-formed XML: ${(e as Error).message}`);
  }
  const root = doc.documentElement;
  if (!root || root.tagName !== "domain") throw new DrillXmlError(`${what} is not a libvirt <domain> document`);
  return root;
}

function children(el: Element, tag?: string): Element[] {
  const out: Element[] = [];
  for (let n = el.firstChild; n; n = n.nextSibling) if (n.nodeType === 1 && (!tag || (n as Element).tagName === tag)) out.push(n as Element);
  return out;
}

function child(el: Element, tag: string): Element | undefined {
  return children(el, tag)[0];
}

/** Set the text of <tag> under `parent`, creating it (at the start) when missing. */
function setText(parent: Element, tag: string, text: string): Element {
  let el = child(parent, tag);
  if (!el) {
    el = parent.ownerDocument!.createElement(tag);
    parent.insertBefore(el, parent.firstChild);
  }
  while (el.firstChild) el.removeChild(el.firstChild);
  el.appendChild(parent.ownerDocument!.createTextNode(text));
  return el;
}

function remove(el: Element): void {
  el.parentNode?.removeChild(el);
}

function describeDevice(el: Element): string {
  const target = child(el, "target");
  const source = child(el, "source");
  const mac = child(el, "mac")?.getAttribute("address");
  const bits = [el.getAttribute("type"), target?.getAttribute("dev"), mac ? `mac ${mac}` : null, source?.getAttribute("bridge") ?? source?.getAttribute("network") ?? source?.getAttribute("dir") ?? null].filter(Boolean);
  return `<${el.tagName}${bits.length ? ` ${bits.join(" ")}` : ""}>`;
}

/** The drill domain's XML from the saved domain XML (see the module comment for the rules). */
export function drillDomainXml(savedXml: string, o: DrillDomainOptions): DrillDomain {
  const root = parse(savedXml, "the domain XML saved with the backup");
  const doc = root.ownerDocument!;
  const removed: string[] = [];
  root.removeAttribute("id");
  setText(root, "name", o.name);
  setText(root, "uuid", o.uuid);
  for (const tag of ["metadata", "title", "genid"]) for (const el of children(root, tag)) remove(el);
  setText(root, "description", o.description ?? "kvm-backup restore drill (scratch domain, deleted after the drill)");
  for (const el of children(root, "seclabel")) remove(el);
  if (o.memoryKiB !== undefined) {
    for (const tag of ["memory", "currentMemory"]) {
      const el = child(root, tag);
      if (el) {
        setText(root, tag, String(o.memoryKiB)).setAttribute("unit", "KiB");
      }
    }
  }
  if (o.vcpus !== undefined) {
    const v = setText(root, "vcpu", String(o.vcpus));
    v.removeAttribute("current");
    for (const el of children(root, "vcpus")) remove(el);
  }
  for (const [tag, action] of [["on_poweroff", "destroy"], ["on_crash", "destroy"]] as const) setText(root, tag, action);

  let originalNvram: string | null = null;
  const os = child(root, "os");
  const nvram = os && child(os, "nvram");
  if (os && nvram) {
    originalNvram = nvram.textContent?.trim() || null;
    for (const s of children(nvram, "source")) remove(s);
    while (nvram.firstChild) nvram.removeChild(nvram.firstChild);
    if (o.nvram) nvram.appendChild(doc.createTextNode(o.nvram));
    else if (!nvram.getAttribute("template")) remove(nvram);
  }

  const devices = child(root, "devices");
  if (!devices) throw new DrillXmlError("the saved domain XML has no <devices>");
  for (const tag of REMOVED_DEVICES) {
    for (const el of children(devices, tag)) {
      removed.push(describeDevice(el));
      remove(el);
    }
  }
  const seen = new Set<string>();
  for (const disk of children(devices, "disk")) {
    const device = disk.getAttribute("device") ?? "disk";
    const target = child(disk, "target")?.getAttribute("dev") ?? "";
    const restored = o.disks[target];
    if (restored !== undefined && (device === "disk" || device === "lun")) {
      seen.add(target);
      disk.setAttribute("type", "file");
      disk.setAttribute("device", "disk");
      for (const tag of ["source", "backingStore", "auth", "encryption", "mirror", "reservations", "shareable", "transient"]) for (const el of children(disk, tag)) remove(el);
      const driver = child(disk, "driver") ?? (disk.insertBefore(doc.createElement("driver"), disk.firstChild) as Element);
      driver.setAttribute("name", "qemu");
      driver.setAttribute("type", "raw");
      const source = doc.createElement("source");
      source.setAttribute("file", restored);
      disk.insertBefore(source, driver.nextSibling);
    } else if (device === "cdrom" || device === "floppy") {
      // The drive stays (the guest may expect it), the medium does not: it is a host file the drill must not use.
      disk.setAttribute("type", "file");
      for (const tag of ["source", "backingStore", "auth", "encryption"]) for (const el of children(disk, tag)) remove(el);
    } else {
      removed.push(`disk ${target || "(no target)"} (not in the backup)`);
      remove(disk);
    }
  }
  const missing = Object.keys(o.disks).filter((t) => !seen.has(t));
  if (missing.length) throw new DrillXmlError(`the saved domain XML has no disk ${missing.join(", ")}, which the backup holds`);

  // Console: one serial port into the scratch directory, its target as the original's first serial port had it.
  const serials = children(devices, "serial");
  const serialTarget = serials[0] ? child(serials[0], "target") : undefined;
  for (const el of [...serials, ...children(devices, "console")]) remove(el);
  const serial = doc.createElement("serial");
  serial.setAttribute("type", "file");
  const src = doc.createElement("source");
  src.setAttribute("path", o.consoleLog);
  serial.appendChild(src);
  const tgt = serialTarget ? (serialTarget.cloneNode(true) as Element) : doc.createElement("target");
  tgt.setAttribute("port", "0");
  serial.appendChild(tgt);
  devices.appendChild(serial);

  let hasAgentChannel = false;
  for (const ch of children(devices, "channel")) {
    const t = child(ch, "target");
    if (t?.getAttribute("type") === "virtio" && t.getAttribute("name") === AGENT_CHANNEL && !hasAgentChannel) {
      hasAgentChannel = true;
      // libvirt picks a socket path of the new domain's own; the original's path would hijack its agent.
      ch.setAttribute("type", "unix");
      for (const el of children(ch, "source")) remove(el);
      t.removeAttribute("state");
    } else {
      removed.push(describeDevice(ch));
      remove(ch);
    }
  }
  for (const rng of children(devices, "rng")) {
    const backend = child(rng, "backend");
    if (backend?.getAttribute("model") !== "random") {
      removed.push("<rng> with a non-local backend");
      remove(rng);
    }
  }
  return { xml: new XMLSerializer().serializeToString(doc) + "\n", removed, originalNvram, hasAgentChannel };
}

function inside(dir: string, path: string): boolean {
  const rel = posix.relative(dir, posix.normalize(path));
  return rel !== "" && !rel.startsWith("..") && !posix.isAbsolute(rel);
}

/**
 * What is wrong with a drill domain as libvirt runs it (its live XML): a network interface, a device of the
 * removed kinds, a disk or UEFI store outside the scratch directory. Empty when it is safe to start.
 */
export function checkDrillDomain(liveXml: string, scratchDir: string): string[] {
  const root = parse(liveXml, "the live XML of the drill domain");
  const problems: string[] = [];
  const devices = child(root, "devices");
  for (const tag of REMOVED_DEVICES.filter((t) => t !== "parallel" && t !== "graphics" && t !== "audio" && t !== "sound")) {
    for (const el of devices ? children(devices, tag) : []) problems.push(`it has ${describeDevice(el)}`);
  }
  for (const disk of devices ? children(devices, "disk") : []) {
    const source = child(disk, "source");
    const path = source?.getAttribute("file") || source?.getAttribute("dev") || source?.getAttribute("name") || source?.getAttribute("volume") || null;
    const device = disk.getAttribute("device") ?? "disk";
    const target = child(disk, "target")?.getAttribute("dev");
    if (path === null) {
      if (device === "disk" || device === "lun") problems.push(`disk ${target} has no source`);
      continue;
    }
    if (disk.getAttribute("type") !== "file" || !inside(scratchDir, path)) problems.push(`disk ${target} uses ${path}, outside the scratch directory ${scratchDir}`);
    if (child(disk, "backingStore") && child(child(disk, "backingStore")!, "source")) problems.push(`disk ${target} has a backing chain`);
  }
  const nvram = child(root, "os") && child(child(root, "os")!, "nvram");
  const nvramPath = nvram?.textContent?.trim();
  if (nvramPath && !inside(scratchDir, nvramPath)) problems.push(`its UEFI variables are ${nvramPath}, outside the scratch directory`);
  return problems;
}
