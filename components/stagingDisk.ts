import * as pulumi from "@pulumi/pulumi";
import { remote } from "@pulumi/command";
import { isNormalizedAbsolutePath } from "../runner/config/schema.ts";
import { COMMAND_ARGS, commandOptions } from "./commandDefaults.ts";
import type { Connection } from "./connection.ts";
import { renderStagingCreate } from "./render/scripts.ts";

export interface StagingDiskArgs {
  hostName: string;
  connection: Connection;
  /** Absolute, normalized path of the local staging directory. */
  path: string;
  dependsOn?: pulumi.Input<pulumi.Resource>[];
}

/**
 * The host's local staging directory (root-only). It is created if missing and NEVER removed: destroying
 * the stack leaves it and every backup in it in place, which is why its command has no `delete`.
 */
export class StagingDisk extends pulumi.ComponentResource {
  readonly path: string;
  readonly directory: remote.Command;

  constructor(name: string, args: StagingDiskArgs, opts?: pulumi.ComponentResourceOptions) {
    super("kvm-backup:index:StagingDisk", name, {}, opts);
    if (!isNormalizedAbsolutePath(args.path)) throw new Error(`StagingDisk ${name}: path "${args.path}" must be an absolute, normalized path`);
    this.path = args.path;
    this.directory = new remote.Command(
      `${name}/dir`,
      { ...COMMAND_ARGS, connection: args.connection, create: renderStagingCreate({ hostName: args.hostName, path: args.path }) },
      commandOptions(this, args.dependsOn),
    );
    this.registerOutputs({ path: this.path });
  }
}
