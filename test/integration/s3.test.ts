/**
 * s3 targets against a real Ceph RADOS Gateway (the ceph lab of the global setup), with the real runner:
 * a backup of a running domain shipped to S3 and restored from S3 alone; kill -9 in the middle of a multipart
 * upload; a gateway that stops answering (SIGSTOP); wrong keys; prune by retention; and no secret in any
 * process's command line while all of that runs.
 */
import { PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { signalRadosgw } from "../lab/cephLab.ts";
import { createTestDomain, domainSources, guestWrite, removeTestDomain, type TestDomain } from "../lab/libvirtLab.ts";
import { keys, labS3, metadata, multipartUploads, newBucket, putText, writeCredentials } from "../lab/s3Objects.ts";
import { idAt, logEvents, makeStagedBackup, readStateJson, runCli, startCli, writeHostConfig } from "../lab/shipFixtures.ts";
import { decideRetention } from "../../runner/retention.ts";
import { idTime } from "../../runner/staging.ts";
import { backups, cliBackground, imagesEqual, mkdirp, overlayFiles } from "./libvirtRunner.ts";

const ceph = inject("ceph");
const lab = inject("libvirt");
const VM = "s3vm";

/** Reads every process's command line every 50 ms while the tests run; any hit is a secret on a command line. */
function watchCmdlines(secrets: string[]): { stop: () => { scans: number; hits: string[] } } {
  const hits = new Set<string>();
  let scans = 0;
  const timer = setInterval(() => {
    scans++;
    for (const pid of readdirSync("/proc")) {
      if (!/^\d+$/.test(pid)) continue;
      let cmd: string;
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      } catch {
        continue;
      }
      for (const s of secrets) if (cmd.includes(s)) hits.add(`${pid}: ${cmd.replace(/\0/g, " ")}`);
    }
  }, 50); // a scan takes ~5 ms; every process of the runner (node, restic) lives far longer than 50 ms
  return {
    stop: () => {
      clearInterval(timer);
      return { scans, hits: [...hits] };
    },
  };
}

describe("s3 target on a Ceph RADOS Gateway", () => {
  let s3: S3Client;
  let bucket: string;
  let root: string;
  let creds: string;
  let dom: TestDomain;
  let pristine: string;
  let watcher: ReturnType<typeof watchCmdlines>;
  const secrets = [ceph.accessKeyId, ceph.secretAccessKey];

  beforeAll(async () => {
    execFileSync("node", [join(import.meta.dirname, "../../runner/build.mjs")], { timeout: 120_000 });
    watcher = watchCmdlines(secrets);
    s3 = labS3(ceph);
    bucket = await newBucket(s3, "kvmb-s3");
    root = mkdirp(join(lab.dir, "t-s3"));
    creds = writeCredentials(join(root, "s3.credentials"), ceph);
    dom = createTestDomain(lab, VM, { dir: join(root, "images"), qcow2Bytes: 8 << 20, rawBytes: 4 << 20 });
    pristine = join(root, "vda.pristine.raw");
    execFileSync("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", dom.disks[0]!.path, pristine]);
  });
  afterAll(() => {
    if (!root) return;
    removeTestDomain(lab, VM);
    try {
      signalRadosgw(ceph, "SIGCONT");
    } catch {
      /* already gone */
    }
    rmSync(root, { recursive: true, force: true });
  });

  function config(
    name: string,
    o: { staging: string; prefix: string; timeout?: string; verify?: "full" | "ranged"; credentialsFile?: string; retention?: Record<string, number>; repositoryPasswordFile?: string },
  ): string {
    return writeHostConfig(join(root, `${name}.json`), {
      host: "lab",
      libvirtUri: lab.uri,
      staging: { path: o.staging, keepLast: 1, minFree: "0" },
      targets: {
        ceph: {
          type: "s3",
          endpoint: ceph.endpoint,
          bucket,
          prefix: o.prefix,
          region: ceph.region,
          credentialsFile: o.credentialsFile ?? creds,
          timeout: o.timeout ?? "2min",
          verify: o.verify ?? "full",
        },
      },
      policies: {
        nightly: {
          method: "libvirt",
          schedule: "daily",
          retention: o.retention ?? { keepLast: 3 },
          targets: ["ceph"],
          ...(o.repositoryPasswordFile ? { format: "repository" as const } : {}),
        },
      },
      vms: { [VM]: { policy: "nightly" } },
      ...(o.repositoryPasswordFile ? { repositoryPasswordFile: o.repositoryPasswordFile } : {}),
    });
  }

  it("ships a backup of a running domain to S3 (manifest last, SHA-256 metadata) and restores it from S3 alone, as it was at snapshot time", async () => {
    const staging = mkdirp(join(root, "staging-run"));
    const cfg = config("run", { staging, prefix: "fleet/a" });
    const bg = cliBackground(cfg, ["run"]);
    await bg.until("libvirt.snapshot.created");
    guestWrite(lab, VM, 0, 0xab, "1M", "2M"); // after the snapshot: must not be in the backup
    const code = await bg.exited;
    expect(code, bg.stderr().slice(-3000)).toBe(0);
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(join(root, "images"))).toEqual([]);
    const [id] = backups(staging, VM);
    expect(readStateJson(join(staging, VM, id!)).targets.ceph).toMatchObject({ verified: true });

    const prefix = `fleet/a/lab/${VM}/${id}/`;
    const objects = await keys(s3, bucket, "fleet/a/");
    expect(Object.keys(objects).sort()).toEqual([`${prefix}domain.xml`, `${prefix}manifest.json`, `${prefix}vda.raw.zst`, `${prefix}vdb.raw.zst`]);
    const manifest = JSON.parse(readFileSync(join(staging, VM, id!, "manifest.json"), "utf8"));
    for (const d of manifest.disks) {
      expect(objects[`${prefix}${d.file}`]).toBe(d.bytesStored);
      expect(await metadata(s3, bucket, `${prefix}${d.file}`)).toEqual({ sha256: d.storedSha256 });
    }
    const events = logEvents(bg.stderr()).map((e) => e.event);
    expect(events).toContain("ship.done");
    expect(await multipartUploads(s3, bucket)).toEqual([]);

    const list = await runCli(cfg, ["list", "--target", "ceph", "--json"]);
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toMatchObject({ target: "ceph", backups: [{ vm: VM, id, policy: "nightly", disks: ["vda", "vdb"] }], incoming: [] });
    for (const verify of ["full", "ranged"] as const) {
      const v = await runCli(config(`verify-${verify}`, { staging, prefix: "fleet/a", verify }), ["verify", "--target", "ceph", "--all"]);
      expect(v.code, v.stderr).toBe(0);
      expect(v.stdout).toBe(`ceph ${VM}/${id} ok\n`);
    }

    // Staging loses the backup: the target alone restores it.
    rmSync(join(staging, VM, id!), { recursive: true });
    const out = mkdirp(join(root, "restored"));
    const r = await runCli(cfg, ["restore", "--vm", VM, "--id", id!, "--from", "ceph", "--to", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/vda -> .*SHA-256 verified/);
    expect(imagesEqual(join(out, "vda.raw"), "raw", pristine, "raw").equal).toBe(true);
    expect(readdirSync(join(staging, ".kvm-backup", "fetch"))).toEqual([]);
  }, 180_000);

  it("format repository: restic copies the backup into the bucket (same credentials file, keys only in restic's environment) and it restores from S3 alone, as it was at snapshot time", async () => {
    const staging = mkdirp(join(root, "staging-repo"));
    const password = join(root, "repository.password");
    writeFileSync(password, `${randomBytes(24).toString("base64")}\n`, { mode: 0o600 });
    const cfg = config("repo", { staging, prefix: "repo", repositoryPasswordFile: password });
    const before = join(root, "vda.before-repo.raw");
    execFileSync("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", dom.disks[0]!.path, before]);
    const bg = cliBackground(cfg, ["run"]);
    await bg.until("libvirt.snapshot.created");
    guestWrite(lab, VM, 0, 0xcd, "4M", "1M");
    const code = await bg.exited;
    expect(code, bg.stderr().slice(-4000)).toBe(0);
    const events = logEvents(bg.stderr());
    const done = events.find((e) => e.event === "ship.done");
    expect(done?.msg, bg.stderr().slice(-3000)).toMatch(/shipped to ceph and verified/);
    const [id] = backups(staging, VM);
    // One restic repository per host in the bucket, next to (never inside) the image format's <host>/<vm>/ keys.
    const repoKeys = Object.keys(await keys(s3, bucket, "repo/"));
    expect(repoKeys).toContain("repo/lab/.repository/config");
    expect(repoKeys.every((k) => k.startsWith("repo/lab/.repository/"))).toBe(true);

    // Staging loses everything, the backup and its repository: the bucket alone restores it.
    rmSync(join(staging, VM), { recursive: true });
    rmSync(join(staging, ".repository"), { recursive: true });
    const out = join(root, "restored-repo.raw");
    const r = await runCli(cfg, ["restore", "--vm", VM, "--id", id!, "--disk", "vda", "--from", "ceph", "--to", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(imagesEqual(out, "raw", before, "raw").equal).toBe(true);
  }, 180_000);

  it("kill -9 during a multipart upload: the next ship aborts the orphan, completes the backup, and no multipart upload is left", async () => {
    const staging = mkdirp(join(root, "staging-kill"));
    const id = "20261128T010000Z";
    // 80 MiB uncompressed: five 16 MiB parts.
    makeStagedBackup({ staging, vm: VM, id, policy: "nightly", size: 80 << 20, compression: "none" });
    const cfg = config("kill", { staging, prefix: "kill" });
    const cli = startCli(cfg, ["ship"]);
    const until = Date.now() + 60_000;
    let parts = 0;
    while (Date.now() < until && parts < 1) {
      parts = (await multipartUploads(s3, bucket)).reduce((s, u) => s + u.parts, 0);
      if (cli.child.exitCode !== null) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    expect(parts, "the upload never got a part in (or finished first)").toBeGreaterThan(0);
    process.kill(-cli.child.pid!, "SIGKILL");
    await cli.done;
    expect((await multipartUploads(s3, bucket)).map((u) => u.key)).toEqual([`kill/lab/${VM}/${id}/vda.raw`]);
    expect(Object.keys(await keys(s3, bucket, "kill/"))).not.toContain(`kill/lab/${VM}/${id}/manifest.json`);

    const list = await runCli(cfg, ["list", "--target", "ceph", "--json"]);
    expect(JSON.parse(list.stdout)).toMatchObject({ backups: [], incoming: [{ vm: VM, id }] });
    const again = await runCli(cfg, ["ship"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe(`ceph ${VM}/${id} shipped\n`);
    expect(await multipartUploads(s3, bucket)).toEqual([]);
    expect(await keys(s3, bucket, "kill/")).toEqual({
      [`kill/lab/${VM}/${id}/manifest.json`]: expect.any(Number),
      [`kill/lab/${VM}/${id}/vda.raw`]: 80 << 20,
    });
  }, 120_000);

  it("verify --target finds an object whose bytes changed behind the runner's back; the next ship uploads the backup again", async () => {
    const staging = mkdirp(join(root, "staging-fix"));
    const id = "20261128T030000Z";
    makeStagedBackup({ staging, vm: VM, id, policy: "nightly", size: 2 << 20, compression: "none" });
    const cfg = config("fix", { staging, prefix: "fix" });
    expect((await runCli(cfg, ["ship"])).code).toBe(0);
    // Same size, same SHA-256 metadata, other bytes: only reading the object back can tell.
    const key = `fix/lab/${VM}/${id}/vda.raw`;
    const meta = await metadata(s3, bucket, key);
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: randomBytes(2 << 20), Metadata: meta }));
    const v = await runCli(cfg, ["verify", "--target", "ceph", "--all"]);
    expect(v.code).toBe(1);
    expect(v.stdout).toMatch(new RegExp(`^ceph ${VM}/${id} damaged: .*vda\\.raw: SHA-256 [0-9a-f]{64}, expected ${meta.sha256}`));
    const ship = await runCli(cfg, ["ship"]);
    expect(ship.code, ship.stderr).toBe(0);
    expect(ship.stdout).toBe(`ceph ${VM}/${id} shipped\n`);
    const again = await runCli(cfg, ["verify", "--target", "ceph", "--all"]);
    expect(again.stdout).toBe(`ceph ${VM}/${id} ok\n`);
  }, 90_000);

  it("a gateway that stops answering (SIGSTOP radosgw) fails the ship step within the target's timeout; the snapshot is long gone", async () => {
    const staging = mkdirp(join(root, "staging-stop"));
    const cfg = config("stop", { staging, prefix: "stop", timeout: "10s" });
    signalRadosgw(ceph, "SIGSTOP");
    let r;
    try {
      r = await runCli(cfg, ["run"], { timeoutMs: 120_000 });
    } finally {
      signalRadosgw(ceph, "SIGCONT");
    }
    expect(r.code, r.stderr.slice(-3000)).toBe(1);
    const events = logEvents(r.stderr);
    const removed = events.find((e) => e.event === "libvirt.snapshot.removed");
    const shipStart = events.findIndex((e) => e.event === "ship.target-unusable" || e.event === "ship.failed");
    expect(removed, r.stderr.slice(-3000)).toBeTruthy();
    expect(shipStart).toBeGreaterThan(events.indexOf(removed!));
    const failed = events[shipStart]!;
    expect(failed.msg).toMatch(/did not finish within 10 s \(the gateway stopped answering/);
    // From the snapshot's removal to the ship failure: the target's 10 s, plus a little.
    expect(Date.parse(failed.ts as string) - Date.parse(removed!.ts as string)).toBeLessThan(25_000);
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    const [id] = backups(staging, VM);
    expect(readStateJson(join(staging, VM, id!)).targets.ceph).toMatchObject({ lastError: { message: expect.stringMatching(/did not finish within 10 s/) } });
    expect(readStateJson(join(staging, VM, id!)).targets.ceph?.shippedAt).toBeUndefined();
  }, 120_000);

  it("wrong keys give a clear error naming the target and the fields to fix, and nothing is shipped", async () => {
    const staging = mkdirp(join(root, "staging-keys"));
    makeStagedBackup({ staging, vm: VM, id: "20261128T020000Z", policy: "nightly" });
    const badSecret = writeCredentials(join(root, "bad-secret"), { accessKeyId: ceph.accessKeyId, secretAccessKey: "not-the-secret-key-0000000000000000000000" });
    const badId = writeCredentials(join(root, "bad-id"), { accessKeyId: "AKIANOSUCHKEY0000000", secretAccessKey: ceph.secretAccessKey });
    for (const [file, code] of [
      [badSecret, "SignatureDoesNotMatch"],
      [badId, "InvalidAccessKeyId"],
    ] as const) {
      const r = await runCli(config(`keys-${code}`, { staging, prefix: "keys", credentialsFile: file }), ["ship"]);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(
        new RegExp(`^ceph ${VM}/20261128T020000Z failed: target "ceph" \\(s3 http://127\\.0\\.0\\.1:\\d+/${bucket}/keys\\): listing bucket ${bucket}: the gateway refused the access keys \\(${code} \\(HTTP 403\\)\\); check targets\\.ceph\\.accessKeyId and secretAccessKey`, "m"),
      );
      expect(r.stdout + r.stderr).not.toContain(ceph.secretAccessKey);
    }
    expect(await keys(s3, bucket, "keys/")).toEqual({});
  }, 60_000);

  it("prune on S3 keeps exactly what the retention function says, removes unfinished copies older than the newest backup", async () => {
    const staging = mkdirp(join(root, "staging-prune"));
    const retention = { keepLast: 2, keepDaily: 3 };
    const ids = ["2026-11-20T01:00:00Z", "2026-11-21T01:00:00Z", "2026-11-21T13:00:00Z", "2026-11-23T01:00:00Z", "2026-11-24T01:00:00Z", "2026-11-24T02:00:00Z"].map((t) => idAt(new Date(t)));
    for (const id of ids) makeStagedBackup({ staging, vm: VM, id, policy: "nightly", size: 64 << 10 });
    const cfg = config("prune", { staging, prefix: "prune", retention });
    const ship = await runCli(cfg, ["ship"]);
    expect(ship.code, ship.stderr).toBe(0);
    // An unfinished copy older than the newest backup (objects without manifest.json), and one newer.
    await putText(s3, bucket, `prune/lab/${VM}/20261119T010000Z/vda.raw.zst`, "partial");
    await putText(s3, bucket, `prune/lab/${VM}/20261125T010000Z/vda.raw.zst`, "partial");

    const r = await runCli(cfg, ["prune"]);
    expect(r.code, r.stderr).toBe(0);
    const expected = decideRetention(ids.map((id) => ({ id, time: idTime(id), protected: false })), retention).filter((d) => d.keep).map((d) => d.id);
    expect(expected.length).toBeLessThan(ids.length);
    const left = new Set(Object.keys(await keys(s3, bucket, `prune/lab/${VM}/`)).map((k) => k.split("/")[3]!));
    expect([...left].sort()).toEqual([...expected, "20261125T010000Z"].sort());
    for (const id of expected) expect(Object.keys(await keys(s3, bucket, `prune/lab/${VM}/${id}/`))).toContain(`prune/lab/${VM}/${id}/manifest.json`);
    const removed = logEvents(r.stderr).filter((e) => e.event === "prune.remove" && (e.msg as string).startsWith("ceph ")).map((e) => /^ceph (\S+?)(?::| \()/.exec(e.msg as string)![1]);
    expect(removed.sort()).toEqual([...ids.filter((id) => !expected.includes(id)).map((id) => `${VM}/${id}`), `${VM}/20261119T010000Z`].sort());
  }, 90_000);

  it("no secret appeared on any process's command line during these tests", () => {
    const { scans, hits } = watcher.stop();
    expect(scans).toBeGreaterThan(100);
    expect(hits).toEqual([]);
  });
});
