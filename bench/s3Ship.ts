/**
 * Benchmark rows for s3 targets: `kvm-backup ship` of one staged backup of a `size` disk (half random, half zeros,
 * zstd -3) to the Ceph RADOS Gateway of the ceph lab (single node, on this machine, loopback), with `verify: full`
 * (every object read back and hashed, part of the ship time) and `verify: ranged`. Each row ships the same backup
 * into a fresh bucket.
 *   node --import tsx bench/s3Ship.ts [--size 2GiB]      (alone) -- or through bench/run.ts, which adds these rows
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseSize } from "../runner/config/sizes.ts";
import { startCephLab } from "../test/lab/cephLab.ts";
import { BUNDLE, ensureBundle } from "../test/lab/bundle.ts";
import { labS3, newBucket, writeCredentials } from "../test/lab/s3Objects.ts";
import { makeStagedBackup, writeHostConfig } from "../test/lab/shipFixtures.ts";

export interface BenchRow {
  name: string;
  seconds: number;
  /** Bytes the row moved to the target (the stored, compressed files). */
  bytes: number;
  cpu: number | null;
}

const TICK = 100;
function childrenCpu(): number {
  const f = readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ");
  return (Number(f[13]) + Number(f[14])) / TICK;
}

export async function benchS3Ship(size: number, log: (m: string) => void = (m) => process.stderr.write(`${m}\n`)): Promise<{ rows: BenchRow[]; notes: string[] }> {
  ensureBundle();
  const ceph = await startCephLab();
  const dir = mkdtempSync("/tmp/kvmb-bench-s3-");
  try {
    log(`bench s3: ceph lab ready in ${(ceph.info.startMs / 1000).toFixed(1)} s; staging a ${size} byte backup (zstd -3)`);
    const staging = join(dir, "staging");
    const id = "20261128T010000Z";
    const { manifest } = makeStagedBackup({ staging, vm: "bench", id, policy: "bench", size });
    const stored = manifest.disks.reduce((s, d) => s + d.bytesStored, 0);
    const creds = writeCredentials(join(dir, "credentials"), ceph.info);
    const s3 = labS3(ceph.info);
    const rows: BenchRow[] = [];
    for (const verify of ["full", "ranged"] as const) {
      const bucket = await newBucket(s3, `bench-${verify}`);
      const config = writeHostConfig(join(dir, `config-${verify}.json`), {
        host: "bench",
        staging: { path: staging, keepLast: 1, minFree: "0" },
        targets: { ceph: { type: "s3", endpoint: ceph.info.endpoint, bucket, region: ceph.info.region, credentialsFile: creds, verify, timeout: "1h" } },
        policies: { bench: { method: "libvirt", schedule: "daily", retention: { keepLast: 1 }, targets: ["ceph"] } },
        vms: { bench: { policy: "bench" } },
      });
      // A fresh state for each row: the same backup, not yet shipped anywhere.
      rmSync(join(staging, "bench", id, "state.json"), { force: true });
      const c = childrenCpu();
      const t = process.hrtime.bigint();
      const r = spawnSync(process.execPath, [BUNDLE, "--config", config, "ship"], { encoding: "utf8", env: { ...process.env, KVM_BACKUP_LOG: "json" } });
      const seconds = Number(process.hrtime.bigint() - t) / 1e9;
      if (r.status !== 0) throw new Error(`bench s3: ship failed (exit ${r.status}):\n${r.stderr.slice(-3000)}`);
      rows.push({ name: `kvm-backup ship, image format, to Ceph RGW (s3, verify ${verify})`, seconds, bytes: stored, cpu: childrenCpu() - c });
      log(`bench s3: verify ${verify}: ${seconds.toFixed(2)} s`);
    }
    s3.destroy();
    return {
      rows,
      notes: [
        `s3 rows: one backup of a ${(size / 2 ** 20).toFixed(0)} MiB disk (${(stored / 2 ** 20).toFixed(0)} MiB stored after zstd -3) to a single-node Ceph 16 RADOS Gateway on loopback (bluestore on a sparse file on the same disk); MB/s = stored bytes / ship time, the read-back of verify full included`,
      ],
    };
  } finally {
    await ceph.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const size = args.includes("--size") ? parseSize(args[args.indexOf("--size") + 1]!) : 2 * 2 ** 30;
  const { rows, notes } = await benchS3Ship(size);
  const lines = ["| step | seconds | MB/s | CPU s | stored bytes |", "|---|---:|---:|---:|---:|"];
  for (const r of rows) lines.push(`| ${r.name} | ${r.seconds.toFixed(2)} | ${(r.bytes / 1e6 / r.seconds).toFixed(0)} | ${r.cpu === null ? "-" : r.cpu.toFixed(2)} | ${r.bytes} |`);
  process.stdout.write([...lines, "", ...notes].join("\n") + "\n");
}
