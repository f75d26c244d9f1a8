/**
 * The PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS the language host would pass for a stack file, built
 * offline: every `secure:` value (which only the Pulumi CLI can decrypt) becomes a clearly marked
 * placeholder, and every top-level key holding one is listed as secret, as the engine does.
 * Overrides (a JSON object shaped like the namespace's config) are merged on top: the end-to-end tests use
 * them for facts that only exist at test time (sshd port, host key, real private keys). `null` removes a key.
 */
import { readFileSync } from "node:fs";
import { parseDocument } from "yaml";
import { NAMESPACE } from "../../runner/config/loadStack.ts";

export const PLACEHOLDER_PREFIX = "OFFLINE-PREVIEW-PLACEHOLDER-NOT-DECRYPTED";

export interface PulumiConfigEnv {
  /** Fully qualified key ("kvm-backup:hosts") -> value as the engine passes it (objects as JSON text). */
  config: Record<string, string>;
  secretKeys: string[];
}

function isSecure(v: unknown): v is { secure: string } {
  return v !== null && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 1 && typeof (v as { secure?: unknown }).secure === "string";
}

/** Replaces secure values by placeholders naming their path; reports whether any was found. */
function decryptOffline(value: unknown, path: string, found: { any: boolean }): unknown {
  if (isSecure(value)) {
    found.any = true;
    return `${PLACEHOLDER_PREFIX}(${path})`;
  }
  if (Array.isArray(value)) return value.map((v, i) => decryptOffline(v, `${path}[${i}]`, found));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, decryptOffline(v, `${path}.${k}`, found)]));
  }
  return value;
}

export function mergeOverrides(base: unknown, over: unknown): unknown {
  if (over === null) return undefined;
  if (over !== null && typeof over === "object" && !Array.isArray(over) && base !== null && typeof base === "object" && !Array.isArray(base)) {
    const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
    for (const [k, v] of Object.entries(over as Record<string, unknown>)) {
      const merged = mergeOverrides(out[k], v);
      if (merged === undefined) delete out[k];
      else out[k] = merged;
    }
    return out;
  }
  return over;
}

/** Reads the raw `config:` map of a stack file (all namespaces, keys as written). */
function rawConfig(file: string): Record<string, unknown> {
  const doc = parseDocument(readFileSync(file, "utf8"));
  if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0]!.message}`);
  const root = (doc.toJS() ?? {}) as { config?: Record<string, unknown> };
  return root.config ?? {};
}

export function pulumiConfigFor(stackFile: string, overrides: Record<string, unknown> = {}): PulumiConfigEnv {
  const config: Record<string, string> = {};
  const secretKeys = new Set<string>();
  const values: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(rawConfig(stackFile))) {
    const full = key.includes(":") ? key : `${NAMESPACE}:${key}`;
    const found = { any: false };
    values[full] = decryptOffline(value, full.slice(full.indexOf(":") + 1), found);
    if (found.any) secretKeys.add(full);
  }
  for (const [key, value] of Object.entries(overrides)) {
    const full = key.includes(":") ? key : `${NAMESPACE}:${key}`;
    const merged = mergeOverrides(values[full], value);
    if (merged === undefined) delete values[full];
    else values[full] = merged;
  }
  for (const [full, value] of Object.entries(values)) {
    config[full] = typeof value === "string" ? value : JSON.stringify(value);
  }
  return { config, secretKeys: [...secretKeys].filter((k) => k in config).sort() };
}
