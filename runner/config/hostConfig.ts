/**
 * The host's slice of the stack: what `pulumi up` writes to /etc/kvm-backup/config.json and the runner reads.
 * Secrets are not in it: target keys (an ssh target's private key, an s3 target's access keys) are separate
 * root-only files whose paths the config names (keyFile, credentialsFile).
 */
import { readFileSync } from "node:fs";
import { ConfigError, problemsFromZod } from "./configErrors.ts";
import { HOST_CONFIG_VERSION, HostConfig, type HostConfigInput, policyNames, type StackConfig } from "./schema.ts";

export const ETC_DIR = "/etc/kvm-backup";
export const HOST_CONFIG_FILE = `${ETC_DIR}/config.json`;

export function targetKeyFile(target: string, etcDir = ETC_DIR): string {
  return `${etcDir}/keys/${target}.key`;
}

/** The restic repositories' password on the host (format: repository): root-only, installed by the deploy. */
export function repositoryPasswordFile(etcDir = ETC_DIR): string {
  return `${etcDir}/keys/repository.password`;
}

/** Pure: the JSON document for one host, with only the policies and targets its VMs use. */
export function renderHostConfig(stack: StackConfig, hostName: string, etcDir = ETC_DIR): HostConfig {
  const host = stack.hosts[hostName];
  if (!host) throw new Error(`no host "${hostName}" in the stack`);
  const policyUsed = new Set(Object.values(host.vms).flatMap(policyNames));
  const policies = Object.fromEntries(Object.entries(stack.policies).filter(([n]) => policyUsed.has(n)));
  const targetUsed = new Set(Object.values(policies).flatMap((p) => p.targets));
  const targets = Object.fromEntries(
    Object.entries(stack.targets)
      .filter(([n]) => targetUsed.has(n))
      .map(([n, t]) => {
        if (t.type === "s3") {
          const { accessKeyId: _id, secretAccessKey: _secret, ...rest } = t;
          return [n, { ...rest, credentialsFile: targetKeyFile(n, etcDir) }];
        }
        if (t.type !== "ssh") return [n, t];
        const { privateKey: _secret, ...rest } = t;
        return [n, { ...rest, keyFile: targetKeyFile(n, etcDir) }];
      }),
  );
  const doc: HostConfigInput = {
    version: HOST_CONFIG_VERSION,
    host: hostName,
    libvirtUri: host.libvirtUri,
    staging: host.staging,
    targets,
    policies,
    vms: host.vms,
    ...(Object.values(policies).some((p) => p.format === "repository") ? { repositoryPasswordFile: repositoryPasswordFile(etcDir) } : {}),
  };
  return HostConfig.parse(doc);
}

/** Stable JSON text (the deploy hashes it to decide whether the host needs the new config). */
export function hostConfigJson(cfg: HostConfig): string {
  return JSON.stringify(cfg, null, 2) + "\n";
}

export function parseHostConfig(text: string, file: string): HostConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError([{ file, path: "(json)", message: `not valid JSON: ${(e as Error).message}` }]);
  }
  const result = HostConfig.safeParse(raw);
  if (!result.success) throw new ConfigError(problemsFromZod(file, result.error));
  return result.data;
}

export function loadHostConfig(file = HOST_CONFIG_FILE): HostConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError([
      { file, path: "(file)", message: `cannot read the host config (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); it is installed by \`pulumi up\`, or pass --config FILE` },
    ]);
  }
  return parseHostConfig(text, file);
}
