/**
 * `pulumi up` / `pulumi destroy` of the lab stack, end to end on this machine: the program runs through the
 * SDK's real entry point (capturePreview), and every resource it registers is replayed over real SSH against
 * the lab sshd exactly as @pulumi/command would carry it out (test/lab/deployReplay.ts). The deploy root is a
 * temp directory (hosts.lab.root), so nothing is written to this machine's /etc or /opt. Then the installed
 * timer's service is started as systemd would start it (test/lab/systemdService.ts) against the libvirt lab's
 * running domain, shipping to the lab sshd as the ssh target.
 *
 * The tests in the first describe run in order and share the deployed state, like successive `pulumi up`s.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { sha256 } from "../../components/render/hash.ts";
import { hostLayout, type HostLayout } from "../../components/render/layout.ts";
import { captureWithMocks } from "../../scripts/preview-offline/mockCapture.ts";
import type { CapturedResource } from "../../scripts/preview-offline/capture.ts";
import { capturePreview } from "../../scripts/preview-offline/preview.ts";
import { changes, type DeployState, EMPTY_STATE, failureReport, replayDestroy, type ReplayResult, replayUp } from "../lab/deployReplay.ts";
import { createTestDomain, domainSources, domainState, removeTestDomain, type TestDomain } from "../lab/libvirtLab.ts";
import { checkAgainstManifests, CLI, inventory } from "../lab/shipFixtures.ts";
import { startSshdLab, type SshdLabInfo } from "../lab/sshdLab.ts";
import { runServiceLikeSystemd } from "../lab/systemdService.ts";

const sshd = inject("sshd");
const libvirt = inject("libvirt");
const projectDir = process.cwd();
const POLICY = "lab-nightly";
const VM = "kvmb-deploy-e2e";

let work: string;

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` before the integration tests`);
  work = mkdtempSync("/tmp/kvmb-deploy-");
});
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

const runnerVersion = () => execFileSync(process.execPath, [CLI, "--version"], { encoding: "utf8" }).trim();

interface HostSetup {
  name: string;
  ssh: SshdLabInfo;
  root: string;
  staging: string;
  vms: string[];
  /** The policies of every VM of the host (default: the lab stack's policy only). */
  policies?: string[];
}

/** A second policy for the same VM, so that removing it can be watched. */
const WEEKLY = "lab-weekly";
const WEEKLY_POLICY = {
  method: "libvirt",
  schedule: "Sun *-*-* 04:00",
  randomizedDelay: "10min",
  compression: { type: "zstd", level: 3, threads: 1 },
  retention: { keepWeekly: 4 },
  targets: ["lab-ssh"],
};

/**
 * The lab stack's config pointed at this run's sshd, libvirt lab and temp directories (keys in clear: they are
 * this run's throwaway test keys). The stack's host `lab` is overridden field by field; other hosts are added.
 */
function overrides(hosts: HostSetup[], targetPath: string, policies: Record<string, unknown> = {}): Record<string, unknown> {
  const key = (s: SshdLabInfo) => readFileSync(s.clientKeyFile, "utf8");
  const vms = (h: HostSetup) => Object.fromEntries(h.vms.map((v) => [v, { policy: h.policies ?? POLICY }]));
  return {
    targets: { "lab-ssh": { host: sshd.host, port: sshd.port, user: sshd.user, hostKey: sshd.hostKey, privateKey: key(sshd), path: targetPath } },
    policies,
    hosts: Object.fromEntries(
      hosts.map((h) => [
        h.name,
        {
          address: h.ssh.host,
          port: h.ssh.port,
          user: h.ssh.user,
          hostKey: h.ssh.hostKey,
          privateKey: key(h.ssh),
          libvirtUri: libvirt.uri,
          root: h.root,
          staging: { path: h.staging, keepLast: 2, minFree: "64MiB" },
          // The stack file's own VM is replaced (null removes a key in the overrides).
          vms: h.name === "lab" ? { "lab-vm": null, ...vms(h) } : vms(h),
        },
      ]),
    ),
  };
}

interface Captured {
  resources: CapturedResource[];
  outputs: Record<string, any>;
}

/** The program as the Node.js language host runs it (the SDK's cmd/run against the offline engine). */
async function captureThroughSdk(over: Record<string, unknown>): Promise<Captured> {
  const result = await capturePreview({ projectDir, stack: "lab", overrides: over, env: { KVM_BACKUP_BUNDLE: CLI } });
  const errors = result.logs.filter((l) => l.severity === "error").map((l) => l.message);
  if (result.exitCode !== 0 || errors.length) throw new Error(`the program failed (exit ${result.exitCode}): ${errors.join("\n")}\n${result.stderr}`);
  return { resources: result.resources, outputs: result.outputs.hosts as Record<string, any> };
}

/**
 * The program in this process under setMocks: the same registrations as through the SDK's entry point (the
 * first test checks that), seconds faster than a new process per capture. The URNs of nested resources differ
 * between the two (the mocks qualify a type by the parent's type only), so one run of tests replays one kind.
 */
async function capture(over: Record<string, unknown>, opts: { bundle?: string; now?: Date; commandStdout?: (name: string) => string | undefined } = {}): Promise<Captured> {
  const r = await captureWithMocks({ projectDir, stack: "lab", bundlePath: opts.bundle ?? CLI, now: opts.now ?? new Date(), overrides: over, commandStdout: opts.commandStdout });
  return { resources: r.resources, outputs: r.outputs as Record<string, any> };
}

/**
 * What the replay looks at, per custom resource by name (dependencies as names), secrets replaced by their
 * SHA-256 so that a failing comparison prints no key.
 */
function registrations(resources: CapturedResource[]) {
  const custom = resources.filter((r) => r.custom && !r.type.startsWith("pulumi:providers:"));
  const nameOf = new Map(custom.map((r) => [r.urn, r.name]));
  const masked = (r: CapturedResource) => {
    const inputs: Record<string, unknown> = { ...r.inputs };
    const conn = inputs.connection as Record<string, unknown> | undefined;
    if (conn) inputs.connection = { ...conn, privateKey: sha256(String(conn.privateKey)) };
    if (r.secretPaths.includes("stdin")) inputs.stdin = sha256(String(inputs.stdin));
    return inputs;
  };
  return custom
    .map((r) => ({
      name: r.name, type: r.type, inputs: masked(r), secretPaths: [...r.secretPaths].sort(), dependencies: r.dependencies.map((d) => nameOf.get(d) ?? d).sort(),
      deleteBeforeReplace: r.deleteBeforeReplace, replaceOnChanges: r.replaceOnChanges, version: r.version,
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

function byName(result: { state: DeployState }, name: string) {
  const r = Object.values(result.state.resources).find((x) => x.resource.name === name);
  if (!r) throw new Error(`no resource ${name} in the state`);
  return r;
}

const mode = (p: string) => statSync(p).mode & 0o777;

/** Every delete started only after the deletes of everything that depended on it had ended. */
function expectDeletesBeforeDependencies(result: ReplayResult, prior: DeployState): void {
  const step = new Map(result.steps.map((st) => [st.urn, st]));
  for (const r of Object.values(prior.resources)) {
    const st = step.get(r.resource.urn);
    for (const d of r.resource.dependencies) {
      const dep = step.get(d);
      if (st?.endedMs !== undefined && dep?.startedMs !== undefined) expect(dep.startedMs, `${dep.name} deleted before ${r.resource.name}`).toBeGreaterThanOrEqual(st.endedMs);
    }
  }
}

/** Every step that ran started only after the steps of everything it depends on had ended. */
function expectDependencyOrder(result: ReplayResult, preview: { resources: CapturedResource[] }): void {
  const step = new Map(result.steps.map((st) => [st.urn, st]));
  for (const r of preview.resources) {
    const st = step.get(r.urn);
    if (st?.startedMs === undefined) continue;
    for (const d of r.dependencies) {
      const dep = step.get(d);
      if (dep?.endedMs !== undefined) expect(st.startedMs, `${r.name} started before ${dep.name} ended`).toBeGreaterThanOrEqual(dep.endedMs);
    }
  }
}

/** Every file and symlink under dir (relative), for "what is left on the host". */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(p.slice(dir.length + 1));
    }
  };
  walk(dir);
  return out.sort();
}

function cli(bin: string, config: string, args: string[]) {
  return spawnSync(process.execPath, [bin, "--config", config, ...args], { encoding: "utf8", timeout: 120_000, env: { ...process.env, KVM_BACKUP_LOG: "json" } });
}

describe("pulumi up, a scheduled run, a policy change and pulumi destroy, replayed on the lab host", () => {
  let host: HostSetup;
  let layout: HostLayout;
  let targetPath: string;
  let domain: TestDomain;
  let state: DeployState = EMPTY_STATE;
  let backupId: string;
  let upOrder: string[] = [];
  const service = () => join(layout.unitDir, `kvm-backup-${POLICY}.service`);
  const timer = () => join(layout.unitDir, `kvm-backup-${POLICY}.timer`);
  const wants = () => join(layout.unitDir, "timers.target.wants", `kvm-backup-${POLICY}.timer`);
  const stagingVm = () => join(host.staging, VM);
  const targetVm = () => join(targetPath, "lab", VM);

  beforeAll(() => {
    host = { name: "lab", ssh: sshd, root: join(work, "root"), staging: join(work, "staging"), vms: [VM], policies: [POLICY, WEEKLY] };
    layout = hostLayout(host.root);
    // The target's directory is the operator's to create on the target server (the runner refuses a missing one).
    targetPath = join(sshd.remoteRoot, `deploy-e2e-${work.slice(-6)}`);
    mkdirSync(targetPath);
    domain = createTestDomain(libvirt, VM, { dir: join(work, "domain") });
  });
  afterAll(() => {
    removeTestDomain(libvirt, VM);
    rmSync(targetPath, { recursive: true, force: true });
  });

  it("pulumi up: preflight, runner, key, staging, config and an enabled timer, each step once, in order", async () => {
    const stack = overrides([host], targetPath, { [WEEKLY]: WEEKLY_POLICY });
    const preview = await capture(stack);
    // What the language host's run of index.ts registers is the same, resource by resource.
    expect(registrations((await captureThroughSdk(stack)).resources)).toEqual(registrations(preview.resources));
    const up = await replayUp(preview.resources, EMPTY_STATE);
    expect(failureReport(up)).toBe("");
    state = up.state;
    const created = changes(up);
    expect([...created].sort()).toEqual(
      ["release", "bundle", "preflight", "runner", "staging/dir", "lab-ssh/key", "config", `${POLICY}/units`, `${WEEKLY}/units`].map((n) => `create lab/${n}`).sort(),
    );
    expectDependencyOrder(up, preview);
    const ended = (n: string) => up.steps.find((st) => st.name === `lab/${n}`)!.endedMs!;
    const started = (n: string) => up.steps.find((st) => st.name === `lab/${n}`)!.startedMs!;
    expect(started("runner")).toBeGreaterThanOrEqual(ended("preflight"));
    expect(started("config")).toBeGreaterThanOrEqual(Math.max(ended("runner"), ended("staging/dir"), ended("lab-ssh/key")));
    expect(started(`${POLICY}/units`)).toBeGreaterThanOrEqual(ended("config"));
    expect(started(`${WEEKLY}/units`)).toBeGreaterThanOrEqual(ended("config"));
    upOrder = created.map((c) => c.replace(/^create /, ""));
    expect(byName(up, "lab/preflight").stdout).toMatch(/^preflight passed \(release [0-9a-f]{16}, config [0-9a-f]{16}\)\n$/);

    // The versioned release behind an atomic symlink, and the operator's command.
    const release = readlinkSync(layout.currentLink);
    expect(release).toMatch(/^releases\/[0-9a-f]{16}$/);
    expect(sha256(readFileSync(join(layout.installDir, release, "kvm-backup.mjs")))).toBe(sha256(readFileSync(CLI)));
    expect(readlinkSync(layout.binLink)).toBe(`${layout.currentLink}/kvm-backup.mjs`);
    expect(byName(up, "lab/runner").stdout.trim().split("\n").pop()).toBe(runnerVersion());

    // Config and key: root-only files; the config is what the program rendered, without any secret.
    const configText = readFileSync(layout.configFile, "utf8");
    expect(configText).toBe(preview.resources.find((r) => r.name === "lab/config")!.inputs.stdin);
    expect(configText).not.toContain("PRIVATE KEY");
    expect(mode(layout.configFile)).toBe(0o600);
    expect(mode(layout.etcDir)).toBe(0o700);
    const keyFile = join(layout.keysDir, "lab-ssh.key");
    expect(readFileSync(keyFile, "utf8")).toBe(readFileSync(sshd.clientKeyFile, "utf8"));
    expect(mode(keyFile)).toBe(0o600);
    expect(mode(host.staging)).toBe(0o700);
    // No step printed a secret into its stdout (Pulumi stores stdout in the state).
    for (const r of Object.values(up.state.resources)) expect(r.stdout + r.stderr).not.toContain("PRIVATE KEY");

    // Units, and the timer enabled inside the deploy root.
    expect(readFileSync(service(), "utf8")).toContain(`\nExecStart=${layout.binLink} --config ${layout.configFile} run --policy ${POLICY}\n`);
    expect(readFileSync(timer(), "utf8")).toContain("\nOnCalendar=*-*-* 02:00\n");
    expect(readlinkSync(wants())).toBe(`/etc/systemd/system/kvm-backup-${POLICY}.timer`);

    // Stack outputs, from the program fed with what the host printed.
    const now = new Date();
    const outputs = (await capture(stack, { now, commandStdout: (name) => (name === "lab/runner" ? byName(up, name).stdout : undefined) })).outputs;
    const lab = outputs.lab;
    expect(lab.runnerVersion).toBe(runnerVersion());
    expect(lab.runnerRelease).toBe(release.slice("releases/".length));
    expect(lab.configHash).toBe(sha256(configText));
    const calendar = execFileSync("systemd-analyze", ["calendar", `--base-time=@${Math.floor(now.getTime() / 1000)}`, "*-*-* 02:00"], { encoding: "utf8", env: { ...process.env, LC_ALL: "C" } });
    const next = /\(in UTC\): (.*)|Next elapse: (.*)/.exec(calendar)!;
    const systemdNext = new Date((next[1] ?? next[2]!).trim().replace(/^\w{3} /, "").replace(" UTC", "Z").replace(" ", "T"));
    expect(Math.abs(new Date(lab.policies[POLICY].nextRun).getTime() - systemdNext.getTime())).toBeLessThan(1000);
    expect(lab.policies[POLICY]).toMatchObject({ onCalendar: "*-*-* 02:00:00", timer: `kvm-backup-${POLICY}.timer`, vms: [VM] });
    expect(lab.policies[WEEKLY]).toMatchObject({ onCalendar: "Sun *-*-* 04:00:00", timer: `kvm-backup-${WEEKLY}.timer`, vms: [VM] });
  }, 180_000);

  it("the timer's service, started as systemd would, backs up the running domain to staging and the ssh target", async () => {
    const run = await runServiceLikeSystemd(service(), { maxMs: 150_000 });
    expect(run.timedOut).toBe(false);
    expect(run.code, `${run.stdout}\n${run.stderr.slice(-3000)}`).toBe(0);
    expect(run.spec.argv).toEqual([layout.binLink, "--config", layout.configFile, "run", "--policy", POLICY]);
    expect(run.observed).toEqual({ nice: 10, io: "best-effort: prio 7" });
    expect(run.spec.notApplied).toEqual(["CPUQuota=50%"]);

    const staged = inventory(stagingVm());
    expect(Object.keys(staged)).toHaveLength(1);
    backupId = Object.keys(staged)[0]!;
    expect(checkAgainstManifests(stagingVm())).toEqual([]);
    expect(inventory(targetVm())).toEqual(staged);
    // The domain runs on its own images again: no overlay left.
    expect(domainState(libvirt, VM)).toBe("running");
    expect(domainSources(libvirt, VM)).toEqual({ vda: domain.disks[0]!.path, vdb: domain.disks[1]!.path });

    // The operator's checks through the installed command.
    const verify = cli(layout.binLink, layout.configFile, ["verify", "--vm", VM, backupId]);
    expect(verify.status, verify.stderr).toBe(0);
    const verifyTarget = cli(layout.binLink, layout.configFile, ["verify", "--target", "lab-ssh", "--vm", VM, backupId]);
    expect(verifyTarget.status, verifyTarget.stderr).toBe(0);
    const status = cli(layout.binLink, layout.configFile, ["status", "--json", "--no-textfile"]);
    expect(status.status, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout).vms.map((v: { vm: string }) => v.vm)).toEqual([VM]);
  }, 240_000);

  it("changing retention and schedule changes only the config and the units; removing a policy removes its timer; the runner and the backups stay", async () => {
    const beforeStaging = inventory(stagingVm());
    const beforeTarget = inventory(targetVm());
    const release = readlinkSync(layout.currentLink);
    const bundleIno = statSync(join(layout.installDir, release, "kvm-backup.mjs")).ino;
    const keyIno = statSync(join(layout.keysDir, "lab-ssh.key")).ino;

    const changed = overrides([host], targetPath, { [POLICY]: { schedule: "*-*-* 03:30", retention: { keepLast: 5, keepDaily: 7 } }, [WEEKLY]: WEEKLY_POLICY });
    const preview = await capture(changed);
    const up = await replayUp(preview.resources, state);
    expect(failureReport(up)).toBe("");
    state = up.state;
    expect(changes(up)).toEqual(["replace lab/preflight", "update lab/config", `update lab/${POLICY}/units`]);

    const config = JSON.parse(readFileSync(layout.configFile, "utf8"));
    expect(config.policies[POLICY].schedule).toBe("*-*-* 03:30");
    expect(config.policies[POLICY].retention).toEqual({ keepLast: 5, keepDaily: 7 });
    expect(readFileSync(timer(), "utf8")).toContain("\nOnCalendar=*-*-* 03:30\n");
    expect(readlinkSync(wants())).toBe(`/etc/systemd/system/kvm-backup-${POLICY}.timer`);
    expect(readlinkSync(layout.currentLink)).toBe(release);
    expect(statSync(join(layout.installDir, release, "kvm-backup.mjs")).ino).toBe(bundleIno);
    expect(statSync(join(layout.keysDir, "lab-ssh.key")).ino).toBe(keyIno);
    expect(inventory(stagingVm())).toEqual(beforeStaging);
    expect(inventory(targetVm())).toEqual(beforeTarget);

    // pulumi up again with nothing changed: no step runs.
    const again = await replayUp(preview.resources, state);
    expect(changes(again)).toEqual([]);
    state = again.state;

    // The VM leaves the weekly policy: its timer is disabled and its units go; the rest and the backups stay.
    expect(readlinkSync(join(layout.unitDir, "timers.target.wants", `kvm-backup-${WEEKLY}.timer`))).toBe(`/etc/systemd/system/kvm-backup-${WEEKLY}.timer`);
    const nightlyIno = statSync(service()).ino;
    const removed = await capture(overrides([{ ...host, policies: [POLICY] }], targetPath, { [POLICY]: { schedule: "*-*-* 03:30", retention: { keepLast: 5, keepDaily: 7 } } }));
    const down = await replayUp(removed.resources, state);
    expect(failureReport(down)).toBe("");
    state = down.state;
    expect(changes(down)).toEqual(["replace lab/preflight", "update lab/config", `delete lab/${WEEKLY}/units`]);
    expect(existsSync(join(layout.unitDir, `kvm-backup-${WEEKLY}.service`))).toBe(false);
    expect(existsSync(join(layout.unitDir, `kvm-backup-${WEEKLY}.timer`))).toBe(false);
    expect(() => lstatSync(join(layout.unitDir, "timers.target.wants", `kvm-backup-${WEEKLY}.timer`))).toThrow(/ENOENT/);
    expect(readlinkSync(wants())).toBe(`/etc/systemd/system/kvm-backup-${POLICY}.timer`);
    expect(statSync(service()).ino).toBe(nightlyIno);
    expect(Object.keys(JSON.parse(readFileSync(layout.configFile, "utf8")).policies)).toEqual([POLICY]);
    expect(inventory(stagingVm())).toEqual(beforeStaging);
    expect(inventory(targetVm())).toEqual(beforeTarget);
  }, 180_000);

  it("a new runner bundle: new release, preflight and switch; config, units and backups untouched; the previous release kept", async () => {
    const beforeStaging = inventory(stagingVm());
    const previous = readlinkSync(layout.currentLink);
    const configIno = statSync(layout.configFile).ino;
    const serviceIno = statSync(service()).ino;
    const bundle = join(work, "upgrade", "kvm-backup.mjs");
    mkdirSync(join(work, "upgrade"));
    writeFileSync(bundle, `${readFileSync(CLI, "utf8")}\n// another build\n`);

    const preview = await capture(overrides([{ ...host, policies: [POLICY] }], targetPath, { [POLICY]: { schedule: "*-*-* 03:30", retention: { keepLast: 5, keepDaily: 7 } } }), { bundle });
    const up = await replayUp(preview.resources, state);
    expect(failureReport(up)).toBe("");
    state = up.state;
    expect(changes(up)).toEqual(["replace lab/release", "replace lab/bundle", "replace lab/preflight", "update lab/runner"]);
    expect(byName(up, "lab/release").stdout).toMatch(/^release directory [0-9a-f]{16} ready\n$/);
    const current = readlinkSync(layout.currentLink);
    expect(current).not.toBe(previous);
    expect(sha256(readFileSync(join(layout.installDir, current, "kvm-backup.mjs")))).toBe(sha256(readFileSync(bundle)));
    expect(byName(up, "lab/runner").stdout.trim()).toBe(runnerVersion());
    // The release replaced while it was active stays, as the one to roll back to.
    expect(readdirSync(layout.releasesDir).sort()).toEqual([previous, current].map((r) => r.slice("releases/".length)).sort());
    expect(statSync(layout.configFile).ino).toBe(configIno);
    expect(statSync(service()).ino).toBe(serviceIno);
    expect(inventory(stagingVm())).toEqual(beforeStaging);
    // The installed command is the new build and works.
    const status = cli(layout.binLink, layout.configFile, ["status", "--json", "--no-textfile"]);
    expect(status.status, status.stderr).toBe(0);
  }, 180_000);

  it("pulumi destroy removes runner, config, key and units; the backups stay and restore with a freshly copied bundle", async () => {
    const beforeStaging = inventory(stagingVm());
    const beforeTarget = inventory(targetVm());
    const installedConfig = readFileSync(layout.configFile, "utf8");

    const deployed = state.order.map((u) => state.resources[u]!.resource.name);
    expect(deployed).toEqual(upOrder.filter((n) => n !== `lab/${WEEKLY}/units`));
    const down = await replayDestroy(state);
    expect(failureReport(down)).toBe("");
    // Every resource once, listed in reverse of the order they were deployed in.
    expect(changes(down)).toEqual([...deployed].reverse().map((n) => `delete ${n}`));
    expectDeletesBeforeDependencies(down, state);
    expect(down.state.order).toEqual([]);
    // Nothing the deploy installed is left under its root: no file, no link.
    expect(filesUnder(host.root)).toEqual([]);
    expect(() => lstatSync(layout.binLink)).toThrow(/ENOENT/);
    expect(existsSync(layout.installDir)).toBe(false);
    expect(existsSync(layout.etcDir)).toBe(false);
    // Every backup is still there, in staging and on the target.
    expect(inventory(stagingVm())).toEqual(beforeStaging);
    expect(inventory(targetVm())).toEqual(beforeTarget);
    expect(Object.keys(beforeStaging)).toEqual([backupId]);

    // Restore with a bundle copied afresh and the host config the stack renders.
    const fresh = join(work, "fresh");
    mkdirSync(fresh);
    copyFileSync(CLI, join(fresh, "kvm-backup.mjs"));
    writeFileSync(join(fresh, "config.json"), installedConfig);
    const to = join(work, "restored");
    const restore = cli(join(fresh, "kvm-backup.mjs"), join(fresh, "config.json"), ["restore", "--vm", VM, "--id", backupId, "--to", to]);
    expect(restore.status, restore.stderr).toBe(0);
    // The domain's disks were not written since they were created: the restore equals them.
    expect(sha256(readFileSync(join(to, "vda.raw")))).toBe(domain.disks[0]!.sha256);
    expect(sha256(readFileSync(join(to, "vdb.raw")))).toBe(domain.disks[1]!.sha256);
  }, 180_000);
});

describe("preflight failure", () => {
  let bare: { info: SshdLabInfo; stop: () => Promise<void> } | undefined;

  afterAll(async () => {
    await bare?.stop();
  });

  it("a host without zstd and with a VM libvirt does not know fails with the doctor's report, gets nothing installed, and the other host proceeds", async () => {
    // A second host: its own sshd (own host key) whose sessions have a PATH with every tool of this machine but zstd.
    const bin = join(work, "bin-without-zstd");
    mkdirSync(bin);
    for (const dir of ["/usr/bin", "/usr/sbin"]) {
      for (const name of readdirSync(dir)) {
        if (name === "zstd" || existsSync(join(bin, name))) continue;
        symlinkSync(join(dir, name), join(bin, name));
      }
    }
    bare = await startSshdLab({ extraConfig: [`SetEnv PATH=${bin}`] });
    const lab: HostSetup = { name: "lab", ssh: sshd, root: join(work, "pf-lab-root"), staging: join(work, "pf-lab-staging"), vms: [VM] };
    const other: HostSetup = { name: "bare", ssh: bare.info, root: join(work, "pf-bare-root"), staging: join(work, "pf-bare-staging"), vms: ["no-such-vm"] };
    createTestDomain(libvirt, VM, { dir: join(work, "pf-domain") });
    const pfTarget = join(sshd.remoteRoot, `deploy-pf-${work.slice(-6)}`);
    try {
      const preview = await capture(overrides([lab, other], pfTarget));
      const up = await replayUp(preview.resources, EMPTY_STATE);
      expectDependencyOrder(up, preview);

      // The preflight fails; everything after it on that host is skipped; nothing of the lab host failed.
      expect(up.failed[0]).toMatchObject({ name: "bare/preflight", exitCode: 3 });
      expect(up.failed.slice(1).map((s) => s.name).sort()).toEqual(["runner", "staging/dir", "lab-ssh/key", "config", `${POLICY}/units`].map((n) => `bare/${n}`).sort());
      for (const s of up.failed.slice(1)) expect(s.skipped).toMatch(/^dependency urn:pulumi:lab::kvm-backup::.*::bare\/(preflight|runner|config) failed$/);
      expect(up.steps.filter((s) => s.name.startsWith("lab/")).every((s) => s.ok && s.op === "create")).toBe(true);
      const report = up.failed[0]!.stderr;
      expect(report).toContain("zstd not found on PATH");
      expect(report).toContain("apt-get install zstd");
      expect(report).toContain("has no domain no-such-vm");
      expect(report).toContain("kvm-backup deploy (preflight) on host bare: kvm-backup doctor found problems (exit 3");
      expect(report).toContain("nothing was changed on this host");
      // Nothing active on the bare host: only the copied bundle of a release that never became current.
      const otherLayout = hostLayout(other.root);
      const releaseId = `${preview.outputs.bare.runnerRelease}`;
      expect(filesUnder(other.root)).toEqual([`opt/kvm-backup/releases/${releaseId}/kvm-backup.mjs`]);
      expect(existsSync(otherLayout.currentLink)).toBe(false);
      expect(existsSync(other.staging)).toBe(false);
      // The lab host got everything.
      const labLayout = hostLayout(lab.root);
      expect(readlinkSync(labLayout.currentLink)).toBe(`releases/${releaseId}`);
      expect(existsSync(labLayout.configFile)).toBe(true);
      expect(existsSync(join(labLayout.unitDir, `kvm-backup-${POLICY}.timer`))).toBe(true);

      // destroy cleans both hosts, including the bundle copy the failed preflight left behind.
      const down = await replayDestroy(up.state);
      expect(failureReport(down)).toBe("");
      expect(filesUnder(other.root)).toEqual([]);
      expect(filesUnder(lab.root)).toEqual([]);

      // The pinned host key is enforced: the lab host's step with another host's key does not run.
      const release = preview.resources.find((r) => r.name === "lab/release")!;
      const forged = { ...release, inputs: { ...release.inputs, connection: { ...(release.inputs.connection as object), hostKey: bare.info.hostKey } } };
      const refused = await replayUp([forged], EMPTY_STATE);
      expect(refused.failed.map((st) => st.exitCode)).toEqual([255]);
      expect(refused.failed[0]!.stderr).toMatch(/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED/);
      expect(filesUnder(lab.root)).toEqual([]);
    } finally {
      removeTestDomain(libvirt, VM);
      rmSync(pfTarget, { recursive: true, force: true });
    }
  }, 180_000);
});
