/**
 * The deploy of the repository format's password (lab stack under pulumi.runtime.setMocks, its policy switched to
 * format: repository): installed as a root-only file from stdin, a secret on the wire and nowhere in clear text;
 * the host config names the file, never the password; a stack without the password is refused before any resource.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderRepositoryPasswordInstall } from "../../components/render/scripts.ts";
import { hostLayout } from "../../components/render/layout.ts";
import { StackConfig } from "../../runner/config/schema.ts";
import { type CapturedResource, plainStrings } from "../../scripts/preview-offline/capture.ts";
import { captureWithMocks } from "../../scripts/preview-offline/mockCapture.ts";

const projectDir = process.cwd();
const PASSWORD = "SECRET-REPOSITORY-PASSWORD-lab";
const OVERRIDES = {
  hosts: { lab: { privateKey: "SECRET-HOST-KEY-lab" } },
  targets: { "lab-ssh": { privateKey: "SECRET-TARGET-KEY-lab-ssh" } },
  policies: { "lab-nightly": { format: "repository", repository: { ingest: "staged" } } },
  repositoryPassword: PASSWORD,
};

describe("deploy of the repository password (format: repository)", () => {
  let work = "";
  let resources: CapturedResource[] = [];

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "kvm-backup-repo-deploy-"));
    const bundlePath = join(work, "kvm-backup.mjs");
    writeFileSync(bundlePath, "#!/usr/bin/env node\n");
    resources = (await captureWithMocks({ projectDir, stack: "lab", bundlePath, now: new Date("2026-03-01T12:00:00Z"), overrides: OVERRIDES })).resources;
  }, 60_000);
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it("installs the password from stdin as a secret, before the config, and nowhere in clear text", () => {
    const pw = resources.find((r) => r.name === "lab/repository-password");
    expect(pw, resources.map((r) => r.name).join(", ")).toBeDefined();
    expect(pw!.secretPaths).toEqual(expect.arrayContaining(["stdin"]));
    expect(pw!.inputs.stdin).toBe(PASSWORD);
    expect(String(pw!.inputs.create)).toBe(renderRepositoryPasswordInstall({ hostName: "lab", layout: hostLayout("/") }));
    expect(String(pw!.inputs.create)).toContain("/etc/kvm-backup/keys/repository.password");
    const config = resources.find((r) => r.name === "lab/config")!;
    expect(config.dependencies).toContain(pw!.urn);
    for (const r of resources) expect(plainStrings(r.wire).join("\n"), `${r.urn} carries the password in clear`).not.toContain(PASSWORD);
  });

  it("the host config names the password file and holds no password; the policy's format is in it", () => {
    const config = resources.find((r) => r.name === "lab/config")!;
    const json = JSON.parse(String(config.inputs.stdin));
    expect(json.repositoryPasswordFile).toBe("/etc/kvm-backup/keys/repository.password");
    expect(json.policies["lab-nightly"]).toMatchObject({ format: "repository", repository: { ingest: "staged", compression: "auto" } });
    expect(String(config.inputs.stdin)).not.toContain(PASSWORD);
  });

  it("the install script is root-only (umask 077, 0600) and prints no secret", () => {
    const script = renderRepositoryPasswordInstall({ hostName: "lab" });
    expect(script).toContain("umask 077");
    expect(script).toContain("chmod 0600");
    expect(script).toMatch(/echo 'repository password installed'/);
  });

  it("a stack with a repository policy but no repositoryPassword is refused, naming the field", () => {
    const r = StackConfig.safeParse({
      targets: {},
      sshPrivateKey: "k",
      policies: { p: { method: "libvirt", schedule: "daily", retention: { keepLast: 1 }, format: "repository" } },
      hosts: { h: { address: "10.0.0.1", hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB", staging: { path: "/srv/staging" }, vms: { v: { policy: "p" } } } },
    });
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => `${i.path.join(".")}: ${i.message}`)).toContainEqual(expect.stringMatching(/^repositoryPassword: policies p use format: repository, which needs repositoryPassword/));
  });
});
