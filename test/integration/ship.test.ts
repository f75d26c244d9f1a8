/**
 * Ship to a real ssh target (sshd lab) and a real path target (tmpfs), with the bundled CLI as its own process.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { loadHostConfig } from "../../runner/config/hostConfig.ts";
import { formatTargetStatus, targetStatus } from "../../runner/ship.ts";
import { freePort } from "../lab/sshdLab.ts";
import { checkAgainstManifests, inventory, logEvents, makeStagedBackup, readStateJson, runCli, writeHostConfig } from "../lab/shipFixtures.ts";
import { mountTmpfsTarget, type TmpfsTarget } from "../lab/tmpfsTarget.ts";

const sshd = inject("sshd");
const VM = "web01";
let tmpfs: TmpfsTarget;

beforeAll(() => {
  execFileSync("npm", ["run", "--silent", "build"], { cwd: join(import.meta.dirname, "../.."), timeout: 120_000 });
  tmpfs = mountTmpfsTarget("32m");
});
afterAll(() => tmpfs?.stop());

function env(name: string, sshPort = sshd.port) {
  const root = mkdtempSync(`/tmp/kvmb-${name}-`);
  const staging = join(root, "staging");
  mkdirSync(staging);
  const remote = join(sshd.remoteRoot, basename(root));
  mkdirSync(remote);
  const mnt = join(tmpfs.mountPoint, basename(root));
  mkdirSync(mnt);
  const config = writeHostConfig(join(root, "config.json"), {
    host: "lab",
    staging: { path: staging, keepLast: 2 },
    targets: {
      nas: { type: "ssh", host: sshd.host, port: sshPort, user: sshd.user, path: remote, hostKey: sshd.hostKey, keyFile: sshd.clientKeyFile, timeout: "1min" },
      mnt: { type: "path", path: mnt, timeout: "1min" },
    },
    policies: {
      nightly: { method: "libvirt", schedule: "daily", retention: { keepDaily: 7 }, targets: ["nas", "mnt"] },
      local: { method: "libvirt", schedule: "daily", retention: { keepLast: 3 }, targets: [] },
    },
    vms: { [VM]: { policy: "nightly" }, db01: { policy: "local" } },
  });
  return { root, staging, remote: join(remote, "lab", VM), mnt: join(mnt, "lab", VM), config };
}

describe("ship", () => {
  it("ships every staged backup to both targets, verified, and records it in state.json; a second ship does nothing", async () => {
    const e = env("ship");
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261126T020000Z", policy: "nightly", disks: ["vda", "vdb"] });
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    makeStagedBackup({ staging: e.staging, vm: "db01", id: "20261127T020000Z", policy: "local" });
    const before = inventory(join(e.staging, VM));

    const first = await runCli(e.config, ["ship"]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout.trim().split("\n").sort()).toEqual([
      "mnt web01/20261126T020000Z shipped",
      "mnt web01/20261127T020000Z shipped",
      "nas web01/20261126T020000Z shipped",
      "nas web01/20261127T020000Z shipped",
    ]);
    expect(inventory(e.remote)).toEqual(before);
    expect(inventory(e.mnt)).toEqual(before);
    expect(checkAgainstManifests(e.remote)).toEqual([]);
    // state.json stays home; no leftovers on the target
    expect(existsSync(join(e.remote, "20261127T020000Z", "state.json"))).toBe(false);
    expect(execFileSync("ls", ["-A", e.remote], { encoding: "utf8" }).trim().split("\n")).toEqual(["20261126T020000Z", "20261127T020000Z"]);
    const st = readStateJson(join(e.staging, VM, "20261127T020000Z"));
    expect(st.targets.nas).toMatchObject({ verified: true });
    expect(st.targets.mnt).toMatchObject({ verified: true });
    expect(st.targets.nas!.shippedAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    // A policy without targets ships nothing.
    expect(existsSync(join(e.root, "staging", "db01", "20261127T020000Z", "state.json"))).toBe(false);

    const second = await runCli(e.config, ["ship"]);
    expect(second.code).toBe(0);
    expect(second.stdout).toBe("");
    expect(logEvents(second.stderr).filter((l) => l.event === "ship.nothing")).toHaveLength(2);

    const status = formatTargetStatus(targetStatus(loadHostConfig(e.config)));
    expect(status).toMatch(/nas \(ssh root@127\.0\.0\.1:\d+\/.*\): up to date; last shipped \d{4}-/);
    expect(status).toMatch(/mnt \(path .*\): up to date/);
  });

  it("a copy that reached its final name but was never recorded (run killed after the rename) is checked, not sent again", async () => {
    const e = env("recorded");
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    expect((await runCli(e.config, ["ship", "--target", "nas"])).code).toBe(0);
    rmSync(join(e.staging, VM, "20261127T020000Z", "state.json"));
    const again = await runCli(e.config, ["ship", "--target", "nas"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe("nas web01/20261127T020000Z already-there\n");
    expect(readStateJson(join(e.staging, VM, "20261127T020000Z")).targets.nas).toMatchObject({ verified: true });
  });

  it("targets are independent: one that is down does not stop the other, and status shows what is pending since when", async () => {
    const closed = await freePort(); // nothing listens there
    const e = env("independent", closed);
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    const res = await runCli(e.config, ["ship"]);
    expect(res.code).toBe(1);
    expect(res.stdout).toMatch(/^nas web01\/20261127T020000Z failed: .*Connection refused/m);
    expect(res.stdout).toMatch(/^mnt web01\/20261127T020000Z shipped$/m);
    expect(inventory(e.mnt)).toEqual(inventory(join(e.staging, VM)));

    const status = formatTargetStatus(targetStatus(loadHostConfig(e.config)));
    expect(status).toMatch(/nas \(ssh .*\): 1 backup pending since \d{4}-\d\d-\d\dT[\d:.]+Z; last shipped never/);
    expect(status).toMatch(/ {4}web01\/20261127T020000Z pending since .*: target "nas" .*Connection refused/);
    expect(status).toMatch(/mnt \(path .*\): up to date/);
    const cli = await runCli(e.config, ["ship-status"]);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toBe(status);
    const st = JSON.parse(readFileSync(join(e.staging, VM, "20261127T020000Z", "state.json"), "utf8"));
    expect(st.targets.nas.lastError.message).toMatch(/Connection refused/);
  });
});
