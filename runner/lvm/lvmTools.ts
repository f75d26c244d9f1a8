/**
 * The LVM commands the runner runs, with argument arrays and timeouts. Sizes are passed in bytes ("b") after
 * rounding to extents, so what LVM allocates is exactly what the preflight checked.
 */
import { run } from "../exec.ts";
import { LV_FIELDS, parseLvs, parseVgs, VG_FIELDS, type LogicalVolume, type VolumeGroup } from "./report.ts";

// LVM warns about every inherited file descriptor ("File descriptor 20 leaked"); Node children inherit some.
const ENV = { LVM_SUPPRESS_FD_WARNINGS: "1" };
const REPORT_TIMEOUT_MS = 30_000;
const CHANGE_TIMEOUT_MS = 120_000;

export async function listLogicalVolumes(names: string[] = [], timeoutMs = REPORT_TIMEOUT_MS): Promise<LogicalVolume[]> {
  const args = ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", LV_FIELDS.join(","), ...names];
  const res = await run("lvs", args, { env: ENV, timeoutMs });
  return parseLvs(res.stdout, `lvs ${args.join(" ")}`);
}

export async function listVolumeGroups(): Promise<VolumeGroup[]> {
  const args = ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", VG_FIELDS.join(",")];
  const res = await run("vgs", args, { env: ENV, timeoutMs: REPORT_TIMEOUT_MS });
  return parseVgs(res.stdout, `vgs ${args.join(" ")}`);
}

export async function createSnapshot(vg: string, origin: string, name: string, bytes: number, readOnly: boolean): Promise<void> {
  await run(
    "lvcreate",
    ["--snapshot", "--yes", "--name", name, "--size", `${bytes}b`, ...(readOnly ? ["--permission", "r"] : []), `${vg}/${origin}`],
    { env: ENV, timeoutMs: CHANGE_TIMEOUT_MS },
  );
}

export async function extendSnapshot(vg: string, name: string, addBytes: number): Promise<void> {
  await run("lvextend", ["--size", `+${addBytes}b`, `${vg}/${name}`], { env: ENV, timeoutMs: CHANGE_TIMEOUT_MS });
}

export async function removeSnapshot(vg: string, name: string): Promise<void> {
  await run("lvremove", ["-f", `${vg}/${name}`], { env: ENV, timeoutMs: CHANGE_TIMEOUT_MS });
}
