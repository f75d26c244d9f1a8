/**
 * format: repository (restic) with the real runner on a running lab domain (libvirt, TCG), the sshd lab as an
 * ssh target (restic's sftp back-end) and a path target:
 *   - a backup taken while the guest writes restores to the content at snapshot time (staged ingest), from
 *     staging and from the ssh target's repository alone; the staged image is gone, the window is recorded;
 *   - a second backup after rewriting a known share of a disk stores about that much new data;
 *   - direct ingest (restic reads the frozen image) round-trips too;
 *   - a wrong password fails clearly before anything is changed; a restic copy killed with -9 is completed by the
 *     next ship; prune keeps exactly what decideRetention keeps, in staging and in the target repositories.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { decideRetention } from "../../runner/retention.ts";
import { idTime } from "../../runner/staging.ts";
import { createTestDomain, guestWrite, removeTestDomain, sha256OfFile, type TestDomain } from "../lab/libvirtLab.ts";
import { logEvents, readStateJson, runCli, startCli, writeHostConfig } from "../lab/shipFixtures.ts";
import { ensureBundle } from "../lab/bundle.ts";
import { cliBackground } from "./libvirtRunner.ts";

const sshd = inject("sshd");
const lab = inject("libvirt");
const VM = "rep1";
const MiB = 1 << 20;

interface Snap {
  id: string;
  tree: string;
  tags: string[];
  original?: string;
}

/** restic against a repository, as a test checks it (password from the file, never an argument). */
function restic(repo: string, password: string, args: string[]): string {
  return execFileSync("restic", ["-r", repo, "--no-cache", ...args], { encoding: "utf8", env: { ...process.env, RESTIC_PASSWORD_FILE: password }, timeout: 120_000 });
}

function snapshots(repo: string, password: string): Snap[] {
  return JSON.parse(restic(repo, password, ["snapshots", "--json"])) as Snap[];
}

function idsIn(repo: string, password: string, kind = "manifest"): string[] {
  return [...new Set(snapshots(repo, password).filter((s) => s.tags.includes(`kind=${kind}`)).map((s) => s.tags.find((t) => t.startsWith("id="))!.slice(3)))].sort();
}

/** Overwrite [offset, offset+length) of a raw image with random bytes (the guest's disk changes between backups). */
function rewrite(path: string, offset: number, length: number): void {
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, randomBytes(length), 0, length, offset);
  } finally {
    closeSync(fd);
  }
}

describe("format: repository on a running domain", () => {
  let root = "";
  let dom: TestDomain;
  let staging = "";
  let mnt = "";
  let remote = "";
  let password = "";
  let config = "";
  let vdbAtFirst = "";
  const ids: string[] = [];

  const cfgDoc = (o: { password?: string; retention?: number; ingest?: "staged" | "direct" } = {}) => ({
    host: "lab",
    libvirtUri: lab.uri,
    staging: { path: staging, keepLast: 1, minFree: "0" },
    targets: {
      nas: { type: "ssh" as const, host: sshd.host, port: sshd.port, user: sshd.user, path: remote, hostKey: sshd.hostKey, keyFile: sshd.clientKeyFile, timeout: "2min" },
      mnt: { type: "path" as const, path: mnt, timeout: "2min" },
    },
    policies: {
      nightly: { method: "libvirt" as const, schedule: "daily", retention: { keepLast: o.retention ?? 10 }, targets: ["nas", "mnt"], format: "repository" as const, repository: { ingest: o.ingest ?? "staged", compression: "auto" as const } },
    },
    vms: { [VM]: { policy: "nightly" } },
    repositoryPasswordFile: o.password ?? password,
  });

  beforeAll(() => {
    ensureBundle();
    root = mkdtempSync(join(lab.dir, "t-repo-"));
    staging = join(root, "staging");
    mnt = join(root, "mnt");
    mkdirSync(staging);
    mkdirSync(mnt);
    remote = join(sshd.remoteRoot, basename(root));
    mkdirSync(remote);
    password = join(root, "repository.password");
    writeFileSync(password, `${randomBytes(24).toString("base64")}\n`, { mode: 0o600 });
    dom = createTestDomain(lab, VM, { dir: join(root, "images"), qcow2Bytes: 16 * MiB, rawBytes: 64 * MiB });
    // vdb: random data all through (no zeros), so that new data is measurable per changed byte.
    rewrite(dom.disks[1]!.path, 32 * MiB, 32 * MiB);
    config = writeHostConfig(join(root, "config.json"), cfgDoc());
  });
  afterAll(() => {
    removeTestDomain(lab, VM);
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("backs up while the guest writes, ingests after the snapshot is gone, ships to both targets verified", async () => {
    const vdbBefore = sha256OfFile(dom.disks[1]!.path);
    const bg = cliBackground(config, ["run"]);
    await bg.until("libvirt.snapshot.created");
    // The guest writes while its images are being streamed: these writes go to the overlay, not the backup.
    guestWrite(lab, VM, 0, 0xab, "1M", "2M");
    const code = await bg.exited;
    const r = { code, stdout: "", stderr: bg.stderr() };
    expect(code, r.stderr.slice(-4000)).toBe(0);
    const id = /"backup.committed".*?"id":"(\d{8}T\d{6}Z)"/.exec(r.stderr)?.[1];
    expect(id).toBeTruthy();
    ids.push(id!);
    const events = logEvents(r.stderr);

    const ev = events.map((e) => e.event);
    // Order: snapshot removed, then the ingest (outside the window), then the commit, then ship.
    expect(ev.indexOf("libvirt.snapshot.removed")).toBeGreaterThan(-1);
    expect(ev.indexOf("repository.ingest.done")).toBeGreaterThan(ev.indexOf("libvirt.snapshot.removed"));
    expect(ev.indexOf("backup.committed")).toBeGreaterThan(ev.lastIndexOf("repository.ingest.done"));
    expect(ev.filter((e) => e === "ship.done")).toHaveLength(2);

    const dir = join(staging, VM, id!);
    const m = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
    expect(m.format).toBe("repository");
    expect(m.snapshot.windowMs).toBeGreaterThan(0);
    expect(m.disks.map((d: { name: string }) => d.name)).toEqual(["vda", "vdb"]);
    expect(m.disks[0].sha256).toBe(dom.disks[0]!.sha256);
    expect(m.disks[1].sha256).toBe(vdbBefore);
    for (const d of m.disks) expect(d.repository.path).toBe(`${VM}/${d.name}.raw`);
    // No staged image is left: the backup directory holds the manifest, the domain XML and the state only.
    expect(readdirSync(dir).sort()).toEqual(["domain.xml", "manifest.json", "state.json"]);
    expect(readStateJson(dir).targets).toMatchObject({ nas: { verified: true }, mnt: { verified: true } });
    // The staging repository and both target repositories hold it, the targets as copies of the staging snapshots.
    const stagingSnaps = snapshots(join(staging, ".repository"), password);
    expect(stagingSnaps.filter((s) => s.tags.includes(`id=${id}`))).toHaveLength(3);
    for (const repo of [join(remote, "lab", ".repository"), join(mnt, "lab", ".repository")]) {
      const there = snapshots(repo, password).filter((s) => s.tags.includes(`id=${id}`));
      expect(there.map((s) => s.original).sort()).toEqual(stagingSnaps.filter((s) => s.tags.includes(`id=${id}`)).map((s) => s.id).sort());
      // Same chunker parameters as staging, so copies deduplicate.
      const cfgOf = (r: string) => JSON.parse(restic(r, password, ["cat", "config"])).chunker_polynomial;
      expect(cfgOf(repo)).toBe(cfgOf(join(staging, ".repository")));
    }
    vdbAtFirst = vdbBefore;
  });

  it("restores exactly the content at snapshot time from staging (restic dump, SHA-256 checked)", () => {
    const out = join(root, "restored1");
    mkdirSync(out);
    const r = spawnSync("node", [ensureBundle(), "--config", config, "restore", "--vm", VM, "--id", ids[0]!, "--to", out], { encoding: "utf8", timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/vda -> .*SHA-256 verified/);
    expect(sha256OfFile(join(out, "vda.raw"))).toBe(dom.disks[0]!.sha256);
    expect(sha256OfFile(join(out, "vdb.raw"))).toBe(vdbAtFirst);
    rmSync(out, { recursive: true });
  });

  it("a second backup after rewriting 3 % of a disk stores that change plus the chunks around its edges", async () => {
    // 2 MiB of 64 MiB, in one region, random (incompressible): restic must store at least that; content-defined
    // chunks (0.5-8 MiB, about 1 MiB on average) add the unchanged parts of the chunks the region's two edges fall
    // into, a few MiB per changed region whatever its size (measured: 5.6 to 7.5 MB for this 2 MiB change).
    const changed = 2 * MiB;
    rewrite(dom.disks[1]!.path, 20 * MiB + 12345, changed);
    await new Promise((r) => setTimeout(r, 1100));
    const r = await runCli(config, ["run"], { timeoutMs: 300_000 });
    expect(r.code, r.stderr.slice(-4000)).toBe(0);
    const id = /^rep1 ok (\S+)$/m.exec(r.stdout)![1]!;
    ids.push(id);
    const m = JSON.parse(readFileSync(join(staging, VM, id, "manifest.json"), "utf8"));
    const [vda, vdb] = m.disks as Array<{ bytesStored: number; virtualSize: number; stagedBytes: number }>;
    console.log(`dedup: vdb ${vdb!.virtualSize} bytes, ${changed} changed, ${vdb!.bytesStored} new in the repository (${((100 * vdb!.bytesStored) / vdb!.virtualSize).toFixed(1)} % of the disk, ${(vdb!.bytesStored / changed).toFixed(2)} x the change); staged image ${vdb!.stagedBytes}; unchanged vda: ${vda!.bytesStored}`);
    expect(vdb!.bytesStored).toBeGreaterThanOrEqual(changed);
    // At most the two chunks the region's edges fall into, each at most restic's maximum chunk (8 MiB); typically
    // 3-6 MiB here (the chunker's polynomial is random per repository, so the edges fall differently each run).
    expect(vdb!.bytesStored).toBeLessThanOrEqual(changed + 16 * MiB);
    // A full copy (the image format) would be the whole compressed disk again.
    expect(vdb!.bytesStored).toBeLessThan(vdb!.stagedBytes / 3);
    // vda changed only by the guest's 2 MiB pattern write during the first backup: the chunks around it are new.
    expect(vda!.bytesStored).toBeLessThan(vda!.virtualSize / 2);
    expect(vdb!.stagedBytes).toBeGreaterThan(32 * MiB);
  });

  it("restores from the ssh target's repository alone (staging and its repository gone)", () => {
    const aside = join(root, "staging-aside");
    renameSync(staging, aside);
    mkdirSync(staging);
    try {
      mkdirSync(join(root, "restored2"));
      const out = join(root, "restored2", "vdb.raw");
      const r = spawnSync("node", [ensureBundle(), "--config", config, "restore", "--vm", VM, "--id", ids[1]!, "--disk", "vdb", "--to", out, "--from", "nas"], { encoding: "utf8", timeout: 120_000 });
      expect(r.status, r.stderr).toBe(0);
      expect(sha256OfFile(out)).toBe(sha256OfFile(dom.disks[1]!.path));
      expect(existsSync(join(staging, ".repository"))).toBe(false);
    } finally {
      rmSync(staging, { recursive: true, force: true });
      renameSync(aside, staging);
    }
  });

  it("a wrong password fails clearly before anything is changed; verify and ship say what is wrong", async () => {
    const wrong = join(root, "wrong.password");
    writeFileSync(wrong, "not the password\n", { mode: 0o600 });
    const bad = writeHostConfig(join(root, "bad.json"), cfgDoc({ password: wrong }));
    const r = await runCli(bad, ["run", "--no-ship"]);
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/rep1 FAILED: .*repository password \(.*wrong\.password\) does not open this repository/);
    expect(logEvents(r.stderr).map((e) => e.event)).not.toContain("libvirt.snapshot.created");
    const v = await runCli(bad, ["verify", "--all"]);
    expect(v.code).toBe(1);
    expect(v.stdout).toMatch(/DAMAGED: .*does not open this repository/);
    // Readable by others: refused, and it says how to fix it.
    chmodSync(wrong, 0o644);
    const p = await runCli(bad, ["run", "--no-ship"]);
    expect(p.code).toBe(3);
    expect(p.stdout).toMatch(/readable by others; run `chmod 600/);
    // Nothing the password could leak into: not the command lines of the children (checked by the runner's design), not the output.
    expect(r.stderr + r.stdout + v.stdout).not.toContain("not the password");
  });

  it("direct ingest (restic reads the frozen image itself) round-trips too", async () => {
    const direct = writeHostConfig(join(root, "direct.json"), cfgDoc({ ingest: "direct" }));
    await new Promise((r) => setTimeout(r, 1100));
    const r = await runCli(direct, ["run", "--no-ship"], { timeoutMs: 300_000 });
    expect(r.code, r.stderr.slice(-4000)).toBe(0);
    const id = /^rep1 ok (\S+)$/m.exec(r.stdout)![1]!;
    ids.push(id);
    expect(logEvents(r.stderr).map((e) => e.event)).not.toContain("repository.ingest.done");
    expect(readdirSync(join(staging, VM, id)).sort()).toEqual(["domain.xml", "manifest.json"]);
    const v = await runCli(direct, ["verify", `${VM}/${id}`]);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(v.stdout).toMatch(/rep1\/\S+ vdb ok/);
    expect(v.stdout).toMatch(/staging repository .* ok/);
  });

  it("a restic copy killed with -9 is completed and verified by the next ship", async () => {
    const id = ids[2]!;
    const bg = startCli(config, ["ship", "--target", "nas"], { timeoutMs: 120_000 });
    // Wait for the copy itself (a restic process of this CLI running `copy`), then kill the whole process group.
    const deadline = Date.now() + 60_000;
    let seen = false;
    while (Date.now() < deadline && !seen) {
      for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
        try {
          const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
          if (cmd.includes("copy") && cmd.some((a) => a.startsWith("sftp:")) && cmd.some((a) => a.includes(staging))) seen = true;
        } catch {
          /* gone */
        }
      }
      if (!seen) await new Promise((r) => setTimeout(r, 10));
    }
    expect(seen).toBe(true);
    process.kill(-bg.child.pid!, "SIGKILL");
    await bg.done;
    const nasRepo = join(remote, "lab", ".repository");
    expect(idsIn(nasRepo, password)).not.toContain(id);
    expect(readStateJson(join(staging, VM, id)).targets.nas?.verified).not.toBe(true);
    const again = await runCli(config, ["ship"], { timeoutMs: 120_000 });
    expect(again.code, again.stderr.slice(-3000)).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`nas ${VM}/${id} shipped`));
    expect(idsIn(nasRepo, password)).toContain(id);
    expect(readStateJson(join(staging, VM, id)).targets).toMatchObject({ nas: { verified: true }, mnt: { verified: true } });
    const vt = await runCli(config, ["verify", "--target", "nas", "--all", "--read-data-subset", "100%"]);
    expect(vt.code, vt.stdout + vt.stderr).toBe(0);
    expect(vt.stdout.trim().split("\n").map((l) => l.split(" ").slice(0, 3).join(" ")).sort()).toEqual(ids.map((i) => `nas ${VM}/${i} ok`).sort());
  });

  it("prune keeps exactly what the retention function keeps, in staging and in both target repositories", async () => {
    const keep = writeHostConfig(join(root, "keep2.json"), cfgDoc({ retention: 2 }));
    const before = idsIn(join(mnt, "lab", ".repository"), password);
    expect(before).toEqual(ids);
    const expected = decideRetention(before.map((id) => ({ id, time: idTime(id) })), { keepLast: 2 }).filter((d) => d.keep).map((d) => d.id).sort();
    const r = await runCli(keep, ["prune"], { timeoutMs: 180_000 });
    expect(r.code, r.stdout + r.stderr.slice(-3000)).toBe(0);
    for (const repo of [join(remote, "lab", ".repository"), join(mnt, "lab", ".repository")]) {
      expect(idsIn(repo, password)).toEqual(expected);
      expect(idsIn(repo, password, "disk")).toEqual(expected);
      expect(restic(repo, password, ["check"])).toMatch(/no errors were found/);
    }
    // Staging keeps its newest (keepLast 1); the others' data is forgotten in the staging repository too.
    const newest = ids.at(-1)!;
    expect(readdirSync(join(staging, VM)).filter((n) => /^\d{8}T/.test(n))).toEqual([newest]);
    expect(idsIn(join(staging, ".repository"), password)).toEqual([newest]);
    expect(logEvents(r.stderr).map((e) => e.event)).toContain("prune.repository");
  });
});
