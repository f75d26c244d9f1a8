/**
 * s3 targets without a gateway: the schema (stack file and host config), the credentials file (render, parse,
 * refusals that never show a key), the deploy of that file under mocks (a secret input on stdin, nowhere in
 * clear), and the pure parts of the S3 target (part sizes, sampled ranges, error mapping).
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { problemsFromZod } from "../../runner/config/configErrors.ts";
import { hostConfigJson, renderHostConfig } from "../../runner/config/hostConfig.ts";
import { HostConfig, StackConfig, StackFileConfig } from "../../runner/config/schema.ts";
import { requestTimeouts, s3Failure } from "../../runner/targets/s3Client.ts";
import { parseS3Credentials, readS3Credentials, renderS3Credentials } from "../../runner/targets/s3Credentials.ts";
import { partSizeFor, sampleOffsets } from "../../runner/targets/s3Target.ts";
import { TargetError, TargetFullError, TargetSetupError, TargetTimeoutError, TargetUnreachableError } from "../../runner/targets/target.ts";
import { plainStrings } from "../../scripts/preview-offline/capture.ts";
import { captureWithMocks } from "../../scripts/preview-offline/mockCapture.ts";

const work = mkdtempSync(join(tmpdir(), "kvm-backup-s3-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const ACCESS = "AKIA-S3-ACCESS-KEY-ID-SECRET";
const SECRET = "s3/secret+ACCESS+key/SECRET-VALUE";

function stack(target: Record<string, unknown>, secret: (v: string) => unknown = (v) => v): Record<string, unknown> {
  return {
    sshPrivateKey: secret("k"),
    targets: { objects: { type: "s3", endpoint: "https://s3.eu-central-1.amazonaws.com", bucket: "kvm-backups", accessKeyId: secret(ACCESS), secretAccessKey: secret(SECRET), ...target } },
    policies: { p: { method: "libvirt", schedule: "daily", retention: { keepLast: 3 }, targets: ["objects"] } },
    hosts: { kvm01: { address: "kvm01.example", hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK92nViB90vLGfI", staging: { path: "/srv/staging" }, vms: { web: { policy: "p" } } } },
  };
}

function problems(cfg: unknown, schema: typeof StackConfig | typeof StackFileConfig = StackConfig): string[] {
  const r = schema.safeParse(cfg);
  return r.success ? [] : problemsFromZod("f", r.error).map((p) => `${p.path}: ${p.message}`);
}

describe("schema", () => {
  it("an s3 target with only endpoint, bucket and the keys gets the documented defaults", () => {
    const t = StackConfig.parse(stack({})).targets.objects!;
    expect(t).toEqual({
      type: "s3",
      endpoint: "https://s3.eu-central-1.amazonaws.com",
      bucket: "kvm-backups",
      prefix: "",
      region: "us-east-1",
      forcePathStyle: true,
      verify: "full",
      timeout: "2h",
      accessKeyId: ACCESS,
      secretAccessKey: SECRET,
    });
  });

  it("in the stack file both keys must be Pulumi secrets", () => {
    const secure = (v: string) => ({ secure: `v1:${v}` });
    expect(problems(stack({}, secure), StackFileConfig)).toEqual([]);
    const plain = stack({}, secure) as { targets: { objects: Record<string, unknown> } };
    plain.targets.objects.secretAccessKey = SECRET;
    expect(problems(plain, StackFileConfig)).toEqual([
      "targets.objects.secretAccessKey: must be a Pulumi secret ({ secure: \"v1:...\" }); set it with `pulumi config set --secret --path <path> <value>`",
    ]);
  });

  it.each([
    [{ endpoint: "s3.example.com" }, 'targets.objects.endpoint: "s3.example.com" is not a URL; use the S3 API\'s address like "https://s3.eu-central-1.amazonaws.com" or "http://10.0.0.5:7480"'],
    [{ endpoint: "ftp://s3.example.com" }, 'targets.objects.endpoint: "ftp://s3.example.com" must start with https:// (or http:// for a gateway on a trusted network)'],
    [{ endpoint: "https://key:secret@s3.example.com" }, "targets.objects.endpoint: must not contain credentials: the keys are accessKeyId and secretAccessKey (secrets)"],
    [{ endpoint: "https://s3.example.com/kvm-backups" }, 'targets.objects.endpoint: "https://s3.example.com/kvm-backups" must be only scheme, host and port (the bucket goes in "bucket", key prefixes in "prefix")'],
    [{ bucket: "ab" }, 'targets.objects.bucket: "ab" is not a valid bucket name (3-63 characters from a-z 0-9 . -, starting and ending with a letter or digit, not an IP address)'],
    [{ bucket: "Backups_1" }, 'targets.objects.bucket: "Backups_1" is not a valid bucket name (3-63 characters from a-z 0-9 . -, starting and ending with a letter or digit, not an IP address)'],
    [{ bucket: "10.0.0.5" }, 'targets.objects.bucket: "10.0.0.5" is not a valid bucket name (3-63 characters from a-z 0-9 . -, starting and ending with a letter or digit, not an IP address)'],
    [{ prefix: "/kvm" }, /^targets\.objects\.prefix: "\/kvm" must be names joined by "\/"/],
    [{ prefix: "kvm/" }, /^targets\.objects\.prefix: "kvm\/" must be names joined by "\/"/],
    [{ prefix: "a/../b" }, /^targets\.objects\.prefix: "a\/\.\.\/b" must be names joined by "\/"/],
    [{ verify: "sometimes" }, 'targets.objects.verify: "sometimes" is not allowed (allowed: full, ranged)'],
    [{ forcePathStyle: "yes" }, "targets.objects.forcePathStyle: must be true or false"],
    [{ secretKey: "x" }, /^targets\.objects: unknown field "secretKey" \(allowed: type, endpoint, bucket, prefix, region, forcePathStyle, verify, timeout, accessKeyId, secretAccessKey\)$/],
  ])("refuses %j with a message naming the field", (patch, message) => {
    const ps = problems(stack(patch));
    expect(ps).toHaveLength(1);
    if (typeof message === "string") expect(ps[0]).toBe(message);
    else expect(ps[0]).toMatch(message);
  });

  it("the host config names the credentials file and holds no key; the runner's schema accepts it", () => {
    const cfg = StackConfig.parse(stack({ prefix: "fleet/eu", verify: "ranged" }));
    const hc = renderHostConfig(cfg, "kvm01");
    expect(hc.targets.objects).toEqual({
      type: "s3",
      endpoint: "https://s3.eu-central-1.amazonaws.com",
      bucket: "kvm-backups",
      prefix: "fleet/eu",
      region: "us-east-1",
      forcePathStyle: true,
      verify: "ranged",
      timeout: "2h",
      credentialsFile: "/etc/kvm-backup/keys/objects.key",
    });
    const json = hostConfigJson(hc);
    expect(json).not.toContain(ACCESS);
    expect(json).not.toContain(SECRET);
    expect(HostConfig.safeParse(JSON.parse(json)).success).toBe(true);
  });
});

describe("credentials file", () => {
  it("is the AWS shared credentials format, and parses back", () => {
    const text = renderS3Credentials("objects", { accessKeyId: ACCESS, secretAccessKey: SECRET });
    expect(text).toBe(`[default]\naws_access_key_id = ${ACCESS}\naws_secret_access_key = ${SECRET}\n`);
    expect(parseS3Credentials(text)).toEqual({ accessKeyId: ACCESS, secretAccessKey: SECRET });
    expect(parseS3Credentials(`# c\n[other]\naws_access_key_id = X\n[default]\naws_secret_access_key=${SECRET}\n`)).toEqual({ secretAccessKey: SECRET });
  });

  it("refuses a key with whitespace (it would break the file), naming the field but not the value", () => {
    expect(() => renderS3Credentials("objects", { accessKeyId: ACCESS, secretAccessKey: "two words" })).toThrow(
      "targets.objects.secretAccessKey must be one token of printable characters without spaces or line breaks (check the value you set with pulumi config set --secret)",
    );
  });

  it("is read only when its owner alone can read it; every refusal names the file and never a key", () => {
    const file = join(work, "creds");
    writeFileSync(file, renderS3Credentials("objects", { accessKeyId: ACCESS, secretAccessKey: SECRET }), { mode: 0o600 });
    expect(readS3Credentials(file, "objects")).toEqual({ accessKeyId: ACCESS, secretAccessKey: SECRET });
    chmodSync(file, 0o640);
    const errors: Error[] = [];
    for (const attempt of [
      () => readS3Credentials(file, "objects"),
      () => readS3Credentials(join(work, "missing"), "objects"),
      () => {
        writeFileSync(join(work, "half"), `[default]\naws_access_key_id = ${ACCESS}\n`, { mode: 0o600 });
        return readS3Credentials(join(work, "half"), "objects");
      },
    ]) {
      try {
        attempt();
      } catch (e) {
        errors.push(e as Error);
      }
    }
    expect(errors.map((e) => e.message)).toEqual([
      `refusing target "objects": the S3 credentials file ${file}: its mode is 0640, readable by others; run \`chmod 600 ${file}\` (and rotate the keys if someone may have read them)`,
      `target "objects": the S3 credentials file ${join(work, "missing")} cannot be read (ENOENT); it is installed by \`pulumi up\` from targets.objects.accessKeyId and secretAccessKey`,
      `target "objects": the S3 credentials file ${join(work, "half")} has no aws_secret_access_key in its [default] section; reinstall it with \`pulumi up\``,
    ]);
    for (const e of errors) expect(e).toBeInstanceOf(TargetSetupError);
  });
});

describe("deploy (mocked engine)", () => {
  it("installs the credentials file from a secret stdin; neither key appears in clear in any resource", async () => {
    const projectDir = join(work, "project");
    mkdirSync(join(projectDir, "stacks"), { recursive: true });
    writeFileSync(join(projectDir, "package.json"), JSON.stringify({ version: "0.0.1" }));
    const placeholder = { secure: "v1:PLACEHOLDER" };
    const file = stack({ prefix: "fleet" }, () => placeholder) as Record<string, unknown>;
    const yaml = ["config:", ...Object.entries(file).map(([k, v]) => `  kvm-backup:${k}: ${JSON.stringify(v)}`), ""].join("\n");
    writeFileSync(join(projectDir, "stacks", "Pulumi.s3.yaml"), yaml);
    const bundlePath = join(work, "kvm-backup.mjs");
    writeFileSync(bundlePath, "console.log('bundle')\n");
    const { resources } = await captureWithMocks({
      projectDir,
      stack: "s3",
      bundlePath,
      now: new Date("2026-03-01T12:00:00Z"),
      overrides: { sshPrivateKey: "SSH-KEY", targets: { objects: { accessKeyId: ACCESS, secretAccessKey: SECRET } } },
    });
    const key = resources.find((r) => r.name === "kvm01/objects/key");
    expect(key, resources.map((r) => r.name).join(", ")).toBeDefined();
    expect(key!.secretPaths).toEqual(expect.arrayContaining(["stdin"]));
    expect(key!.inputs.stdin).toBe(`[default]\naws_access_key_id = ${ACCESS}\naws_secret_access_key = ${SECRET}\n`);
    expect(String(key!.inputs.create)).toContain("/etc/kvm-backup/keys/objects.key");
    for (const r of resources) {
      const clear = plainStrings(r.wire).join("\n");
      expect(clear, `${r.urn} carries a key in clear`).not.toContain(ACCESS);
      expect(clear, `${r.urn} carries a key in clear`).not.toContain(SECRET);
    }
    const config = resources.find((r) => r.name === "kvm01/config")!;
    expect(JSON.parse(String(config.inputs.stdin)).targets.objects.credentialsFile).toBe("/etc/kvm-backup/keys/objects.key");
  }, 60_000);
});

describe("S3 target internals", () => {
  it("parts are 16 MiB, larger only when a file would need more than 9000 of them", () => {
    expect(partSizeFor(0)).toBe(16 << 20);
    expect(partSizeFor(100 << 30)).toBe(16 << 20);
    expect(partSizeFor(200 * 1024 ** 3)).toBe(23 << 20);
    expect(Math.ceil((5 * 1024 ** 4) / partSizeFor(5 * 1024 ** 4))).toBeLessThanOrEqual(9000);
  });

  it("ranged checks read the first and last MiB and evenly spaced ones between", () => {
    expect(sampleOffsets(1000)).toEqual([0]);
    expect(sampleOffsets(1 << 20)).toEqual([0]);
    const o = sampleOffsets(100 << 20);
    expect(o).toHaveLength(8);
    expect(o[0]).toBe(0);
    expect(o.at(-1)).toBe((100 << 20) - (1 << 20));
    expect(sampleOffsets((1 << 20) + 3)).toEqual([0, 1, 2, 3]);
  });

  it("request timeouts follow the target's budget within 2-60 s", () => {
    expect(requestTimeouts(10_000)).toEqual({ connectMs: 2_500, idleMs: 2_500 });
    expect(requestTimeouts(2 * 3600_000)).toEqual({ connectMs: 10_000, idleMs: 60_000 });
    expect(requestTimeouts(1_000)).toEqual({ connectMs: 2_000, idleMs: 2_000 });
  });

  it("maps the SDK's failures to target errors that say what to do", () => {
    const svc = (name: string, status: number) => Object.assign(new Error(`${name} message`), { name, $metadata: { httpStatusCode: status, attempts: 1 } });
    const net = (code: string) => Object.assign(new Error(`connect ${code}`), { code, $metadata: { attempts: 4 } });
    const cases: Array<[unknown, new (...a: never[]) => TargetError, RegExp]> = [
      [svc("InvalidAccessKeyId", 403), TargetSetupError, /the gateway refused the access keys \(InvalidAccessKeyId \(HTTP 403\)\); check targets\.t\.accessKeyId and secretAccessKey/],
      [svc("SignatureDoesNotMatch", 403), TargetSetupError, /refused the access keys/],
      [svc("AccessDenied", 403), TargetSetupError, /access denied .*grant them read, write, list and delete/],
      [svc("NoSuchBucket", 404), TargetSetupError, /the bucket does not exist .*the runner never creates buckets/],
      [svc("QuotaExceeded", 403), TargetFullError, /refused more data/],
      [Object.assign(new Error("socket timed out"), { name: "TimeoutError", $metadata: { attempts: 4 } }), TargetTimeoutError, /did not answer for 3 s \(TimeoutError after 4 attempts\)/],
      [net("ECONNREFUSED"), TargetUnreachableError, /cannot reach the gateway \(ECONNREFUSED after 4 attempts\)/],
      [svc("InternalError", 500), TargetUnreachableError, /the gateway failed \(InternalError \(HTTP 500\)/],
      [svc("Weird", 400), TargetError, /listing failed: Weird \(HTTP 400\): Weird message/],
    ];
    for (const [e, kind, msg] of cases) {
      const t = s3Failure(e, "t", "s3 https://gw/b", "listing", 3000);
      expect(t).toBeInstanceOf(kind);
      expect(t.message).toMatch(/^target "t" \(s3 https:\/\/gw\/b\): listing/);
      expect(t.message).toMatch(msg);
    }
  });
});

describe("repository format on an s3 target (restic's s3 back-end)", () => {
  it("uses the same endpoint, bucket, prefix and credentials file; the keys only in restic's environment", async () => {
    const { targetRepository } = await import("../../runner/repository/repositories.ts");
    const dir = mkdtempSync(join(work, "repo-"));
    const creds = join(dir, "objects.key");
    writeFileSync(creds, renderS3Credentials("objects", { accessKeyId: ACCESS, secretAccessKey: SECRET }), { mode: 0o600 });
    writeFileSync(join(dir, "repository.password"), "pw\n", { mode: 0o600 });
    const cfg = HostConfig.parse({
      version: 1,
      host: "kvm01",
      staging: { path: join(dir, "staging") },
      repositoryPasswordFile: join(dir, "repository.password"),
      targets: { objects: { type: "s3", endpoint: "http://10.0.0.5:7480", bucket: "kvm-backups", prefix: "fleet/eu", credentialsFile: creds } },
      policies: { p: { method: "libvirt", format: "repository", schedule: "daily", retention: { keepLast: 3 }, targets: ["objects"] } },
      vms: { web: { policy: "p" } },
    });
    const repo = targetRepository(cfg, "objects");
    expect(repo.loc.repo).toBe("s3:http://10.0.0.5:7480/kvm-backups/fleet/eu/kvm01/.repository");
    expect(repo.globalArgs()).toEqual([
      "-r", "s3:http://10.0.0.5:7480/kvm-backups/fleet/eu/kvm01/.repository",
      "-o", "s3.bucket-lookup=path",
      "-o", "s3.region=us-east-1",
      "--cache-dir", join(dir, "staging", ".kvm-backup", "restic-cache"),
    ]);
    expect(repo.env()).toMatchObject({ AWS_ACCESS_KEY_ID: ACCESS, AWS_SECRET_ACCESS_KEY: SECRET, AWS_PROFILE: undefined, AWS_SESSION_TOKEN: undefined, RESTIC_PASSWORD_FILE: join(dir, "repository.password") });
    expect(repo.where).toBe('target "objects" repository (s3 http://10.0.0.5:7480/kvm-backups/fleet/eu/kvm01/.repository)');
    expect(JSON.stringify(repo.loc.options) + repo.loc.repo).not.toMatch(new RegExp(`${ACCESS}|${SECRET.replace(/[+/]/g, ".")}`));
  });

  it("restic's refusals from the gateway say to check the keys, before restic's own 'is there a repository' hint", async () => {
    const { Restic } = await import("../../runner/repository/restic.ts");
    const r = new Restic({ repo: "s3:http://gw/b/h/.repository", options: [], where: 'target "objects" repository (s3 ...)', lockName: "t", target: "objects", timeoutMs: 1000, cacheDir: null }, "/pw", "/staging");
    const denied = r.failure("cat config", { stdout: "", exitCode: 1, stderr: "Fatal: unable to open config file: Stat: Access Denied.\nIs there a repository at the following location?\ns3:http://gw/b/h/.repository\n" });
    expect(denied).toBeInstanceOf(TargetSetupError);
    expect(denied.message).toMatch(/the gateway denied access .*check the target's accessKeyId and secretAccessKey in the stack/);
    const badKey = r.failure("init", { stdout: "", exitCode: 1, stderr: "Fatal: create repository failed: The AWS Access Key Id you provided does not exist in our records.\n" });
    expect(badKey.message).toMatch(/the gateway refused the access keys/);
  });
});
