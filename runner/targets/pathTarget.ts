/**
 * A path target: a mounted directory (NFS, CIFS, a second disk). The runner never touches it from its own
 * process: a hung NFS mount blocks any process that reads it, so every operation is a child with a timeout
 * (boundedRun), and the mount is asked to answer first (stat with a short timeout) before anything is copied.
 *
 * The copy is rsync in a child; every file and the directory are then flushed with `sync FILE... DIR` (fsync each)
 * before the rename that makes it a backup, and the check reads the files back from the storage: the page cache of what was just
 * written is dropped first (dd iflag=nocache count=0), so sha256sum sees what the disk or server holds.
 */
import type { HostTarget } from "../config/schema.ts";
import type { RunResult } from "../exec.ts";
import { boundedRun } from "./boundedRun.ts";
import { type ExecOptions, ShellTarget } from "./shellTarget.ts";
import { type TargetContext, TargetFullError, TargetSetupError, TargetTimeoutError, targetTimeoutMs, TargetUnreachableError } from "./target.ts";

type PathConfig = Extract<HostTarget, { type: "path" }>;

/** How long a healthy mount may take to answer a stat: 10 s, less for a target with a short timeout. */
export function mountCheckTimeoutMs(targetTimeoutMs: number): number {
  return Math.min(10_000, Math.max(2_000, Math.round(targetTimeoutMs / 4)));
}

export class PathTarget extends ShellTarget {
  readonly kind = "path" as const;
  readonly where: string;

  constructor(name: string, private readonly cfg: PathConfig, ctx: TargetContext) {
    super(name, cfg.path, ctx.host, targetTimeoutMs(cfg));
    this.where = `path ${cfg.path}`;
  }

  async check(): Promise<void> {
    let res: RunResult;
    try {
      res = await boundedRun(this.name, "stat", ["-L", "-c", "%F", "--", this.cfg.path], { timeoutMs: mountCheckTimeoutMs(this.timeoutMs), allowFailure: true });
    } catch (e) {
      if (e instanceof TargetTimeoutError) {
        throw new TargetTimeoutError(
          `target "${this.name}" (${this.where}): the mount did not answer a stat within ${mountCheckTimeoutMs(this.timeoutMs) / 1000} s (hung NFS server?); check the server and the mount, the backup is retried on the next run`,
          this.name,
        );
      }
      throw e;
    }
    if (res.exitCode !== 0) {
      throw new TargetUnreachableError(
        `target "${this.name}" (${this.where}): ${this.cfg.path} is not there (${res.stderr.trim()}); mount the target filesystem (the runner never creates the target's top directory, so an unmounted mount point is not filled by mistake)`,
        this.name,
      );
    }
    if (res.stdout.trim() !== "directory") {
      throw new TargetSetupError(`target "${this.name}" (${this.where}): ${this.cfg.path} is a ${res.stdout.trim()}, not a directory; fix targets.${this.name}.path`, this.name);
    }
  }

  protected async exec(argv: string[], opts: ExecOptions): Promise<RunResult> {
    return boundedRun(this.name, argv[0]!, argv.slice(1), { timeoutMs: opts.timeoutMs, allowFailure: opts.allowFailure });
  }

  protected async copyFiles(localFiles: string[], destDir: string): Promise<void> {
    let res: RunResult;
    try {
      res = await boundedRun(
        this.name,
        "rsync",
        ["--partial", "--ignore-times", "--times", "--chmod=F0640", `--timeout=${Math.max(30, Math.round(this.timeoutMs / 4000))}`, "--", ...localFiles, `${destDir}/`],
        { timeoutMs: this.timeoutMs, allowFailure: true },
      );
    } catch (e) {
      if (e instanceof TargetTimeoutError) {
        throw new TargetTimeoutError(
          `target "${this.name}" (${this.where}): the copy did not finish within the target's timeout (${Math.round(this.timeoutMs / 1000)} s); the partial copy is kept and resumed on the next run`,
          this.name,
        );
      }
      throw e;
    }
    if (res.exitCode === 0) return;
    if (/No space left on device|Disk quota exceeded/i.test(res.stderr)) {
      throw new TargetFullError(`target "${this.name}" (${this.where}): no space left while copying into ${destDir}; free space there or adjust retention, the backup is retried on the next run`, this.name);
    }
    this.fail("rsync", res);
  }

  protected async fetchFiles(paths: string[], localDir: string): Promise<void> {
    let res: RunResult;
    try {
      res = await boundedRun(this.name, "rsync", ["--times", "--", ...paths, `${localDir}/`], { timeoutMs: this.timeoutMs, allowFailure: true });
    } catch (e) {
      if (e instanceof TargetTimeoutError) {
        throw new TargetTimeoutError(`target "${this.name}" (${this.where}): the copy to ${localDir} did not finish within the target's timeout (${Math.round(this.timeoutMs / 1000)} s); check the mount`, this.name);
      }
      throw e;
    }
    if (res.exitCode !== 0) this.fail(`copying ${paths.join(" ")} to ${localDir}`, res);
  }

  protected override async beforeHashing(paths: string[]): Promise<void> {
    for (const p of paths) {
      // Drop the cached pages of the file just written, so the hash reads the storage. Advisory; a missing
      // file is reported by the hash.
      await boundedRun(this.name, "dd", [`if=${p}`, "iflag=nocache", "count=0", "status=none"], { timeoutMs: this.shortMs, allowFailure: true });
    }
  }
}
