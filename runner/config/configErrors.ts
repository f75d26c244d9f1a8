import type { z } from "zod";
import { UsageError } from "../errors.ts";

export interface ConfigProblem {
  file: string;
  /** Dotted path inside the config namespace, e.g. hosts.kvm01.vms.web01.policy */
  path: string;
  message: string;
}

export function formatPath(path: readonly PropertyKey[]): string {
  return path.map((p) => (typeof p === "number" ? `[${p}]` : String(p))).join(".").replace(/\.\[/g, "[");
}

export function problemsFromZod(file: string, error: z.ZodError, prefix: readonly PropertyKey[] = []): ConfigProblem[] {
  return error.issues.map((iss) => ({ file, path: formatPath([...prefix, ...iss.path]) || "(top level)", message: iss.message }));
}

export function formatProblem(p: ConfigProblem): string {
  return `${p.file}: ${p.path}: ${p.message}`;
}

/** Invalid config: every problem at once, each naming file, path and what is allowed. Nothing was changed. */
export class ConfigError extends UsageError {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super(problems.map(formatProblem).join("\n"));
    this.problems = problems;
  }
}
