/**
 * The component graph of both example stacks under pulumi.runtime.setMocks, checked on the wire (what the
 * engine would receive and store): tree and parents, inputs of every command, ordering, secrets.
 */
import * as pulumi from "@pulumi/pulumi";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KvmHost } from "../../components/kvmHost.ts";
import { runProgram } from "../../components/program.ts";
import { bundleArtifact } from "../../components/render/artifact.ts";
import { sha256 } from "../../components/render/hash.ts";
import { hostConfigJson, renderHostConfig } from "../../runner/config/hostConfig.ts";
import { StackConfig } from "../../runner/config/schema.ts";
import { type CapturedResource, duplicateUrns, plainStrings } from "../../scripts/preview-offline/capture.ts";
import { captureWithMocks, MOCK_RUNNER_VERSION } from "../../scripts/preview-offline/mockCapture.ts";
import { mergeOverrides, pulumiConfigFor } from "../../scripts/preview-offline/stackConfig.ts";

const projectDir = process.cwd();
const NOW = new Date("2026-03-01T12:00:00Z");
let work: string;
let bundlePath: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "kvm-backup-components-"));
  bundlePath = join(work, "kvm-backup.mjs");
  writeFileSync(bundlePath, "#!/usr/bin/env node\nconsole.log('bundle under test')\n");
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Distinctive secret values, so "appears nowhere in clear" is a meaningful search. */
const SECRETS = {
  lab: { hosts: { lab: { privateKey: "SECRET-HOST-KEY-lab" } }, targets: { "lab-ssh": { privateKey: "SECRET-TARGET-KEY-lab-ssh" } } },
  "prod.example": {
    sshPrivateKey: "SECRET-DEPLOY-KEY-all-hosts",
    hosts: { kvm02: { privateKey: "SECRET-HOST-KEY-kvm02" } },
    targets: { offsite: { privateKey: "SECRET-TARGET-KEY-offsite" } },
  },
} as const;
const secretValues = (stack: keyof typeof SECRETS) => JSON.stringify(SECRETS[stack]).match(/SECRET-[A-Za-z0-9.-]+/g)!;

function decryptedStack(stack: keyof typeof SECRETS): StackConfig {
  const env = pulumiConfigFor(join(projectDir, "stacks", `Pulumi.${stack}.yaml`), SECRETS[stack] as unknown as Record<string, unknown>);
  const raw = Object.fromEntries(Object.entries(env.config).map(([k, v]) => [k.split(":")[1], k.endsWith("sshPrivateKey") ? v : JSON.parse(v)]));
  return StackConfig.parse(raw);
}

const byName = (rs: CapturedResource[], type: string, name: string) => {
  const r = rs.find((x) => x.type === type && x.name === name);
  if (!r) throw new Error(`no ${type} ${name}; have ${rs.map((x) => x.name).join(", ")}`);
  return r;
};
const CMD = "command:remote:Command";
const COPY = "command:remote:CopyToRemote";

for (const stack of ["lab", "prod.example"] as const) {
  describe(`stack ${stack}`, () => {
    let resources: CapturedResource[];
    let outputs: Record<string, any>;
    let cfg: StackConfig;

    beforeAll(async () => {
      cfg = decryptedStack(stack);
      const r = await captureWithMocks({ projectDir, stack, bundlePath, now: NOW, overrides: SECRETS[stack] as unknown as Record<string, unknown> });
      resources = r.resources;
      outputs = r.outputs as Record<string, any>;
    }, 60_000);

    it("registers no URN twice", () => {
      expect(resources.length).toBeGreaterThan(10);
      expect(duplicateUrns(resources)).toEqual([]);
    });

    it("builds one KvmHost per host with the expected children and parents", () => {
      for (const [h, host] of Object.entries(cfg.hosts)) {
        const hc = renderHostConfig(cfg, h);
        const kvm = byName(resources, "kvm-backup:index:KvmHost", h);
        expect(kvm.parent).toBe("");
        const children = resources.filter((r) => r.parent === kvm.urn).map((r) => `${r.type} ${r.name}`).sort();
        expect(children).toEqual(
          [
            `${CMD} ${h}/release`,
            `${COPY} ${h}/bundle`,
            `${CMD} ${h}/preflight`,
            `${CMD} ${h}/runner`,
            `${CMD} ${h}/config`,
            `kvm-backup:index:StagingDisk ${h}/staging`,
            ...Object.keys(hc.targets).map((t) => `kvm-backup:index:RemoteTarget ${h}/${t}`),
            ...Object.keys(hc.policies).map((p) => `kvm-backup:index:BackupPolicy ${h}/${p}`),
          ].sort(),
        );
        const staging = byName(resources, "kvm-backup:index:StagingDisk", `${h}/staging`);
        expect(byName(resources, CMD, `${h}/staging/dir`).parent).toBe(staging.urn);
        for (const [t, target] of Object.entries(hc.targets)) {
          const rt = byName(resources, "kvm-backup:index:RemoteTarget", `${h}/${t}`);
          const keys = resources.filter((r) => r.parent === rt.urn);
          expect(keys.map((k) => k.name)).toEqual(target.type === "ssh" ? [`${h}/${t}/key`] : []);
        }
        for (const p of Object.keys(hc.policies)) {
          const bp = byName(resources, "kvm-backup:index:BackupPolicy", `${h}/${p}`);
          const job = resources.find((r) => r.type === "kvm-backup:index:ScheduledJob" && r.parent === bp.urn)!;
          expect(job.name).toBe(`${h}/${p}`);
          expect(byName(resources, CMD, `${h}/${p}/units`).parent).toBe(job.urn);
        }
        expect(host.address).toBe(outputs[h].address);
      }
    });

    it("deploys only the policies and targets each host uses", () => {
      if (stack !== "prod.example") return expect(Object.keys(cfg.hosts)).toEqual(["lab"]);
      const names = resources.map((r) => r.name);
      expect(names).toContain("kvm01/nightly");
      expect(names).toContain("kvm01/weekly");
      expect(names).not.toContain("kvm01/hourly-db");
      expect(names).toContain("kvm02/hourly-db");
      expect(names).not.toContain("kvm02/nightly");
      expect(names).toContain("kvm01/offsite/key");
      expect(names).not.toContain("kvm01/nas/key");
      expect(names.filter((n) => n.startsWith("kvm02/") && n.endsWith("/key"))).toEqual([]);
    });

    it("gives every command the host's one connection (secret), deleteBeforeReplace, and no env passing", () => {
      for (const r of resources.filter((x) => x.type === CMD || x.type === COPY)) {
        const host = r.name.split("/")[0]!;
        const h = cfg.hosts[host]!;
        expect(r.secretPaths).toContain("connection");
        expect(r.inputs.connection).toMatchObject({ host: h.address, port: h.port, user: h.user, hostKey: h.hostKey, privateKey: h.privateKey ?? cfg.sshPrivateKey });
        expect(r.deleteBeforeReplace).toBe(true);
        if (r.type === CMD) {
          expect(r.inputs.addPreviousOutputInEnv).toBe(false);
          expect(r.inputs.environment).toBeUndefined();
        }
        expect(r.additionalSecretOutputs).toContain("connection");
      }
    });

    it("keeps every secret secret: wrapped wherever it is an input, and nowhere in clear text", () => {
      for (const r of resources) {
        const clear = plainStrings(r.wire).join("\n");
        for (const s of secretValues(stack)) expect(clear, `${r.urn} carries ${s} in clear`).not.toContain(s);
      }
      for (const [t, target] of Object.entries(cfg.targets)) {
        if (target.type !== "ssh") continue;
        for (const key of resources.filter((r) => r.name.endsWith(`/${t}/key`))) {
          expect(key.secretPaths).toEqual(expect.arrayContaining(["stdin"]));
          expect(key.inputs.stdin).toBe(`${target.privateKey}\n`);
          expect(String(key.inputs.create)).not.toContain(target.privateKey);
        }
      }
    });

    it("passes the host config on stdin to the preflight and the config command, without secrets", () => {
      for (const h of Object.keys(cfg.hosts)) {
        const json = hostConfigJson(renderHostConfig(cfg, h));
        const preflight = byName(resources, CMD, `${h}/preflight`);
        const config = byName(resources, CMD, `${h}/config`);
        expect(preflight.inputs.stdin).toBe(json);
        expect(config.inputs.stdin).toBe(json);
        expect(json).not.toMatch(/privateKey|SECRET-/);
        expect(String(config.inputs.create)).toContain(sha256(json));
        expect(outputs[h].configHash).toBe(sha256(json));
        expect(preflight.secretPaths).toEqual(["connection"]);
      }
    });

    it("copies the bundle into its versioned release directory and re-runs the preflight on a new bundle or config", () => {
      const bundle = bundleArtifact(bundlePath, "x");
      for (const h of Object.keys(cfg.hosts)) {
        const copy = byName(resources, COPY, `${h}/bundle`);
        expect(copy.inputs.source).toEqual({ kind: "asset", path: bundlePath });
        expect(copy.inputs.remotePath).toBe(`/opt/kvm-backup/releases/${bundle.releaseId}/kvm-backup.mjs`);
        const preflight = byName(resources, CMD, `${h}/preflight`);
        expect(preflight.inputs.triggers).toEqual([bundle.sha256, outputs[h].configHash]);
        expect(preflight.replaceOnChanges).toContain("triggers[*]");
        expect(String(preflight.inputs.create)).toContain(`/opt/kvm-backup/releases/${bundle.releaseId}/kvm-backup.mjs' --config "$tmpd/config.json" doctor --json`);
        expect(String(byName(resources, CMD, `${h}/runner`).inputs.create)).toContain(`ln -sfn 'releases/${bundle.releaseId}'`);
        expect(outputs[h].runnerRelease).toBe(bundle.releaseId);
        expect(outputs[h].runnerVersion).toBe(MOCK_RUNNER_VERSION);
      }
    });

    it("orders the host: release -> bundle -> preflight -> runner, staging, keys -> config -> units", () => {
      for (const [h] of Object.entries(cfg.hosts)) {
        const urn = (type: string, name: string) => byName(resources, type, name).urn;
        const deps = (type: string, name: string) => byName(resources, type, name).dependencies;
        expect(deps(COPY, `${h}/bundle`)).toContain(urn(CMD, `${h}/release`));
        expect(deps(CMD, `${h}/preflight`)).toContain(urn(COPY, `${h}/bundle`));
        expect(deps(CMD, `${h}/runner`)).toContain(urn(CMD, `${h}/preflight`));
        expect(deps(CMD, `${h}/staging/dir`)).toContain(urn(CMD, `${h}/preflight`));
        const configDeps = deps(CMD, `${h}/config`);
        expect(configDeps).toContain(urn(CMD, `${h}/runner`));
        expect(configDeps).toContain(urn(CMD, `${h}/staging/dir`));
        for (const key of resources.filter((r) => r.name.startsWith(`${h}/`) && r.name.endsWith("/key"))) {
          expect(key.dependencies).toContain(urn(CMD, `${h}/preflight`));
          expect(configDeps).toContain(key.urn);
        }
        for (const units of resources.filter((r) => r.name.startsWith(`${h}/`) && r.name.endsWith("/units"))) {
          expect(units.dependencies).toContain(urn(CMD, `${h}/config`));
        }
      }
    });

    it("installs units per policy from stdin and removes them on delete; the staging directory has no delete", () => {
      for (const [h] of Object.entries(cfg.hosts)) {
        const hc = renderHostConfig(cfg, h);
        for (const p of Object.keys(hc.policies)) {
          const units = byName(resources, CMD, `${h}/${p}/units`);
          expect(String(units.inputs.stdin)).toContain(`ExecStart=/usr/local/bin/kvm-backup run --policy ${p}\n`);
          expect(String(units.inputs.stdin)).toContain(`OnCalendar=${hc.policies[p]!.schedule}\n`);
          expect(String(units.inputs.create)).not.toContain("ExecStart=");
          expect(String(units.inputs.delete)).toContain(`systemctl disable --now 'kvm-backup-${p}.timer'`);
          expect(outputs[h].policies[p].timer).toBe(`kvm-backup-${p}.timer`);
          expect(outputs[h].policies[p].nextRun).toMatch(/^2026-03-0[1-8]T/);
        }
        const staging = byName(resources, CMD, `${h}/staging/dir`);
        expect(staging.inputs.delete).toBeUndefined();
        expect(String(staging.inputs.create)).toContain(`mkdir -p '${hc.staging.path}'`);
        // Nothing the deploy deletes names the staging directory.
        for (const r of resources.filter((x) => x.name.startsWith(`${h}/`))) {
          if (typeof r.inputs.delete === "string") expect(r.inputs.delete).not.toContain(hc.staging.path);
        }
      }
    });
  });
}

describe("a policy with a restore drill (policies.<name>.drill)", () => {
  let resources: CapturedResource[];
  let outputs: Record<string, any>;

  beforeAll(async () => {
    const overrides = mergeOverrides(SECRETS.lab, { policies: { "lab-nightly": { drill: { schedule: "Sun *-*-* 05:00", bootTimeout: "5min" } } } }) as Record<string, unknown>;
    const r = await captureWithMocks({ projectDir, stack: "lab", bundlePath, now: NOW, overrides });
    resources = r.resources;
    outputs = r.outputs as Record<string, any>;
  }, 60_000);

  it("gets a second job under its BackupPolicy: drill units from stdin, removed on delete, schedule in the outputs", () => {
    const bp = byName(resources, "kvm-backup:index:BackupPolicy", "lab/lab-nightly");
    const jobs = resources.filter((r) => r.type === "kvm-backup:index:ScheduledJob" && r.parent === bp.urn).map((r) => r.name).sort();
    expect(jobs).toEqual(["lab/lab-nightly", "lab/lab-nightly/drill"]);
    const units = byName(resources, CMD, "lab/lab-nightly/drill/units");
    expect(String(units.inputs.stdin)).toContain("\nExecStart=/usr/local/bin/kvm-backup drill --policy lab-nightly\n");
    expect(String(units.inputs.stdin)).toContain("\nOnCalendar=Sun *-*-* 05:00\n");
    expect(String(units.inputs.create)).toContain("'kvm-backup-drill@lab-nightly.timer'");
    expect(String(units.inputs.delete)).toContain("systemctl disable --now 'kvm-backup-drill@lab-nightly.timer'");
    expect(String(byName(resources, CMD, "lab/lab-nightly/units").inputs.stdin)).toContain("run --policy lab-nightly\n");
    expect(outputs.lab.policies["lab-nightly"].drill).toMatchObject({ timer: "kvm-backup-drill@lab-nightly.timer", onCalendar: "Sun *-*-* 05:00:00" });
    expect(outputs.lab.policies["lab-nightly"].drill.nextRun).toBe("2026-03-08T05:00:00.000Z"); // NOW is Sunday 12:00 UTC
  });
});

describe("a host deployed under another root (hosts.<host>.root)", () => {
  const root = "/srv/kvmb-try";
  let resources: CapturedResource[];

  beforeAll(async () => {
    const overrides = mergeOverrides(SECRETS.lab, { hosts: { lab: { root } } }) as Record<string, unknown>;
    resources = (await captureWithMocks({ projectDir, stack: "lab", bundlePath, now: NOW, overrides })).resources;
  }, 60_000);

  it("prefixes every path the deploy writes or removes; staging stays where the stack puts it", () => {
    const scripts = resources.filter((r) => r.type === CMD).flatMap((r) => [r.inputs.create, r.inputs.delete]).filter((x): x is string => typeof x === "string");
    expect(scripts.length).toBeGreaterThan(8);
    for (const text of scripts) expect(text.replaceAll(`'${root}/`, "'<root>/")).not.toMatch(/'\/(etc|opt|usr\/local)\//);
    expect(byName(resources, COPY, "lab/bundle").inputs.remotePath).toMatch(new RegExp(`^${root}/opt/kvm-backup/releases/[0-9a-f]{16}/kvm-backup\\.mjs$`));
    const config = JSON.parse(String(byName(resources, CMD, "lab/config").inputs.stdin));
    expect(config.targets["lab-ssh"].keyFile).toBe(`${root}/etc/kvm-backup/keys/lab-ssh.key`);
    expect(config.staging.path).toBe("/var/lib/kvm-backup/staging");
    expect(String(byName(resources, CMD, "lab/staging/dir").inputs.create)).toContain("mkdir -p '/var/lib/kvm-backup/staging'");
    expect(String(byName(resources, CMD, "lab/lab-nightly/units").inputs.stdin)).toContain(
      `\nExecStart=${root}/usr/local/bin/kvm-backup --config ${root}/etc/kvm-backup/config.json run --policy lab-nightly\n`,
    );
  });

  it("a relative or non-normalized root is refused before any resource", () => {
    const cfg = decryptedStack("lab");
    for (const bad of ["srv/x", "/srv/../x", "/srv/x/"]) {
      const raw = { ...cfg, hosts: { lab: { ...cfg.hosts.lab!, root: bad } } };
      const r = StackConfig.safeParse(raw);
      expect(r.success).toBe(false);
      expect(JSON.stringify(r.error!.issues)).toContain("must be an absolute, normalized path");
    }
  });
});

describe("validation before any resource", () => {
  function project(stackYaml: string): string {
    const dir = mkdtempSync(join(work, "project-"));
    copyFileSync(join(projectDir, "package.json"), join(dir, "package.json"));
    mkdirSync(join(dir, "stacks"));
    writeFileSync(join(dir, "stacks", "Pulumi.t.yaml"), stackYaml);
    return dir;
  }

  it("an invalid stack file is a RunError naming the file and the path", () => {
    const dir = project("config:\n  kvm-backup:policies: {}\n  kvm-backup:hosts:\n    bad name:\n      address: x\n");
    expect(() => runProgram({ projectDir: dir, stack: "t", bundlePath })).toThrow(pulumi.RunError);
    expect(() => runProgram({ projectDir: dir, stack: "t", bundlePath })).toThrow(/^stacks\/Pulumi\.t\.yaml: hosts\.bad name: "bad name" is not a safe name/m);
  });

  it("a missing bundle says how to build it", () => {
    expect(() => runProgram({ projectDir, stack: "lab", bundlePath: join(work, "missing.mjs"), config: new pulumi.Config("kvm-backup") })).toThrow(
      /the runner bundle .*missing\.mjs does not exist: build it with `npm run build`/,
    );
  });

  it("KvmHost refuses an ssh target without its key, synchronously and in plain words", () => {
    const cfg = decryptedStack("lab");
    const args = {
      hostName: "lab",
      connection: { address: "127.0.0.1", port: 22, user: "root", hostKey: cfg.hosts.lab!.hostKey, privateKey: "k" },
      config: renderHostConfig(cfg, "lab"),
      targetKeys: {},
      bundle: bundleArtifact(bundlePath, "x"),
    };
    expect(() => new KvmHost("lab-x", args)).toThrow('KvmHost lab-x: ssh target "lab-ssh" has no private key (targets.lab-ssh.privateKey, a secret)');
  });
});
