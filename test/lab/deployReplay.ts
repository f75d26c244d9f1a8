/**
 * Replays what the Pulumi program registered (captured by scripts/preview-offline: capturePreview) against real
 * hosts over real SSH, the way the engine and @pulumi/command 1.2.1 would carry it out. The Pulumi CLI and the
 * provider plugin cannot run here; this does only what they would do, nothing of its own:
 *
 * - remote.Command: `create` on create; on update `update` if set, else `create`; `delete` on delete. The
 *   command string is sent as the SSH exec request (session.Run), `stdin` only when non-empty (the provider
 *   leaves stdin unset otherwise), stdout and stderr are kept as the resource's outputs.
 * - remote.CopyToRemote: the asset's file is written to `remotePath` over SFTP on create, and on update only
 *   when the asset's content or the remote path changed (the provider's Update); the provider has no Delete,
 *   so deleting one touches nothing on the host.
 * - Diff (the engine with the provider's schema): a change of `triggers` replaces the resource (the SDK sets
 *   replaceOnChanges: triggers[*]); a change of any other input updates it; a resource whose inputs are equal is
 *   left alone, whatever its dependencies did. A replacement with deleteBeforeReplace runs the old resource's
 *   delete, then the new create; without it, the create now and the old delete after every create.
 * - Order: a create or update starts once everything it depends on is done (independent ones run side by
 *   side, as the engine runs them); then the deletes of resources no longer declared, each once everything
 *   that depended on it is deleted.
 * - Failures, as `pulumi up --continue-on-error`: a failed step fails its resource; every resource that
 *   depends on it is skipped; the others go on. A create that failed is kept in the state like a resource
 *   with initialization errors, so the next replay updates it (runs `create` again) and a destroy deletes it.
 *
 * Connections: private key and pinned host key only (StrictHostKeyChecking against a known_hosts file holding
 * just the connection's `hostKey`); the key is written to a 0600 file in a private temp dir for the run.
 * Nothing here logs inputs or outputs: they hold secrets and the doctor's reports.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CapturedAsset, type CapturedResource, creationOrder, UNKNOWN } from "../../scripts/preview-offline/capture.ts";

const COMMAND = "command:remote:Command";
const COPY = "command:remote:CopyToRemote";
/** The provider version whose behaviour this replays (package.json pins it). */
const PROVIDER_VERSION = "1.2.1";

export type Operation = "create" | "update" | "replace" | "delete" | "same";

export interface DeployedResource {
  resource: CapturedResource;
  /** What the replaced copy's asset content was, so a changed file is an update even under the same path. */
  assetSha256?: string;
  stdout: string;
  stderr: string;
  /** The last create/update failed (Pulumi's initialization error): the next replay updates it. */
  failed: boolean;
}

/** What the engine keeps in the stack's state between runs, for this replay. */
export interface DeployState {
  /** URNs in the order they were deployed (deletes go in reverse). */
  order: string[];
  resources: Record<string, DeployedResource>;
}

export const EMPTY_STATE: DeployState = { order: [], resources: {} };

export interface Step {
  urn: string;
  name: string;
  type: string;
  op: Operation;
  /** What actually ran on the host, in order ("create", "update", "delete", "copy"); empty for "same". */
  ran: string[];
  ok: boolean;
  /** Why it did not run: a dependency failed. */
  skipped?: string;
  exitCode?: number | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** When it started and ended, in ms since the replay began (unset when nothing ran). */
  startedMs?: number;
  endedMs?: number;
}

export interface ReplayResult {
  state: DeployState;
  steps: Step[];
  failed: Step[];
}

export interface ReplayOptions {
  /** Per command or copy; default 5 min. */
  timeoutMs?: number;
}

interface Connection {
  host: string;
  port: number;
  user: string;
  hostKey: string;
  privateKey: string;
  perDialTimeout?: number;
}

const SUPPORTED_CONNECTION = new Set(["host", "port", "user", "hostKey", "privateKey", "dialErrorLimit", "perDialTimeout"]);

function connectionOf(r: CapturedResource): Connection {
  const c = r.inputs.connection as Record<string, unknown> | undefined;
  if (!c) throw new Error(`${r.urn}: no connection`);
  const extra = Object.keys(c).filter((k) => c[k] !== undefined && !SUPPORTED_CONNECTION.has(k));
  if (extra.length) throw new Error(`${r.urn}: the replay connects with a private key and a pinned host key only; unsupported connection fields: ${extra.join(", ")}`);
  for (const k of ["host", "user", "hostKey", "privateKey"]) {
    if (typeof c[k] !== "string" || c[k] === "") throw new Error(`${r.urn}: connection.${k} is missing (the replay needs a pinned host key and a private key)`);
  }
  return { host: c.host as string, port: Number(c.port ?? 22), user: c.user as string, hostKey: c.hostKey as string, privateKey: c.privateKey as string, perDialTimeout: c.perDialTimeout as number | undefined };
}

function checkReplayable(r: CapturedResource): void {
  if (r.type !== COMMAND && r.type !== COPY) throw new Error(`${r.urn}: the replay knows ${COMMAND} and ${COPY} only, not ${r.type}`);
  if (r.version && r.version !== PROVIDER_VERSION) throw new Error(`${r.urn}: registered for @pulumi/command ${r.version}; the replay carries out ${PROVIDER_VERSION}`);
  if (JSON.stringify(r.inputs).includes(UNKNOWN)) throw new Error(`${r.urn}: an input is unknown until another resource is created; the replay needs every input known`);
  if (r.type === COMMAND) {
    if (r.inputs.addPreviousOutputInEnv !== false) throw new Error(`${r.urn}: addPreviousOutputInEnv is not false; the replay does not pass PULUMI_COMMAND_STDOUT`);
    if (r.inputs.environment !== undefined) throw new Error(`${r.urn}: environment is set; the replay does not pass environment variables`);
    if (r.inputs.logging !== undefined) throw new Error(`${r.urn}: logging is set; the replay does not model it`);
  }
  connectionOf(r);
}

/** A private directory with the key (0600) and a known_hosts holding only the pinned host key. */
class SshSetup {
  private readonly dir = mkdtempSync(join(tmpdir(), "kvmb-replay-"));
  private n = 0;

  args(c: Connection): string[] {
    const id = String(this.n++);
    const key = join(this.dir, `key${id}`);
    writeFileSync(key, c.privateKey.endsWith("\n") ? c.privateKey : `${c.privateKey}\n`, { mode: 0o600 });
    chmodSync(key, 0o600);
    const known = join(this.dir, `known_hosts${id}`);
    const [type, blob] = c.hostKey.trim().split(/\s+/);
    writeFileSync(known, `${c.port === 22 ? c.host : `[${c.host}]:${c.port}`} ${type} ${blob}\n`);
    return [
      "-F", "/dev/null",
      "-o", "BatchMode=yes",
      "-o", "IdentitiesOnly=yes",
      "-o", "IdentityAgent=none",
      "-o", "StrictHostKeyChecking=yes",
      "-o", `UserKnownHostsFile=${known}`,
      "-o", "GlobalKnownHostsFile=/dev/null",
      "-o", `ConnectTimeout=${c.perDialTimeout ?? 15}`,
      "-o", "LogLevel=ERROR",
      "-i", key,
    ];
  }

  file(name: string, content: string): string {
    const p = join(this.dir, `${this.n++}-${name}`);
    writeFileSync(p, content, { mode: 0o600 });
    return p;
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

interface Ran {
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

function runProcess(cmd: string, args: string[], stdin: string | undefined, timeoutMs: number): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d));
    child.stderr.on("data", (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ exitCode: null, stdout, stderr: `replay: ${cmd} could not be started (${e.message}); install the Debian package openssh-client` });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ exitCode: code, stdout, stderr: signal ? `${stderr}\n(replay: ${cmd} killed by ${signal} after ${timeoutMs} ms)` : stderr });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(stdin ?? "");
  });
}

/** session.Run(command) with the resource's stdin, over the resource's own connection. */
function runRemote(ssh: SshSetup, c: Connection, command: string, stdin: string | undefined, timeoutMs: number): Promise<Ran> {
  return runProcess("ssh", [...ssh.args(c), "-T", "-p", String(c.port), "-l", c.user, c.host, command], stdin ? stdin : undefined, timeoutMs);
}

function assetSha256(a: CapturedAsset): string {
  if (a.text !== undefined) return createHash("sha256").update(a.text).digest("hex");
  if (a.path !== undefined) return createHash("sha256").update(readFileSync(a.path)).digest("hex");
  throw new Error("an asset without path or text");
}

/** sftp.Create(remotePath) + ReadFrom(local file), as the provider's copyFile. */
async function copyRemote(ssh: SshSetup, r: CapturedResource, timeoutMs: number): Promise<Ran> {
  const c = connectionOf(r);
  const source = r.inputs.source as CapturedAsset;
  if (!source || source.kind !== "asset" || (source.path === undefined && source.text === undefined)) {
    throw new Error(`${r.urn}: the replay copies a file or text asset only`);
  }
  const local = source.path ?? ssh.file("text-asset", source.text!);
  const remotePath = String(r.inputs.remotePath);
  const quote = (p: string) => `"${p.replace(/(["\\])/g, "\\$1")}"`;
  return runProcess("sftp", [...ssh.args(c), "-b", "-", "-P", String(c.port), `${c.user}@${c.host}`], `put ${quote(local)} ${quote(remotePath)}\n`, timeoutMs);
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

/** The engine's decision for one declared resource against its state. */
export function diff(desired: CapturedResource, prior: DeployedResource | undefined, desiredAssetSha?: string): Operation {
  if (!prior) return "create";
  if (!same(desired.inputs.triggers, prior.resource.inputs.triggers)) return "replace";
  if (prior.failed) return "update";
  const keys = new Set([...Object.keys(desired.inputs), ...Object.keys(prior.resource.inputs)]);
  for (const k of keys) if (!same(desired.inputs[k], prior.resource.inputs[k])) return "update";
  if (desired.type === COPY && desiredAssetSha !== prior.assetSha256) return "update";
  return "same";
}

/**
 * `pulumi up` of `desired` (every resource the program registered; components and providers are passed over)
 * on top of `prior`. Like the engine, a step starts as soon as the steps of everything it depends on ended
 * (steps of different hosts run side by side). Returns the new state and every step, in declaration order.
 */
export async function replayUp(desired: CapturedResource[], prior: DeployState, opts: ReplayOptions = {}): Promise<ReplayResult> {
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const order = creationOrder(desired);
  order.forEach(checkReplayable);
  const desiredUrns = new Set(order.map((r) => r.urn));
  const ssh = new SshSetup();
  const kept = new Map<string, DeployedResource>();
  const broken = new Set<string>();
  const deferredDeletes: DeployedResource[] = [];
  const t0 = Date.now();

  const runDelete = async (old: DeployedResource): Promise<Ran | null> => {
    if (old.resource.type !== COMMAND || typeof old.resource.inputs.delete !== "string") return null;
    return runRemote(ssh, connectionOf(old.resource), old.resource.inputs.delete, undefined, timeoutMs);
  };
  const runCreate = async (r: CapturedResource, script: unknown): Promise<Ran | null> => {
    if (r.type === COPY) return copyRemote(ssh, r, timeoutMs);
    if (typeof script !== "string") return null;
    return runRemote(ssh, connectionOf(r), script, typeof r.inputs.stdin === "string" ? r.inputs.stdin : undefined, timeoutMs);
  };

  /** One declared resource: decide, then carry out; `step` is filled in place. */
  const apply = async (r: CapturedResource, step: Step): Promise<void> => {
    const prev = prior.resources[r.urn];
    const sha = r.type === COPY ? assetSha256(r.inputs.source as CapturedAsset) : undefined;
    const failedDep = r.dependencies.find((d) => broken.has(d));
    if (step.op === "same") {
      kept.set(r.urn, prev!);
      return;
    }
    if (failedDep) {
      Object.assign(step, { ok: false, skipped: `dependency ${failedDep} failed` });
      broken.add(r.urn);
      if (prev) kept.set(r.urn, prev);
      return;
    }
    step.startedMs = Date.now() - t0;
    const finish = (ran: Ran | null, ok: boolean) => {
      Object.assign(step, { ok, exitCode: ran?.exitCode, stdout: ran?.stdout ?? "", stderr: ran?.stderr ?? "", endedMs: Date.now() - t0 });
      step.ms = step.endedMs! - step.startedMs!;
      if (!ok) broken.add(r.urn);
    };
    if (step.op === "replace" && r.deleteBeforeReplace) {
      const del = await runDelete(prev!);
      if (del) step.ran.push("delete");
      if (del && del.exitCode !== 0) {
        finish(del, false);
        kept.set(r.urn, prev!);
        return;
      }
    } else if (step.op === "replace") {
      deferredDeletes.push(prev!);
    }
    let result: Ran | null = null;
    // The provider's CopyToRemote Update copies only when the content or the remote path changed.
    const copyUnchanged = step.op === "update" && r.type === COPY && prev!.assetSha256 === sha && same(prev!.resource.inputs.remotePath, r.inputs.remotePath);
    if (!copyUnchanged) {
      const script = step.op === "update" ? (r.inputs.update ?? r.inputs.create) : r.inputs.create;
      result = await runCreate(r, script);
      if (result) step.ran.push(r.type === COPY ? "copy" : step.op === "update" && r.inputs.update !== undefined ? "update" : "create");
    }
    const ok = result === null || result.exitCode === 0;
    finish(result, ok);
    kept.set(r.urn, { resource: r, assetSha256: sha, stdout: step.stdout, stderr: step.stderr, failed: !ok });
  };

  const steps: Step[] = [];
  try {
    const done = new Map<string, Promise<void>>();
    for (const r of order) {
      const prev = prior.resources[r.urn];
      const sha = r.type === COPY ? assetSha256(r.inputs.source as CapturedAsset) : undefined;
      const step: Step = { urn: r.urn, name: r.name, type: r.type, op: diff(r, prev, sha), ran: [], ok: true, stdout: prev?.stdout ?? "", stderr: prev?.stderr ?? "", ms: 0 };
      steps.push(step);
      const deps = r.dependencies.map((d) => done.get(d)).filter((x): x is Promise<void> => x !== undefined);
      done.set(r.urn, Promise.all(deps).then(() => apply(r, step)));
    }
    await Promise.all(done.values());

    // Deletes: each after every resource that depends on it is gone, side by side otherwise.
    const removed = prior.order.filter((u) => !desiredUrns.has(u)).map((u) => prior.resources[u]!);
    const toDelete = [...deferredDeletes, ...removed];
    const deleting = new Map<string, Promise<boolean>>();
    const leftovers = new Set<string>();
    const deleteOne = (old: DeployedResource): Promise<boolean> => {
      const urn = old.resource.urn;
      const existing = deleting.get(urn);
      if (existing) return existing;
      const dependents = removed.filter((o) => o !== old && o.resource.dependencies.includes(urn));
      const step: Step = { urn, name: old.resource.name, type: old.resource.type, op: "delete", ran: [], ok: true, stdout: "", stderr: "", ms: 0 };
      steps.push(step);
      const p = Promise.all(dependents.map(deleteOne)).then(async (results) => {
        if (results.some((ok) => !ok)) {
          Object.assign(step, { ok: false, skipped: "a resource that depends on it could not be deleted" });
          return false;
        }
        step.startedMs = Date.now() - t0;
        const del = await runDelete(old);
        if (del) step.ran.push("delete");
        Object.assign(step, { ok: del === null || del.exitCode === 0, exitCode: del?.exitCode, stdout: del?.stdout ?? "", stderr: del?.stderr ?? "", endedMs: Date.now() - t0 });
        step.ms = step.endedMs! - step.startedMs;
        return step.ok;
      });
      deleting.set(urn, p);
      return p;
    };
    // Steps are listed in reverse deploy order (the order a sequential destroy would take).
    for (const old of [...deferredDeletes, ...[...removed].reverse()]) void deleteOne(old);
    const results = await Promise.all(toDelete.map((o) => deleting.get(o.resource.urn)!));
    toDelete.forEach((o, i) => {
      if (!results[i] && removed.includes(o)) leftovers.add(o.resource.urn);
    });
    const state: DeployState = { order: [], resources: {} };
    for (const u of [...prior.order.filter((x) => leftovers.has(x)), ...order.map((r) => r.urn).filter((x) => kept.has(x))]) {
      state.order.push(u);
      state.resources[u] = leftovers.has(u) ? prior.resources[u]! : kept.get(u)!;
    }
    return { state, steps, failed: steps.filter((st) => !st.ok) };
  } finally {
    ssh.close();
  }
}

/** `pulumi destroy`: every resource of the state deleted, in reverse deploy order. */
export function replayDestroy(prior: DeployState, opts: ReplayOptions = {}): Promise<ReplayResult> {
  return replayUp([], prior, opts);
}

/** Steps that changed something, as "op name" lines (for assertions and failure messages; no outputs). */
export function changes(result: ReplayResult): string[] {
  return result.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.name}`);
}

/** A readable account of the failed steps: name, exit code and stderr (the doctor's report for a preflight). */
export function failureReport(result: ReplayResult): string {
  return result.failed.map((s) => `${s.name} (${s.op}): ${s.skipped ?? `exit ${s.exitCode}\n${s.stderr}`}`).join("\n\n");
}
