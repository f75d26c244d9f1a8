/** Parsers of virsh / qemu-img output, on outputs recorded from libvirt 9.0.0 and QEMU 7.2 (test/unit/fixtures/libvirt). */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseQemuImgInfo } from "../../runner/libvirt/imageInfo.ts";
import { overlayBase, overlayPath } from "../../runner/libvirt/overlay.ts";
import { parseDomstate, parseVirshVersion, versionAtLeast } from "../../runner/libvirt/virsh.ts";
import { parseDomblklistDetails } from "../../runner/lvm/domblklist.ts";
import { REMOTE_FS_TYPES } from "../../runner/localFs.ts";
import { overallExitCode } from "../../runner/pipeline.ts";
import { compressorCommand, storedFileName, withLimits } from "../../runner/stream.ts";
import { prometheusText, type VmStatus } from "../../runner/statusReport.ts";

const fx = (f: string) => readFileSync(join(import.meta.dirname, "fixtures", "libvirt", f), "utf8");

describe("virsh parsers", () => {
  it("reads the library version and hypervisor from `virsh version`", () => {
    expect(parseVirshVersion(fx("virsh-version.txt"))).toEqual({ library: "9.0.0", daemon: null, hypervisor: "QEMU 7.2.22" });
  });
  it("compares versions numerically against the 1.2.12 minimum", () => {
    expect(versionAtLeast("9.0.0", "1.2.12")).toBe(true);
    expect(versionAtLeast("1.2.12", "1.2.12")).toBe(true);
    expect(versionAtLeast("1.2.9", "1.2.12")).toBe(false);
    expect(versionAtLeast("1.10.0", "1.2.12")).toBe(true);
  });
  it("reads domstate", () => {
    expect(parseDomstate(fx("domstate-running.txt"))).toBe("running");
  });
  it("reads domblklist --details on base images and on our overlays", () => {
    expect(parseDomblklistDetails(fx("domblklist-details.txt")).map((e) => [e.type, e.device, e.target])).toEqual([
      ["file", "disk", "vda"],
      ["file", "disk", "vdb"],
    ]);
    const ov = parseDomblklistDetails(fx("domblklist-details-overlay.txt"));
    expect(ov[0]!.source).toBe("/tmp/lvlab/img/a.qcow2.kvmbk-X");
  });
});

describe("qemu-img info", () => {
  it("reads format, virtual size and the backing file of an overlay", () => {
    expect(parseQemuImgInfo(fx("qemu-img-info-overlay.json"))).toMatchObject({ format: "qcow2", virtualSize: 67108864, backingFile: "/tmp/lvlab/img/a.qcow2" });
  });
  it("a plain qcow2 and a raw image have no backing file", () => {
    expect(parseQemuImgInfo(fx("qemu-img-info-qcow2.json")).backingFile).toBeNull();
    expect(parseQemuImgInfo(fx("qemu-img-info-raw.json"))).toMatchObject({ format: "raw", virtualSize: 33554432, backingFile: null });
  });
  it("rejects text that is not its JSON", () => {
    expect(() => parseQemuImgInfo('{"x":1}')).toThrow(/not the output of/);
  });
});

describe("overlay names", () => {
  it("recognises only our own overlays, by the mark and a backup id", () => {
    const p = overlayPath("/var/lib/libvirt/images/web.qcow2", "20261128T020000Z");
    expect(p).toBe("/var/lib/libvirt/images/web.qcow2.kvm-backup-overlay-20261128T020000Z");
    expect(overlayBase(p)).toBe("/var/lib/libvirt/images/web.qcow2");
    expect(overlayBase("/var/lib/libvirt/images/web.qcow2")).toBeNull();
    expect(overlayBase("/img/web.qcow2.kvm-backup-overlay-manual")).toBeNull();
    expect(overlayBase("/img/web.snap1")).toBeNull();
  });
});

describe("stream commands and exit codes", () => {
  it("builds compressor commands and stored names per policy", () => {
    expect(compressorCommand({ type: "zstd", level: 3, threads: 0 })).toEqual({ file: "zstd", args: ["-q", "-c", "-T0", "-3"] });
    expect(compressorCommand({ type: "gzip", level: 6 })).toEqual({ file: "gzip", args: ["-c", "-6"] });
    expect(compressorCommand({ type: "none" })).toBeNull();
    expect(storedFileName("vda", "zstd")).toBe("vda.raw.zst");
    expect(storedFileName("vda", "none")).toBe("vda.raw");
    expect(withLimits({ nice: 10, ioClass: "idle", ioPriority: 7 }, { file: "zstd", args: ["-c"] })).toEqual({ file: "ionice", args: ["-c", "3", "nice", "-n", "10", "zstd", "-c"] });
  });
  it("refuses network filesystems by statfs magic", () => {
    expect(REMOTE_FS_TYPES[0x6969]).toBe("nfs");
    expect(REMOTE_FS_TYPES[0xff534d42]).toBe("cifs");
    expect(REMOTE_FS_TYPES[0x65735546]).toBe("fuse");
    expect(REMOTE_FS_TYPES[0xef53]).toBeUndefined(); // ext4
  });
  it("run exits 0 / 3 (only preflights failed) / 1", () => {
    const ok = { vm: "a", policy: "p", ok: true, exitCode: 0 as const };
    const pre = { vm: "b", policy: "p", ok: false, exitCode: 3 as const };
    const bad = { vm: "c", policy: "p", ok: false, exitCode: 1 as const };
    expect(overallExitCode([ok])).toBe(0);
    expect(overallExitCode([ok, pre])).toBe(3);
    expect(overallExitCode([pre, bad])).toBe(1);
  });
});

describe("Prometheus textfile", () => {
  it("writes one gauge family per metric with host and vm labels, omitting unknown values", () => {
    const row: VmStatus = {
      vm: "web01",
      backups: 2,
      lastSuccessId: "20261128T020000Z",
      lastSuccessAt: "2026-11-28T02:01:40.000Z",
      ageSeconds: 3600,
      lastWindowMs: 1500,
      lastStoredBytes: 1000,
      peakFillPercent: null,
      lastRun: { at: "2026-11-28T02:01:41.000Z", ok: false, error: "x" },
    };
    const t = prometheusText("kvm1", [row]);
    expect(t).toContain('kvm_backup_last_success_age_seconds{host="kvm1",vm="web01"} 3600');
    expect(t).toContain('kvm_backup_last_run_success{host="kvm1",vm="web01"} 0');
    expect(t).toContain('kvm_backup_snapshot_window_seconds{host="kvm1",vm="web01"} 1.5');
    expect(t).toContain("# TYPE kvm_backup_staged_backups gauge");
    expect(t).not.toContain("peak_fill");
  });
});
