/**
 * Benchmark rows for s3 targets: `kvm-backup ship` of one backup of a `size` raw disk (half random, half zeros),
 * made by `kvm-backup run --no-ship` on a running lab domain, to the Ceph RADOS Gateway of the ceph lab (single
 * node on this machine, loopback), in both formats:
 *   - image (zstd -T0 -3), to a target with `verify: full` (every object read back and hashed: part of the ship
 *     time) and to one with `verify: ranged`;
 *   - repository (restic, staged ingest): `restic copy` into the bucket's repository plus `restic check`.
 * MB/s is the disk's size over the ship time (as in bench/run.ts); stored bytes are what went to the gateway.
 *   node --import tsx bench/s3Ship.ts [--size 2GiB]      (alone) -- bench/run.ts adds these rows to its table
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseSize } from "../runner/config/sizes.ts";
import { makeImage } from "./benchImage.ts";
import { startCephLab } from "../test/lab/cephLab.ts";
import { BUNDLE, ensureBundle } from "../test/lab/bundle.ts";
import { domainXml, type LibvirtLabInfo, removeTestDomain, startLibvirtLab, virshLab } from "../test/lab/libvirtLab.ts";
import { labS3, newBucket, writeCredentials } from "../test/lab/s3Objects.ts";
import { writeHostConfig } from "../test/lab/shipFixtures.ts";

export interface BenchRow {
  name: string;
  seconds: number;
  /** Bytes the row sent to the target (stored files, or restic's data added). */
  stored: number;
  cpu: number;
}

const TICK = 100; // USER_HZ
function childrenCpu(): number {
  const f = readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ");
  return (Number(f[13]) + Number(f[14])) / TICK;
}

function cli(config: string, args: string[]): { seconds: number; cpu: number } {
  const c = childrenCpu();
  const t = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [BUNDLE, "--config", config, ...args], { encoding: "utf8", env: { ...process.env, KVM_BACKUP_LOG: "json" } });
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  if (r.status !== 0) throw new Error(`bench s3: kvm-backup ${args.join(" ")} failed (exit ${r.status}):\n${r.stdout}${r.stderr.slice(-3000)}`);
  return { seconds, cpu: childrenCpu() - c };
}

/** `lab`/`image`: bench/run.ts's libvirt lab and raw image (not used by a running domain); else its own. */
export async function benchS3Ship(size: number, given?: { lab: LibvirtLabInfo; image: string }, log: (m: string) => void = (m) => process.stderr.write(`${m}\n`)): Promise<{ rows: BenchRow[]; notes: string[] }> {
  ensureBundle();
  const own = given ? null : await startLibvirtLab();
  const lab = given?.lab ?? own!.info;
  const ceph = await startCephLab();
  const dir = join(lab.dir, "bench-s3");
  mkdirSync(dir, { recursive: true });
  try {
    const image = given?.image ?? join(dir, "disk.raw");
    if (!given) makeImage(image, size);
    log(`bench s3: ceph lab ready in ${(ceph.info.startMs / 1000).toFixed(1)} s`);
    const xml = join(dir, "bench-s3.xml");
    writeFileSync(xml, domainXml("bench-s3", [{ target: "vda", path: image, format: "raw" }]));
    virshLab(lab, ["create", xml]);
    const creds = writeCredentials(join(dir, "credentials"), ceph.info);
    const password = join(dir, "repository.password");
    writeFileSync(password, `${randomBytes(24).toString("base64")}\n`, { mode: 0o600 });
    const s3 = labS3(ceph.info);
    const target = async (verify: "full" | "ranged") => ({
      type: "s3" as const,
      endpoint: ceph.info.endpoint,
      bucket: await newBucket(s3, `bench-${verify}`),
      region: ceph.info.region,
      credentialsFile: creds,
      verify,
      timeout: "1h",
    });
    const rows: BenchRow[] = [];
    for (const format of ["image", "repository"] as const) {
      const staging = join(dir, `staging-${format}`);
      mkdirSync(staging, { recursive: true });
      const targets: Record<string, Awaited<ReturnType<typeof target>>> = format === "image" ? { full: await target("full"), ranged: await target("ranged") } : { full: await target("full") };
      const config = writeHostConfig(join(dir, `config-${format}.json`), {
        host: "bench",
        libvirtUri: lab.uri,
        staging: { path: staging, keepLast: 1, minFree: "0" },
        targets,
        policies: {
          bench: {
            method: "libvirt",
            schedule: "daily",
            retention: { keepLast: 1 },
            compression: { type: "zstd", level: 3, threads: 0 },
            targets: Object.keys(targets),
            ...(format === "repository" ? { format } : {}),
          },
        },
        vms: { "bench-s3": { policy: "bench" } },
        ...(format === "repository" ? { repositoryPasswordFile: password } : {}),
      });
      cli(config, ["run", "--no-ship"]);
      const id = readdirSync(join(staging, "bench-s3")).filter((n) => /^\d{8}T\d{6}Z$/.test(n))[0]!;
      const m = JSON.parse(readFileSync(join(staging, "bench-s3", id, "manifest.json"), "utf8")) as { disks: { bytesStored: number }[] };
      const stored = m.disks.reduce((s, d) => s + d.bytesStored, 0);
      for (const t of Object.keys(targets)) {
        const r = cli(config, ["ship", "--target", t]);
        const how = format === "image" ? `image format, verify ${t}` : "repository format (restic copy + check)";
        rows.push({ name: `kvm-backup ship to Ceph RGW (s3), ${how}`, seconds: r.seconds, stored, cpu: r.cpu });
        log(`bench s3: ${how}: ${r.seconds.toFixed(2)} s`);
      }
    }
    s3.destroy();
    return {
      rows,
      notes: [
        `s3 rows: one backup of the ${(size / 2 ** 20).toFixed(0)} MiB disk (run --no-ship on a running domain) shipped to a single-node Ceph 16 RADOS Gateway on loopback (bluestore on a sparse file on the same disk and cores); MB/s = disk size / ship time, including the read-back of verify full and restic check`,
      ],
    };
  } finally {
    removeTestDomain(lab, "bench-s3");
    await ceph.stop();
    rmSync(dir, { recursive: true, force: true });
    if (own) await own.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const size = args.includes("--size") ? parseSize(args[args.indexOf("--size") + 1]!) : 2 * 2 ** 30;
  const { rows, notes } = await benchS3Ship(size);
  const lines = ["| step | seconds | MB/s | CPU s | stored bytes |", "|---|---:|---:|---:|---:|"];
  for (const r of rows) lines.push(`| ${r.name} | ${r.seconds.toFixed(2)} | ${(size / 1e6 / r.seconds).toFixed(0)} | ${r.cpu.toFixed(2)} | ${r.stored} |`);
  process.stdout.write([...lines, "", ...notes].join("\n") + "\n");
}
