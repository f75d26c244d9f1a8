export { KvmHost, type KvmHostArgs, type PolicyOutputs, validateKvmHostArgs } from "./kvmHost.ts";
export { StagingDisk, type StagingDiskArgs } from "./stagingDisk.ts";
export { RemoteTarget, type RemoteTargetArgs } from "./remoteTarget.ts";
export { BackupPolicy, type BackupPolicyArgs } from "./backupPolicy.ts";
export { ScheduledJob, type ScheduledJobArgs } from "./scheduledJob.ts";
export { hostConnection, type Connection, type HostConnectionArgs } from "./connection.ts";
export { bundleArtifact, BundleMissingError, type BundleArtifact } from "./render/artifact.ts";
