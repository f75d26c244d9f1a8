import * as pulumi from "@pulumi/pulumi";
import { remote } from "@pulumi/command";
import type { HostTarget } from "../runner/config/schema.ts";
import { COMMAND_ARGS, commandOptions } from "./commandDefaults.ts";
import type { Connection } from "./connection.ts";
import { HOST_LAYOUT, type HostLayout, keyFile } from "./render/layout.ts";
import { renderKeyInstall, renderKeyRemove } from "./render/scripts.ts";

export interface RemoteTargetArgs {
  hostName: string;
  targetName: string;
  /** The target as the host config describes it (an ssh target names its key file). */
  target: HostTarget;
  connection: Connection;
  /** Required for ssh targets (the private key) and s3 targets (the credentials file's content): a secret. */
  privateKey?: pulumi.Input<string>;
  /** Where the deploy installs on the host (default: the real paths). */
  layout?: HostLayout;
  dependsOn?: pulumi.Input<pulumi.Resource>[];
}

/** OpenSSH refuses a private key file whose last line has no newline. */
export function withTrailingNewline(key: string): string {
  return key.endsWith("\n") ? key : `${key}\n`;
}

/**
 * A place backups are shipped to, as seen from one host. An ssh target installs its private key, an s3 target
 * its credentials file (both access keys, AWS credentials format), as a root-only file (via stdin, a secret input,
 * never on a command line or in stdout); a path target needs nothing on the host besides the mount, which
 * `kvm-backup doctor` checks.
 */
export class RemoteTarget extends pulumi.ComponentResource {
  readonly type: string;
  /** Where the key lives on the host (ssh targets). */
  readonly keyFile?: string;
  readonly key?: remote.Command;

  constructor(name: string, args: RemoteTargetArgs, opts?: pulumi.ComponentResourceOptions) {
    super("kvm-backup:index:RemoteTarget", name, {}, opts);
    this.type = args.target.type;
    if (args.target.type === "ssh" || args.target.type === "s3") {
      if (args.privateKey === undefined) {
        const needs = args.target.type === "ssh" ? `its private key (targets.${args.targetName}.privateKey, a secret)` : `its credentials (targets.${args.targetName}.accessKeyId and secretAccessKey, secrets)`;
        throw new Error(`RemoteTarget ${name}: ${args.target.type} target "${args.targetName}" needs ${needs}`);
      }
      const layout = args.layout ?? HOST_LAYOUT;
      const expected = keyFile(layout, args.targetName);
      const named = args.target.type === "ssh" ? args.target.keyFile : args.target.credentialsFile;
      if (named !== expected) {
        throw new Error(`RemoteTarget ${name}: the host config names key file ${named}, the deploy installs ${expected}`);
      }
      this.keyFile = expected;
      this.key = new remote.Command(
        `${name}/key`,
        {
          ...COMMAND_ARGS,
          connection: args.connection,
          create: renderKeyInstall({ hostName: args.hostName, target: args.targetName, layout }),
          delete: renderKeyRemove({ hostName: args.hostName, target: args.targetName, layout }),
          // A changed key is an update: `create` runs again with the new stdin.
          stdin: pulumi.secret(pulumi.output(args.privateKey).apply(withTrailingNewline)),
        },
        commandOptions(this, args.dependsOn),
      );
    } else if (args.privateKey !== undefined) {
      throw new Error(`RemoteTarget ${name}: path target "${args.targetName}" takes no private key`);
    }
    this.registerOutputs({ type: this.type, keyFile: this.keyFile });
  }
}
