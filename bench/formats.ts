/**
 * Benchmark (not a test): the two backup formats and virtnbdbackup, side by side in one run, on the same running
 * lab domain (libvirt, TCG) with one 2 GiB qcow2 disk, half random, half zeros:
 *   npm run bench:formats -- [--size 2GiB] [--regions 8] [--keep]
 * Round 1 (full): kvm-backup image format (zstd -3), repository format with staged ingest, repository format with
 * direct ingest, virtnbdbackup -l full. Then the guest rewrites 5 % of the disk's blocks in place (random data,
 * through QEMU, so virtnbdbackup's dirty bitmap sees it) in `--regions` regions; round 2: the same four (and
 * virtnbdbackup -l inc). Per row: snapshot window (virtnbdbackup: the backup job's time), wall time, CPU time of
 * the runner and its children, stored bytes (image: the compressed files; repository: restic's new data;
 * virtnbdbackup: the files it wrote), restore time (kvm-backup restore / virtnbdrestore) with checksum.
 * Extra row: the same 5 % as scattered 4 KiB writes, restic alone on a copy of the image (the worst case for
 * content-defined chunks).
 * Targets (issue 7): round 2 stored bytes <= 1.25 x the compressed size of the changed data; repository window
 * <= 1.5 x the image format's window.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseSize } from "../runner/config/sizes.ts";
import { makeImage } from "./benchImage.ts";
import { domainXml, removeTestDomain, startLibvirtLab, virshLab } from "../test/lab/libvirtLab.ts";

const REPO = resolve(new URL("..", import.meta.url).pathname);
const args = process.argv.slice(2);
const opt = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const size = opt("--size") ? parseSize(opt("--size")!) : 2 * 2 ** 30;
const regions = Number(opt("--regions") ?? 8);
const keep = args.includes("--keep");
const MiB = 2 ** 20;
const VM = "benchf";

function need(tool: string, pkg: string): void {
  if (spawnSync("sh", ["-c", 'command -v "$1"', "sh", tool]).status !== 0) throw new Error(`bench: ${tool} is missing; apt-get install ${pkg} (scripts/lab-packages.txt)`);
}

function sha256File(path: string): string {
  const h = createHash("sha256");
  const fd = openSync(path, "r");
  const buf = Buffer.alloc(16 * MiB);
  try {
    for (;;) {
      const n = readSyncFull(fd, buf);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest("hex");
}

function readSyncFull(fd: number, buf: Buffer): number {
  return readSync(fd, buf, 0, buf.length, null);
}

/** Wall and CPU seconds (user+sys of the command and every child it waited for) of one command. */
function timed(file: string, argv: string[], env: Record<string, string> = {}): { wall: number; cpu: number; stdout: string; stderr: string } {
  const r = spawnSync("/usr/bin/time", ["-f", "%e %U %S", file, ...argv], { encoding: "utf8", env: { ...process.env, ...env }, maxBuffer: 256 * MiB });
  const last = r.stderr.trim().split("\n").at(-1) ?? "";
  const m = /^([\d.]+) ([\d.]+) ([\d.]+)$/.exec(last);
  if (r.status !== 0 || !m) throw new Error(`bench: ${file} ${argv.join(" ")} failed (exit ${r.status}):\n${r.stderr.slice(-3000)}`);
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), stdout: r.stdout, stderr: r.stderr };
}

function duBytes(path: string): number {
  return Number(execFileSync("du", ["-sb", path], { encoding: "utf8" }).split("\t")[0]);
}

interface Row {
  round: string;
  name: string;
  windowS: number | null;
  wall: number;
  cpu: number;
  stored: number;
  restoreS: number | null;
  restoredOk: boolean | null;
}

need("virtnbdbackup", "virtnbdbackup");
need("restic", "restic");
need("qemu-io", "qemu-utils");
need("zstd", "zstd");
const { info, stop } = await startLibvirtLab();
const dir = join(info.dir, "bench-formats");
mkdirSync(dir, { recursive: true });
const rows: Row[] = [];
const notes: string[] = [];
try {
  process.stderr.write(`bench: building a ${size} byte disk (half random, half zeros) in ${dir}\n`);
  const raw = join(dir, "seed.raw");
  makeImage(raw, size);
  const disk = join(dir, "disk.qcow2");
  execFileSync("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, disk]);
  rmSync(raw);
  writeFileSync(join(dir, "dom.xml"), domainXml(VM, [{ target: "vda", path: disk, format: "qcow2" }]));
  virshLab(info, ["create", join(dir, "dom.xml")]);

  const password = join(dir, "repository.password");
  writeFileSync(password, randomBytes(24).toString("base64"), { mode: 0o600 });
  const common = { method: "libvirt", schedule: "daily", retention: { keepLast: 10 }, compression: { type: "zstd", level: 3, threads: 0 }, limits: { nice: 0, ioClass: "best-effort", ioPriority: 4 } };
  // One staging directory (and repository) per format, so each row's stored bytes are its own.
  const POLICIES = {
    image: common,
    staged: { ...common, format: "repository", repository: { ingest: "staged" } },
    direct: { ...common, format: "repository", repository: { ingest: "direct" } },
  } as const;
  const stagingOf = (p: string) => join(dir, `staging-${p}`);
  const configOf = (p: keyof typeof POLICIES) => {
    mkdirSync(stagingOf(p), { recursive: true });
    const file = join(dir, `config-${p}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        version: 1,
        host: "bench",
        libvirtUri: info.uri,
        staging: { path: stagingOf(p), minFree: "0", keepLast: 10 },
        policies: { [p]: POLICIES[p] },
        vms: { [VM]: { policy: p } },
        ...(p === "image" ? {} : { repositoryPasswordFile: password }),
      }),
    );
    return file;
  };
  execFileSync("node", [join(REPO, "runner", "build.mjs")], { stdio: "inherit" });
  const cli = (p: keyof typeof POLICIES, argv: string[]) => timed("node", [join(REPO, "dist", "kvm-backup.mjs"), "--config", configOf(p), ...argv], { KVM_BACKUP_LOG: "json" });

  // virtnbdbackup: its NBD socket in a directory QEMU can reach (mode 1777), its own scratch and output dirs.
  const sockDir = join(dir, "nbdsock");
  mkdirSync(sockDir);
  chmodSync(sockDir, 0o1777);
  const nbdOut = join(dir, "virtnbd");
  const scratch = join(dir, "virtnbd-scratch");
  mkdirSync(scratch);

  const guestSha = () => {
    // The guest's disk as QEMU presents it (-U: the image is in use), for the restore checks.
    const out = join(dir, "guest-view.raw");
    execFileSync("qemu-img", ["convert", "-U", "-q", "-f", "qcow2", "-O", "raw", disk, out]);
    const h = sha256File(out);
    rmSync(out);
    return h;
  };

  const restoreKvm = (p: keyof typeof POLICIES, id: string): { s: number; ok: boolean; sha: string } => {
    const out = join(dir, "restored.raw");
    rmSync(out, { force: true });
    const r = cli(p, ["restore", "--vm", VM, "--id", id, "--to", out]);
    const m = JSON.parse(readFileSync(join(stagingOf(p), VM, id, "manifest.json"), "utf8"));
    const sha = sha256File(out);
    rmSync(out);
    return { s: r.wall, ok: sha === m.disks[0].sha256, sha };
  };

  const round = (label: string, level: "full" | "inc", expectSha: string) => {
    for (const policy of ["image", "staged", "direct"] as const) {
      const r = cli(policy, ["run", "--no-ship"]);
      const id = / ok (\S+)$/m.exec(r.stdout)?.[1];
      if (!id) throw new Error(`bench: no backup id in ${r.stdout}`);
      const m = JSON.parse(readFileSync(join(stagingOf(policy), VM, id, "manifest.json"), "utf8"));
      const stored = m.disks.reduce((s: number, d: { bytesStored: number }) => s + d.bytesStored, 0);
      const rs = restoreKvm(policy, id);
      if (m.disks[0].sha256 !== expectSha) notes.push(`${label} ${policy}: the backup's SHA-256 differs from the guest view taken before it`);
      rows.push({ round: label, name: policy === "image" ? "kvm-backup image (zstd -3)" : `kvm-backup repository, ${policy} ingest`, windowS: m.snapshot.windowMs / 1000, wall: r.wall, cpu: r.cpu, stored, restoreS: rs.s, restoredOk: rs.ok });
      process.stderr.write(`bench: ${label} ${policy}: window ${m.snapshot.windowMs} ms, wall ${r.wall} s, stored ${stored}\n`);
      // Let ids differ (UTC seconds).
      spawnSync("sleep", ["1.1"]);
    }
    const before = existsDirBytes(nbdOut);
    const v = timed("virtnbdbackup", ["-U", info.uri, "-d", VM, "-l", level, "-o", nbdOut, "-S", scratch, "-f", join(sockDir, "nbd.sock"), "--noprogress"]);
    const stored = duBytes(nbdOut) - before;
    const restoreDir = join(dir, "virtnbd-restore");
    rmSync(restoreDir, { recursive: true, force: true });
    const rr = timed("virtnbdrestore", ["-U", info.uri, "-i", nbdOut, "-o", restoreDir, "--noprogress"]);
    // virtnbdrestore names the restored image after the domain's disk file.
    const img = readdirSync(restoreDir).find((f) => f === "disk.qcow2" || f.startsWith("vda"));
    if (!img) throw new Error(`bench: virtnbdrestore left no disk image in ${restoreDir}: ${readdirSync(restoreDir).join(", ")}`);
    const out = join(dir, "virtnbd-restored.raw");
    execFileSync("qemu-img", ["convert", "-U", "-q", "-O", "raw", join(restoreDir, img), out]);
    const ok = sha256File(out) === expectSha;
    rmSync(out);
    rmSync(restoreDir, { recursive: true, force: true });
    rows.push({ round: label, name: `virtnbdbackup -l ${level}`, windowS: v.wall, wall: v.wall, cpu: v.cpu, stored, restoreS: rr.wall, restoredOk: ok });
    process.stderr.write(`bench: ${label} virtnbdbackup ${level}: ${v.wall} s, stored ${stored}\n`);
  };

  const sha1 = guestSha();
  round("1 full", "full", sha1);

  // 5 % of the disk rewritten in place by the guest (through QEMU), random data, in `regions` regions spread
  // over the disk.
  const changed = Math.floor((size * 0.05) / regions / 65536) * 65536;
  const src = join(dir, "region.bin");
  for (let i = 0; i < regions; i++) {
    writeFileSync(src, randomBytes(changed));
    const off = Math.floor((i + 0.5) * (size / regions) / 65536) * 65536;
    const outp = virshLab(info, ["qemu-monitor-command", VM, "--hmp", `qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -s ${src} ${off} ${changed}"`]);
    if (/error|failed|no such/i.test(outp)) throw new Error(`bench: guest write failed: ${outp}`);
  }
  const changedTotal = changed * regions;
  const compressedChanged = Number(execFileSync("sh", ["-c", 'zstd -q -3 -c "$1" | wc -c', "sh", src], { encoding: "utf8" }).trim()) * regions;
  notes.push(`round 2: ${regions} regions of ${changed} bytes rewritten with random data (${changedTotal} bytes, ${((100 * changedTotal) / size).toFixed(1)} % of the disk; zstd -3: ${compressedChanged} bytes)`);
  const sha2 = guestSha();
  round("2 after 5 %", "inc", sha2);

  // Worst case for content-defined chunks: the same 5 % as scattered 4 KiB blocks, restic alone on image copies.
  const scatterRepo = join(dir, "scatter-repo");
  const env = { RESTIC_PASSWORD_FILE: password };
  const img = join(dir, "scatter.raw");
  execFileSync("qemu-img", ["convert", "-U", "-q", "-f", "qcow2", "-O", "raw", disk, img]);
  timed("restic", ["-r", scatterRepo, "init", "-q"], env);
  const b1 = timed("sh", ["-c", 'restic -r "$1" backup -q --json --stdin --stdin-filename vda.raw < "$2"', "sh", scatterRepo, img], env);
  const fd = openSync(img, "r+");
  const blocks = Math.floor((size * 0.05) / 4096);
  for (let i = 0; i < blocks; i++) writeSync(fd, randomBytes(4096), 0, 4096, Math.floor(Math.random() * (size / 4096)) * 4096);
  closeSync(fd);
  const b2 = timed("sh", ["-c", 'restic -r "$1" backup -q --json --stdin --stdin-filename vda.raw < "$2"', "sh", scatterRepo, img], env);
  const added = (out: string) => JSON.parse(out.trim().split("\n").at(-1)!).data_added as number;
  notes.push(`scattered: ${blocks} random 4 KiB blocks (5 %) rewritten all over the disk: restic stores ${added(b2.stdout)} bytes of new data (first backup ${added(b1.stdout)}), ${((100 * added(b2.stdout)) / added(b1.stdout)).toFixed(0)} % of a full backup`);
  rmSync(img);

  // Report.
  const fmt = (n: number | null, d = 1) => (n === null ? "-" : n.toFixed(d));
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const imgWindow = (r: string) => rows.find((x) => x.round === r && x.name.startsWith("kvm-backup image"))!.windowS!;
  const lines = [
    `kvm-backup format benchmark, ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores (${cpu}), ${Math.round(totalmem() / 2 ** 30)} GiB RAM, load ${load} at the end, restic ${execFileSync("restic", ["version"], { encoding: "utf8" }).split(" ")[1]}, virtnbdbackup ${execFileSync("virtnbdbackup", ["--version"], { encoding: "utf8" }).trim()}`,
    `disk: ${(size / MiB).toFixed(0)} MiB qcow2 of a running lab domain (TCG), half random, half zeros; staging on the local disk`,
    "",
    "| round | tool | snapshot window / job (s) | wall (s) | CPU (s) | stored bytes | restore (s) | restore = backup |",
    "|---|---|---:|---:|---:|---:|---:|---|",
    ...rows.map((r) => `| ${r.round} | ${r.name} | ${fmt(r.windowS)} | ${fmt(r.wall)} | ${fmt(r.cpu)} | ${r.stored} | ${fmt(r.restoreS)} | ${r.restoredOk === null ? "-" : r.restoredOk ? "yes" : "NO"} |`),
    "",
    ...notes.map((n) => `- ${n}`),
  ];
  for (const r of ["1 full", "2 after 5 %"]) {
    for (const p of ["staged", "direct"]) {
      const row = rows.find((x) => x.round === r && x.name.includes(`${p} ingest`))!;
      const ratio = row.windowS! / imgWindow(r);
      lines.push(`- round ${r}: repository (${p}) window / image window = ${ratio.toFixed(2)}; target <= 1.5: ${ratio <= 1.5 ? "met" : "NOT met"}`);
    }
  }
  for (const row of rows.filter((x) => x.round.startsWith("2"))) {
    const ratio = row.stored / compressedChanged;
    lines.push(`- round 2 ${row.name}: stored / compressed change = ${ratio.toFixed(2)}; target <= 1.25: ${ratio <= 1.25 ? "met" : "NOT met"}`);
  }
  process.stdout.write(lines.join("\n") + "\n");
} finally {
  removeTestDomain(info, VM);
  if (!keep) await stop();
  else process.stderr.write(`bench: kept the lab at ${info.dir}\n`);
}

function existsDirBytes(p: string): number {
  try {
    statSync(p);
    return duBytes(p);
  } catch {
    return 0;
  }
}
