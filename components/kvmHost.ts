import * as pulumi from "@pulumi/pulumi";
import { remote } from "@pulumi/command";
import { isAbsolute } from "node:path";
import { hostConfigJson, repositoryPasswordFile } from "../runner/config/hostConfig.ts";
import { type HostConfig, isNormalizedAbsolutePath, isSafeName, policyNames } from "../runner/config/schema.ts";
import { BackupPolicy } from "./backupPolicy.ts";
import { COMMAND_ARGS, commandOptions } from "./commandDefaults.ts";
import { type Connection, hostConnection, type HostConnectionArgs } from "./connection.ts";
import { RemoteTarget } from "./remoteTarget.ts";
import type { BundleArtifact } from "./render/artifact.ts";
import { sha256 } from "./render/hash.ts";
import { hostLayout, type HostLayout, releaseBundle } from "./render/layout.ts";
import type { ScheduleSummary } from "./render/schedule.ts";
import {
  renderConfigInstall,
  renderConfigRemove,
  renderPreflight,
  renderReleaseDirCreate,
  renderRepositoryPasswordInstall,
  renderRepositoryPasswordRemove,
  renderReleaseDirRemove,
  renderRunnerInstall,
  renderRunnerUninstall,
} from "./render/scripts.ts";
import { StagingDisk } from "./stagingDisk.ts";

export interface KvmHostArgs {
  /** The host's key under `hosts:` in the stack. */
  hostName: string;
  connection: HostConnectionArgs;
  /** The host's slice of the stack (renderHostConfig): what /etc/kvm-backup/config.json will hold. */
  config: HostConfig;
  /** Secret files of the targets in `config.targets`, by name: an ssh target's private key, an s3 target's credentials file. */
  targetKeys: Record<string, pulumi.Input<string>>;
  /** The runner bundle to install. */
  bundle: BundleArtifact;
  /** When the program runs (next-run outputs). */
  now?: Date;
  /** The deploy root on the host (`hosts.<host>.root`, default "/"; see hostLayout). */
  root?: string;
  /** The restic repositories' password (a secret), when a policy of this host uses format: repository. */
  repositoryPassword?: pulumi.Input<string>;
}

export interface PolicyOutputs extends ScheduleSummary {
  service: string;
  timer: string;
  vms: string[];
  /** The restore drill's units and schedule (policies.<name>.drill). */
  drill?: ScheduleSummary & { service: string; timer: string };
}

/** Everything the program checks before creating a single resource for a host; throws a plain message. */
export function validateKvmHostArgs(name: string, args: KvmHostArgs): void {
  const where = `KvmHost ${name}`;
  if (!isSafeName(args.hostName)) throw new Error(`${where}: host name "${args.hostName}" is not a safe name`);
  if (args.config.host !== args.hostName) throw new Error(`${where}: the config is for host "${args.config.host}", not "${args.hostName}"`);
  if (args.root !== undefined && !isNormalizedAbsolutePath(args.root)) throw new Error(`${where}: the deploy root "${args.root}" must be an absolute, normalized path`);
  const etcDir = hostLayout(args.root).etcDir;
  if (!isAbsolute(args.bundle.path)) throw new Error(`${where}: the bundle path ${args.bundle.path} must be absolute`);
  if (!/^[0-9a-f]{64}$/.test(args.bundle.sha256)) throw new Error(`${where}: the bundle sha256 must be 64 hex digits`);
  for (const [t, target] of Object.entries(args.config.targets)) {
    if (target.type === "ssh" && args.targetKeys[t] === undefined) {
      throw new Error(`${where}: ssh target "${t}" has no private key (targets.${t}.privateKey, a secret)`);
    }
    if (target.type === "ssh" && !target.keyFile.startsWith(`${etcDir}/`)) {
      throw new Error(`${where}: ssh target "${t}" names key file ${target.keyFile}, outside the deploy's ${etcDir} (render the host config with the host's root)`);
    }
    if (target.type === "s3" && args.targetKeys[t] === undefined) {
      throw new Error(`${where}: s3 target "${t}" has no credentials (targets.${t}.accessKeyId and secretAccessKey, secrets)`);
    }
    if (target.type === "s3" && !target.credentialsFile.startsWith(`${etcDir}/`)) {
      throw new Error(`${where}: s3 target "${t}" names credentials file ${target.credentialsFile}, outside the deploy's ${etcDir} (render the host config with the host's root)`);
    }
  }
  if (args.config.repositoryPasswordFile !== undefined && args.repositoryPassword === undefined) {
    throw new Error(`${where}: a policy uses format: repository, but no repositoryPassword (a secret) was given`);
  }
  if (args.config.repositoryPasswordFile !== undefined && args.config.repositoryPasswordFile !== repositoryPasswordFile(etcDir)) {
    throw new Error(`${where}: the host config names the repository password file ${args.config.repositoryPasswordFile}, the deploy installs ${repositoryPasswordFile(etcDir)}`);
  }
  for (const t of Object.keys(args.targetKeys)) {
    const target = args.config.targets[t];
    if (!target) throw new Error(`${where}: a private key was given for target "${t}", which no policy of this host uses`);
    if (target.type === "path") throw new Error(`${where}: target "${t}" is a ${target.type} target and takes no private key`);
  }
  if (Object.keys(args.config.vms).length === 0) throw new Error(`${where}: the host has no VMs to back up`);
}

/**
 * One KVM host: its SSH connection, the preflight, the runner release, the config, the target keys, the
 * staging directory and one job per policy.
 *
 * Order on the host (each step depends on the previous ones):
 *   release dir + bundle copy (inactive)  ->  preflight (`doctor` from that bundle, with the new config)
 *   ->  runner switch, staging dir, target keys  ->  config  ->  units per policy.
 * A failing preflight therefore stops everything after it for this host only.
 */
export class KvmHost extends pulumi.ComponentResource {
  readonly connection: Connection;
  readonly configJson: string;
  readonly configHash: string;
  readonly runnerRelease: string;
  readonly layout: HostLayout;
  /** The version line `kvm-backup --version` printed on the host after the switch. */
  readonly runnerVersion: pulumi.Output<string>;
  readonly policies: Record<string, PolicyOutputs>;
  readonly preflight: remote.Command;
  readonly runner: remote.Command;
  readonly configFile: remote.Command;

  constructor(name: string, args: KvmHostArgs, opts?: pulumi.ComponentResourceOptions) {
    super("kvm-backup:index:KvmHost", name, {}, opts);
    validateKvmHostArgs(name, args);
    const hostName = args.hostName;
    const { bundle, config } = args;
    const layout = hostLayout(args.root);
    this.layout = layout;
    const connection = hostConnection({ ...args.connection, privateKey: pulumi.secret(args.connection.privateKey) });
    this.connection = connection;
    this.configJson = hostConfigJson(config);
    this.configHash = sha256(this.configJson);
    this.runnerRelease = bundle.releaseId;

    // Re-created for each new bundle, so the copy below has its directory. Its delete removes the directory
    // only while it is not the active release (what a failed preflight leaves behind).
    const releaseDir = new remote.Command(
      `${name}/release`,
      {
        ...COMMAND_ARGS,
        connection,
        create: renderReleaseDirCreate({ hostName, releaseId: bundle.releaseId, layout }),
        delete: renderReleaseDirRemove({ hostName, releaseId: bundle.releaseId, layout }),
        triggers: [bundle.sha256],
      },
      commandOptions(this),
    );
    const bundleCopy = new remote.CopyToRemote(
      `${name}/bundle`,
      { connection, source: new pulumi.asset.FileAsset(bundle.path), remotePath: releaseBundle(layout, bundle.releaseId), triggers: [bundle.sha256] },
      { parent: this, dependsOn: [releaseDir], deleteBeforeReplace: true },
    );
    // Runs again whenever the bundle or the config changes; everything that changes the host waits for it.
    this.preflight = new remote.Command(
      `${name}/preflight`,
      {
        ...COMMAND_ARGS,
        connection,
        create: renderPreflight({ hostName, releaseId: bundle.releaseId, bundleSha256: bundle.sha256, configSha256: this.configHash, layout }),
        stdin: this.configJson,
        triggers: [bundle.sha256, this.configHash],
      },
      commandOptions(this, [bundleCopy]),
    );
    this.runner = new remote.Command(
      `${name}/runner`,
      {
        ...COMMAND_ARGS,
        connection,
        create: renderRunnerInstall({ hostName, releaseId: bundle.releaseId, bundleSha256: bundle.sha256, layout }),
        delete: renderRunnerUninstall({ hostName, layout }),
      },
      commandOptions(this, [this.preflight]),
    );
    const staging = new StagingDisk(`${name}/staging`, { hostName, connection, path: config.staging.path, dependsOn: [this.preflight] }, { parent: this });
    const targets = Object.entries(config.targets).map(
      ([t, target]) =>
        new RemoteTarget(
          `${name}/${t}`,
          { hostName, targetName: t, target, connection, privateKey: args.targetKeys[t], layout, dependsOn: [this.preflight] },
          { parent: this },
        ),
    );
    // The repository password as a root-only file, from stdin (a secret input; its script prints one status line).
    const password =
      config.repositoryPasswordFile === undefined
        ? []
        : [
            new remote.Command(
              `${name}/repository-password`,
              {
                ...COMMAND_ARGS,
                connection,
                create: renderRepositoryPasswordInstall({ hostName, layout }),
                delete: renderRepositoryPasswordRemove({ hostName, layout }),
                stdin: pulumi.secret(pulumi.output(args.repositoryPassword!)),
              },
              commandOptions(this, [this.preflight]),
            ),
          ];
    this.configFile = new remote.Command(
      `${name}/config`,
      {
        ...COMMAND_ARGS,
        connection,
        create: renderConfigInstall({ hostName, configSha256: this.configHash, layout }),
        delete: renderConfigRemove({ hostName, layout }),
        stdin: this.configJson,
      },
      commandOptions(this, [this.runner, staging, ...targets, ...password]),
    );
    const now = args.now ?? new Date();
    this.policies = {};
    for (const [p, policy] of Object.entries(config.policies)) {
      const vms = Object.entries(config.vms)
        .filter(([, vm]) => policyNames(vm).includes(p))
        .map(([v]) => v);
      const bp = new BackupPolicy(`${name}/${p}`, { hostName, policyName: p, policy, vms, connection, now, layout, dependsOn: [this.configFile] }, { parent: this });
      this.policies[p] = { ...bp.schedule, service: bp.job.service, timer: bp.job.timer, vms: bp.vms };
      if (bp.drill) this.policies[p].drill = { ...bp.drill.schedule, service: bp.drill.job.service, timer: bp.drill.job.timer };
    }
    this.runnerVersion = this.runner.stdout.apply((s) => (s ?? "").trim().split("\n").pop() ?? "");
    this.registerOutputs({
      runnerVersion: this.runnerVersion,
      runnerRelease: this.runnerRelease,
      configHash: this.configHash,
      policies: this.policies,
    });
  }
}
