/** Byte sizes as operators write them in stack files: a number of bytes, or "512MiB", "20GiB", "1.5T". */
const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  tb: 1000 ** 4,
};

export const SIZE_HELP = 'a number of bytes or a size like "512MiB", "20GiB", "1TiB" (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000)';

export class SizeSyntaxError extends Error {}

export function parseSize(value: string | number): number {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0) throw new SizeSyntaxError(`${value} is not ${SIZE_HELP}`);
    return value;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new SizeSyntaxError(`"${value}" is not ${SIZE_HELP}`);
  return Math.round(Number(m[1]) * unit);
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}
