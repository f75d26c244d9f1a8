/**
 * Ship under faults, against the real sshd lab and a real tmpfs, with the bundled CLI as a separate process.
 * Every fault asserts that nothing is lost (staging unchanged, byte for byte; the target holds only verified
 * copies) and that the next run completes the work.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readdirSync, rmSync, statSync, writeSync } from "node:fs";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { descendants, sshdPid, startSshd, stopSshd } from "../lab/sshdLab.ts";
import {
  checkAgainstManifests,
  inventory,
  logEvents,
  makeStagedBackup,
  readStateJson,
  runCli,
  startCli,
  writeHostConfig,
} from "../lab/shipFixtures.ts";
import { mountTmpfsTarget, type TmpfsTarget } from "../lab/tmpfsTarget.ts";

const sshd = inject("sshd");
const VM = "web01";

beforeAll(() => {
  execFileSync("npm", ["run", "--silent", "build"], { cwd: join(import.meta.dirname, "../.."), timeout: 120_000 });
});

interface Env {
  root: string;
  staging: string;
  /** Where the ssh target keeps its files (on this machine, read directly for the assertions). */
  remote: string;
  config: string;
}

function sshEnv(name: string, target: { timeout?: string; hostKey?: string; keyFile?: string } = {}): Env {
  const root = mkdtempSync(`/tmp/kvmb-${name}-`);
  const staging = join(root, "staging");
  mkdirSync(staging);
  const remote = join(sshd.remoteRoot, basename(root));
  mkdirSync(remote);
  const config = writeHostConfig(join(root, "config.json"), {
    host: "lab",
    staging: { path: staging, keepLast: 2 },
    targets: {
      nas: {
        type: "ssh",
        host: sshd.host,
        port: sshd.port,
        user: sshd.user,
        path: remote,
        hostKey: target.hostKey ?? sshd.hostKey,
        keyFile: target.keyFile ?? sshd.clientKeyFile,
        timeout: target.timeout ?? "2min",
      },
    },
    policies: { nightly: { method: "libvirt", schedule: "daily", retention: { keepDaily: 7 }, targets: ["nas"] } },
    vms: { [VM]: { policy: "nightly" } },
  });
  return { root, staging, remote, config };
}

const stagedVm = (e: Env) => join(e.staging, VM);
const remoteVm = (e: Env) => join(e.remote, "lab", VM);

/** Staging is exactly as before and every backup in it matches its manifest. */
function expectStagingIntact(e: Env, before: ReturnType<typeof inventory>): void {
  expect(inventory(stagedVm(e))).toEqual(before);
  expect(checkAgainstManifests(stagedVm(e))).toEqual([]);
}

function incomingFiles(e: Env): { name: string; size: number }[] {
  const dir = remoteVm(e);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((n) => n.startsWith(".incoming-"))
    .flatMap((n) => readdirSync(join(dir, n), { withFileTypes: true }).filter((f) => f.isFile()).map((f) => ({ name: `${n}/${f.name}`, size: statSync(join(dir, n, f.name)).size })));
}

async function waitFor(what: string, cond: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

describe("ship faults (ssh target on the sshd lab)", () => {
  it("target down: ship fails fast, records pending, and the next ship completes", async () => {
    const e = sshEnv("down");
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261126T020000Z", policy: "nightly" });
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    const before = inventory(stagedVm(e));
    expect(Object.keys(before)).toHaveLength(2);

    await stopSshd(sshd);
    let down;
    try {
      down = await runCli(e.config, ["ship"]);
    } finally {
      await startSshd(sshd);
    }
    expect(down.code, down.stderr).toBe(1);
    expect(down.stderr).toMatch(/cannot connect|Connection refused/);
    expect(down.ms).toBeLessThan(30_000);
    expectStagingIntact(e, before);
    expect(Object.keys(inventory(remoteVm(e)))).toHaveLength(0);
    for (const id of Object.keys(before)) {
      const st = readStateJson(join(stagedVm(e), id)).targets.nas!;
      expect(st.shippedAt).toBeUndefined();
      expect(st.pendingSince).toBeTruthy();
      expect(st.lastError?.message).toMatch(/target "nas"/);
    }

    const up = await runCli(e.config, ["ship"]);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/nas web01\/20261127T020000Z shipped/);
    expectStagingIntact(e, before);
    expect(inventory(remoteVm(e))).toEqual(before);
    for (const id of Object.keys(before)) expect(readStateJson(join(stagedVm(e), id)).targets.nas).toMatchObject({ verified: true });
  });

  it("target hangs (sshd session SIGSTOPped mid-transfer): ship gives up within its timeout, the next ship completes", async () => {
    const e = sshEnv("hang", { timeout: "30s" });
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly", size: 200 << 20, compression: "none" });
    const before = inventory(stagedVm(e));

    const master = sshdPid(sshd)!;
    const run = startCli(e.config, ["ship"]);
    // Freeze the server side of the connection once the copy is under way.
    await waitFor("the copy to start", () => incomingFiles(e).some((f) => f.size > 1 << 20), 60_000);
    const frozen = descendants(master);
    expect(frozen.length).toBeGreaterThan(0);
    const stoppedAt = Date.now();
    for (const p of frozen) process.kill(p, "SIGSTOP");
    let res;
    try {
      res = await run.done;
    } finally {
      for (const p of frozen.reverse()) {
        try {
          process.kill(p, "SIGCONT");
        } catch {
          /* ended */
        }
      }
    }
    const detectedMs = Date.now() - stoppedAt;
    console.log(`hang detected ${detectedMs} ms after SIGSTOP (target timeout 30 s, keep-alive 3 s x 3)`);
    expect(res.code, res.stderr).toBe(1);
    expect(detectedMs).toBeLessThan(30_000);
    const failed = logEvents(res.stderr).find((l) => l.event === "ship.failed");
    expect(failed?.msg).toMatch(/target "nas" .*: the connection broke during the transfer \(the server went away, or stopped answering for 9 s\); the partial copy is kept/);
    expectStagingIntact(e, before);
    expect(Object.keys(inventory(remoteVm(e)))).toHaveLength(0);
    expect(readStateJson(join(stagedVm(e), "20261127T020000Z")).targets.nas?.lastError?.message).toBeTruthy();

    const again = await runCli(e.config, ["ship"]);
    expect(again.code, again.stderr).toBe(0);
    expectStagingIntact(e, before);
    expect(inventory(remoteVm(e))).toEqual(before);
    expect(incomingFiles(e)).toEqual([]);
  });

  it("runner killed -9 mid-transfer: the partial copy stays, the next ship resumes and completes", async () => {
    const e = sshEnv("kill");
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly", size: 200 << 20, compression: "none" });
    const before = inventory(stagedVm(e));

    const run = startCli(e.config, ["ship"]);
    await waitFor("the copy to be under way", () => incomingFiles(e).some((f) => f.size > 40 << 20), 90_000);
    process.kill(-run.child.pid!, "SIGKILL"); // the CLI and its children, as systemd stops a unit
    const killed = await run.done;
    expect(killed.signal).toBe("SIGKILL");
    // rsync --partial on the server keeps what arrived, under the file's own name, for the next run.
    await waitFor("the server to keep the partial file", () => incomingFiles(e).some((f) => f.name.endsWith("/vda.raw")), 20_000);
    const partial = incomingFiles(e).find((f) => f.name.endsWith("/vda.raw"))!;
    expect(partial.size).toBeGreaterThan(0);
    expect(partial.size).toBeLessThan(200 << 20);
    expectStagingIntact(e, before);
    expect(Object.keys(inventory(remoteVm(e)))).toHaveLength(0);

    const again = await runCli(e.config, ["ship"]);
    expect(again.code, again.stderr).toBe(0);
    expectStagingIntact(e, before);
    expect(inventory(remoteVm(e))).toEqual(before);
    expect(incomingFiles(e)).toEqual([]);
  });

  it("a file corrupted on the target after shipping is caught by verify --target (and verify-target), and ship repairs it", async () => {
    const e = sshEnv("corrupt");
    const { manifest } = makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly", size: 1 << 20 });
    const before = inventory(stagedVm(e));
    expect((await runCli(e.config, ["ship"])).code).toBe(0);
    expect((await runCli(e.config, ["verify-target", "--target", "nas"])).code).toBe(0);

    // Flip one byte in the middle, keeping size and mtime: only a checksum can tell.
    const file = join(remoteVm(e), "20261127T020000Z", manifest.disks[0]!.file);
    const { mtime, size } = statSync(file);
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.from([0x5a]), 0, 1, Math.floor(size / 2));
    closeSync(fd);
    execFileSync("touch", ["-d", mtime.toISOString(), file]);
    expect(checkAgainstManifests(remoteVm(e))).toEqual(["20261127T020000Z/vda.raw.zst"]);

    const verify = await runCli(e.config, ["verify", "--target", "nas", "--all"]);
    expect(verify.code, verify.stderr).toBe(1);
    expect(verify.stdout).toMatch(/web01\/20261127T020000Z damaged: .*vda\.raw\.zst: SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}/);
    expect(readStateJson(join(stagedVm(e), "20261127T020000Z")).targets.nas?.verified).toBe(false);
    expectStagingIntact(e, before);

    const repair = await runCli(e.config, ["ship"]);
    expect(repair.code, repair.stderr).toBe(0);
    expect(repair.stdout).toMatch(/nas web01\/20261127T020000Z shipped/);
    expect(inventory(remoteVm(e))).toEqual(before);
    expect((await runCli(e.config, ["verify", "--target", "nas", "--all"])).code).toBe(0);
  });

  it("a wrong pinned host key refuses to connect, with a message saying what to do", async () => {
    const keyDir = mkdtempSync("/tmp/kvmb-otherkey-");
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(keyDir, "k")]);
    const otherKey = execFileSync("cat", [join(keyDir, "k.pub")], { encoding: "utf8" }).trim().split(" ").slice(0, 2).join(" ");
    rmSync(keyDir, { recursive: true });
    const e = sshEnv("hostkey", { hostKey: otherKey });
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    const before = inventory(stagedVm(e));

    const res = await runCli(e.config, ["ship"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/refusing to connect: the server's host key does not match the pinned targets\.nas\.hostKey/);
    expect(res.stderr).toMatch(/ssh-keyscan/);
    expect(existsSync(join(e.remote, "lab"))).toBe(false); // not even a directory was created
    expectStagingIntact(e, before);
    expect(readStateJson(join(stagedVm(e), "20261127T020000Z")).targets.nas?.lastError?.message).toMatch(/host key does not match/);
  });

  it("a key file readable by others is refused before connecting", async () => {
    const keyCopy = join(mkdtempSync("/tmp/kvmb-key-"), "id");
    execFileSync("cp", [sshd.clientKeyFile, keyCopy]);
    chmodSync(keyCopy, 0o644);
    const e = sshEnv("keymode", { keyFile: keyCopy });
    makeStagedBackup({ staging: e.staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    const res = await runCli(e.config, ["ship"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/refusing the ssh key file .* mode is 0644.*chmod 600/);
    chmodSync(keyCopy, 0o600);
    expect((await runCli(e.config, ["ship"])).code).toBe(0);
  });
});

describe("ship faults (path target on a small tmpfs)", () => {
  let tmpfs: TmpfsTarget;
  beforeAll(() => {
    tmpfs = mountTmpfsTarget("6m");
  });
  afterAll(() => tmpfs?.stop());

  it("target disk full: ship fails with a clear message, nothing is lost, and after space is freed the next ship completes", async () => {
    const root = mkdtempSync("/tmp/kvmb-full-");
    const staging = join(root, "staging");
    mkdirSync(staging);
    const config = writeHostConfig(join(root, "config.json"), {
      host: "lab",
      staging: { path: staging, keepLast: 2 },
      targets: { mnt: { type: "path", path: tmpfs.mountPoint, timeout: "1min" } },
      policies: { nightly: { method: "lvm", schedule: "daily", retention: { keepLast: 3 }, targets: ["mnt"] } },
      vms: { [VM]: { policy: "nightly" } },
    });
    makeStagedBackup({ staging, vm: VM, id: "20261127T020000Z", policy: "nightly", size: 10 << 20, compression: "none" });
    const before = inventory(join(staging, VM));

    const full = await runCli(config, ["ship"]);
    expect(full.code, full.stderr).toBe(1);
    expect(full.stderr).toMatch(/no space left/);
    expect(inventory(join(staging, VM))).toEqual(before);
    expect(Object.keys(inventory(join(tmpfs.mountPoint, "lab", VM)))).toHaveLength(0);
    expect(readStateJson(join(staging, VM, "20261127T020000Z")).targets.mnt?.lastError?.message).toMatch(/no space left/);

    tmpfs.resize("64m");
    const ok = await runCli(config, ["ship"]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(inventory(join(staging, VM))).toEqual(before);
    expect(inventory(join(tmpfs.mountPoint, "lab", VM))).toEqual(before);
    expect(checkAgainstManifests(join(tmpfs.mountPoint, "lab", VM))).toEqual([]);
  });

  it("a path target that is not mounted is reported, and nothing is written to the empty mount point's parent", async () => {
    const root = mkdtempSync("/tmp/kvmb-nomount-");
    const staging = join(root, "staging");
    mkdirSync(staging);
    const config = writeHostConfig(join(root, "config.json"), {
      host: "lab",
      staging: { path: staging, keepLast: 2 },
      targets: { mnt: { type: "path", path: join(root, "not-mounted"), timeout: "1min" } },
      policies: { nightly: { method: "lvm", schedule: "daily", retention: { keepLast: 3 }, targets: ["mnt"] } },
      vms: { [VM]: { policy: "nightly" } },
    });
    makeStagedBackup({ staging, vm: VM, id: "20261127T020000Z", policy: "nightly" });
    const res = await runCli(config, ["ship"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/not-mounted is not there .*mount the target filesystem/);
    expect(existsSync(join(root, "not-mounted"))).toBe(false);
  });
});
