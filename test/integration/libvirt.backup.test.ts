/**
 * The libvirt method on a real running domain (TCG): a backup taken while the guest writes restores to exactly
 * the content at snapshot time, the domain keeps running, the writes land in the base images after the commit;
 * verify detects a flipped byte; list and status report the backup.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync, openSync, readSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestDomain, domainSources, domainState, guestWrite, removeTestDomain, virshLab, type TestDomain } from "../lab/libvirtLab.ts";
import { backups, cli, cliBackground, holdsPattern, imagesEqual, mkdirp, overlayFiles, partials, writeConfig } from "./libvirtRunner.ts";
import { ensureBundle } from "../lab/bundle.ts";

const lab = inject("libvirt");
const VM = "bk1";

describe("libvirt method: backup of a running domain while the guest writes", () => {
  let dom: TestDomain;
  let dir: string;
  let staging: string;
  let config: string;
  let pristineVda: string;
  let id: string;
  let domId: string;
  let run: { status: number | null; stderr: string; lines: ReturnType<typeof cli>["lines"] };

  beforeAll(() => {
    ensureBundle();
    dir = mkdirp(join(lab.dir, "t-backup"));
    staging = mkdirp(join(dir, "staging"));
    // 64 MiB qcow2 and 32 MiB raw, half random: zstd -12 on one thread keeps the stream busy for seconds.
    dom = createTestDomain(lab, VM, { dir: join(dir, "images"), qcow2Bytes: 64 << 20, rawBytes: 32 << 20 });
    pristineVda = join(dir, "vda.pristine.raw");
    execFileSync("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", dom.disks[0]!.path, pristineVda]);
    config = writeConfig(lab, join(dir, "config.json"), { staging, vm: VM, compression: { type: "zstd", level: 12, threads: 1 } });
    domId = virshLab(lab, ["domid", VM]).trim();
  });

  afterAll(() => removeTestDomain(lab, VM));

  it("takes the backup while the guest writes to both disks during the stream; the domain keeps running", async () => {
    const bg = cliBackground(config, ["run", "--no-ship"]);
    await bg.until("libvirt.snapshot.created");
    // The guest writes while its images are being streamed: these writes go to the overlays.
    guestWrite(lab, VM, 0, 0xab, "1M", "4M");
    guestWrite(lab, VM, 1, 0xcd, "0", "2M");
    const wroteAt = Date.now();
    const sources = domainSources(lab, VM);
    expect(sources.vda).toContain(".kvm-backup-overlay-");
    expect(domainState(lab, VM)).toBe("running");
    const code = await bg.exited;
    run = { status: code, stderr: bg.stderr(), lines: [] };
    expect(code, bg.stderr().slice(-3000)).toBe(0);
    // The writes happened before the snapshot was removed (else this test proves nothing).
    const removed = bg.stderr().split("\n").find((l) => l.includes('"libvirt.snapshot.removed"'));
    expect(Date.parse(JSON.parse(removed!).ts)).toBeGreaterThan(wroteAt);
    expect(domainState(lab, VM)).toBe("running");
    expect(virshLab(lab, ["domid", VM]).trim()).toBe(domId);
    const ids = backups(staging, VM);
    expect(ids).toHaveLength(1);
    id = ids[0]!;
  });

  it("leaves the domain on its base images with no overlay or partial, the guest writes committed into the bases", () => {
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(join(dir, "images"))).toEqual([]);
    expect(partials(staging, VM)).toEqual([]);
    expect(holdsPattern(dom.disks[0]!.path, "qcow2", 0xab, "1M", "4M")).toBe(true);
    expect(holdsPattern(dom.disks[1]!.path, "raw", 0xcd, "0", "2M")).toBe(true);
  });

  it("writes a manifest with the snapshot window, checksums and the domain XML", () => {
    const m = JSON.parse(readFileSync(join(staging, VM, id, "manifest.json"), "utf8"));
    expect(m).toMatchObject({ vm: VM, host: "lab", policy: "nightly", method: "libvirt", snapshot: { kind: "libvirt-external", quiesced: false } });
    expect(m.snapshot.windowMs).toBeGreaterThan(0);
    expect(m.disks.map((d: { name: string; format: string }) => `${d.name}:${d.format}`)).toEqual(["vda:qcow2", "vdb:raw"]);
    expect(m.disks[0].sha256).toBe(dom.disks[0]!.sha256);
    expect(m.disks[1].sha256).toBe(dom.disks[1]!.sha256);
    expect(m.disks[0].bytesRead).toBe(64 << 20);
    expect(m.disks[0].bytesStored).toBeLessThan(m.disks[0].bytesRead);
    expect(m.domainXml).toContain(`<name>${VM}</name>`);
    expect(readFileSync(join(staging, VM, id, "domain.xml"), "utf8")).toContain(dom.disks[0]!.path);
    expect(run.stderr).toContain('"event":"stream.progress"');
  });

  it("restores exactly the content at snapshot time (qemu-img compare), not the writes made during the backup", () => {
    const out = mkdirp(join(dir, "restored"));
    const r = cli(config, ["restore", "--vm", VM, "--id", id, "--to", out]);
    expect(r.status, r.stderr).toBe(0);
    expect(imagesEqual(join(out, "vda.raw"), "raw", pristineVda, "raw").equal).toBe(true);
    expect(holdsPattern(join(out, "vda.raw"), "raw", 0xab, "1M", "4M")).toBe(false);
    const vdb = join(out, "vdb.raw");
    expect(imagesEqual(vdb, "raw", dom.disks[1]!.path, "raw").equal).toBe(false); // the base moved on
    expect(execFileSync("sha256sum", [vdb], { encoding: "utf8" }).split(" ")[0]).toBe(dom.disks[1]!.sha256);
  });

  it("restore refuses to overwrite a disk of the running domain, and an existing file without --force", () => {
    const live = cli(config, ["restore", "--vm", VM, "--id", id, "--disk", "vdb", "--to", dom.disks[1]!.path, "--force"]);
    expect(live.status).toBe(1);
    expect(live.stderr).toMatch(/refusing to write .*running domain bk1/);
    const file = join(dir, "exists.raw");
    writeFileSync(file, "keep me");
    const r = cli(config, ["restore", "--vm", VM, "--id", id, "--disk", "vdb", "--to", file]);
    expect(r.status).toBe(1);
    expect(readFileSync(file, "utf8")).toBe("keep me");
    const missing = join(dir, "no-such-dir", "vdb.raw");
    const m = cli(config, ["restore", "--vm", VM, "--id", id, "--disk", "vdb", "--to", missing]);
    expect(m.status).toBe(1);
    expect(m.stderr).toContain(`the directory ${join(dir, "no-such-dir")} does not exist`);
    expect(existsSync(join(dir, "no-such-dir"))).toBe(false);
  });

  it("list and status show the backup; status writes the Prometheus textfile", () => {
    const l = cli(config, ["list", "--json"]);
    expect(l.status, l.stderr).toBe(0);
    expect(JSON.parse(l.stdout).map((b: { id: string }) => b.id)).toEqual([id]);
    const prom = join(dir, "prom", "kvm_backup.prom");
    const s = cli(config, ["status", "--json", "--textfile", prom]);
    expect(s.status, s.stderr).toBe(0);
    expect(JSON.parse(s.stdout).vms[0]).toMatchObject({ vm: VM, lastSuccessId: id, lastRun: { ok: true } });
    const text = readFileSync(prom, "utf8");
    expect(text).toMatch(new RegExp(`kvm_backup_last_run_success\\{host="lab",vm="${VM}"\\} 1`));
    expect(text).toMatch(/kvm_backup_last_success_age_seconds\{host="lab",vm="bk1"\} \d+/);
  });

  it("verify passes on the backup and detects one flipped byte in a stored image", () => {
    const ok = cli(config, ["verify", "--all"]);
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/bk1\/\S+ vda ok/);
    const file = join(staging, VM, id, "vdb.raw.zst");
    expect(existsSync(file)).toBe(true);
    const fd = openSync(file, "r+");
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, 5000);
    b[0] = b[0]! ^ 0x01;
    writeSync(fd, b, 0, 1, 5000);
    closeSync(fd);
    const bad = cli(config, ["verify", `${VM}/${id}`]);
    expect(bad.status).toBe(1);
    expect(bad.stdout).toMatch(/vdb DAMAGED: the stored file .* is damaged/);
    expect(bad.stdout).toMatch(/vda ok/);
  });
});
