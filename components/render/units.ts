/**
 * The systemd units of one policy on one host: kvm-backup-<policy>.service runs the runner once,
 * kvm-backup-<policy>.timer starts it on the policy's schedule.
 */
import { formatDuration, parseDuration } from "../../runner/config/duration.ts";
import type { Policy } from "../../runner/config/schema.ts";
import { HOST_LAYOUT, type HostLayout } from "./layout.ts";

export interface UnitNames {
  service: string;
  timer: string;
}

export function unitNames(policyName: string): UnitNames {
  return { service: `kvm-backup-${policyName}.service`, timer: `kvm-backup-${policyName}.timer` };
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
function execStart(policyName: string, layout: HostLayout): string {
  const config = layout.root === "/" ? "" : ` --config ${layout.configFile}`;
  return `${layout.binLink}${config} run --policy ${policyName}`;
}

export function renderServiceUnit(policyName: string, policy: Policy, layout: HostLayout = HOST_LAYOUT): string {
  const { limits } = policy;
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
    `Nice=${limits.nice}`,
    `IOSchedulingClass=${limits.ioClass}`,
    `IOSchedulingPriority=${limits.ioPriority}`,
    ...(limits.cpuQuota ? [`CPUQuota=${limits.cpuQuota}`] : []),
    // The run timeout: for Type=oneshot systemd ignores RuntimeMaxSec= ("has no effect in combination with
    // Type=oneshot", systemd 252); the start job IS the run, so TimeoutStartSec= bounds it.
    `TimeoutStartSec=${span(limits.timeout)}`,
    // On timeout or stop only the runner gets SIGTERM, so it can commit the overlay / remove the snapshot
    // itself before the rest of the cgroup is killed; a kill -9 is repaired by the next run.
    "KillMode=mixed",
    "TimeoutStopSec=15min",
    "",
  ];
  return lines.join("\n");
}

export function renderTimerUnit(policyName: string, policy: Policy): string {
  const lines = [
    HEADER.trimEnd(),
    "[Unit]",
    `Description=kvm-backup: schedule of policy ${policyName}`,
    "",
    "[Timer]",
    `OnCalendar=${policy.schedule}`,
    `RandomizedDelaySec=${span(policy.randomizedDelay)}`,
    // A run missed while the host was off starts after boot instead of waiting for the next slot.
    "Persistent=true",
    `Unit=${unitNames(policyName).service}`,
    "",
    "[Install]",
    "WantedBy=timers.target",
    "",
  ];
  return lines.join("\n");
}
