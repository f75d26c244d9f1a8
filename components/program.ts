/**
 * The Pulumi program behind index.ts, as functions: validate the stack file, read the decrypted config,
 * build one KvmHost per host, return the stack outputs. Validation happens before any resource exists.
 */
import * as pulumi from "@pulumi/pulumi";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "../runner/config/configErrors.ts";
import { renderHostConfig } from "../runner/config/hostConfig.ts";
import { displayPath, loadStackFile, NAMESPACE, parseDecryptedConfig, stackFilePath } from "../runner/config/loadStack.ts";
import type { StackConfig } from "../runner/config/schema.ts";
import { renderS3Credentials } from "../runner/targets/s3Credentials.ts";
import { KvmHost, type PolicyOutputs } from "./kvmHost.ts";
import { type BundleArtifact, bundleArtifact, BundleMissingError } from "./render/artifact.ts";
import { hostLayout } from "./render/layout.ts";

export interface HostOutputs {
  address: string;
  runnerVersion: pulumi.Output<string>;
  runnerRelease: string;
  configHash: string;
  policies: Record<string, PolicyOutputs>;
}

/** The stack config keys, all in the `kvm-backup` namespace. */
const OBJECT_KEYS = ["targets", "policies", "hosts"] as const;

/** Reads the engine-decrypted config (secrets in clear text here; they are wrapped again right after). */
export function readDecryptedConfig(config = new pulumi.Config(NAMESPACE)): Record<string, unknown> {
  const raw: Record<string, unknown> = {};
  const key = config.get("sshPrivateKey");
  if (key !== undefined) raw.sshPrivateKey = key;
  const password = config.get("repositoryPassword");
  if (password !== undefined) raw.repositoryPassword = password;
  for (const k of OBJECT_KEYS) {
    const v = config.getObject<unknown>(k);
    if (v !== undefined) raw[k] = v;
  }
  return raw;
}

/** The private keys of one host (and its s3 targets' credentials files), each wrapped as a secret Output before anything else sees them. */
export function hostSecrets(stack: StackConfig, hostName: string): { privateKey: pulumi.Output<string>; targetKeys: Record<string, pulumi.Output<string>> } {
  const host = stack.hosts[hostName]!;
  const key = host.privateKey ?? stack.sshPrivateKey;
  if (key === undefined) throw new Error(`host ${hostName} has no SSH private key (the schema should have refused this)`);
  const targetKeys: Record<string, pulumi.Output<string>> = {};
  const used = renderHostConfig(stack, hostName).targets;
  for (const t of Object.keys(used)) {
    const target = stack.targets[t]!;
    if (target.type === "ssh") targetKeys[t] = pulumi.secret(target.privateKey);
    // Both keys in one root-only file on the host (AWS credentials format); rendered here, wrapped at once.
    if (target.type === "s3") targetKeys[t] = pulumi.secret(renderS3Credentials(t, target));
  }
  return { privateKey: pulumi.secret(key), targetKeys };
}

export function buildHosts(stack: StackConfig, bundle: BundleArtifact, now = new Date()): Record<string, HostOutputs> {
  const outputs: Record<string, HostOutputs> = {};
  for (const [hostName, host] of Object.entries(stack.hosts)) {
    const secrets = hostSecrets(stack, hostName);
    const kvm = new KvmHost(hostName, {
      hostName,
      connection: { address: host.address, port: host.port, user: host.user, hostKey: host.hostKey, privateKey: secrets.privateKey },
      config: renderHostConfig(stack, hostName, hostLayout(host.root).etcDir),
      targetKeys: secrets.targetKeys,
      bundle,
      now,
      root: host.root,
      // Only a host whose policies use format: repository gets the password (as a secret, wrapped at once).
      repositoryPassword: renderHostConfig(stack, hostName).repositoryPasswordFile !== undefined && stack.repositoryPassword !== undefined ? pulumi.secret(stack.repositoryPassword) : undefined,
    });
    outputs[hostName] = {
      address: host.address,
      runnerVersion: kvm.runnerVersion,
      runnerRelease: kvm.runnerRelease,
      configHash: kvm.configHash,
      policies: kvm.policies,
    };
  }
  return outputs;
}

export interface ProgramOptions {
  projectDir: string;
  stack: string;
  /** dist/kvm-backup.mjs unless KVM_BACKUP_BUNDLE names another built bundle. */
  bundlePath?: string;
  now?: Date;
  config?: pulumi.Config;
}

export function projectVersion(projectDir: string): string {
  return (JSON.parse(readFileSync(join(projectDir, "package.json"), "utf8")) as { version: string }).version;
}

/**
 * The whole program. Config problems and a missing bundle become a RunError: Pulumi prints the message
 * (file, path, what is allowed) without a stack trace and no resource is registered.
 */
export function runProgram(opts: ProgramOptions): Record<string, HostOutputs> {
  const file = stackFilePath(opts.projectDir, opts.stack);
  const shown = displayPath(file, opts.projectDir);
  try {
    loadStackFile(file, opts.projectDir);
    const stack = parseDecryptedConfig(readDecryptedConfig(opts.config), shown);
    const bundlePath = opts.bundlePath ?? process.env.KVM_BACKUP_BUNDLE ?? join(opts.projectDir, "dist", "kvm-backup.mjs");
    const bundle = bundleArtifact(bundlePath, projectVersion(opts.projectDir));
    return buildHosts(stack, bundle, opts.now);
  } catch (e) {
    if (e instanceof ConfigError || e instanceof BundleMissingError) throw runError(e.message);
    throw e;
  }
}

/**
 * Pulumi prints a RunError without its stack, but the SDK still formats the stack once (util.inspect for its
 * trace span), which under tsx means source-map lookups taking tens of seconds. A preset stack skips that.
 */
function runError(message: string): pulumi.RunError {
  const e = new pulumi.RunError(message);
  e.stack = `RunError: ${message}`;
  return e;
}
