/**
 * The target operations both kinds share, written once as plain coreutils commands (find, mkdir, mv, sync,
 * stat, sha256sum, rm). A path target runs them as local children with timeouts; an ssh target runs the same
 * argument lists on the remote side. Every path in them is built from the configured base path (validated) and
 * validated names and ids (runner/targets/target.ts), never from anything a target sent back.
 */
import type { RunResult } from "../exec.ts";
import {
  classifyEntries,
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
    const dirs = new Set<string>();
    const manifests = new Set<string>();
    for (const line of res.stdout.split("\n")) {
      const m = /^(\S) (.+)$/.exec(line);
      if (!m) continue;
      const [, type, rel] = m;
      if (type === "d" && !rel!.includes("/")) dirs.add(rel!);
      if (type === "f" && rel!.endsWith("/manifest.json") && rel!.split("/").length === 2) manifests.add(rel!.split("/")[0]!);
    }
    return classifyEntries([...dirs].map((name) => ({ name, hasManifest: manifests.has(name) })));
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
    const sizes = await this.exec(["stat", "-c", "%s %n", "--", ...paths], { timeoutMs: this.shortMs, allowFailure: true });
    const sums = await this.checksums(paths);
    return parseFacts(sums, sizes.stdout);
  }

  /** `sha256sum` lines for the files that exist (missing ones are left out, not an error). */
  protected async checksums(paths: string[]): Promise<string> {
    const res = await this.exec(["sha256sum", "--", ...paths], { timeoutMs: this.timeoutMs, allowFailure: true });
    return res.stdout;
  }

  async rename(vm: string, id: string, direction: "commit" | "reopen"): Promise<void> {
    const incoming = placePath(this.base, this.host, vm, id, "incoming");
    const final = placePath(this.base, this.host, vm, id, "final");
    const [from, to] = direction === "commit" ? [incoming, final] : [final, incoming];
    const mv = await this.exec(["mv", "-T", "--", from, to], { timeoutMs: this.shortMs, allowFailure: true });
    if (mv.exitCode !== 0) this.fail(`renaming ${from} to ${to}`, mv);
    await this.syncDir(vmPath(this.base, this.host, vm));
  }

  async readManifestText(vm: string, id: string): Promise<string> {
    const file = `${placePath(this.base, this.host, vm, id, "final")}/manifest.json`;
    const res = await this.exec(["cat", "--", file], { timeoutMs: this.shortMs, allowFailure: true });
    if (res.exitCode !== 0) this.fail(`reading ${file}`, res);
    return res.stdout;
  }

  async remove(vm: string, id: string, place: Place): Promise<void> {
    const from = placePath(this.base, this.host, vm, id, place);
    const trash = placePath(this.base, this.host, vm, id, "trash");
    const mv = await this.exec(["mv", "-T", "--", from, trash], { timeoutMs: this.shortMs, allowFailure: true });
    if (mv.exitCode !== 0) this.fail(`renaming ${from} to ${trash} before deleting it`, mv);
    await this.syncDir(vmPath(this.base, this.host, vm));
    await this.removeTrash(vm, id);
  }

  async removeTrash(vm: string, id: string): Promise<void> {
    const trash = placePath(this.base, this.host, vm, id, "trash");
    const rm = await this.exec(["rm", "-rf", "--", trash], { timeoutMs: this.timeoutMs, allowFailure: true });
    if (rm.exitCode !== 0) this.fail(`deleting ${trash}`, rm);
  }

  private async syncDir(dir: string): Promise<void> {
    const res = await this.exec(["sync", "--", dir], { timeoutMs: this.shortMs, allowFailure: true });
    if (res.exitCode !== 0) this.fail(`flushing ${dir} to disk`, res);
  }
}
