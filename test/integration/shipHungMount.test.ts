/**
 * A path target whose network filesystem stops answering: an sshfs mount of the sshd lab, whose server side is
 * then frozen with SIGSTOP. Every access to the mount blocks; the runner must give up within the target's
 * timeout (the mount check answers within 10 s or fails), lose nothing, and complete on the next run.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmdirSync } from "node:fs";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { descendants, sshdPid } from "../lab/sshdLab.ts";
import { checkAgainstManifests, inventory, logEvents, makeStagedBackup, readStateJson, runCli, writeHostConfig } from "../lab/shipFixtures.ts";

const sshd = inject("sshd");
const VM = "web01";
let mountPoint = "";
let frozen: number[] = [];

function thaw(): void {
  for (const p of frozen.reverse()) {
    try {
      process.kill(p, "SIGCONT");
    } catch {
      /* ended */
    }
  }
  frozen = [];
}

beforeAll(() => {
  execFileSync("npm", ["run", "--silent", "build"], { cwd: join(import.meta.dirname, "../.."), timeout: 120_000 });
  if (spawnSync("sh", ["-c", "command -v sshfs"]).status !== 0) throw new Error("sshfs is missing: install the Debian package sshfs (scripts/lab-packages.txt)");
});

afterAll(() => {
  thaw();
  if (mountPoint) {
    if (spawnSync("fusermount", ["-u", mountPoint], { timeout: 15_000 }).status !== 0) spawnSync("fusermount", ["-u", "-z", mountPoint], { timeout: 15_000 });
    rmdirSync(mountPoint);
  }
});

describe("ship to a path target whose network mount hangs", () => {
  it("gives up within the timeout instead of hanging, loses nothing, and the next ship completes", async () => {
    const root = mkdtempSync("/tmp/kvmb-hungmount-");
    const served = join(sshd.remoteRoot, basename(root));
    mkdirSync(served);
    mountPoint = mkdtempSync("/tmp/kvmb-sshfs-");
    execFileSync(
      "sshfs",
      [
        "-o",
        `IdentityFile=${sshd.clientKeyFile},IdentitiesOnly=yes,BatchMode=yes,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,port=${sshd.port},attr_timeout=0,entry_timeout=0,dir_cache=no`,
        `${sshd.user}@${sshd.host}:${served}`,
        mountPoint,
      ],
      { timeout: 30_000 },
    );
    const staging = join(root, "staging");
    mkdirSync(staging);
    const config = writeHostConfig(join(root, "config.json"), {
      host: "lab",
      staging: { path: staging, keepLast: 2 },
      targets: { nfs: { type: "path", path: mountPoint, timeout: "20s" } },
      policies: { nightly: { method: "lvm", schedule: "daily", retention: { keepLast: 3 }, targets: ["nfs"] } },
      vms: { [VM]: { policy: "nightly" } },
    });
    makeStagedBackup({ staging, vm: VM, id: "20261126T020000Z", policy: "nightly" });
    const first = await runCli(config, ["ship"]);
    expect(first.code, first.stderr).toBe(0);

    makeStagedBackup({ staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    const before = inventory(join(staging, VM));
    frozen = descendants(sshdPid(sshd)!);
    expect(frozen.length).toBeGreaterThan(0);
    for (const p of frozen) process.kill(p, "SIGSTOP");
    let hung;
    try {
      hung = await runCli(config, ["ship"], { timeoutMs: 120_000 });
    } finally {
      thaw();
    }
    console.log(`hung mount: ship gave up after ${hung.ms} ms (mount check 5 s + 8 s, target timeout 20 s)`);
    expect(hung.code, hung.stderr).toBe(1);
    // mount check: 5 s (a quarter of the 20 s timeout), then 8 s for the kill to take effect before the runner lets go of the child
    expect(hung.ms).toBeLessThan(20_000);
    const failed = logEvents(hung.stderr).find((l) => l.event === "ship.target-unusable" || l.event === "ship.failed");
    expect(failed?.msg).toMatch(/target "nfs".*(did not answer a stat within 5 s|did not finish within|did not end)/);
    expect(inventory(join(staging, VM))).toEqual(before);
    expect(readStateJson(join(staging, VM, "20261127T020000Z")).targets.nfs?.lastError?.message).toBeTruthy();

    const again = await runCli(config, ["ship"]);
    expect(again.code, again.stderr).toBe(0);
    expect(inventory(join(served, "lab", VM))).toEqual(before);
    expect(checkAgainstManifests(join(served, "lab", VM))).toEqual([]);
  });
});
