/**
 * Where the restic repositories of the repository format live, and the password that opens them.
 *
 *   staging:      <staging>/.repository                 a local repository on the staging disk (dot name: never a VM)
 *   path target:  <path>/<host>/.repository              a local repository on the mounted target
 *   ssh target:   sftp <path>/<host>/.repository         through restic's sftp back-end, with the ssh options of
 *                                                       the ssh target (pinned host key, key file, timeouts)
 *   s3 target:    s3:<endpoint>/<bucket>/[<prefix>/]<host>/.repository
 *                                                       restic's s3 back-end, the keys from the target's
 *                                                       credentials file in restic's environment
 * One repository per host and place, shared by all of the host's VMs: identical chunks of different VMs are
 * stored once. Target repositories are created with the staging repository's chunker parameters, so a copy
 * deduplicates against what the target already holds.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import type { HostConfig } from "../config/schema.ts";
import { UsageError } from "../errors.ts";
import { runtimeDir } from "../staging.ts";
import { openTarget } from "../targets/openTarget.ts";
import { readS3Credentials } from "../targets/s3Credentials.ts";
import { SshTarget } from "../targets/sshTarget.ts";
import { checkName, TargetSetupError, targetTimeoutMs } from "../targets/target.ts";
import { RepositoryPasswordError, Restic } from "./restic.ts";

export const REPOSITORY_DIR = ".repository";

/** What an operator's shell may have set for the AWS SDK or minio: none of it decides where restic writes. */
const S3_ENV_CLEARED: Record<string, undefined> = {
  AWS_SESSION_TOKEN: undefined,
  AWS_PROFILE: undefined,
  AWS_SHARED_CREDENTIALS_FILE: undefined,
  AWS_CONFIG_FILE: undefined,
  AWS_DEFAULT_REGION: undefined,
  AWS_WEB_IDENTITY_TOKEN_FILE: undefined,
  AWS_ROLE_ARN: undefined,
  MINIO_ACCESS_KEY: undefined,
  MINIO_SECRET_KEY: undefined,
  RESTIC_AWS_ASSUME_ROLE_ARN: undefined,
};

export function stagingRepositoryPath(staging: string): string {
  return join(staging, REPOSITORY_DIR);
}

/** The password file must exist, hold something, and be readable by its owner only. */
export function checkPasswordFile(file: string | undefined, target?: string): string {
  const fail = (msg: string) => (target ? new TargetSetupError(msg, target) : new RepositoryPasswordError(msg));
  if (file === undefined) {
    throw new UsageError("the host config has no repositoryPasswordFile, which format: repository needs; set the stack's repositoryPassword (a secret) and run `pulumi up`");
  }
  let st;
  try {
    st = statSync(file);
  } catch (e) {
    throw fail(`cannot read the repository password file ${file} (${(e as NodeJS.ErrnoException).code}); it is installed by \`pulumi up\` from the stack's repositoryPassword`);
  }
  if (!st.isFile() || st.size === 0) throw fail(`the repository password file ${file} is ${st.isFile() ? "empty" : "not a regular file"}; run \`pulumi up\` to install it from the stack's repositoryPassword`);
  if ((st.mode & 0o077) !== 0) {
    throw fail(`refusing the repository password file ${file}: its mode is ${(st.mode & 0o777).toString(8).padStart(4, "0")}, readable by others; run \`chmod 600 ${file}\` (and check who could have read it)`);
  }
  return file;
}

/** restic's cache for remote repositories: on staging, never in $HOME (root's home may be small or read-only). */
function cacheDir(staging: string): string {
  return join(runtimeDir(staging), "restic-cache");
}

/** The host's staging repository (opened lazily: nothing touches the disk here). */
export function stagingRepository(cfg: HostConfig): Restic {
  const staging = cfg.staging.path;
  const path = stagingRepositoryPath(staging);
  return new Restic(
    { repo: path, options: [], where: `staging repository ${path}`, lockName: "staging", target: null, timeoutMs: 600_000, cacheDir: null },
    checkPasswordFile(cfg.repositoryPasswordFile),
    staging,
  );
}

/** A target's repository for this host. Call the target's check() first (it writes the pinned known_hosts). */
export function targetRepository(cfg: HostConfig, name: string): Restic {
  const t = cfg.targets[name];
  if (!t) throw new UsageError(`unknown target "${name}" (known: ${Object.keys(cfg.targets).join(", ") || "none"})`);
  const staging = cfg.staging.path;
  const common = { lockName: `target-${name}`, target: name, timeoutMs: targetTimeoutMs(t) };
  const password = checkPasswordFile(cfg.repositoryPasswordFile, name);
  if (t.type === "s3") {
    // restic's own s3 back-end, same endpoint, bucket and credentials file as the image format; the keys go to
    // restic in its environment only. restic's s3: URL takes http:// for a gateway without TLS.
    const keys = readS3Credentials(t.credentialsFile, name);
    const repo = `s3:${t.endpoint.replace(/\/$/, "")}/${t.bucket}/${t.prefix ? `${t.prefix}/` : ""}${checkName("host", cfg.host)}/${REPOSITORY_DIR}`;
    const env = { ...S3_ENV_CLEARED, AWS_ACCESS_KEY_ID: keys.accessKeyId, AWS_SECRET_ACCESS_KEY: keys.secretAccessKey };
    const options = [`s3.bucket-lookup=${t.forcePathStyle ? "path" : "dns"}`, `s3.region=${t.region}`];
    return new Restic({ repo, options, env, where: `target "${name}" repository (${openTarget(cfg, name).where}/${cfg.host}/${REPOSITORY_DIR})`, cacheDir: cacheDir(staging), ...common }, password, staging);
  }
  const path = `${t.path}/${checkName("host", cfg.host)}/${REPOSITORY_DIR}`;
  if (t.type === "ssh") {
    const ssh = openTarget(cfg, name) as SshTarget;
    // restic runs this command instead of its own ssh; the options carry the pinned host key, the key file
    // and the keep-alive timeouts of the ssh target (none of them contains a space, so restic's split is exact).
    const command = ["ssh", ...ssh.sshOptions(), t.host, "-s", "sftp"].join(" ");
    return new Restic({ repo: `sftp:${t.user}@${t.host}:${path}`, options: [`sftp.command=${command}`], where: `target "${name}" repository (${ssh.where}/${cfg.host}/${REPOSITORY_DIR})`, cacheDir: cacheDir(staging), ...common }, password, staging);
  }
  return new Restic({ repo: path, options: [], where: `target "${name}" repository (${path})`, cacheDir: null, ...common }, password, staging);
}
