/**
 * The libvirt method beyond a running domain with image files, on the real lab: a shut-off domain is backed up
 * without a snapshot and stays shut off; a block-device disk (a real loop device) is refused by the preflight,
 * naming the disk and pointing at the lvm method, with nothing changed; a backup restores onto a block device
 * (checked while writing) but never onto one a running domain uses; `doctor` passes on the lab host and fails
 * with a fix when a tool or a domain is missing.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ensureBundle } from "../lab/bundle.ts";
import { createTestDomain, domainSources, domainState, domainXml, knownBytes, removeTestDomain, virshLab, type TestDomain } from "../lab/libvirtLab.ts";
import { attachLoop, type LoopDevice } from "../lab/loopDevice.ts";
import { backups, cli, mkdirp, overlayFiles, partials, writeConfig } from "./libvirtRunner.ts";

const lab = inject("libvirt");
const OFF = "off1";
const BLK = "blk1";

function sha256Of(path: string, bytes?: number): string {
  const data = readFileSync(path);
  return createHash("sha256").update(bytes === undefined ? data : data.subarray(0, bytes)).digest("hex");
}

describe("libvirt method: shut-off domains, block devices, doctor", () => {
  let dir: string;
  let staging: string;
  let off: TestDomain;
  let offConfig: string;
  let offId: string;
  const loops: LoopDevice[] = [];
  let blkDev: LoopDevice;
  let blkImages: string;

  beforeAll(() => {
    ensureBundle();
    dir = mkdirp(join(lab.dir, "t-devices"));
    staging = mkdirp(join(dir, "staging"));
    off = createTestDomain(lab, OFF, { dir: join(dir, "off"), persistent: true, start: false });
    offConfig = writeConfig(lab, join(dir, "off.json"), { staging, vm: OFF });
    // A running domain whose vdb is a block device (a loop device holding known data), vda an image file.
    blkImages = mkdirp(join(dir, "blk"));
    blkDev = attachLoop(join(blkImages, "backing.img"), knownBytes("blk-vdb", 4 << 20));
    loops.push(blkDev);
    const vda = join(blkImages, "vda.raw");
    writeFileSync(vda, knownBytes("blk-vda", 4 << 20));
    const xml = join(blkImages, "domain.xml");
    writeFileSync(xml, domainXml(BLK, [{ target: "vda", path: vda, format: "raw" }, { target: "vdb", path: blkDev.dev, format: "raw", type: "block" }]));
    virshLab(lab, ["create", xml]);
  });

  afterAll(() => {
    removeTestDomain(lab, OFF);
    removeTestDomain(lab, BLK);
    for (const l of loops) l.detach();
  });

  it("backs up a shut-off domain without a snapshot; it stays shut off, its images untouched", () => {
    expect(domainState(lab, OFF)).toBe("shut off");
    const r = cli(offConfig, ["run", "--no-ship"]);
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    expect(r.lines.some((l) => l.event === "libvirt.offline")).toBe(true);
    expect(r.lines.some((l) => l.event === "libvirt.snapshot.created")).toBe(false);
    expect(domainState(lab, OFF)).toBe("shut off");
    expect(domainSources(lab, OFF)).toEqual({ vda: off.disks[0]!.path, vdb: off.disks[1]!.path });
    expect(overlayFiles(join(dir, "off"))).toEqual([]);
    expect(partials(staging, OFF)).toEqual([]);
    const ids = backups(staging, OFF);
    expect(ids).toHaveLength(1);
    offId = ids[0]!;
    const m = JSON.parse(readFileSync(join(staging, OFF, offId, "manifest.json"), "utf8"));
    expect(m.snapshot).toMatchObject({ kind: "none", createdAt: null, removedAt: null, windowMs: null, quiesced: false });
    expect(m.disks.map((d: { sha256: string }) => d.sha256)).toEqual([off.disks[0]!.sha256, off.disks[1]!.sha256]);
    expect(sha256Of(off.disks[1]!.path)).toBe(off.disks[1]!.sha256);
  });

  it("restores onto a block device (a loop device), the SHA-256 checked while writing", () => {
    const target = attachLoop(join(dir, "restore-target.img"), Buffer.alloc(off.disks[1]!.size, 0x5a));
    loops.push(target);
    const r = cli(offConfig, ["restore", "--vm", OFF, "--id", offId, "--disk", "vdb", "--to", target.dev]);
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    expect(r.stdout).toContain(`vdb -> ${target.dev} (${off.disks[1]!.size} bytes, raw, SHA-256 verified)`);
    expect(sha256Of(target.dev)).toBe(off.disks[1]!.sha256);
  });

  it("restore refuses a block device that a running domain uses", () => {
    const before = sha256Of(blkDev.dev);
    const r = cli(offConfig, ["restore", "--vm", OFF, "--id", offId, "--disk", "vdb", "--to", blkDev.dev, "--force"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`refusing to write ${blkDev.dev}: it is disk vdb of the running domain ${BLK}`));
    expect(sha256Of(blkDev.dev)).toBe(before);
  });

  it("a block-device disk under the libvirt method is a preflight error naming the disk and the lvm method; nothing changes", () => {
    const config = writeConfig(lab, join(dir, "blk.json"), { staging, vm: BLK });
    const r = cli(config, ["run", "--no-ship"]);
    expect(r.status, r.stderr.slice(-3000)).toBe(3);
    const msg = r.lines.filter((l) => l.level === "error").at(-1)?.msg ?? "";
    expect(msg).toContain(`disk vdb is a block disk (${blkDev.dev})`);
    expect(msg).toMatch(/method: lvm/);
    expect(msg).toContain(`leave vdb out of vms.${BLK}.disks`);
    expect(r.lines.some((l) => l.event === "libvirt.snapshot.created")).toBe(false);
    expect(domainState(lab, BLK)).toBe("running");
    expect(domainSources(lab, BLK)).toEqual({ vda: join(blkImages, "vda.raw"), vdb: blkDev.dev });
    expect(overlayFiles(blkImages)).toEqual([]);
    expect(partials(staging, BLK)).toEqual([]);
    // Leaving the block disk out, as the message says, backs up the file disk.
    const only = writeConfig(lab, join(dir, "blk-vda.json"), { staging, vm: BLK, disks: ["vda"] });
    const ok = cli(only, ["run", "--no-ship"]);
    expect(ok.status, ok.stderr.slice(-3000)).toBe(0);
    expect(domainSources(lab, BLK)).toEqual({ vda: join(blkImages, "vda.raw"), vdb: blkDev.dev });
  });

  it("doctor passes on the lab host config", () => {
    const r = cli(offConfig, ["doctor", "--json"]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.ok).toBe(true);
    const names = report.checks.map((c: { name: string }) => c.name);
    for (const n of ["node", "tool virsh", "tool qemu-nbd", "tool nbdcopy", "tool zstd", "tool setpriv", "libvirt", `vm ${OFF}`, "staging"]) expect(names).toContain(n);
    expect(report.checks.every((c: { ok: boolean }) => c.ok)).toBe(true);
  });

  it("doctor fails with a fix for a missing tool (zstd not on PATH) and a domain libvirt does not know; exit 3", () => {
    // A PATH with every tool the config needs but zstd.
    const bin = mkdirp(join(dir, "bin-without-zstd"));
    for (const t of ["virsh", "qemu-img", "qemu-nbd", "nbdcopy", "ionice", "nice", "setpriv"]) {
      const real = execFileSync("sh", ["-c", 'command -v "$1"', "sh", t], { encoding: "utf8" }).trim();
      try {
        symlinkSync(real, join(bin, t));
      } catch {
        /* there from an earlier run */
      }
    }
    const cfg = JSON.parse(readFileSync(offConfig, "utf8"));
    cfg.vms.ghost = { policy: "nightly" };
    const config = join(dir, "doctor-missing.json");
    writeFileSync(config, JSON.stringify(cfg));
    const json = cli(config, ["doctor", "--json"], 60_000, { PATH: bin });
    expect(json.status, json.stdout + json.stderr).toBe(3);
    const report = JSON.parse(json.stdout);
    expect(report.ok).toBe(false);
    const failed = report.checks.filter((c: { ok: boolean }) => !c.ok);
    expect(failed.map((c: { name: string }) => c.name).sort()).toEqual(["tool zstd", "vm ghost"]);
    expect(failed.find((c: { name: string }) => c.name === "tool zstd")).toMatchObject({ fix: "apt-get install zstd" });
    expect(failed.find((c: { name: string }) => c.name === "vm ghost").fix).toMatch(/list --all/);
    const text = cli(config, ["doctor"], 60_000, { PATH: bin });
    expect(text.status).toBe(3);
    expect(text.stdout).toMatch(/FAIL tool zstd: zstd not found on PATH .*\n\s+fix: apt-get install zstd/);
    expect(text.stdout).toMatch(/ok {3}libvirt: libvirt \S+ at /);
  });
});


