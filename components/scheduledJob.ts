import * as pulumi from "@pulumi/pulumi";
import { remote } from "@pulumi/command";
import type { Policy } from "../runner/config/schema.ts";
import { COMMAND_ARGS, commandOptions } from "./commandDefaults.ts";
import type { Connection } from "./connection.ts";
import { sha256 } from "./render/hash.ts";
import { HOST_LAYOUT, type HostLayout } from "./render/layout.ts";
import { renderUnitsInstall, renderUnitsRemove, unitsStdin } from "./render/scripts.ts";
import { type JobKind, renderDrillServiceUnit, renderDrillTimerUnit, renderServiceUnit, renderTimerUnit, unitNames } from "./render/units.ts";

export interface ScheduledJobArgs {
  hostName: string;
  policyName: string;
  policy: Policy;
  connection: Connection;
  /** Where the deploy installs on the host (default: the real paths). */
  layout?: HostLayout;
  dependsOn?: pulumi.Input<pulumi.Resource>[];
  /** "drill": the policy's restore drill (policy.drill must be set) instead of its backups. */
  job?: JobKind;
}

/**
 * One systemd service + timer running `kvm-backup run --policy <name>` on the policy's schedule. A changed
 * unit is an update (the install script rewrites both files and re-enables the timer); removing the policy
 * from the host deletes the resource, which disables the timer and removes the units, never backups.
 */
export class ScheduledJob extends pulumi.ComponentResource {
  readonly service: string;
  readonly timer: string;
  readonly serviceUnit: string;
  readonly timerUnit: string;
  readonly unitsHash: string;
  readonly units: remote.Command;

  constructor(name: string, args: ScheduledJobArgs, opts?: pulumi.ComponentResourceOptions) {
    super("kvm-backup:index:ScheduledJob", name, {}, opts);
    const layout = args.layout ?? HOST_LAYOUT;
    const job = args.job ?? "backup";
    const names = unitNames(args.policyName, job);
    this.service = names.service;
    this.timer = names.timer;
    if (job === "drill") {
      if (!args.policy.drill) throw new Error(`ScheduledJob ${name}: policy ${args.policyName} has no drill settings`);
      this.serviceUnit = renderDrillServiceUnit(args.policyName, args.policy.drill, layout);
      this.timerUnit = renderDrillTimerUnit(args.policyName, args.policy.drill);
    } else {
      this.serviceUnit = renderServiceUnit(args.policyName, args.policy, layout);
      this.timerUnit = renderTimerUnit(args.policyName, args.policy);
    }
    const { stdin, serviceBytes } = unitsStdin(this.serviceUnit, this.timerUnit);
    this.unitsHash = sha256(stdin);
    this.units = new remote.Command(
      `${name}/units`,
      {
        ...COMMAND_ARGS,
        connection: args.connection,
        create: renderUnitsInstall({
          hostName: args.hostName,
          policyName: args.policyName,
          serviceBytes,
          serviceSha256: sha256(this.serviceUnit),
          timerSha256: sha256(this.timerUnit),
          layout,
          job,
        }),
        delete: renderUnitsRemove({ hostName: args.hostName, policyName: args.policyName, layout, job }),
        stdin,
      },
      commandOptions(this, args.dependsOn),
    );
    this.registerOutputs({ service: this.service, timer: this.timer, unitsHash: this.unitsHash });
  }
}
