/**
 * `npm run preview:offline -- <stack>` as a function: runs index.ts through the SDK's real entry point
 * (node_modules/@pulumi/pulumi/cmd/run) with the arguments and environment the Node.js language host passes
 * (pulumi-language-nodejs constructArguments/execRuntime: runtime nodeargs from Pulumi.yaml, --monitor,
 * --engine, --organization, --project, --root-directory, --stack, --pwd, --dry-run, --parallel, entry point;
 * PULUMI_CONFIG with keys as "<ns>:config:<name>", PULUMI_CONFIG_SECRET_KEYS), against the in-process engine.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { parseDocument } from "yaml";
import { stackFilePath } from "../../runner/config/loadStack.ts";
import { type CapturedResource, duplicateUrns } from "./capture.ts";
import { type EngineLog, startOfflineEngine } from "./server.ts";
import { pulumiConfigFor } from "./stackConfig.ts";

export interface PreviewOptions {
  projectDir: string;
  stack: string;
  /** Merged over the stack file's config (see stackConfig.ts). */
  overrides?: Record<string, unknown>;
  /** Extra environment for the program (e.g. KVM_BACKUP_BUNDLE). */
  env?: Record<string, string>;
  /** Echo the program's stdout/stderr and engine log lines (default: collect only). */
  echo?: boolean;
  timeoutMs?: number;
}

export interface PreviewResult {
  exitCode: number;
  resources: CapturedResource[];
  /** Stack outputs, secrets unwrapped; `secretOutputs` lists their paths. */
  outputs: Record<string, unknown>;
  secretOutputs: string[];
  duplicates: string[];
  logs: EngineLog[];
  stdout: string;
  stderr: string;
  /** The exact command line (argv) and the PULUMI_* environment the program ran with. */
  argv: string[];
  pulumiEnv: Record<string, string>;
}

interface ProjectFile {
  name: string;
  main?: string;
  runtime: string | { name: string; options?: { nodeargs?: string; typescript?: boolean } };
}

export function readProject(projectDir: string): ProjectFile {
  return parseDocument(readFileSync(join(projectDir, "Pulumi.yaml"), "utf8")).toJS() as ProjectFile;
}

export async function capturePreview(opts: PreviewOptions): Promise<PreviewResult> {
  const project = readProject(opts.projectDir);
  const runtimeOptions = typeof project.runtime === "object" ? (project.runtime.options ?? {}) : {};
  const engine = await startOfflineEngine({
    project: project.name,
    stack: opts.stack,
    onLog: opts.echo ? (l) => l.severity !== "debug" && process.stderr.write(`${l.severity}: ${l.message}${l.message.endsWith("\n") ? "" : "\n"}`) : undefined,
  });
  try {
    const cfg = pulumiConfigFor(stackFilePath(opts.projectDir, opts.stack), opts.overrides);
    // The language host hands the program its config in the legacy "<ns>:config:<name>" form.
    const legacy = Object.fromEntries(Object.entries(cfg.config).map(([k, v]) => [`${k.slice(0, k.indexOf(":"))}:config:${k.slice(k.indexOf(":") + 1)}`, v]));
    const runPath = join(dirname(createRequire(join(opts.projectDir, "package.json")).resolve("@pulumi/pulumi/package.json")), "cmd", "run");
    const nodeargs = (runtimeOptions.nodeargs ?? "").split(/\s+/).filter(Boolean);
    const args = [
      runPath,
      "--monitor", engine.address,
      "--engine", engine.address,
      "--organization", "organization",
      "--project", project.name,
      "--root-directory", opts.projectDir,
      "--stack", opts.stack,
      "--pwd", opts.projectDir,
      "--dry-run",
      "--parallel", String(2 ** 31 - 1),
      project.main ?? ".",
    ];
    const pulumiEnv: Record<string, string> = {
      PULUMI_CONFIG: JSON.stringify(legacy),
      PULUMI_CONFIG_SECRET_KEYS: JSON.stringify(cfg.secretKeys),
      ...(runtimeOptions.typescript ? { PULUMI_NODEJS_TYPESCRIPT: "true" } : {}),
    };
    const argv = [process.execPath, ...nodeargs, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: opts.projectDir,
      env: { ...process.env, ...opts.env, ...pulumiEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d;
      if (opts.echo) process.stderr.write(d);
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d;
      if (opts.echo) process.stderr.write(d);
    });
    const timeout = setTimeout(() => child.kill("SIGTERM"), opts.timeoutMs ?? 120_000);
    const exitCode: number = await new Promise((resolve) => child.on("close", (code, signal) => resolve(code ?? (signal ? 128 : 1))));
    clearTimeout(timeout);
    const { state } = engine;
    const root = state.outputs.get(state.rootUrn);
    return {
      exitCode,
      resources: state.resources,
      outputs: root?.values ?? {},
      secretOutputs: root?.secretPaths ?? [],
      duplicates: duplicateUrns(state.resources),
      logs: state.logs,
      stdout,
      stderr,
      argv,
      pulumiEnv,
    };
  } finally {
    await engine.stop();
  }
}

/** The resource tree as text: each resource under its parent, URN and type, no input values. */
export function formatTree(resources: CapturedResource[]): string {
  const children = new Map<string, CapturedResource[]>();
  for (const r of resources) children.set(r.parent, [...(children.get(r.parent) ?? []), r]);
  const lines: string[] = [];
  const walk = (parent: string, depth: number) => {
    for (const r of children.get(parent) ?? []) {
      lines.push(`${"  ".repeat(depth)}${r.type} ${r.name}`);
      lines.push(`${"  ".repeat(depth)}  ${r.urn}`);
      walk(r.urn, depth + 1);
    }
  };
  walk("", 0);
  return lines.join("\n");
}

/** Outputs with secrets masked and unknowns spelled out, for printing. */
export function formatOutputs(outputs: Record<string, unknown>, secretPaths: string[]): string {
  const mask = (v: unknown, path: string): unknown => {
    if (secretPaths.includes(path)) return "[secret]";
    if (v === "04da6b54-80e4-46f7-96ec-b56ff0331ba9") return "(known after apply)";
    if (Array.isArray(v)) return v.map((x, i) => mask(x, `${path}[${i}]`));
    if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mask(x, path ? `${path}.${k}` : k)]));
    return v;
  };
  return JSON.stringify(mask(outputs, ""), null, 2);
}
