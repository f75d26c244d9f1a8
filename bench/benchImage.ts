/** The benchmark's disk image: `bytes` of raw data, the first half random, the rest zeros (like a real disk). */
import { randomFillSync } from "node:crypto";
import { closeSync, openSync, writeSync } from "node:fs";

export function makeImage(path: string, bytes: number): void {
  const fd = openSync(path, "w");
  const chunk = Buffer.alloc(16 << 20);
  const half = Math.floor(bytes / 2);
  for (let off = 0; off < bytes; off += chunk.length) {
    const n = Math.min(chunk.length, bytes - off);
    if (off < half) randomFillSync(chunk, 0, n);
    else chunk.fill(0, 0, n);
    writeSync(fd, chunk, 0, n, off);
  }
  closeSync(fd);
}
