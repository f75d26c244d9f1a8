/**
 * kill -9 of the runner in the middle of the stream leaves the domain on overlays and a .partial directory; the
 * next `run` (or `recover` alone) commits the overlays back, deletes stale overlays and the partial, and the new
 * backup is valid. A second run while one is going says who holds the lock.
 */
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestDomain, domainSources, domainState, removeTestDomain, type TestDomain } from "../lab/libvirtLab.ts";
import { backups, cli, cliBackground, mkdirp, overlayFiles, partials, writeConfig } from "./libvirtRunner.ts";
import { ensureBundle } from "../lab/bundle.ts";

const lab = inject("libvirt");
const VM = "rc1";

describe("libvirt method: recovery after kill -9", () => {
  let dom: TestDomain;
  let dir: string;
  let images: string;
  let staging: string;
  let config: string;

  async function killDuringStream(): Promise<void> {
    const bg = cliBackground(config, ["run", "--no-ship"]);
    await bg.until("stream.progress");
    expect(domainSources(lab, VM).vda).toContain(".kvm-backup-overlay-");
    bg.child.kill("SIGKILL");
    await bg.exited;
    expect(partials(staging, VM)).toHaveLength(1);
    expect(overlayFiles(images)).toHaveLength(2);
  }

  beforeAll(() => {
    ensureBundle();
    dir = mkdirp(join(lab.dir, "t-recovery"));
    images = join(dir, "images");
    staging = mkdirp(join(dir, "staging"));
    dom = createTestDomain(lab, VM, { dir: images, qcow2Bytes: 64 << 20, rawBytes: 16 << 20 });
    // Slow compression so that the kill lands in the middle of the stream.
    config = writeConfig(lab, join(dir, "config.json"), { staging, vm: VM, compression: { type: "zstd", level: 12, threads: 1 } });
  });
  afterAll(() => removeTestDomain(lab, VM));

  it("a second run while one is going is refused, naming the lock holder", async () => {
    const bg = cliBackground(config, ["run", "--no-ship"]);
    await bg.until("stream.progress");
    const second = cli(config, ["run", "--no-ship"]);
    expect(second.status).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`VM ${VM} .* is locked by pid ${bg.child.pid}`));
    expect(await bg.exited).toBe(0);
    expect(backups(staging, VM)).toHaveLength(1);
  });

  it("after kill -9 mid-stream the next run puts the domain back on its bases, removes overlays and the partial, and backs up", async () => {
    await killDuringStream();
    // An empty leftover overlay of an older crash: libvirt would silently reuse it; recovery deletes it.
    const stale = `${dom.disks[1]!.path}.kvm-backup-overlay-20200101T000000Z`;
    writeFileSync(stale, "");
    const r = cli(config, ["run", "--no-ship"]);
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    const recovered = r.lines.filter((l) => l.event === "libvirt.recover" || l.event === "backup.recover").map((l) => l.msg);
    expect(recovered.filter((m) => /committed disk (vda|vdb) back/.test(m))).toHaveLength(2);
    expect(recovered.some((m) => m.includes(stale))).toBe(true);
    expect(recovered.some((m) => /deleted the unfinished backup directory/.test(m))).toBe(true);
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(images)).toEqual([]);
    expect(existsSync(stale)).toBe(false);
    expect(partials(staging, VM)).toEqual([]);
    expect(domainState(lab, VM)).toBe("running");
    const ids = backups(staging, VM);
    expect(ids).toHaveLength(2);
    const v = cli(config, ["verify", `${VM}/${ids.at(-1)}`]);
    expect(v.status, v.stdout + v.stderr).toBe(0);
  });

  it("`recover` alone repairs a killed run and says what it did; a second recover has nothing to do", async () => {
    await killDuringStream();
    const r = cli(config, ["recover", "--vm", VM]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/rc1: committed disk vda back/);
    expect(r.stdout).toMatch(/rc1: deleted the unfinished backup directory/);
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(images)).toEqual([]);
    expect(partials(staging, VM)).toEqual([]);
    const again = cli(config, ["recover", "--vm", VM]);
    expect(again.stdout).toBe("rc1: nothing to repair\n");
  });
});
