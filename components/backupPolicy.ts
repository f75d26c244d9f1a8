import * as pulumi from "@pulumi/pulumi";
import type { Policy } from "../runner/config/schema.ts";
import type { Connection } from "./connection.ts";
import type { HostLayout } from "./render/layout.ts";
import { scheduleSummary, type ScheduleSummary } from "./render/schedule.ts";
import { ScheduledJob } from "./scheduledJob.ts";

export interface BackupPolicyArgs {
  hostName: string;
  policyName: string;
  policy: Policy;
  /** The VMs on this host that use the policy (at least one: unused policies are not deployed). */
  vms: string[];
  connection: Connection;
  /** When the program runs; the next-run output is computed from it. */
  now: Date;
  layout?: HostLayout;
  dependsOn?: pulumi.Input<pulumi.Resource>[];
}

/** A policy as deployed on one host: which of its VMs it covers and the job that runs it. */
export class BackupPolicy extends pulumi.ComponentResource {
  readonly method: string;
  readonly vms: string[];
  readonly targets: string[];
  readonly schedule: ScheduleSummary;
  readonly job: ScheduledJob;
  /** The restore drill's job and schedule (policy.drill), or null. */
  readonly drill: { job: ScheduledJob; schedule: ScheduleSummary } | null;

  constructor(name: string, args: BackupPolicyArgs, opts?: pulumi.ComponentResourceOptions) {
    super("kvm-backup:index:BackupPolicy", name, {}, opts);
    if (args.vms.length === 0) throw new Error(`BackupPolicy ${name}: no VM on host ${args.hostName} uses policy ${args.policyName}`);
    this.method = args.policy.method;
    this.vms = [...args.vms].sort();
    this.targets = [...args.policy.targets];
    this.schedule = scheduleSummary(args.policy, args.now);
    this.job = new ScheduledJob(
      name,
      { hostName: args.hostName, policyName: args.policyName, policy: args.policy, connection: args.connection, layout: args.layout, dependsOn: args.dependsOn },
      { parent: this },
    );
    this.drill = args.policy.drill
      ? {
          schedule: scheduleSummary(args.policy.drill, args.now),
          job: new ScheduledJob(
            `${name}/drill`,
            { hostName: args.hostName, policyName: args.policyName, policy: args.policy, connection: args.connection, layout: args.layout, dependsOn: args.dependsOn, job: "drill" },
            { parent: this },
          ),
        }
      : null;
    this.registerOutputs({ method: this.method, vms: this.vms, targets: this.targets, schedule: this.schedule, drillSchedule: this.drill?.schedule ?? null });
  }
}
