/** The Target object for a configured target name. */
import type { HostConfig } from "../config/schema.ts";
import { UsageError } from "../errors.ts";
import { PathTarget } from "./pathTarget.ts";
import { S3Target } from "./s3Target.ts";
import { SshTarget } from "./sshTarget.ts";
import type { Target } from "./target.ts";

export function openTarget(cfg: HostConfig, name: string): Target {
  const t = cfg.targets[name];
  if (!t) {
    throw new UsageError(`unknown target "${name}" (known: ${Object.keys(cfg.targets).join(", ") || "none are configured"})`);
  }
  const ctx = { host: cfg.host, staging: cfg.staging.path };
  if (t.type === "s3") return new S3Target(name, t, ctx);
  return t.type === "ssh" ? new SshTarget(name, t, ctx) : new PathTarget(name, t, ctx);
}

/** Targets of a policy; a policy missing from the config has none we know of (the caller treats that as unsafe). */
export function policyTargets(cfg: HostConfig, policy: string): string[] | undefined {
  return cfg.policies[policy]?.targets;
}

/** Every target some policy of this host uses, in config order. */
export function usedTargets(cfg: HostConfig): string[] {
  const used = new Set(Object.values(cfg.policies).flatMap((p) => p.targets));
  return Object.keys(cfg.targets).filter((t) => used.has(t));
}
