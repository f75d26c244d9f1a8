/**
 * The repository format's pure parts on recorded restic 0.14 outputs: parsing snapshots, backup summaries and
 * versions, grouping snapshots into backups (a manifest snapshot makes an id a backup), what a target's copy must
 * hold; the password file rules; restic's environment; the waiting shared/exclusive repository lock (real lock
 * files in a temp dir).
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { groupBackups } from "../../runner/repository/backups.ts";
import { manifestProblems } from "../../runner/repository/readRepository.ts";
import { lockRepository, RepositoryBusyError } from "../../runner/repository/repoLock.ts";
import { checkPasswordFile } from "../../runner/repository/repositories.ts";
import { parseBackupSummary, parseResticVersion, parseSnapshots, READ_DATA_SUBSET_RE, resticEnv } from "../../runner/repository/restic.ts";
import { copyProblems } from "../../runner/repository/shipRepository.ts";
import type { RepositoryManifest } from "../../runner/manifest.ts";

// `restic snapshots --json` of restic 0.14.0 (a copy on a target: with "original").
const SNAPSHOTS = JSON.stringify([
  {
    time: "2026-11-29T05:17:35.672298615Z",
    tree: "f304bd1da1b1d830e5df0551cdf05bd0b04599e871f15d98488ce4125de4719f",
    paths: ["/vm1/vda.raw"],
    hostname: "lab",
    username: "root",
    tags: ["kvm-backup", "kind=disk", "vm=vm1", "disk=vda", "id=20261127T020000Z", "policy=nightly"],
    original: "5a42570a69b946a0438a4b5df515f9b028c78d67b409a16772f7bf436c689736",
    id: "1b178fac3651fc7b080677f04c03d587a53e1460d0f3986e722bfe99bd29e573",
    short_id: "1b178fac",
  },
  {
    time: "2026-11-29T05:17:36.0Z",
    tree: "a".repeat(64),
    paths: ["/vm1/manifest.json"],
    hostname: "lab",
    username: "root",
    tags: ["kvm-backup", "kind=manifest", "vm=vm1", "id=20261127T020000Z", "policy=nightly"],
    original: "b".repeat(64),
    id: "c".repeat(64),
    short_id: "cccccccc",
  },
  {
    time: "2026-11-30T02:00:00Z",
    tree: "d".repeat(64),
    paths: ["/vm1/vda.raw"],
    hostname: "lab",
    username: "root",
    tags: ["kvm-backup", "kind=disk", "vm=vm1", "disk=vda", "id=20261130T020000Z", "policy=nightly"],
    id: "e".repeat(64),
    short_id: "eeeeeeee",
  },
  { time: "2026-11-30T02:00:00Z", tree: "f".repeat(64), paths: ["/other"], hostname: "x", tags: ["not-ours"], id: "0".repeat(64), short_id: "00000000" },
]);

const manifestOf = (snapshot: string, tree: string): RepositoryManifest =>
  ({
    format: "repository",
    disks: [{ name: "vda", source: "/x", format: "raw", virtualSize: 1, bytesRead: 1, bytesStored: 1, sha256: "0".repeat(64), repository: { snapshot, tree, path: "vm1/vda.raw" } }],
  }) as unknown as RepositoryManifest;

describe("restic outputs", () => {
  it("parses snapshots with tags and the original a copy carries", () => {
    const s = parseSnapshots(SNAPSHOTS);
    expect(s).toHaveLength(4);
    expect(s[0]).toMatchObject({ id: "1b178fac3651fc7b080677f04c03d587a53e1460d0f3986e722bfe99bd29e573", original: "5a42570a69b946a0438a4b5df515f9b028c78d67b409a16772f7bf436c689736", paths: ["/vm1/vda.raw"] });
    expect(s[2]!.original).toBeUndefined();
    expect(parseSnapshots("null\n")).toEqual([]);
  });

  it("finds the summary of `restic backup --json --quiet` and the version", () => {
    const out =
      '{"message_type":"status","percent_done":0.5}\n' +
      '{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,"dirs_new":1,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":1,"tree_blobs":2,"data_added":3000578,"total_files_processed":1,"total_bytes_processed":3000000,"total_duration":0.328246286,"snapshot_id":"5a42570a"}\n';
    expect(parseBackupSummary(out)).toEqual({ snapshotId: "5a42570a", dataAdded: 3000578, bytesProcessed: 3000000 });
    expect(parseBackupSummary('{"message_type":"status"}\n')).toBeNull();
    expect(parseResticVersion("restic 0.14.0 compiled with go1.19.8 on linux/amd64\n")).toBe("0.14.0");
    expect(parseResticVersion("command not found")).toBeNull();
  });

  it("--read-data-subset takes restic's forms only", () => {
    for (const ok of ["5%", "0.5%", "1/10", "2G", "500M", "100"]) expect(READ_DATA_SUBSET_RE.test(ok), ok).toBe(true);
    for (const bad of ["5 %", "a/b", "-1", "1/", "5%;rm", ""]) expect(READ_DATA_SUBSET_RE.test(bad), bad).toBe(false);
  });

  it("restic's environment carries the password file, never a password or an operator's repository", () => {
    const env = resticEnv("/etc/kvm-backup/keys/repository.password", "/from");
    expect(env.RESTIC_PASSWORD_FILE).toBe("/etc/kvm-backup/keys/repository.password");
    expect(env.RESTIC_FROM_PASSWORD_FILE).toBe("/from");
    for (const k of ["RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND", "RESTIC_REPOSITORY", "RESTIC_FROM_PASSWORD", "RESTIC_FROM_PASSWORD_COMMAND"]) {
      expect(k in env && env[k] === undefined, k).toBe(true);
    }
  });
});

describe("backups in a repository", () => {
  it("groups by id; only an id with its manifest snapshot is a backup; foreign snapshots are ignored", () => {
    const g = groupBackups(parseSnapshots(SNAPSHOTS), "vm1");
    expect(g.map((b) => [b.id, b.manifest !== undefined, [...b.disks.keys()], b.all.length])).toEqual([
      ["20261127T020000Z", true, ["vda"], 2],
      ["20261130T020000Z", false, ["vda"], 1],
    ]);
    expect(groupBackups(parseSnapshots(SNAPSHOTS), "vm2")).toEqual([]);
  });

  it("a copy must carry every staging snapshot as its original, with the same tree", () => {
    const target = groupBackups(parseSnapshots(SNAPSHOTS), "vm1")[0]!;
    const source = {
      ...target,
      all: [
        { ...target.all[0]!, id: "5a42570a69b946a0438a4b5df515f9b028c78d67b409a16772f7bf436c689736", original: undefined },
        { ...target.all[1]!, id: "b".repeat(64), original: undefined },
      ],
    };
    source.disks = new Map([["vda", source.all[0]!]]);
    const m = manifestOf("5a42570a69b946a0438a4b5df515f9b028c78d67b409a16772f7bf436c689736", target.all[0]!.tree);
    expect(copyProblems(m, source, target)).toEqual([]);
    expect(copyProblems(m, source, undefined)).toHaveLength(2);
    const otherTree = { ...target, all: [{ ...target.all[0]!, tree: "9".repeat(64) }, target.all[1]!] };
    expect(copyProblems(m, source, otherTree)[0]).toMatch(/has tree 99999999 on the target, f304bd1d in staging/);
    expect(manifestProblems(target, m)).toEqual([]);
    expect(manifestProblems(target, manifestOf("7".repeat(64), target.all[0]!.tree))[0]).toMatch(/is not the manifest's/);
  });
});

describe("password file and repository lock", () => {
  const dir = mkdtempSync(join(tmpdir(), "kvmb-repo-unit-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("the password file must exist, hold something and be root-only; the message says how to fix it", () => {
    const f = join(dir, "pw");
    expect(() => checkPasswordFile(undefined)).toThrow(/no repositoryPasswordFile.*repositoryPassword/);
    expect(() => checkPasswordFile(f)).toThrow(/cannot read the repository password file .*ENOENT.*pulumi up/);
    writeFileSync(f, "", { mode: 0o600 });
    expect(() => checkPasswordFile(f)).toThrow(/is empty/);
    writeFileSync(f, "secret\n");
    chmodSync(f, 0o640);
    expect(() => checkPasswordFile(f)).toThrow(/mode is 0640, readable by others; run `chmod 600/);
    chmodSync(f, 0o600);
    expect(checkPasswordFile(f)).toBe(f);
  });

  it("shared holders coexist; exclusive waits for them and then excludes new shared holders", async () => {
    const a = await lockRepository(dir, "staging", "shared", "a", 1000);
    const b = await lockRepository(dir, "staging", "shared", "b", 1000);
    await expect(lockRepository(dir, "staging", "exclusive", "prune", 600)).rejects.toThrow(RepositoryBusyError);
    a.release();
    const x = lockRepository(dir, "staging", "exclusive", "prune", 5000);
    setTimeout(() => b.release(), 300);
    const ex = await x;
    await expect(lockRepository(dir, "staging", "shared", "backup", 600)).rejects.toThrow(/stayed busy for 1 s .*for prune or check/);
    ex.release();
    (await lockRepository(dir, "staging", "shared", "backup", 600)).release();
    // Other repositories are independent.
    const t = await lockRepository(dir, "target-nas", "exclusive", "check", 600);
    (await lockRepository(dir, "staging", "exclusive", "prune", 600)).release();
    t.release();
  });
});
