/**
 * `virsh domblklist --details`: which host path backs each guest disk. Columns are Type, Device, Target, Source;
 * Source is "-" for an empty CD-ROM drive. Paths never contain whitespace in practice, but Source is taken as the
 * rest of the line so that one with spaces still parses.
 */
export interface BlockListEntry {
  type: string; // file, block, network, volume
  device: string; // disk, cdrom, floppy, lun
  target: string;
  source: string | null;
}

export function parseDomblklistDetails(text: string): BlockListEntry[] {
  const lines = text.split("\n");
  const header = lines.findIndex((l) => /^\s*Type\s+Device\s+Target\s+Source\s*$/.test(l));
  if (header < 0) throw new Error(`not the output of \`virsh domblklist --details\`: ${JSON.stringify(text.slice(0, 200))}`);
  const out: BlockListEntry[] = [];
  for (const line of lines.slice(header + 1)) {
    if (!line.trim() || /^-+$/.test(line.trim())) continue;
    const m = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(.*?)\s*$/.exec(line);
    if (!m) throw new Error(`unreadable line in \`virsh domblklist --details\`: ${line}`);
    out.push({ type: m[1]!, device: m[2]!, target: m[3]!, source: m[4] === "-" || m[4] === "" ? null : m[4]! });
  }
  return out;
}

/**
 * The image format libvirt gives QEMU for each disk target (`<driver type='qcow2'/>`), from the domain XML that
 * libvirt itself prints (canonical attribute quoting). Probing the image instead would be unsafe: a guest can
 * write a qcow2 header into a raw disk.
 */
export function diskFormatsFromDomainXml(xml: string): Map<string, string> {
  const formats = new Map<string, string>();
  for (const disk of xml.match(/<disk\b[\s\S]*?<\/disk>/g) ?? []) {
    const target = /<target\b[^>]*\bdev=['"]([^'"]+)['"]/.exec(disk)?.[1];
    const type = /<driver\b[^>]*\btype=['"]([^'"]+)['"]/.exec(disk)?.[1];
    if (target) formats.set(target, type ?? "raw");
  }
  return formats;
}
