/**
 * Stack files at a Git ref and in the working tree, validated with the one schema. The ref side is read with
 * `git show REF:./stacks/Pulumi.<stack>.yaml`, never checked out, so the working tree is left alone.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { ConfigError, problemsFromZod } from "../config/configErrors.ts";
import { namespaceConfig, STACK_DIR } from "../config/loadStack.ts";
import { StackFileConfig } from "../config/schema.ts";
import { KvmBackupError, UsageError } from "../errors.ts";
import { run } from "../exec.ts";

const STACK_FILE_RE = /^Pulumi\.(.+)\.yaml$/;

export class GitRefError extends UsageError {}

async function git(args: string[], cwd: string, allowFailure = false) {
  return run("git", args, { cwd, timeoutMs: 30_000, allowFailure });
}

/** The merge base of HEAD with the default branch: origin/HEAD if set, else main, else master. */
export async function defaultBaseRef(cwd: string): Promise<{ ref: string; branch: string }> {
  const inside = await git(["rev-parse", "--is-inside-work-tree"], cwd, true);
  if (inside.exitCode !== 0) throw new GitRefError(`${cwd} is not inside a Git repository; policy diff compares stack files against a Git ref (run it in the policy repository)`);
  const candidates: string[] = [];
  const originHead = await git(["symbolic-ref", "-q", "--short", "refs/remotes/origin/HEAD"], cwd, true);
  if (originHead.exitCode === 0 && originHead.stdout.trim()) candidates.push(originHead.stdout.trim());
  candidates.push("main", "master", "origin/main", "origin/master");
  for (const branch of candidates) {
    const ok = await git(["rev-parse", "--verify", "-q", `${branch}^{commit}`], cwd, true);
    if (ok.exitCode !== 0) continue;
    const mb = await git(["merge-base", "HEAD", branch], cwd, true);
    if (mb.exitCode === 0 && mb.stdout.trim()) return { ref: mb.stdout.trim(), branch };
  }
  throw new GitRefError("cannot find the default branch (no origin/HEAD, main or master with a common history with HEAD); pass --base REF");
}

export async function resolveRef(ref: string, cwd: string): Promise<string> {
  const r = await git(["rev-parse", "--verify", "-q", `${ref}^{commit}`], cwd, true);
  if (r.exitCode !== 0) throw new GitRefError(`"${ref}" is not a commit in this repository; pass --base with a branch, tag or commit`);
  return r.stdout.trim();
}

export function stackNameOf(file: string): string | null {
  return STACK_FILE_RE.exec(file)?.[1] ?? null;
}

export async function stacksAtRef(ref: string, cwd: string): Promise<string[]> {
  const r = await git(["ls-tree", "--name-only", ref, "--", `${STACK_DIR}/`], cwd);
  return r.stdout.split("\n").map((l) => stackNameOf(l.split("/").pop() ?? "")).filter((s): s is string => s !== null).sort();
}

export function stacksInWorkTree(cwd: string): string[] {
  const dir = `${cwd}/${STACK_DIR}`;
  if (!existsSync(dir)) return [];
  return readdirSync(dir).map(stackNameOf).filter((s): s is string => s !== null).sort();
}

/** null when the file does not exist at the ref. */
export async function stackTextAtRef(stack: string, ref: string, cwd: string): Promise<string | null> {
  const r = await git(["show", `${ref}:./${STACK_DIR}/Pulumi.${stack}.yaml`], cwd, true);
  if (r.exitCode === 0) return r.stdout;
  if (/does not exist|exists on disk, but not in/.test(r.stderr)) return null;
  throw new KvmBackupError(`git show ${ref}:./${STACK_DIR}/Pulumi.${stack}.yaml failed: ${r.stderr.trim()}`);
}

export function stackTextInWorkTree(stack: string, cwd: string): string | null {
  const file = `${cwd}/${STACK_DIR}/Pulumi.${stack}.yaml`;
  return existsSync(file) ? readFileSync(file, "utf8") : null;
}

/** Validates stack file text; `shown` names the file (and ref) in every problem. */
export function parseStackText(text: string, shown: string): StackFileConfig {
  const { config, problems } = namespaceConfig(shown, text);
  if (problems.length) throw new ConfigError(problems);
  const result = StackFileConfig.safeParse(config);
  if (!result.success) throw new ConfigError(problemsFromZod(shown, result.error));
  return result.data;
}
