/**
 * Reads stacks/Pulumi.<stack>.yaml the way Pulumi does (the `kvm-backup` namespace; a key without namespace
 * belongs to the project, which is the same namespace) and validates it with the one schema.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { parseDocument } from "yaml";
import { ConfigError, type ConfigProblem, problemsFromZod } from "./configErrors.ts";
import { StackConfig, StackFileConfig } from "./schema.ts";
import type { StackConfig as StackConfigT, StackFileConfig as StackFileConfigT } from "./schema.ts";

export const NAMESPACE = "kvm-backup";
export const STACK_DIR = "stacks";

export function stackFilePath(projectDir: string, stack: string): string {
  return join(projectDir, STACK_DIR, `Pulumi.${stack}.yaml`);
}

/** A short file name for messages: relative to the project when inside it. */
export function displayPath(file: string, projectDir = process.cwd()): string {
  const rel = relative(projectDir, file);
  return rel && !rel.startsWith("..") ? rel : file;
}

/** The namespace's keys from a stack file's `config:` map, or problems saying why they cannot be read. */
export function namespaceConfig(file: string, text: string): { config: Record<string, unknown>; problems: ConfigProblem[] } {
  const doc = parseDocument(text, { prettyErrors: false });
  if (doc.errors.length) {
    return { config: {}, problems: doc.errors.map((e) => ({ file, path: "(yaml)", message: e.message })) };
  }
  const root = doc.toJS() as unknown;
  if (root === null || typeof root !== "object" || Array.isArray(root)) {
    return { config: {}, problems: [{ file, path: "(top level)", message: "a stack file must be a mapping with a `config:` section" }] };
  }
  const cfg = (root as Record<string, unknown>).config;
  if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg)) {
    return { config: {}, problems: [{ file, path: "config", message: "missing `config:` mapping with the kvm-backup:* keys" }] };
  }
  const config: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(cfg as Record<string, unknown>)) {
    const colon = key.indexOf(":");
    const ns = colon < 0 ? NAMESPACE : key.slice(0, colon);
    if (ns === NAMESPACE) config[colon < 0 ? key : key.slice(colon + 1)] = value;
  }
  return { config, problems: [] };
}

/** Validates one stack file. Throws ConfigError with every problem found. */
export function loadStackFile(file: string, projectDir = process.cwd()): StackFileConfigT {
  const shown = displayPath(file, projectDir);
  if (!existsSync(file)) throw new ConfigError([{ file: shown, path: "(file)", message: "no such stack file" }]);
  const { config, problems } = namespaceConfig(shown, readFileSync(file, "utf8"));
  if (problems.length) throw new ConfigError(problems);
  const result = StackFileConfig.safeParse(config);
  if (!result.success) throw new ConfigError(problemsFromZod(shown, result.error));
  return result.data;
}

/** Validates the config the Pulumi engine hands the program (secrets decrypted), naming the stack file in errors. */
export function parseDecryptedConfig(config: Record<string, unknown>, shownFile: string): StackConfigT {
  const result = StackConfig.safeParse(config);
  if (!result.success) throw new ConfigError(problemsFromZod(shownFile, result.error));
  return result.data;
}

