/**
 * How a backup of the repository format lies in a restic repository (staging or target), so that a repository
 * alone is enough to list, prune and restore it:
 *   one snapshot per disk:  file <vm>/<disk>.raw   tags kvm-backup, kind=disk, vm=, disk=, id=, policy=
 *   one manifest snapshot:  file <vm>/manifest.json tags kvm-backup, kind=manifest, vm=, id=, policy=
 * The manifest snapshot is made last (and copied last), after every disk's: as with a directory and its
 * manifest.json, an id without its manifest snapshot is never a backup, only the leftover of an interrupted
 * run or copy.
 */
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { Manifest, type RepositoryManifest } from "../manifest.ts";
import { ID_RE } from "../staging.ts";
import { type Restic, type ResticSnapshot, tagMap } from "./restic.ts";

export function diskPath(vm: string, disk: string): string {
  return `${vm}/${disk}.raw`;
}

export function manifestPath(vm: string): string {
  return `${vm}/manifest.json`;
}

export function diskTags(vm: string, disk: string, id: string, policy: string): string[] {
  return ["kind=disk", `vm=${vm}`, `disk=${disk}`, `id=${id}`, `policy=${policy}`];
}

export function manifestTags(vm: string, id: string, policy: string): string[] {
  return ["kind=manifest", `vm=${vm}`, `id=${id}`, `policy=${policy}`];
}

export interface RepositoryBackup {
  vm: string;
  id: string;
  policy: string | undefined;
  /** The manifest snapshot; undefined: an incomplete leftover, never a backup. */
  manifest: ResticSnapshot | undefined;
  disks: Map<string, ResticSnapshot>;
  /** Every snapshot of this id (what forgetting the backup removes). */
  all: ResticSnapshot[];
}

/** The runner's snapshots of one VM (or of every VM), grouped by backup id, oldest first. */
export function groupBackups(snaps: ResticSnapshot[], vm?: string): RepositoryBackup[] {
  const byKey = new Map<string, RepositoryBackup>();
  for (const s of snaps) {
    const t = tagMap(s);
    const v = t.get("vm");
    const id = t.get("id");
    if (!v || !id || !ID_RE.test(id) || (vm !== undefined && v !== vm)) continue;
    const key = `${v}/${id}`;
    let b = byKey.get(key);
    if (!b) byKey.set(key, (b = { vm: v, id, policy: t.get("policy"), manifest: undefined, disks: new Map(), all: [] }));
    b.all.push(s);
    if (t.get("kind") === "manifest") b.manifest = s;
    else if (t.get("kind") === "disk" && t.get("disk")) b.disks.set(t.get("disk")!, s);
  }
  return [...byKey.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : a.vm < b.vm ? -1 : 1));
}

/** Reads a whole (small) file out of a snapshot. */
export async function dumpText(repo: Restic, snapshot: string, path: string, what: string): Promise<string> {
  const d = await repo.dump(snapshot, path, what);
  const chunks: Buffer[] = [];
  let size = 0;
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      size += chunk.length;
      // A manifest is a few KiB; a huge answer is not one.
      if (size > 16 << 20) return cb(new Error(`${path} in snapshot ${snapshot} is larger than 16 MiB`));
      chunks.push(chunk);
      cb();
    },
  });
  try {
    await Promise.all([pipeline(d.stream, sink), d.done]);
  } catch (e) {
    d.kill();
    throw e;
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** The manifest a repository holds for a backup; throws when it is missing or not a repository manifest. */
export async function readRepositoryManifest(repo: Restic, b: RepositoryBackup): Promise<RepositoryManifest> {
  if (!b.manifest) throw new Error(`${b.vm}/${b.id} has no manifest snapshot in ${repo.where}: it is not a complete backup`);
  const text = await dumpText(repo, b.manifest.id, manifestPath(b.vm), `reading the manifest of ${b.vm}/${b.id}`);
  const parsed = Manifest.safeParse(JSON.parse(text));
  if (!parsed.success || parsed.data.format !== "repository") throw new Error(`${manifestPath(b.vm)} of ${b.vm}/${b.id} in ${repo.where} is not a valid repository-format manifest`);
  return parsed.data;
}

/** A string as a stream (the manifest's bytes for `restic backup --stdin`). */
export function textStream(text: string): Readable {
  return Readable.from([Buffer.from(text, "utf8")]);
}
