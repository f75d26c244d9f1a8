/**
 * Reading `lvs` and `vgs` JSON reports (`--reportformat json --units b --nosuffix`). LVM prints every field as a
 * string ("" for "not applicable"), so the parsing and its failure messages live here, in one place.
 */
import { LvmReportError } from "./errors.ts";

/** The fields the runner asks `lvs` for, in order. */
export const LV_FIELDS = [
  "lv_name",
  "vg_name",
  "lv_path",
  "lv_size",
  "origin",
  "data_percent",
  "snap_percent",
  "lv_attr",
  "lv_kernel_major",
  "lv_kernel_minor",
  // VG fields in the same report save the guard a second command when it must decide to extend.
  "vg_free",
] as const;
export const VG_FIELDS = ["vg_name", "vg_size", "vg_free", "vg_extent_size"] as const;

export interface LogicalVolume {
  name: string;
  vg: string;
  /** /dev/<vg>/<lv>; empty for hidden LVs. */
  path: string;
  sizeBytes: number;
  /** Name of the origin LV when this LV is a snapshot, else null. */
  origin: string | null;
  /** Fill level of a snapshot (0-100), null when not a snapshot or not active. */
  fillPercent: number | null;
  attr: string;
  /** Kernel device numbers when active, else null. */
  major: number | null;
  minor: number | null;
  /** Free bytes in the LV's volume group, when the report includes vg_free. */
  vgFreeBytes: number | null;
}

export interface VolumeGroup {
  name: string;
  sizeBytes: number;
  freeBytes: number;
  extentBytes: number;
}

function reportRows(text: string, kind: "lv" | "vg", command: string): Record<string, string>[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new LvmReportError(`\`${command}\` did not print JSON (${(e as Error).message}); is lvm2 >= 2.02.158 installed? First bytes: ${JSON.stringify(text.slice(0, 120))}`);
  }
  const report = (doc as { report?: unknown }).report;
  if (!Array.isArray(report)) throw new LvmReportError(`\`${command}\` printed JSON without a "report" array`);
  const rows: Record<string, string>[] = [];
  for (const section of report) {
    const list = (section as Record<string, unknown>)[kind];
    if (list === undefined) continue;
    if (!Array.isArray(list)) throw new LvmReportError(`\`${command}\` printed a "${kind}" section that is not a list`);
    rows.push(...(list as Record<string, string>[]));
  }
  return rows;
}

function field(row: Record<string, string>, name: string, command: string): string {
  const v = row[name];
  if (typeof v !== "string") throw new LvmReportError(`\`${command}\` printed a row without the field ${name}: ${JSON.stringify(row)}`);
  return v;
}

/** Bytes as LVM prints them with `--units b`: "268435456" or, without --nosuffix, "268435456B". */
export function parseLvmBytes(value: string, what: string): number {
  const m = /^(\d+)B?$/.exec(value.trim());
  if (!m) throw new LvmReportError(`${what} is "${value}", not a byte count; the runner calls LVM with --units b, so this LVM prints sizes differently than expected`);
  const n = Number(m[1]);
  if (!Number.isSafeInteger(n)) throw new LvmReportError(`${what} "${value}" is too large`);
  return n;
}

function parsePercent(value: string, what: string): number | null {
  if (value.trim() === "") return null;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 100) throw new LvmReportError(`${what} is "${value}", not a percent`);
  return n;
}

function parseDeviceNumber(value: string | undefined): number | null {
  if (value === undefined || value.trim() === "" || value.trim() === "-1") return null;
  const n = Number(value);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

export function parseLvs(text: string, command = "lvs"): LogicalVolume[] {
  return reportRows(text, "lv", command).map((row) => {
    const name = field(row, "lv_name", command);
    const vg = field(row, "vg_name", command);
    const origin = field(row, "origin", command);
    // data_percent is the fill of old-style snapshots since lvm2 2.02.112; snap_percent is its older name.
    const fill = parsePercent(row["data_percent"] ?? "", `data_percent of ${vg}/${name}`) ?? parsePercent(row["snap_percent"] ?? "", `snap_percent of ${vg}/${name}`);
    return {
      name,
      vg,
      path: row["lv_path"] ?? "",
      sizeBytes: parseLvmBytes(field(row, "lv_size", command), `lv_size of ${vg}/${name}`),
      origin: origin === "" ? null : origin,
      fillPercent: origin === "" ? null : fill,
      attr: field(row, "lv_attr", command),
      major: parseDeviceNumber(row["lv_kernel_major"]),
      minor: parseDeviceNumber(row["lv_kernel_minor"]),
      vgFreeBytes: row["vg_free"] === undefined ? null : parseLvmBytes(row["vg_free"], `vg_free of ${vg}`),
    };
  });
}

export function parseVgs(text: string, command = "vgs"): VolumeGroup[] {
  return reportRows(text, "vg", command).map((row) => {
    const name = field(row, "vg_name", command);
    return {
      name,
      sizeBytes: parseLvmBytes(field(row, "vg_size", command), `vg_size of ${name}`),
      freeBytes: parseLvmBytes(field(row, "vg_free", command), `vg_free of ${name}`),
      extentBytes: parseLvmBytes(field(row, "vg_extent_size", command), `vg_extent_size of ${name}`),
    };
  });
}

/**
 * lv_attr character 1 is the volume type (s = snapshot, S = invalid merging snapshot); character 5 is the state,
 * where I means "invalid snapshot": it overflowed and every read of it fails.
 */
export function isInvalidSnapshot(lv: Pick<LogicalVolume, "attr">): boolean {
  return lv.attr[4] === "I" || lv.attr[0] === "S";
}

export function isSnapshot(lv: Pick<LogicalVolume, "attr" | "origin">): boolean {
  return lv.origin !== null && (lv.attr[0] === "s" || lv.attr[0] === "S");
}
