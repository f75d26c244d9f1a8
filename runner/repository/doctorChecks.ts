/**
 * `kvm-backup doctor` for the repository format: restic on PATH and at least 0.14 (the first with compression),
 * and the repository password file present and root-only. Never throws; never prints the password.
 */
import type { HostConfig } from "../config/schema.ts";
import type { Check } from "../commands/doctor.ts";
import { checkResticVersion } from "../formats/repositoryFormat.ts";
import { checkPasswordFile } from "./repositories.ts";

/** `beforeDeploy`: the deploy installs the password file after its preflight, so it is not looked for then. */
export async function repositoryChecks(cfg: HostConfig, opts: { beforeDeploy?: boolean } = {}): Promise<Check[]> {
  const out: Check[] = [];
  try {
    out.push({ name: "restic", ok: true, detail: `restic ${await checkResticVersion()} (format: repository)` });
  } catch (e) {
    out.push({ name: "restic", ok: false, detail: (e as Error).message, fix: "apt-get install restic (0.14 or newer)" });
  }
  if (opts.beforeDeploy) return out;
  try {
    out.push({ name: "repository password", ok: true, detail: `${checkPasswordFile(cfg.repositoryPasswordFile)} (root-only)` });
  } catch (e) {
    out.push({ name: "repository password", ok: false, detail: (e as Error).message, fix: "set the stack's repositoryPassword (a secret) and run `pulumi up`; the file must be mode 0600" });
  }
  return out;
}
