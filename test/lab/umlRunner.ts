/**
 * What the LVM integration tests need around the UML fixture: a host config for the explicit `disks` form. (The
 * runner bundle, which Node inside UML loads via hostfs, comes from ../lab/bundle.ts.)
 */
import type { HostConfigInput } from "../../runner/config/schema.ts";

export interface LvmLabConfig {
  staging: string;
  disks: Record<string, string>;
  snapshot: { size: string; maxFillPercent?: number; extendBy?: string; extendMax?: string; pollInterval?: string };
  vm?: string;
}

export function hostConfig(c: LvmLabConfig): HostConfigInput {
  return {
    version: 1,
    host: "uml",
    staging: { path: c.staging, keepLast: 2, minFree: "1MiB" },
    targets: {},
    policies: {
      nightly: {
        method: "lvm",
        schedule: "daily",
        compression: { type: "zstd", level: 1, threads: 1 },
        retention: { keepLast: 3 },
        snapshot: { maxFillPercent: 80, pollInterval: "200ms", ...c.snapshot },
      },
    },
    vms: { [c.vm ?? "web01"]: { policy: "nightly", disks: c.disks } },
  } as HostConfigInput;
}
