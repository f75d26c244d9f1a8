/**
 * Measured backup sizes for `policy plan --sizes`: the output of `kvm-backup status --json` of one host
 * ({ host, vms: [{ vm, lastStoredBytes }] }), read tolerantly: `vms` may also be a map
 * { <vm>: { lastStoredBytes | lastBackupBytes | bytes } }, and a file may hold an array of such documents
 * (several hosts). A document without `host` applies to VMs of that name on any host.
 */
import { readFileSync } from "node:fs";
import { UsageError } from "../errors.ts";

export class SizesFileError extends UsageError {}

/** "host/vm" or "*\/vm" -> bytes of the VM's newest backup. */
export type Sizes = Map<string, number>;

const BYTE_FIELDS = ["lastStoredBytes", "lastBackupBytes", "bytes"] as const;

function bytesOf(v: unknown): number | null {
  if (typeof v === "number") return v;
  if (!v || typeof v !== "object") return null;
  for (const f of BYTE_FIELDS) {
    const b = (v as Record<string, unknown>)[f];
    if (typeof b === "number" && Number.isFinite(b) && b >= 0) return b;
  }
  return null;
}

export function parseSizes(doc: unknown, file: string): Sizes {
  const sizes: Sizes = new Map();
  const docs = Array.isArray(doc) ? doc : [doc];
  for (const d of docs) {
    if (!d || typeof d !== "object" || !("vms" in d)) {
      throw new SizesFileError(`${file}: expected the output of \`kvm-backup status --json\` ({ "host": ..., "vms": [{ "vm": ..., "lastStoredBytes": ... }] }) or an array of them`);
    }
    const host = typeof (d as { host?: unknown }).host === "string" ? (d as { host: string }).host : "*";
    const vms = (d as { vms: unknown }).vms;
    const entries: Array<[string, unknown]> = Array.isArray(vms)
      ? vms.filter((r) => r && typeof r === "object" && typeof (r as { vm?: unknown }).vm === "string").map((r) => [(r as { vm: string }).vm, r])
      : vms && typeof vms === "object"
        ? Object.entries(vms as Record<string, unknown>)
        : [];
    for (const [vm, v] of entries) {
      const b = bytesOf(v);
      if (b !== null) sizes.set(`${host}/${vm}`, b);
    }
  }
  return sizes;
}

export function readSizesFiles(files: readonly string[]): Sizes {
  const all: Sizes = new Map();
  for (const file of files) {
    let doc: unknown;
    try {
      doc = JSON.parse(readFileSync(file, "utf8"));
    } catch (e) {
      throw new SizesFileError(`cannot read sizes from ${file}: ${(e as Error).message}; pass the output of \`kvm-backup status --json\` saved from a host`);
    }
    for (const [k, v] of parseSizes(doc, file)) all.set(k, v);
  }
  return all;
}

export function sizeFor(sizes: Sizes, host: string, vm: string): number | null {
  return sizes.get(`${host}/${vm}`) ?? sizes.get(`*/${vm}`) ?? null;
}
