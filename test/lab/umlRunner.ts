/**
 * What the LVM integration tests need around the UML fixture: a host config for the explicit `disks` form, and
 * the runner bundled once per test run, the single file the hosts run, which Node inside UML loads via hostfs.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import type { HostConfigInput } from "../../runner/config/schema.ts";
import { LAB_ROOT } from "./umlLab.ts";

const REPO = resolve(new URL("../..", import.meta.url).pathname);
export const RUNNER_BUNDLE = join(REPO, "dist", "kvm-backup.mjs");

/** `npm run build` once, so the tests exercise the same single file the hosts run. */
export function runnerBundle(): string {
  execFileSync("npm", ["run", "--silent", "build"], { cwd: REPO, stdio: "inherit" });
  if (!existsSync(RUNNER_BUNDLE)) throw new Error(`npm run build did not produce ${RUNNER_BUNDLE}`);
  return RUNNER_BUNDLE;
}

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
