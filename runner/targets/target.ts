/**
 * What ship, prune and verify-target need from a remote target, whatever its kind (ssh, path, s3; s3 maps these
 * places onto object keys, see s3Target.ts).
 *
 * Layout on every target, below the configured path:
 *   <path>/<host>/<vm>/<id>/manifest.json    a complete, verified backup (the same files as in staging, minus state.json)
 *   <path>/<host>/<vm>/.incoming-<id>/       a copy in progress; renamed to <id>/ only after it was verified
 *   <path>/<host>/<vm>/.trash-<id>/          a backup being deleted (renamed first, so a crash never leaves a
 *                                            half-deleted directory that looks like a backup)
 * A directory only becomes <id>/ by that rename, so every <id>/ on a target was complete and checked once.
 */
import { isSafeName } from "../config/schema.ts";
import { parseDuration } from "../config/duration.ts";
import { KvmBackupError } from "../errors.ts";
import type { HostTarget } from "../config/schema.ts";
import type { Manifest } from "../manifest.ts";
import { ID_RE } from "../staging.ts";

export const INCOMING_PREFIX = ".incoming-";
export const TRASH_PREFIX = ".trash-";

/** A target could not be used or an operation on it failed; the message names the target and what to do. */
export class TargetError extends KvmBackupError {
  constructor(
    message: string,
    readonly target: string,
    options?: { cause?: unknown },
  ) {
    super(message, undefined, options);
  }
}

/** Could not reach the target at all (connection refused, timeout, mount not answering). */
export class TargetUnreachableError extends TargetError {}
/** A command on the target did not finish within its timeout and was killed. */
export class TargetTimeoutError extends TargetUnreachableError {}
/** The ssh server presented a host key other than the pinned one. */
export class HostKeyMismatchError extends TargetError {}
/** The target's configuration or the local key file is not usable (fix the host, not the target). */
export class TargetSetupError extends TargetError {}
/** What arrived on the target differs from the manifest. */
export class TargetVerifyError extends TargetError {}
/** The target ran out of space. */
export class TargetFullError extends TargetError {}

export interface FileFacts {
  size: number;
  sha256: string;
}

export interface TargetListing {
  /** Complete backups (<id>/ with a manifest.json), oldest first. */
  backups: string[];
  /** .incoming-<id> names' ids. */
  incoming: string[];
  /** .trash-<id> names' ids. */
  trash: string[];
  /** <id>/ directories without a manifest.json: never a backup, never touched by prune. */
  incomplete: string[];
}

export type Place = "final" | "incoming";

export interface Target {
  readonly name: string;
  readonly kind: "ssh" | "path" | "s3";
  /** Human description without secrets: "ssh backup@nas:2222/srv/backups", "path /mnt/nfs", "s3 https://gw/bucket/prefix". */
  readonly where: string;
  /** The whole budget of one backup's transfer and check, ms. */
  readonly timeoutMs: number;
  /** Usable at all: key file permissions, host key, connection or mount answering. Throws a TargetError. */
  check(): Promise<void>;
  list(vm: string): Promise<TargetListing>;
  /** Copy the given local files into .incoming-<id>/ (resuming a partial copy), durably. */
  upload(vm: string, id: string, localFiles: string[]): Promise<void>;
  /** Size and SHA-256 of the named files as the target stores them; missing files are absent from the map. */
  facts(vm: string, id: string, place: Place, files: string[]): Promise<Map<string, FileFacts>>;
  /** Atomic rename .incoming-<id> -> <id> (or back, `toIncoming`), made durable. */
  rename(vm: string, id: string, direction: "commit" | "reopen"): Promise<void>;
  readManifestText(vm: string, id: string): Promise<string>;
  /** Copy the named files of the complete backup <id>/ into an existing local directory (restore --from). */
  download(vm: string, id: string, files: string[], localDir: string): Promise<void>;
  /** Rename <id>/ (or .incoming-<id>/) to .trash-<id>/, then delete it. */
  remove(vm: string, id: string, place: Place): Promise<void>;
  /** Delete a leftover .trash-<id>/. */
  removeTrash(vm: string, id: string): Promise<void>;
}

export interface TargetContext {
  host: string;
  staging: string;
}

export function checkName(kind: string, name: string): string {
  if (!isSafeName(name)) throw new KvmBackupError(`refusing to use ${kind} name ${JSON.stringify(name)} in a target path: it is not a safe name`);
  return name;
}

export function checkId(id: string): string {
  if (!ID_RE.test(id)) throw new KvmBackupError(`refusing to use ${JSON.stringify(id)} in a target path: it is not a backup id`);
  return id;
}

export function vmPath(base: string, host: string, vm: string): string {
  return `${base}/${checkName("host", host)}/${checkName("VM", vm)}`;
}

export function placePath(base: string, host: string, vm: string, id: string, place: Place | "trash"): string {
  checkId(id);
  const name = place === "final" ? id : place === "incoming" ? INCOMING_PREFIX + id : TRASH_PREFIX + id;
  return `${vmPath(base, host, vm)}/${name}`;
}

/** Split a directory listing of a VM's directory on a target into its kinds. `hasManifest` for <id> entries. */
export function classifyEntries(entries: { name: string; hasManifest: boolean }[]): TargetListing {
  const out: TargetListing = { backups: [], incoming: [], trash: [], incomplete: [] };
  for (const e of entries) {
    if (ID_RE.test(e.name)) (e.hasManifest ? out.backups : out.incomplete).push(e.name);
    else if (e.name.startsWith(INCOMING_PREFIX) && ID_RE.test(e.name.slice(INCOMING_PREFIX.length))) out.incoming.push(e.name.slice(INCOMING_PREFIX.length));
    else if (e.name.startsWith(TRASH_PREFIX) && ID_RE.test(e.name.slice(TRASH_PREFIX.length))) out.trash.push(e.name.slice(TRASH_PREFIX.length));
  }
  for (const list of Object.values(out)) list.sort();
  return out;
}

// execa needs a finite timeout; "infinity" in the config means "a week", which is as good as never for one backup.
const MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000;

export function targetTimeoutMs(t: HostTarget): number {
  const s = parseDuration(t.timeout as string | number);
  return Math.min(MAX_TIMEOUT_MS, Math.max(1000, Math.round(s * 1000)));
}

/** Short operations (list, mkdir, rename) get at most a minute, or the target's whole budget if that is less. */
export function shortTimeoutMs(totalMs: number): number {
  return Math.min(totalMs, 60_000);
}

/** Which files of the manifest must exist on the target, and what they must be (a repository backup has none: its disks are in the repository). */
export function expectedFiles(m: Manifest): Map<string, FileFacts> {
  if (m.format !== "image") return new Map();
  return new Map(m.disks.map((d) => [d.file, { size: d.bytesStored, sha256: d.storedSha256 }]));
}

/** Differences between what a target holds and what it should hold; empty when everything matches. */
export function compareFacts(expected: Map<string, FileFacts>, actual: Map<string, FileFacts>): string[] {
  const problems: string[] = [];
  for (const [file, want] of expected) {
    const got = actual.get(file);
    if (!got) problems.push(`${file}: missing`);
    else if (got.size !== want.size) problems.push(`${file}: size ${got.size} bytes, expected ${want.size}`);
    else if (got.sha256 !== want.sha256) problems.push(`${file}: SHA-256 ${got.sha256}, expected ${want.sha256}`);
  }
  return problems;
}

/** `find <vmdir> -mindepth 1 -maxdepth 2 -printf '%y %P\\n'` output: the directories, and which hold manifest.json. */
export function parseFindListing(stdout: string): TargetListing {
  const dirs = new Set<string>();
  const manifests = new Set<string>();
  for (const line of stdout.split("\n")) {
    const m = /^(\S) (.+)$/.exec(line);
    if (!m) continue;
    const [, type, rel] = m as unknown as [string, string, string];
    const parts = rel.split("/");
    if (type === "d" && parts.length === 1) dirs.add(rel);
    if (type === "f" && parts.length === 2 && parts[1] === "manifest.json") manifests.add(parts[0]!);
  }
  return classifyEntries([...dirs].map((name) => ({ name, hasManifest: manifests.has(name) })));
}

/** Parse `sha256sum` output lines ("<hex>  <name>") and `stat -c '%s %n'` lines into facts by base name. */
export function parseFacts(shaOut: string, sizeOut: string): Map<string, FileFacts> {
  const sizes = new Map<string, number>();
  for (const line of sizeOut.split("\n")) {
    const m = /^(\d+) (.+)$/.exec(line);
    if (m) sizes.set(baseName(m[2]!), Number(m[1]));
  }
  const out = new Map<string, FileFacts>();
  for (const line of shaOut.split("\n")) {
    const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line);
    if (!m) continue;
    const name = baseName(m[2]!);
    const size = sizes.get(name);
    if (size !== undefined) out.set(name, { size, sha256: m[1]! });
  }
  return out;
}

function baseName(p: string): string {
  return p.slice(p.lastIndexOf("/") + 1);
}
