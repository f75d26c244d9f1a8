/**
 * The target operations both kinds share, written once as plain coreutils commands (find, mkdir, mv, sync,
 * stat, sha256sum, rm). A path target runs them as local children with timeouts; an ssh target runs the same
 * argument lists on the remote side. Every path in them is built from the configured base path (validated) and
 * validated names and ids (runner/targets/target.ts), never from anything a target sent back.
 */
import type { RunResult } from "../exec.ts";
import {
  checkName,
  classifyEntries,
  parseFindListing,
  type FileFacts,
  parseFacts,
  type Place,
  placePath,
  shortTimeoutMs,
  type Target,
  TargetError,
  type TargetListing,
  vmPath,
} from "./target.ts";

// Fixed scripts: every value reaches them as a positional argument ("$1", "$@"), never inside the script text.
const FACTS_SEPARATOR = "--kvm-backup-checksums--\n";
const FACTS_SCRIPT = 'stat -c "%s %n" -- "$@"; printf "%s" "--kvm-backup-checksums--\n"; sha256sum -- "$@"; exit 0';
const RENAME_SCRIPT = 'mv -T -- "$1" "$2" && sync -- "$3"';
const REMOVE_SCRIPT = 'mv -T -- "$1" "$2" && sync -- "$3" && rm -rf -- "$2"';

export interface ExecOptions {
  timeoutMs: number;
  /** Return a non-zero exit instead of throwing (connection failures still throw). */
  allowFailure?: boolean;
}

export abstract class ShellTarget implements Target {
  abstract readonly kind: "ssh" | "path";
  abstract readonly where: string;

  constructor(
    readonly name: string,
    protected readonly base: string,
    protected readonly host: string,
    readonly timeoutMs: number,
  ) {}

  abstract check(): Promise<void>;
  /** Run one command on the target's side. Connection/mount failures throw a TargetError. */
  protected abstract exec(argv: string[], opts: ExecOptions): Promise<RunResult>;
  /** Copy local files into an existing directory on the target, resuming partial files; throws a TargetError. */
  protected abstract copyFiles(localFiles: string[], destDir: string): Promise<void>;
  /** Copy files from the target into an existing local directory; throws a TargetError. */
  protected abstract fetchFiles(paths: string[], localDir: string): Promise<void>;

  protected get shortMs(): number {
    return shortTimeoutMs(this.timeoutMs);
  }

  protected fail(what: string, res: RunResult): never {
    throw new TargetError(`target "${this.name}" (${this.where}): ${what} failed (exit ${res.exitCode}): ${res.stderr.trim().split("\n").slice(-4).join(" / ")}`, this.name);
  }

  async list(vm: string): Promise<TargetListing> {
    const dir = vmPath(this.base, this.host, vm);
    const res = await this.exec(["find", dir, "-mindepth", "1", "-maxdepth", "2", "-printf", "%y %P\\n"], { timeoutMs: this.shortMs, allowFailure: true });
    if (res.exitCode !== 0) {
      if (/No such file or directory/.test(res.stderr) && !res.stdout.trim()) return classifyEntries([]);
      this.fail(`listing ${dir}`, res);
    }
    return parseFindListing(res.stdout);
  }

  async upload(vm: string, id: string, localFiles: string[]): Promise<void> {
    const dest = placePath(this.base, this.host, vm, id, "incoming");
    const mk = await this.exec(["mkdir", "-p", "--", dest], { timeoutMs: this.shortMs, allowFailure: true });
    if (mk.exitCode !== 0) this.fail(`creating ${dest}`, mk);
    await this.copyFiles(localFiles, dest);
    // Durable before the rename that makes it a backup: every file, then the directory holding their names.
    const names = localFiles.map((f) => `${dest}/${f.slice(f.lastIndexOf("/") + 1)}`);
    const sync = await this.exec(["sync", "--", ...names, dest], { timeoutMs: this.timeoutMs, allowFailure: true });
    if (sync.exitCode !== 0) this.fail(`flushing ${dest} to disk`, sync);
  }

  async facts(vm: string, id: string, place: Place, files: string[]): Promise<Map<string, FileFacts>> {
    if (files.length === 0) return new Map();
    const dir = placePath(this.base, this.host, vm, id, place);
    const paths = files.map((f) => `${dir}/${f}`);
    await this.beforeHashing(paths);
    // One round trip: sizes, a separator, checksums. Missing files are left out (stat/sha256sum complain on
    // stderr and go on), which compareFacts reports as missing.
    const res = await this.exec(["sh", "-c", FACTS_SCRIPT, "sh", ...paths], { timeoutMs: this.timeoutMs, allowFailure: true });
    const [sizes = "", sums = ""] = res.stdout.split(FACTS_SEPARATOR);
    return parseFacts(sums, sizes);
  }

  /** Hook for path targets: drop cached pages so the hash reads the storage. */
  protected async beforeHashing(_paths: string[]): Promise<void> {}

  async rename(vm: string, id: string, direction: "commit" | "reopen"): Promise<void> {
    const incoming = placePath(this.base, this.host, vm, id, "incoming");
    const final = placePath(this.base, this.host, vm, id, "final");
    const [from, to] = direction === "commit" ? [incoming, final] : [final, incoming];
    // rename(2), then flush the directory that holds both names so the rename survives a crash.
    const res = await this.exec(["sh", "-c", RENAME_SCRIPT, "sh", from, to, vmPath(this.base, this.host, vm)], { timeoutMs: this.shortMs, allowFailure: true });
    if (res.exitCode !== 0) this.fail(`renaming ${from} to ${to}`, res);
  }

  async readManifestText(vm: string, id: string): Promise<string> {
    const file = `${placePath(this.base, this.host, vm, id, "final")}/manifest.json`;
    const res = await this.exec(["cat", "--", file], { timeoutMs: this.shortMs, allowFailure: true });
    if (res.exitCode !== 0) this.fail(`reading ${file}`, res);
    return res.stdout;
  }

  async download(vm: string, id: string, files: string[], localDir: string): Promise<void> {
    const dir = placePath(this.base, this.host, vm, id, "final");
    await this.fetchFiles(files.map((f) => `${dir}/${checkName("file", f)}`), localDir);
  }

  async remove(vm: string, id: string, place: Place): Promise<void> {
    const from = placePath(this.base, this.host, vm, id, place);
    const trash = placePath(this.base, this.host, vm, id, "trash");
    const res = await this.exec(["sh", "-c", REMOVE_SCRIPT, "sh", from, trash, vmPath(this.base, this.host, vm)], { timeoutMs: this.timeoutMs, allowFailure: true });
    if (res.exitCode !== 0) this.fail(`removing ${from} (renamed to ${trash} first)`, res);
  }

  async removeTrash(vm: string, id: string): Promise<void> {
    const trash = placePath(this.base, this.host, vm, id, "trash");
    const rm = await this.exec(["rm", "-rf", "--", trash], { timeoutMs: this.timeoutMs, allowFailure: true });
    if (rm.exitCode !== 0) this.fail(`deleting ${trash}`, rm);
  }
}
