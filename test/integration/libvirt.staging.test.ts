/**
 * The staging disk: a staging path on a network filesystem (a real sshfs mount of the sshd lab: FUSE) is refused
 * before any snapshot; a staging disk that fills up during the stream (a small tmpfs, filled by another writer
 * once the snapshot exists) fails the run with a clear message, and the snapshot and partial output are gone.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmdirSync, statfsSync } from "node:fs";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestDomain, domainSources, domainState, removeTestDomain, type TestDomain } from "../lab/libvirtLab.ts";
import { backups, cli, cliBackground, mkdirp, overlayFiles, partials, writeConfig } from "./libvirtRunner.ts";
import { ensureBundle } from "../lab/bundle.ts";

const lab = inject("libvirt");
const sshd = inject("sshd");
const VM = "st1";

describe("libvirt method: the staging disk", () => {
  let dom: TestDomain;
  let dir: string;
  let images: string;
  const mounts: Array<{ dir: string; fuse: boolean }> = [];

  beforeAll(() => {
    ensureBundle();
    for (const t of ["sshfs", "fusermount", "fallocate"]) {
      if (spawnSync("sh", ["-c", 'command -v "$1"', "sh", t]).status !== 0) throw new Error(`${t} is missing: install the Debian packages sshfs and util-linux (scripts/lab-packages.txt)`);
    }
    dir = mkdirp(join(lab.dir, "t-staging"));
    images = join(dir, "images");
    dom = createTestDomain(lab, VM, { dir: images, qcow2Bytes: 64 << 20, rawBytes: 8 << 20 });
  });

  afterAll(() => {
    removeTestDomain(lab, VM);
    for (const m of mounts.reverse()) {
      const r = m.fuse ? spawnSync("fusermount", ["-u", m.dir], { timeout: 15_000 }) : spawnSync("umount", [m.dir], { timeout: 15_000 });
      if (r.status !== 0) spawnSync(m.fuse ? "fusermount" : "umount", m.fuse ? ["-u", "-z", m.dir] : ["-l", m.dir], { timeout: 15_000 });
      rmdirSync(m.dir);
    }
  });

  it("refuses a staging path on a network filesystem (sshfs) before any snapshot, exit 3", () => {
    const served = join(sshd.remoteRoot, basename(dir) + "-staging");
    mkdirSync(served, { recursive: true });
    const mountPoint = mkdtempSync("/tmp/kvmb-sshfs-staging-");
    execFileSync(
      "sshfs",
      [
        "-o",
        `IdentityFile=${sshd.clientKeyFile},IdentitiesOnly=yes,BatchMode=yes,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,port=${sshd.port}`,
        `${sshd.user}@${sshd.host}:${served}`,
        mountPoint,
      ],
      { timeout: 30_000 },
    );
    mounts.push({ dir: mountPoint, fuse: true });
    const config = writeConfig(lab, join(dir, "net.json"), { staging: mountPoint, vm: VM });
    const r = cli(config, ["run", "--no-ship"]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.lines.filter((l) => l.level === "error").at(-1)?.msg).toMatch(/staging path .* is on a fuse filesystem .* must be a local disk/);
    expect(r.lines.some((l) => l.event === "libvirt.snapshot.created")).toBe(false);
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(images)).toEqual([]);
    const d = cli(config, ["doctor", "--json"]);
    expect(d.status).toBe(3);
    const staging = JSON.parse(d.stdout).checks.find((c: { name: string }) => c.name === "staging");
    expect(staging).toMatchObject({ ok: false });
    expect(staging.fix).toMatch(/local filesystem/);
  });

  it("a staging disk that fills up during the stream fails the run clearly; snapshot removed, partial deleted", async () => {
    const mountPoint = mkdtempSync("/tmp/kvmb-tmpfs-staging-");
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=48m", "tmpfs", mountPoint], { timeout: 15_000 });
    mounts.push({ dir: mountPoint, fuse: false });
    const config = writeConfig(lab, join(dir, "full.json"), { staging: mountPoint, vm: VM, compression: { type: "zstd", level: 12, threads: 1 } });
    const bg = cliBackground(config, ["run", "--no-ship"]);
    await bg.until("libvirt.snapshot.created");
    // Another writer takes the rest of the disk while the stream runs.
    const s = statfsSync(mountPoint);
    execFileSync("fallocate", ["-l", String(Math.max(4096, Number(s.bavail) * Number(s.bsize) - 64 * 1024)), join(mountPoint, "filler")]);
    const code = await bg.exited;
    const log = bg.stderr();
    expect(code, log.slice(-3000)).toBe(1);
    expect(log).toMatch(/the staging disk is full: writing .*vda\.raw\.zst failed \(ENOSPC\)/);
    expect(log).toContain('"event":"libvirt.snapshot.removed"');
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(images)).toEqual([]);
    expect(partials(mountPoint, VM)).toEqual([]);
    expect(backups(mountPoint, VM)).toEqual([]);
    expect(domainState(lab, VM)).toBe("running");
  });
});
