/**
 * `npm run preview:offline -- lab`: index.ts through the SDK's real entry point (cmd/run) against the
 * in-process engine. Checks the printed tree, the captured registrations and the failure paths.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { creationOrder, duplicateUrns } from "../../scripts/preview-offline/capture.ts";
import { capturePreview, type PreviewResult } from "../../scripts/preview-offline/preview.ts";
import { PLACEHOLDER_PREFIX } from "../../scripts/preview-offline/stackConfig.ts";

const projectDir = process.cwd();
let work: string;
let bundle: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "kvm-backup-preview-"));
  bundle = join(work, "kvm-backup.mjs");
  writeFileSync(bundle, "#!/usr/bin/env node\n// preview test bundle\n");
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

const LAB_URNS = [
  "urn:pulumi:lab::kvm-backup::pulumi:pulumi:Stack::kvm-backup-lab",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost::lab",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$command:remote:Command::lab/release",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$command:remote:CopyToRemote::lab/bundle",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$command:remote:Command::lab/preflight",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$command:remote:Command::lab/runner",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$command:remote:Command::lab/config",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$kvm-backup:index:StagingDisk::lab/staging",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$kvm-backup:index:StagingDisk$command:remote:Command::lab/staging/dir",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$kvm-backup:index:RemoteTarget::lab/lab-ssh",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$kvm-backup:index:RemoteTarget$command:remote:Command::lab/lab-ssh/key",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$kvm-backup:index:BackupPolicy::lab/lab-nightly",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$kvm-backup:index:BackupPolicy$kvm-backup:index:ScheduledJob::lab/lab-nightly",
  "urn:pulumi:lab::kvm-backup::kvm-backup:index:KvmHost$kvm-backup:index:BackupPolicy$kvm-backup:index:ScheduledJob$command:remote:Command::lab/lab-nightly/units",
  "urn:pulumi:lab::kvm-backup::pulumi:providers:command::default_1_2_1",
];

describe("npm run preview:offline -- lab", () => {
  it("prints the resource tree and the outputs and exits 0", () => {
    const r = spawnSync("npm", ["run", "--silent", "preview:offline", "--", "lab"], {
      cwd: projectDir,
      encoding: "utf8",
      env: { ...process.env, KVM_BACKUP_BUNDLE: bundle },
      timeout: 120_000,
    });
    expect(r.stderr).not.toMatch(/^error:/m);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`Resources (${LAB_URNS.length}):`);
    for (const urn of LAB_URNS) expect(r.stdout).toContain(`  ${urn}\n`);
    expect(r.stdout).toContain('"runnerVersion": "(known after apply)"');
    expect(r.stdout).toContain('"timer": "kvm-backup-lab-nightly.timer"');
    expect(r.stdout).not.toContain(PLACEHOLDER_PREFIX);
  }, 120_000);
});

describe("capturePreview", () => {
  let result: PreviewResult;
  const overrides = {
    hosts: { lab: { port: 2222, hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM2Q3dZwFZCj84kagaIQeV0kAzXXG7/N0kBEnubd/53g lab", privateKey: "LAB-HOST-PRIVATE-KEY" } },
    targets: { "lab-ssh": { port: 2223, privateKey: "LAB-TARGET-PRIVATE-KEY" } },
  };

  beforeAll(async () => {
    result = await capturePreview({ projectDir, stack: "lab", overrides, env: { KVM_BACKUP_BUNDLE: bundle } });
  }, 120_000);

  it("runs the program the way the language host does", () => {
    expect(result.exitCode).toBe(0);
    const argv = result.argv;
    expect(argv.slice(1, 3)).toEqual(["--import", "tsx"]);
    expect(argv[3]).toMatch(/node_modules\/@pulumi\/pulumi\/cmd\/run$/);
    for (const flag of ["--monitor", "--engine", "--organization", "--project", "--root-directory", "--stack", "--pwd", "--dry-run", "--parallel"]) expect(argv).toContain(flag);
    expect(argv[argv.indexOf("--stack") + 1]).toBe("lab");
    expect(argv.at(-1)).toBe("index.ts");
    const config = JSON.parse(result.pulumiEnv.PULUMI_CONFIG!) as Record<string, string>;
    expect(Object.keys(config).sort()).toEqual(["kvm-backup:config:hosts", "kvm-backup:config:policies", "kvm-backup:config:targets"]);
    expect(JSON.parse(result.pulumiEnv.PULUMI_CONFIG_SECRET_KEYS!)).toEqual(["kvm-backup:hosts", "kvm-backup:targets"]);
  });

  it("captures exactly the lab tree, no duplicates, with parents", () => {
    expect(result.resources.map((r) => r.urn).sort()).toEqual([...LAB_URNS].sort());
    expect(result.duplicates).toEqual([]);
    const kvm = result.resources.find((r) => r.name === "lab" && r.type === "kvm-backup:index:KvmHost")!;
    const stack = result.resources.find((r) => r.type === "pulumi:pulumi:Stack")!;
    expect(kvm.parent).toBe(stack.urn);
    expect(result.resources.find((r) => r.name === "lab/preflight")!.parent).toBe(kvm.urn);
  });

  it("applies the overrides and keeps the keys secret (the replay gets them, the tree never prints them)", () => {
    const key = result.resources.find((r) => r.name === "lab/lab-ssh/key")!;
    expect(key.secretPaths).toEqual(expect.arrayContaining(["connection", "stdin"]));
    expect(key.inputs.stdin).toBe("LAB-TARGET-PRIVATE-KEY\n");
    expect(key.inputs.connection).toMatchObject({ host: "127.0.0.1", port: 2222, privateKey: "LAB-HOST-PRIVATE-KEY", hostKey: overrides.hosts.lab.hostKey });
    const config = result.resources.find((r) => r.name === "lab/config")!;
    expect(JSON.parse(String(config.inputs.stdin)).targets["lab-ssh"].port).toBe(2223);
    const copy = result.resources.find((r) => r.name === "lab/bundle")!;
    expect(copy.inputs.source).toEqual({ kind: "asset", path: bundle });
    expect(JSON.stringify(result.outputs)).not.toContain("PRIVATE-KEY");
  });

  it("exports per host the release, the config hash and per policy the schedule", () => {
    const lab = (result.outputs.hosts as Record<string, any>).lab;
    expect(lab.runnerRelease).toMatch(/^[0-9a-f]{16}$/);
    expect(lab.configHash).toMatch(/^[0-9a-f]{64}$/);
    expect(lab.policies["lab-nightly"]).toMatchObject({ onCalendar: "*-*-* 02:00:00", randomizedDelay: "10min", service: "kvm-backup-lab-nightly.service" });
  });

  it("a program error (here: no runner bundle) exits non-zero with the message, before any host resource", async () => {
    const failed = await capturePreview({ projectDir, stack: "lab", env: { KVM_BACKUP_BUNDLE: join(work, "missing.mjs") } });
    expect(failed.exitCode).not.toBe(0);
    expect(failed.logs.filter((l) => l.severity === "error").map((l) => l.message).join("\n")).toContain("does not exist: build it with `npm run build`");
    expect(failed.resources.map((r) => r.type)).toEqual(["pulumi:pulumi:Stack"]);
  }, 120_000);

  it("orders the commands for a replay: release, bundle, preflight first, units last", () => {
    const names = creationOrder(result.resources).map((r) => r.name);
    expect(names.slice(0, 3)).toEqual(["lab/release", "lab/bundle", "lab/preflight"]);
    expect(names.at(-1)).toBe("lab/lab-nightly/units");
    expect(names.indexOf("lab/config")).toBeGreaterThan(Math.max(names.indexOf("lab/runner"), names.indexOf("lab/lab-ssh/key"), names.indexOf("lab/staging/dir")));
    expect(names).toHaveLength(8);
  });

  it("duplicate URNs are detected", () => {
    expect(duplicateUrns([{ urn: "a" }, { urn: "b" }, { urn: "a" }])).toEqual(["a"]);
  });
});
