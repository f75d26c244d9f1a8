/**
 * The systemd units a policy renders to, checked by systemd itself: `systemd-analyze verify` on every
 * rendered unit (under a temporary --root holding the unit files, the distribution's units and the runner
 * command the ExecStart names), `systemd-analyze calendar` on every schedule of the example stacks.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nextElapse, parseCalendar } from "../../runner/config/calendar.ts";
import { loadStackFile } from "../../runner/config/loadStack.ts";
import { type Policy, Policy as PolicySchema } from "../../runner/config/schema.ts";
import { HOST_LAYOUT, hostLayout } from "../../components/render/layout.ts";
import { scheduleSummary } from "../../components/render/schedule.ts";
import { renderDrillServiceUnit, renderDrillTimerUnit, renderServiceUnit, renderTimerUnit, unitNames } from "../../components/render/units.ts";

const SYSTEMD_UNITS = "/usr/lib/systemd/system";

function requireTool(name: string): void {
  const r = spawnSync("sh", ["-c", `command -v ${name}`]);
  if (r.status !== 0) throw new Error(`${name} is missing: install the Debian package systemd (apt-get install systemd)`);
}

function examplePolicies(): Array<[string, Policy]> {
  const out: Array<[string, Policy]> = [];
  for (const stack of ["lab", "prod.example"]) {
    const cfg = loadStackFile(join(process.cwd(), "stacks", `Pulumi.${stack}.yaml`), process.cwd());
    for (const [name, p] of Object.entries(cfg.policies)) out.push([name, p]);
  }
  return out;
}

const base = { retention: { keepLast: 1 }, schedule: "daily", targets: [] };
const extraPolicies: Array<[string, Policy]> = [
  ["defaults-lvm", PolicySchema.parse({ method: "lvm", ...base })],
  ["idle-io", PolicySchema.parse({ method: "libvirt", ...base, limits: { ioClass: "idle", nice: 19, timeout: "90s" } })],
  ["realtime-io", PolicySchema.parse({ method: "libvirt", ...base, randomizedDelay: 0, limits: { ioClass: "realtime", ioPriority: 0, cpuQuota: "250%", timeout: "1h 30min" } })],
];
const policies = [...examplePolicies(), ...extraPolicies];

let root: string;

/** A root that has what systemd needs to load the units: its own units and the runner command. */
beforeAll(() => {
  requireTool("systemd-analyze");
  root = mkdtempSync(join(tmpdir(), "kvm-backup-units-"));
  mkdirSync(join(root, "usr/lib/systemd"), { recursive: true });
  cpSync(SYSTEMD_UNITS, join(root, "usr/lib/systemd/system"), { recursive: true, verbatimSymlinks: true });
  mkdirSync(join(root, "etc/systemd/system"), { recursive: true });
  // The layout the runner install creates: /usr/local/bin/kvm-backup -> /opt/kvm-backup/current/kvm-backup.mjs
  mkdirSync(join(root, "opt/kvm-backup/releases/0123456789abcdef"), { recursive: true });
  writeFileSync(join(root, "opt/kvm-backup/releases/0123456789abcdef/kvm-backup.mjs"), "#!/usr/bin/env node\n");
  chmodSync(join(root, "opt/kvm-backup/releases/0123456789abcdef/kvm-backup.mjs"), 0o755);
  symlinkSync("releases/0123456789abcdef", join(root, "opt/kvm-backup/current"));
  mkdirSync(join(root, "usr/local/bin"), { recursive: true });
  symlinkSync("/opt/kvm-backup/current/kvm-backup.mjs", join(root, "usr/local/bin/kvm-backup"));
});
afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

function verify(files: Record<string, string>): { status: number | null; output: string } {
  const paths = Object.entries(files).map(([name, text]) => {
    const p = join(root, "etc/systemd/system", name);
    writeFileSync(p, text);
    return p;
  });
  const r = spawnSync("systemd-analyze", ["verify", `--root=${root}`, ...paths], { encoding: "utf8", timeout: 30_000 });
  for (const p of paths) rmSync(p);
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

describe("systemd-analyze verify", () => {
  it.each(policies)("policy %s: service and timer verify without a single warning", (name, policy) => {
    const u = unitNames(name);
    const result = verify({ [u.service]: renderServiceUnit(name, policy), [u.timer]: renderTimerUnit(name, policy) });
    expect(result.output).toBe("");
    expect(result.status).toBe(0);
  });

  it("the check is able to fail: RuntimeMaxSec= on a oneshot service and a missing ExecStart binary are reported", () => {
    const [name, policy] = policies[0]!;
    const bad = renderServiceUnit(name, policy)
      .replace(/^TimeoutStartSec=.*$/m, "RuntimeMaxSec=3600")
      .replace(HOST_LAYOUT.binLink, "/usr/local/bin/not-installed");
    const result = verify({ [unitNames(name).service]: bad });
    expect(result.output).toContain("RuntimeMaxSec= has no effect in combination with Type=oneshot");
    expect(result.output).toContain("/usr/local/bin/not-installed is not executable");
    expect(result.status).not.toBe(0);
  });
});

describe("rendered service", () => {
  it("runs the policy once with the policy's limits", () => {
    const p = PolicySchema.parse({ method: "lvm", ...base, limits: { nice: 5, ioClass: "idle", ioPriority: 3, cpuQuota: "50%", timeout: "6h" } });
    const text = renderServiceUnit("nightly", p);
    expect(text).toContain("\nType=oneshot\n");
    expect(text).toContain("\nExecStart=/usr/local/bin/kvm-backup run --policy nightly\n");
    expect(text).toContain("\nNice=5\n");
    expect(text).toContain("\nIOSchedulingClass=idle\n");
    expect(text).toContain("\nIOSchedulingPriority=3\n");
    expect(text).toContain("\nCPUQuota=50%\n");
    expect(text).toContain("\nTimeoutStartSec=6h\n");
    expect(text).not.toContain("RuntimeMaxSec");
  });

  it("under another deploy root names the prefixed command and config", () => {
    const text = renderServiceUnit("nightly", extraPolicies[0]![1], hostLayout("/srv/try"));
    expect(text).toContain("\nExecStart=/srv/try/usr/local/bin/kvm-backup --config /srv/try/etc/kvm-backup/config.json run --policy nightly\n");
    expect(renderServiceUnit("nightly", extraPolicies[0]![1], hostLayout("/"))).toContain("\nExecStart=/usr/local/bin/kvm-backup run --policy nightly\n");
  });

  it("has no CPUQuota= line without a cpuQuota", () => {
    expect(renderServiceUnit("x", extraPolicies[0]![1])).not.toContain("CPUQuota=");
  });

  it("renders the default limits of the schema", () => {
    const text = renderServiceUnit("x", extraPolicies[0]![1]);
    expect(text).toMatch(/\nNice=10\nIOSchedulingClass=best-effort\nIOSchedulingPriority=7\n/);
    expect(text).toContain("\nTimeoutStartSec=6h\n");
  });
});

describe("rendered timer", () => {
  it("carries the schedule, the randomized delay in systemd's spelling and Persistent=true", () => {
    const p = PolicySchema.parse({ method: "libvirt", ...base, schedule: "Sun *-*-* 03:00", randomizedDelay: 5400 });
    const text = renderTimerUnit("weekly", p);
    expect(text).toContain("\nOnCalendar=Sun *-*-* 03:00\n");
    expect(text).toContain("\nRandomizedDelaySec=1h 30min\n");
    expect(text).toContain("\nPersistent=true\n");
    expect(text).toContain("\nUnit=kvm-backup-weekly.service\n");
    expect(text).toContain("\nWantedBy=timers.target\n");
  });
});

describe("restore drill units", () => {
  const p = PolicySchema.parse({
    method: "libvirt",
    ...base,
    drill: { schedule: "Sat *-*-* 05:00", randomizedDelay: "1h", limits: { nice: 15, ioClass: "idle", cpuQuota: "100%", timeout: "2h" } },
  });

  it("verify without a warning, under names no policy's own units can take", () => {
    const u = unitNames("nightly", "drill");
    expect(u).toEqual({ service: "kvm-backup-drill@nightly.service", timer: "kvm-backup-drill@nightly.timer" });
    expect(unitNames("drill-nightly").service).not.toBe(u.service);
    const result = verify({ [u.service]: renderDrillServiceUnit("nightly", p.drill!), [u.timer]: renderDrillTimerUnit("nightly", p.drill!) });
    expect(result.output).toBe("");
    expect(result.status).toBe(0);
  });

  it("run `drill --policy` with the drill's limits on the drill's schedule", () => {
    const svc = renderDrillServiceUnit("nightly", p.drill!);
    expect(svc).toContain("\nExecStart=/usr/local/bin/kvm-backup drill --policy nightly\n");
    expect(svc).toMatch(/\nNice=15\nIOSchedulingClass=idle\nIOSchedulingPriority=7\nCPUQuota=100%\nTimeoutStartSec=2h\n/);
    expect(svc).toContain("\nKillMode=mixed\n");
    expect(renderDrillServiceUnit("nightly", p.drill!, hostLayout("/srv/try"))).toContain("--config /srv/try/etc/kvm-backup/config.json drill --policy nightly\n");
    const timer = renderDrillTimerUnit("nightly", p.drill!);
    expect(timer).toContain("\nOnCalendar=Sat *-*-* 05:00\n");
    expect(timer).toContain("\nRandomizedDelaySec=1h\n");
    expect(timer).toContain("\nUnit=kvm-backup-drill@nightly.service\n");
  });
});

describe("systemd-analyze calendar", () => {
  const schedules = [...new Set(policies.map(([, p]) => p.schedule))];
  it.each(schedules)("schedule %j: systemd accepts it, and the normalized form and next elapse match the outputs", (schedule) => {
    requireTool("systemd-analyze");
    const now = new Date();
    const out = execFileSync("systemd-analyze", ["calendar", schedule], { encoding: "utf8", env: { ...process.env, LC_ALL: "C" } });
    const normalized = /Normalized form: (.*)/.exec(out)?.[1]?.trim();
    const nextUtc = /\(in UTC\): (.*)/.exec(out)?.[1]?.trim() ?? /Next elapse: (.*)/.exec(out)?.[1]?.trim();
    const summary = scheduleSummary({ schedule, randomizedDelay: 0 }, now);
    expect(summary.onCalendar).toBe(normalized);
    // "Sun 2026-11-29 03:00:00 UTC" -> compare as instants
    const systemdNext = new Date(nextUtc!.replace(/^\w{3} /, "").replace(" UTC", "Z").replace(" ", "T"));
    const ours = nextElapse(parseCalendar(schedule), now)!;
    // systemd-analyze ran a moment after `now`; a boundary in between would shift one of them.
    expect(Math.abs(ours.getTime() - systemdNext.getTime())).toBeLessThan(1000);
    expect(summary.nextRun).toBe(ours.toISOString());
  });
});
