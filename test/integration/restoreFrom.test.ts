/**
 * `restore --from TARGET` and `list --target` on the ssh and path targets (the s3 target has its own tests in
 * s3.test.ts): staging loses a shipped backup, the target alone restores it, checked against its manifest.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { makeStagedBackup, runCli, sha256, writeHostConfig } from "../lab/shipFixtures.ts";

const sshd = inject("sshd");
const lab = inject("libvirt");
const VM = "rf1";
const ID = "20261128T010000Z";

describe("restore --from an ssh or path target", () => {
  let root = "";
  let config = "";
  let staging = "";
  let rawSha = "";

  beforeAll(async () => {
    execFileSync("node", [join(import.meta.dirname, "../../runner/build.mjs")], { timeout: 120_000 });
    root = mkdtempSync("/tmp/kvmb-rf-"); // short: the ssh control socket lives below staging (107-byte limit)
    staging = join(root, "staging");
    const mnt = join(root, "mnt");
    mkdirSync(mnt);
    const remote = join(sshd.remoteRoot, basename(root));
    mkdirSync(remote);
    const b = makeStagedBackup({ staging, vm: VM, id: ID, policy: "p", size: 3 << 20, disks: ["vda", "vdb"] });
    rawSha = b.manifest.disks[0]!.sha256;
    config = writeHostConfig(join(root, "config.json"), {
      host: "lab",
      libvirtUri: lab.uri,
      staging: { path: staging, keepLast: 1, minFree: "0" },
      targets: {
        nas: { type: "ssh", host: sshd.host, port: sshd.port, user: sshd.user, path: remote, hostKey: sshd.hostKey, keyFile: sshd.clientKeyFile, timeout: "1min" },
        mnt: { type: "path", path: mnt, timeout: "1min" },
      },
      policies: { p: { method: "libvirt", schedule: "daily", retention: { keepLast: 2 }, targets: ["nas", "mnt"] } },
      vms: { [VM]: { policy: "p" } },
    });
    const ship = await runCli(config, ["ship"]);
    expect(ship.code, ship.stderr).toBe(0);
    rmSync(join(staging, VM, ID), { recursive: true });
  });
  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it.each(["nas", "mnt"])("from %s: the disk restored from the target alone matches the manifest; the scratch copy is gone", async (target) => {
    const out = join(root, `out-${target}.raw`);
    const r = await runCli(config, ["restore", "--vm", VM, "--id", ID, "--disk", "vda", "--from", target, "--to", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`vda -> ${out} (${3 << 20} bytes, raw, SHA-256 verified)\n`);
    expect(sha256(out)).toBe(rawSha);
    expect(readdirSync(join(staging, ".kvm-backup", "fetch"))).toEqual([]);
  });

  it("list --target shows what the target holds; a backup it does not hold is refused with what it has", async () => {
    const l = await runCli(config, ["list", "--target", "nas"]);
    expect(l.code, l.stderr).toBe(0);
    expect(l.stdout).toMatch(new RegExp(`^${VM}/${ID}  p  vda,vdb  .* on nas\\n$`));
    const missing = await runCli(config, ["restore", "--vm", VM, "--id", "20261127T010000Z", "--from", "mnt", "--to", join(root, "x")]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`target \\"mnt\\" (path ${join(root, "mnt")}) holds no complete backup ${VM}/20261127T010000Z (it holds: ${ID})`);
    expect(existsSync(join(root, "x"))).toBe(false);
  });
});
