/**
 * The systemd units of one policy on one host: kvm-backup-<policy>.service runs the runner once,
 * kvm-backup-<policy>.timer starts it on the policy's schedule.
 */
import { formatDuration, parseDuration } from "../../runner/config/duration.ts";
import type { DrillPolicy, Policy } from "../../runner/config/schema.ts";
import { HOST_LAYOUT, type HostLayout } from "./layout.ts";

export interface UnitNames {
  service: string;
  timer: string;
}

/** The backup job of a policy, or its restore drill (policies.<name>.drill). */
export type JobKind = "backup" | "drill";

/**
 * kvm-backup-<policy>.{service,timer}; the drill's kvm-backup-drill@<policy>.{service,timer}: instance names with
 * their own unit files (no template), because "@" is not allowed in policy names, so no policy's units can
 * collide with another policy's drill units (":" would do the same but `systemd-analyze verify` rejects it).
 */
export function unitNames(policyName: string, job: JobKind = "backup"): UnitNames {
  const base = job === "drill" ? `kvm-backup-drill@${policyName}` : `kvm-backup-${policyName}`;
  return { service: `${base}.service`, timer: `${base}.timer` };
}

const HEADER = "# Installed by `pulumi up` (kvm-backup). Local edits are overwritten on the next deploy.\n";

/** A systemd time span in systemd's own spelling, e.g. "30min", "1h 30min". */
function span(value: string | number): string {
  return formatDuration(parseDuration(value));
}

/**
 * The runner's command line. Under another deploy root the runner's default config path would be the real
 * /etc/kvm-backup/config.json, so the unit names the installed one.
 */
function execStart(policyName: string, layout: HostLayout, command: "run" | "drill" = "run"): string {
  const config = layout.root === "/" ? "" : ` --config ${layout.configFile}`;
  return `${layout.binLink}${config} ${command} --policy ${policyName}`;
}

/** A job's resource limits and run timeout, as [Service] lines. */
function limitLines(limits: Policy["limits"]): string[] {
  return [
    `Nice=${limits.nice}`,
    `IOSchedulingClass=${limits.ioClass}`,
    `IOSchedulingPriority=${limits.ioPriority}`,
    ...(limits.cpuQuota ? [`CPUQuota=${limits.cpuQuota}`] : []),
    // The run timeout: for Type=oneshot systemd ignores RuntimeMaxSec= ("has no effect in combination with
    // Type=oneshot", systemd 252); the start job IS the run, so TimeoutStartSec= bounds it.
    `TimeoutStartSec=${span(limits.timeout)}`,
  ];
}

function timerUnit(description: string, schedule: { schedule: string; randomizedDelay: string | number }, service: string): string {
  return [
    HEADER.trimEnd(),
    "[Unit]",
    `Description=${description}`,
    "",
    "[Timer]",
    `OnCalendar=${schedule.schedule}`,
    `RandomizedDelaySec=${span(schedule.randomizedDelay)}`,
    // A run missed while the host was off starts after boot instead of waiting for the next slot.
    "Persistent=true",
    `Unit=${service}`,
    "",
    "[Install]",
    "WantedBy=timers.target",
    "",
  ].join("\n");
}

export function renderServiceUnit(policyName: string, policy: Policy, layout: HostLayout = HOST_LAYOUT): string {
  const lines = [
    HEADER.trimEnd(),
    "[Unit]",
    `Description=kvm-backup: back up the VMs of policy ${policyName} (${policy.method} snapshots)`,
    // libvirt snapshots need libvirtd; ordering only, so LVM hosts without libvirt are unaffected.
    "After=network-online.target libvirtd.service lvm2-monitor.service",
    "Wants=network-online.target",
    "",
    "[Service]",
    "Type=oneshot",
    `ExecStart=${execStart(policyName, layout)}`,
    ...limitLines(policy.limits),
    // On timeout or stop only the runner gets SIGTERM, so it can commit the overlay / remove the snapshot
    // itself before the rest of the cgroup is killed; a kill -9 is repaired by the next run.
    "KillMode=mixed",
    "TimeoutStopSec=15min",
    "",
  ];
  return lines.join("\n");
}

export function renderTimerUnit(policyName: string, policy: Policy): string {
  return timerUnit(`kvm-backup: schedule of policy ${policyName}`, policy, unitNames(policyName).service);
}

/**
 * The restore drill of a policy: `kvm-backup drill --policy <name>` (every VM of the policy, one after the other)
 * with the drill's own limits. The drill waits for a running backup of the same VM (the VM lock), so the two
 * never overlap on a VM; QEMU of the scratch domain runs under libvirtd, outside this unit's cgroup.
 */
export function renderDrillServiceUnit(policyName: string, drill: DrillPolicy, layout: HostLayout = HOST_LAYOUT): string {
  return [
    HEADER.trimEnd(),
    "[Unit]",
    `Description=kvm-backup: restore drill of the VMs of policy ${policyName} (boot the newest backup without network)`,
    "After=libvirtd.service",
    "",
    "[Service]",
    "Type=oneshot",
    `ExecStart=${execStart(policyName, layout, "drill")}`,
    ...limitLines(drill.limits),
    // SIGTERM to the runner alone: it destroys the scratch domain and deletes its files; a kill -9 is cleaned
    // up by the next drill, run or recover of the VM.
    "KillMode=mixed",
    "TimeoutStopSec=5min",
    "",
  ].join("\n");
}

export function renderDrillTimerUnit(policyName: string, drill: DrillPolicy): string {
  return timerUnit(`kvm-backup: restore drill schedule of policy ${policyName}`, drill, unitNames(policyName, "drill").service);
}
