/**
 * For QEMU without libvirt (the explicit `disks` map) nobody tells us the image format, so the header decides:
 * qcow2 starts with "QFI\xfb"; its virtual size is a big-endian u64 at offset 24 and a backing file is named at
 * offset 8. Everything else is raw.
 */
import { closeSync, openSync, readSync } from "node:fs";

export interface ImageInfo {
  format: "raw" | "qcow2";
  /** Guest-visible size for qcow2; null for raw (the file or device size is the size). */
  virtualSize: number | null;
  hasBackingFile: boolean;
}

export function parseImageHeader(header: Buffer): ImageInfo {
  if (header.length >= 32 && header.readUInt32BE(0) === 0x514649fb) {
    return { format: "qcow2", virtualSize: Number(header.readBigUInt64BE(24)), hasBackingFile: header.readBigUInt64BE(8) !== 0n };
  }
  return { format: "raw", virtualSize: null, hasBackingFile: false };
}

export function probeImage(path: string): ImageInfo {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(32);
    const n = readSync(fd, buf, 0, 32, 0);
    return parseImageHeader(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
}
