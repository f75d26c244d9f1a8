import type { HostConfig } from "../config/schema.ts";
import { UsageError } from "../errors.ts";

/** --vm names checked against the config (a typo is a usage error, not a silent no-op). */
export function selectVms(cfg: HostConfig, names: string[] | undefined): string[] {
  for (const v of names ?? []) if (!(v in cfg.vms)) throw new UsageError(`unknown VM "${v}" (known: ${Object.keys(cfg.vms).join(", ") || "none"})`);
  return names?.length ? names : Object.keys(cfg.vms);
}
