/**
 * The whole chain with the real runner: `kvm-backup run` backs up a running libvirt domain (lab, TCG), then
 * ships the backup to the sshd lab and a path target and prunes; `verify --target` and `status` see it there.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestDomain, removeTestDomain } from "../lab/libvirtLab.ts";
import { checkAgainstManifests, inventory, logEvents, readStateJson, runCli, writeHostConfig } from "../lab/shipFixtures.ts";

const sshd = inject("sshd");
const lab = inject("libvirt");
const VM = "shp1";

describe("run ships and prunes what it backed up", () => {
  let root = "";

  beforeAll(() => {
    execFileSync("npm", ["run", "--silent", "build"], { cwd: join(import.meta.dirname, "../.."), timeout: 120_000 });
    root = mkdtempSync(join(lab.dir, "t-ship-"));
    createTestDomain(lab, VM, { dir: join(root, "images"), qcow2Bytes: 8 << 20, rawBytes: 4 << 20 });
  });
  afterAll(() => {
    removeTestDomain(lab, VM);
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("a backup made by `kvm-backup run` reaches both targets verified, and a second run prunes by retention", async () => {
    const staging = join(root, "staging");
    const mnt = join(root, "mnt");
    mkdirSync(staging);
    mkdirSync(mnt);
    const remote = join(sshd.remoteRoot, basename(root));
    mkdirSync(remote);
    const config = writeHostConfig(join(root, "config.json"), {
      host: "lab",
      libvirtUri: lab.uri,
      staging: { path: staging, keepLast: 1, minFree: "0" },
      targets: {
        nas: { type: "ssh", host: sshd.host, port: sshd.port, user: sshd.user, path: remote, hostKey: sshd.hostKey, keyFile: sshd.clientKeyFile, timeout: "2min" },
        mnt: { type: "path", path: mnt, timeout: "2min" },
      },
      policies: { nightly: { method: "libvirt", schedule: "daily", retention: { keepLast: 1 }, targets: ["nas", "mnt"] } },
      vms: { [VM]: { policy: "nightly" } },
    });

    const first = await runCli(config, ["run"], { timeoutMs: 600_000 });
    expect(first.code, first.stderr.slice(-3000)).toBe(0);
    const id = /^shp1 ok (\S+)$/m.exec(first.stdout)?.[1];
    expect(id).toBeTruthy();
    const events = logEvents(first.stderr).map((l) => l.event);
    expect(events.indexOf("ship.done")).toBeGreaterThan(-1);
    const staged = inventory(join(staging, VM));
    expect(Object.keys(staged)).toEqual([id]);
    expect(inventory(join(remote, "lab", VM))).toEqual(staged);
    expect(inventory(join(mnt, "lab", VM))).toEqual(staged);
    expect(checkAgainstManifests(join(remote, "lab", VM))).toEqual([]);
    expect(readStateJson(join(staging, VM, id!)).targets).toMatchObject({ nas: { verified: true }, mnt: { verified: true } });

    const verify = await runCli(config, ["verify", "--target", "nas", "--all"]);
    expect(verify.code, verify.stderr).toBe(0);
    expect(verify.stdout).toBe(`nas ${VM}/${id} ok\n`);
    const status = await runCli(config, ["status", "--no-textfile"]);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/^targets:\n {2}nas \(ssh .*\): up to date; last shipped \d{4}-/m);
    expect(status.stdout).toMatch(/^ {2}mnt \(path .*\): up to date/m);

    // Ids are UTC seconds: make sure the second backup gets a new one.
    await new Promise((r) => setTimeout(r, 1100));
    const second = await runCli(config, ["run"], { timeoutMs: 600_000 });
    expect(second.code, second.stderr.slice(-3000)).toBe(0);
    const id2 = /^shp1 ok (\S+)$/m.exec(second.stdout)?.[1];
    expect(id2).toBeTruthy();
    expect(id2! > id!).toBe(true);
    // keepLast 1 everywhere: only the new backup stays, shipped and verified before the old one went.
    expect(Object.keys(inventory(join(staging, VM)))).toEqual([id2]);
    expect(Object.keys(inventory(join(remote, "lab", VM)))).toEqual([id2]);
    expect(Object.keys(inventory(join(mnt, "lab", VM)))).toEqual([id2]);
    expect(inventory(join(remote, "lab", VM))).toEqual(inventory(join(staging, VM)));
    const pruned = logEvents(second.stderr).filter((l) => l.event === "prune.remove").map((l) => l.msg);
    expect(pruned).toEqual(
      expect.arrayContaining([
        `staging ${VM}/${id}: removed: not selected by any rule (staging keepLast 1)`,
        `nas ${VM}/${id}: removed: not selected by any rule (policy nightly)`,
        `mnt ${VM}/${id}: removed: not selected by any rule (policy nightly)`,
      ]),
    );
  }, 600_000); // two real runs under TCG plus ssh transfers: minutes on a busy 2-core machine
});
