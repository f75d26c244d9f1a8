// A guest that writes at a known pace: copies COUNT MiB from SRC to DEV at OFFSET MiB, RATE MiB/s, each write
// synced (O_DSYNC) so it reaches the origin, and the snapshot's copy-on-write store, at once. Logs "ms MiB" lines.
// usage: node pacedWriter.mjs SRC DEV OFFSET_MIB COUNT_MIB RATE_MIB_S LOG
import { openSync, readSync, writeSync, appendFileSync, constants } from "node:fs";
const [src, dev, offset, count, rate, log] = process.argv.slice(2);
const MiB = 1024 * 1024;
const buf = Buffer.alloc(MiB);
const inFd = openSync(src, "r");
const outFd = openSync(dev, constants.O_WRONLY | constants.O_DSYNC);
const start = Date.now();
for (let i = 0; i < Number(count); i++) {
  readSync(inFd, buf, 0, MiB, i * MiB);
  writeSync(outFd, buf, 0, MiB, (Number(offset) + i) * MiB);
  appendFileSync(log, `${Date.now()} ${i + 1}\n`);
  const due = start + ((i + 1) * 1000) / Number(rate);
  const wait = due - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}
