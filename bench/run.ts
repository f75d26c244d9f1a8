/**
 * Benchmark (not a test): how the runner's stream compares with the plain tools on the same image.
 *   npm run bench -- [--size 2GiB] [--keep]
 * Builds a raw test image (half random, half zeros), then measures in one run, side by side:
 *   cat > /dev/null, zstd -T0 -3 alone, the naive gzip -6 pipe, and `kvm-backup run` on a running domain
 *   (libvirt method, zstd -T0 -3) whose disk is that image, started in a private libvirt lab.
 * Prints a table (seconds, MB/s, stored bytes) and the snapshot window, and checks the targets:
 *   window <= 1.15 x zstd-alone + 2 s;  runner stream >= 0.85 x zstd-alone speed.
 * The image is read from the page cache in every row (the machine has the RAM; dropping caches would disturb
 * other work on a shared machine), so the rows compare CPU and pipe cost, not the disk.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseSize } from "../runner/config/sizes.ts";
import { removeTestDomain, startLibvirtLab, domainXml, virshLab } from "../test/lab/libvirtLab.ts";

const REPO = resolve(new URL("..", import.meta.url).pathname);
const args = process.argv.slice(2);
const sizeArg = args[args.indexOf("--size") + 1];
const size = args.includes("--size") && sizeArg ? parseSize(sizeArg) : 2 * 2 ** 30;
const keep = args.includes("--keep");

function makeImage(path: string, bytes: number): void {
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

function timeShell(script: string, env: Record<string, string>): number {
  const t = process.hrtime.bigint();
  const r = spawnSync("bash", ["-c", script], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (r.status !== 0) throw new Error(`bench step failed: ${script}: ${r.stderr}`);
  return Number(process.hrtime.bigint() - t) / 1e9;
}

interface Row {
  name: string;
  seconds: number;
  stored: number | null;
}

const { info, stop } = await startLibvirtLab();
const dir = join(info.dir, "bench");
mkdirSync(dir, { recursive: true });
try {
  const img = join(dir, "disk.raw");
  process.stderr.write(`bench: building a ${size} byte image (half random, half zeros) in ${dir}\n`);
  makeImage(img, size);
  const env = { IMG: img, OUT: dir };
  // Warm the page cache once so every row reads the same way.
  timeShell('cat "$IMG" > /dev/null', env);
  const rows: Row[] = [];
  rows.push({ name: "cat > /dev/null", seconds: timeShell('cat "$IMG" > /dev/null', env), stored: null });
  rows.push({ name: "zstd -T0 -3 (alone)", seconds: timeShell('zstd -q -T0 -3 -c < "$IMG" > "$OUT/alone.zst"', env), stored: statSync(join(dir, "alone.zst")).size });
  rows.push({ name: "gzip -6 pipe (naive)", seconds: timeShell('cat "$IMG" | gzip -6 -c > "$OUT/naive.gz"', env), stored: statSync(join(dir, "naive.gz")).size });
  rmSync(join(dir, "alone.zst"));
  rmSync(join(dir, "naive.gz"));

  // kvm-backup run on a running domain whose only disk is the image.
  const xmlFile = join(dir, "bench.xml");
  writeFileSync(xmlFile, domainXml("bench", [{ target: "vda", path: img, format: "raw" }]));
  virshLab(info, ["create", xmlFile]);
  const staging = join(dir, "staging");
  mkdirSync(staging);
  const config = join(dir, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      version: 1,
      host: "bench",
      libvirtUri: info.uri,
      staging: { path: staging, minFree: "0" },
      policies: { bench: { method: "libvirt", schedule: "daily", retention: { keepLast: 1 }, compression: { type: "zstd", level: 3, threads: 0 }, limits: { nice: 0, ioClass: "best-effort", ioPriority: 4 } } },
      vms: { bench: { policy: "bench" } },
    }),
  );
  execFileSync("node", [join(REPO, "runner", "build.mjs")], { stdio: "inherit" });
  const t0 = process.hrtime.bigint();
  const r = spawnSync("node", [join(REPO, "dist", "kvm-backup.mjs"), "--config", config, "run", "--no-ship"], { encoding: "utf8", env: { ...process.env, KVM_BACKUP_LOG: "json" } });
  const runSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`kvm-backup run failed (exit ${r.status}):\n${r.stderr.slice(-3000)}`);
  const id = readdirSync(join(staging, "bench")).find((n) => /^\d{8}T/.test(n))!;
  const m = JSON.parse(readFileSync(join(staging, "bench", id, "manifest.json"), "utf8"));
  const done = r.stderr.split("\n").filter((l) => l.includes('"stream.disk.done"')).map((l) => JSON.parse(l))[0];
  const streamSeconds: number = done.seconds;
  rows.push({ name: "kvm-backup stream (vda)", seconds: streamSeconds, stored: m.disks[0].bytesStored });
  rows.push({ name: "kvm-backup run (whole)", seconds: runSeconds, stored: m.disks[0].bytesStored });
  removeTestDomain(info, "bench");

  const zstd = rows[1]!.seconds;
  const windowS = m.snapshot.windowMs / 1000;
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  const lines = [
    `kvm-backup benchmark, ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores (${cpu}), ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Node ${process.version}`,
    `image: ${(size / 2 ** 20).toFixed(0)} MiB raw, half random, half zeros, read from the page cache; domain under TCG (no /dev/kvm)`,
    "",
    "| step | seconds | MB/s | stored bytes |",
    "|---|---:|---:|---:|",
    ...rows.map((x) => `| ${x.name} | ${x.seconds.toFixed(2)} | ${(size / 1e6 / x.seconds).toFixed(0)} | ${x.stored ?? "-"} |`),
    "",
    `snapshot window (creation to removal): ${windowS.toFixed(2)} s; target <= 1.15 x zstd alone + 2 s = ${(1.15 * zstd + 2).toFixed(2)} s: ${windowS <= 1.15 * zstd + 2 ? "met" : "NOT met"}`,
    `runner stream speed / zstd alone: ${(zstd / streamSeconds).toFixed(2)}; target >= 0.85: ${zstd / streamSeconds >= 0.85 ? "met" : "NOT met"}`,
  ];
  process.stdout.write(lines.join("\n") + "\n");
} finally {
  if (!keep) await stop();
  else process.stderr.write(`bench: kept the lab at ${info.dir} (libvirtd still running; stop it by its pid file)\n`);
}
