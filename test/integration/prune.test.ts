/**
 * Prune with the bundled CLI against real directories (a path target) and the sshd lab: every decision explained,
 * unshipped backups never removed, protected and locked ones kept, a target's newest verified backup kept,
 * leftovers cleaned, and a second prune changes nothing.
 */
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from "node:fs";
import { basename, join } from "node:path";
import { beforeAll, describe, expect, inject, it } from "vitest";
import { acquireLock } from "../../runner/lock.ts";
import { freePort } from "../lab/sshdLab.ts";
import { checkAgainstManifests, inventory, logEvents, makeStagedBackup, runCli, writeHostConfig } from "../lab/shipFixtures.ts";

const sshd = inject("sshd");
const VM = "web01";
const UTC = { env: { TZ: "UTC" } };

beforeAll(() => {
  execFileSync("npm", ["run", "--silent", "build"], { cwd: join(import.meta.dirname, "../.."), timeout: 120_000 });
});

const IDS = ["20261101T020000Z", "20261108T020000Z", "20261120T020000Z", "20261125T020000Z", "20261126T020000Z", "20261126T140000Z", "20261127T020000Z"];

function env(name: string, opts: { targets?: string[]; retention?: Record<string, number>; sshPort?: number; ids?: string[] } = {}) {
  const root = mkdtempSync(`/tmp/kvmb-${name}-`);
  const staging = join(root, "staging");
  const mnt = join(root, "mnt");
  mkdirSync(staging);
  mkdirSync(mnt);
  const remote = join(sshd.remoteRoot, basename(root));
  mkdirSync(remote);
  const config = writeHostConfig(join(root, "config.json"), {
    host: "lab",
    staging: { path: staging, keepLast: 2 },
    targets: {
      mnt: { type: "path", path: mnt, timeout: "1min" },
      nas: { type: "ssh", host: sshd.host, port: opts.sshPort ?? sshd.port, user: sshd.user, path: remote, hostKey: sshd.hostKey, keyFile: sshd.clientKeyFile, timeout: "1min" },
    },
    policies: { nightly: { method: "libvirt", schedule: "daily", retention: opts.retention ?? { keepDaily: 3, keepWeekly: 2 }, targets: opts.targets ?? ["mnt"] } },
    vms: { [VM]: { policy: "nightly" } },
  });
  for (const id of opts.ids ?? IDS) makeStagedBackup({ staging, vm: VM, id, policy: "nightly", size: 64 * 1024 });
  return { root, staging, config, stagedVm: join(staging, VM), mntVm: join(mnt, "lab", VM), remoteVm: join(remote, "lab", VM) };
}

/** "where vm/id keep|remove reason" lines of prune's stdout, as [where, id, action, reason]. */
function decisions(stdout: string): [string, string, string, string][] {
  return stdout
    .split("\n")
    .map((l) => /^(\S+)\s+web01\/(\S+(?: \(\w+\))?)\s+(keep|remove)\s+(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => [m[1]!, m[2]!.trim(), m[3]!, m[4]!]);
}

describe("prune", () => {
  it("--dry-run explains every decision with its retention reason and removes nothing; prune then does exactly that; twice changes nothing", async () => {
    const e = env("dry");
    expect((await runCli(e.config, ["ship"])).code).toBe(0);
    expect((await runCli(e.config, ["protect", "20261101T020000Z"])).stdout).toBe("web01/20261101T020000Z: protected\n");
    const stagedBefore = inventory(e.stagedVm);
    const targetBefore = inventory(e.mntVm);
    expect(Object.keys(targetBefore)).toEqual(IDS);

    const dry = await runCli(e.config, ["prune", "--dry-run"], UTC);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout.split("\n")[0]).toBe("dry run: nothing is removed");
    expect(decisions(dry.stdout)).toEqual([
      ["staging", "20261127T020000Z", "keep", "kept: last 1 (staging keepLast 2)"],
      ["staging", "20261126T140000Z", "keep", "kept: last 2 (staging keepLast 2)"],
      ["staging", "20261126T020000Z", "remove", "removed: not selected by any rule (staging keepLast 2)"],
      ["staging", "20261125T020000Z", "remove", "removed: not selected by any rule (staging keepLast 2)"],
      ["staging", "20261120T020000Z", "remove", "removed: not selected by any rule (staging keepLast 2)"],
      ["staging", "20261108T020000Z", "remove", "removed: not selected by any rule (staging keepLast 2)"],
      ["staging", "20261101T020000Z", "keep", "kept: protected (staging keepLast 2)"],
      ["mnt", "20261127T020000Z", "keep", "kept: daily 2026-11-27 (policy nightly)"],
      ["mnt", "20261126T140000Z", "keep", "kept: daily 2026-11-26 (policy nightly)"],
      ["mnt", "20261126T020000Z", "remove", "removed: daily 2026-11-26 already kept by a newer backup (policy nightly)"],
      ["mnt", "20261125T020000Z", "keep", "kept: daily 2026-11-25 (policy nightly)"],
      ["mnt", "20261120T020000Z", "keep", "kept: weekly 2026-W47 (policy nightly)"],
      ["mnt", "20261108T020000Z", "keep", "kept: weekly 2026-W45 (policy nightly)"],
      ["mnt", "20261101T020000Z", "keep", "kept: protected (policy nightly)"],
    ]);
    expect(inventory(e.stagedVm)).toEqual(stagedBefore);
    expect(inventory(e.mntVm)).toEqual(targetBefore);

    const real = await runCli(e.config, ["prune"], UTC);
    expect(real.code, real.stderr).toBe(0);
    expect(decisions(real.stdout)).toEqual(decisions(dry.stdout));
    expect(Object.keys(inventory(e.stagedVm))).toEqual(["20261101T020000Z", "20261126T140000Z", "20261127T020000Z"]);
    expect(Object.keys(inventory(e.mntVm))).toEqual(["20261101T020000Z", "20261108T020000Z", "20261120T020000Z", "20261125T020000Z", "20261126T140000Z", "20261127T020000Z"]);
    // What is left is byte for byte what was there.
    for (const [id, files] of Object.entries(inventory(e.mntVm))) expect(files).toEqual(targetBefore[id]);
    expect(checkAgainstManifests(e.stagedVm)).toEqual([]);
    expect(readdirSync(e.stagedVm).filter((n) => n.startsWith("."))).toEqual([]);

    const stagedAfter = inventory(e.stagedVm);
    const targetAfter = inventory(e.mntVm);
    const twice = await runCli(e.config, ["prune"], UTC);
    expect(twice.code).toBe(0);
    expect(decisions(twice.stdout).filter(([, , action]) => action === "remove")).toEqual([]);
    expect(inventory(e.stagedVm)).toEqual(stagedAfter);
    expect(inventory(e.mntVm)).toEqual(targetAfter);
  });

  it("never removes a backup that is not yet shipped to every target of its policy, even when the other target is down", async () => {
    const closed = await freePort();
    const e = env("unshipped", { targets: ["mnt", "nas"], sshPort: closed });
    const ship = await runCli(e.config, ["ship"]);
    expect(ship.code).toBe(1); // nas is down; mnt got everything
    const before = inventory(e.stagedVm);
    const res = await runCli(e.config, ["prune"], UTC);
    expect(res.code).toBe(1); // nas could not be pruned
    expect(res.stdout).toMatch(/^nas\s+NOT PRUNED: target "nas" .*Connection refused/m);
    const staging = decisions(res.stdout).filter(([where]) => where === "staging");
    expect(staging).toHaveLength(IDS.length);
    for (const [, id, action, reason] of staging) {
      expect(action, id).toBe("keep");
      if (!["20261127T020000Z", "20261126T140000Z"].includes(id)) expect(reason).toMatch(/^kept: not yet shipped to nas \(removed: not selected by any rule/);
    }
    expect(inventory(e.stagedVm)).toEqual(before);
  });

  it("keeps a backup that is locked by a ship or verify in progress", async () => {
    const e = env("locked", { retention: { keepLast: 1 } });
    expect((await runCli(e.config, ["ship"])).code).toBe(0);
    const lock = acquireLock(e.staging, `backup-${VM}-20261120T020000Z`, "test holding the backup");
    try {
      const res = await runCli(e.config, ["prune"], UTC);
      expect(res.code, res.stderr).toBe(0);
      const locked = decisions(res.stdout).filter(([, id]) => id === "20261120T020000Z");
      expect(locked).toHaveLength(2);
      for (const [, , action, reason] of locked) {
        expect(action).toBe("keep");
        expect(reason).toMatch(/^kept for now: backup web01\/20261120T020000Z \(prune\) is locked by pid \d+/);
      }
    } finally {
      lock.release();
    }
    expect(Object.keys(inventory(e.mntVm))).toEqual(["20261120T020000Z", "20261127T020000Z"]);
    expect(Object.keys(inventory(e.stagedVm))).toEqual(["20261120T020000Z", "20261126T140000Z", "20261127T020000Z"]);
  });

  it("a target never loses its newest verified backup: a damaged newest one does not count", async () => {
    const ids = ["20261125T020000Z", "20261126T140000Z", "20261127T020000Z"];
    const e = env("newest", { targets: ["nas"], retention: { keepLast: 1 }, ids });
    // Ship everything, then damage the newest copy on the target and let verify-target find it.
    expect((await runCli(e.config, ["ship"])).code).toBe(0);
    const newest = join(e.remoteVm, "20261127T020000Z", "vda.raw.zst");
    const fd = openSync(newest, "r+");
    writeSync(fd, Buffer.from("x"), 0, 1, Math.floor(statSync(newest).size / 2));
    closeSync(fd);
    expect((await runCli(e.config, ["verify-target", "--target", "nas", "--id", "20261127T020000Z"])).code).toBe(1);

    const res = await runCli(e.config, ["prune", "--target", "nas"], UTC);
    expect(res.code, res.stderr).toBe(0);
    const onNas = decisions(res.stdout);
    expect(onNas.slice(0, 2)).toEqual([
      ["nas", "20261127T020000Z", "keep", "kept: last 1 (policy nightly)"],
      ["nas", "20261126T140000Z", "keep", "kept: newest verified backup on this target (removed: not selected by any rule (policy nightly))"],
    ]);
    expect(onNas.slice(2)).toEqual([["nas", "20261125T020000Z", "remove", "removed: not selected by any rule (policy nightly)"]]);
    expect(Object.keys(inventory(e.remoteVm))).toEqual(["20261126T140000Z", "20261127T020000Z"]);
    // --target prunes only that target: staging is untouched.
    expect(Object.keys(inventory(e.stagedVm))).toEqual(ids);
  });

  it("removes leftovers (old partials, trash) and never touches a directory without manifest.json", async () => {
    const e = env("leftovers", { retention: { keepLast: 10 } });
    expect((await runCli(e.config, ["ship"])).code).toBe(0);
    mkdirSync(join(e.stagedVm, "20261110T020000Z.partial"));
    writeFileSync(join(e.stagedVm, "20261110T020000Z.partial", "vda.raw.zst"), "half");
    mkdirSync(join(e.stagedVm, "20261130T020000Z.partial")); // newer than the newest backup: a run in progress
    mkdirSync(join(e.stagedVm, ".trash-20261001T020000Z"));
    mkdirSync(join(e.mntVm, ".incoming-20261110T020000Z"));
    mkdirSync(join(e.mntVm, ".incoming-20261130T020000Z"));
    mkdirSync(join(e.mntVm, ".trash-20261002T020000Z"));
    mkdirSync(join(e.mntVm, "20261111T020000Z")); // no manifest: not a backup
    writeFileSync(join(e.mntVm, "20261111T020000Z", "vda.raw.zst"), "who knows");

    const dry = await runCli(e.config, ["prune", "--dry-run"], UTC);
    expect(dry.stdout).toMatch(/^staging\s+web01\/20261110T020000Z \(partial\)\s+remove removed: unfinished backup older than the newest complete backup 20261127T020000Z$/m);
    expect(dry.stdout).toMatch(/^mnt\s+web01\/20261110T020000Z \(partial\)\s+remove removed: unfinished copy older than the newest complete backup 20261127T020000Z$/m);
    expect(dry.stdout).toMatch(/^staging\s+web01\/20261001T020000Z \(trash\)\s+remove removed: left over from an interrupted removal$/m);
    expect(existsSync(join(e.stagedVm, "20261110T020000Z.partial"))).toBe(true);

    const res = await runCli(e.config, ["prune"], UTC);
    expect(res.code, res.stderr).toBe(0);
    expect(readdirSync(e.stagedVm).filter((n) => !IDS.includes(n))).toEqual(["20261130T020000Z.partial"]);
    expect(readdirSync(e.mntVm).filter((n) => !IDS.includes(n)).sort()).toEqual([".incoming-20261130T020000Z", "20261111T020000Z"]);
    expect(Object.keys(inventory(e.mntVm))).toEqual(IDS);
  });

  it("protect works for a backup that only a target still holds, and --remove lifts it", async () => {
    const e = env("protect", { retention: { keepLast: 1 } });
    expect((await runCli(e.config, ["ship"])).code).toBe(0);
    expect((await runCli(e.config, ["prune", "--staging-only"], UTC)).code).toBe(0);
    expect(existsSync(join(e.stagedVm, "20261108T020000Z"))).toBe(false);

    const ambiguous = await runCli(e.config, ["protect", "20261108T020000Z"]);
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toMatch(/no backup 20261108T020000Z in staging; if it is only on a target, name its VM/);
    const on = await runCli(e.config, ["protect", "--vm", VM, "20261108T020000Z"]);
    expect(on.code, on.stderr).toBe(0);
    expect(on.stdout).toBe("web01/20261108T020000Z: protected (not in staging; applies on the targets that hold it)\n");

    const kept = await runCli(e.config, ["prune", "--target", "mnt"], UTC);
    expect(decisions(kept.stdout).find(([, id]) => id === "20261108T020000Z")).toEqual(["mnt", "20261108T020000Z", "keep", "kept: protected (policy nightly)"]);
    expect(Object.keys(inventory(e.mntVm))).toEqual(["20261108T020000Z", "20261127T020000Z"]);

    expect((await runCli(e.config, ["protect", "--vm", VM, "--remove", "20261108T020000Z"])).stdout).toBe(
      "web01/20261108T020000Z: no longer protected (not in staging; applies on the targets that hold it)\n",
    );
    const gone = await runCli(e.config, ["prune", "--target", "mnt"], UTC);
    expect(decisions(gone.stdout).find(([, id]) => id === "20261108T020000Z")).toEqual(["mnt", "20261108T020000Z", "remove", "removed: not selected by any rule (policy nightly)"]);
    expect(Object.keys(inventory(e.mntVm))).toEqual(["20261127T020000Z"]);
  });

  it("refuses a bad id or VM for protect with a usage error", async () => {
    const e = env("protectbad");
    const bad = await runCli(e.config, ["protect", "latest"]);
    expect(bad.code).toBe(2);
    expect(logEvents(bad.stderr).map((l) => l.msg)).toContainEqual(expect.stringMatching(/^"latest" is not a backup id/));
    const vm = await runCli(e.config, ["protect", "--vm", "nope", "20261127T020000Z"]);
    expect(vm.code).toBe(2);
    expect(logEvents(vm.stderr).map((l) => l.msg)).toContainEqual(expect.stringMatching(/^unknown VM "nope"/));
  });
});
