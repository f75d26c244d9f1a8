import { accessSync, constants, existsSync } from "node:fs";
import { delimiter, dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import { parseSize } from "../config/sizes.ts";
import { policyFormat, policyNames, type HostConfig } from "../config/schema.ts";
import { ExitCode } from "../errors.ts";
import { run as exec } from "../exec.ts";
import { domainState, MIN_LIBVIRT_VERSION, parseVirshVersion, versionAtLeast } from "../libvirt/virsh.ts";
import { checkLocalStaging } from "../localFs.ts";
import { repositoryChecks } from "../repository/doctorChecks.ts";
import type { Command } from "./command.ts";

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

function onPath(tool: string): string | null {
  for (const dir of (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(delimiter)) {
    try {
      accessSync(join(dir, tool), constants.X_OK);
      return join(dir, tool);
    } catch {
      /* next */
    }
  }
  return null;
}

const PACKAGES: Record<string, string> = {
  virsh: "libvirt-clients",
  "qemu-img": "qemu-utils",
  "qemu-nbd": "qemu-utils",
  nbdcopy: "libnbd-bin",
  zstd: "zstd",
  gzip: "gzip",
  ionice: "util-linux",
  setpriv: "util-linux",
  nice: "coreutils",
  lvs: "lvm2",
  vgs: "lvm2",
  lvcreate: "lvm2",
  lvextend: "lvm2",
  lvremove: "lvm2",
  blockdev: "util-linux",
  mount: "mount",
  umount: "mount",
};

function toolCheck(tool: string, why: string): Check {
  const p = onPath(tool);
  return p
    ? { name: `tool ${tool}`, ok: true, detail: p }
    : { name: `tool ${tool}`, ok: false, detail: `${tool} not found on PATH (needed ${why})`, fix: `apt-get install ${PACKAGES[tool] ?? tool}` };
}

/** The path itself or the closest parent directory that exists (where a missing directory would be created). */
function nearestExisting(path: string): string {
  let p = path;
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  return p;
}

/**
 * Every prerequisite of the configured policies; never throws for a failed check. `beforeDeploy`: the deploy
 * creates the staging directory right after its preflight, so a missing one is checked where it will be created.
 */
export async function doctorChecks(cfg: HostConfig, opts: { beforeDeploy?: boolean } = {}): Promise<Check[]> {
  const checks: Check[] = [];
  const major = Number(process.versions.node.split(".")[0]);
  checks.push(major >= 18 ? { name: "node", ok: true, detail: process.version } : { name: "node", ok: false, detail: `Node ${process.version} is too old`, fix: "install Node.js 18 or newer" });
  // The bundled AWS SDK supports Node 20 and later, and the s3 target's request deadlines use AbortSignal.any (20.3).
  const s3Targets = Object.entries(cfg.targets).filter(([, t]) => t.type === "s3").map(([n]) => n);
  if (s3Targets.length && typeof AbortSignal.any !== "function") {
    checks.push({ name: "node for s3 targets", ok: false, detail: `Node ${process.version} is too old for the s3 targets ${s3Targets.join(", ")}`, fix: "install Node.js 20.3 or newer" });
  }
  const usedPolicies = new Set(Object.values(cfg.vms).flatMap(policyNames));
  const policies = [...usedPolicies].map((n) => cfg.policies[n]!);
  const libvirtVms = Object.entries(cfg.vms).filter(([, v]) => !(v.disks && !Array.isArray(v.disks))).map(([n]) => n);
  const needLibvirt = policies.some((p) => p.method === "libvirt") || libvirtVms.length > 0;
  const tools = new Map<string, string>([
    ["ionice", "to run the compressor at the policy's I/O priority"],
    ["nice", "to run the compressor at the policy's CPU priority"],
    ["setpriv", "so that the compressor and image readers die with the runner"],
  ]);
  if (needLibvirt) tools.set("virsh", "to talk to libvirt");
  if (policies.some((p) => p.method === "libvirt")) {
    for (const t of ["qemu-img", "qemu-nbd", "nbdcopy"]) tools.set(t, "by the libvirt method to read qcow2 images");
  }
  if (policies.some((p) => p.method === "lvm")) {
    for (const t of ["lvs", "vgs", "lvcreate", "lvextend", "lvremove", "blockdev", "mount", "umount"]) tools.set(t, "by the lvm method");
  }
  for (const c of new Set(policies.map((p) => p.compression.type))) if (c !== "none") tools.set(c, "as the compressor of a policy");
  for (const [t, why] of tools) checks.push(toolCheck(t, why));
  if (policies.some((p) => policyFormat(p) === "repository")) checks.push(...(await repositoryChecks(cfg, opts)));

  if (needLibvirt && onPath("virsh")) {
    const r = await exec("virsh", ["-c", cfg.libvirtUri, "version"], { timeoutMs: 30_000, allowFailure: true });
    if (r.exitCode !== 0) {
      checks.push({ name: "libvirt", ok: false, detail: `cannot connect to ${cfg.libvirtUri}: ${r.stderr.trim()}`, fix: "start libvirtd (systemctl start libvirtd) or fix libvirtUri in the stack config" });
    } else {
      const v = parseVirshVersion(r.stdout);
      const ver = v.daemon ?? v.library;
      const ok = ver !== null && versionAtLeast(ver, MIN_LIBVIRT_VERSION);
      checks.push(ok ? { name: "libvirt", ok, detail: `libvirt ${ver} at ${cfg.libvirtUri} (${v.hypervisor ?? "?"})` } : { name: "libvirt", ok, detail: `libvirt ${ver ?? "unknown version"}; needs ${MIN_LIBVIRT_VERSION} or newer`, fix: "upgrade libvirt" });
      for (const vm of libvirtVms) {
        const s = await domainState(cfg.libvirtUri, vm).catch((e: Error) => `error: ${e.message}`);
        checks.push(
          s === null
            ? { name: `vm ${vm}`, ok: false, detail: `libvirt at ${cfg.libvirtUri} has no domain ${vm}`, fix: `check the VM name in the stack config against \`virsh -c ${cfg.libvirtUri} list --all\`` }
            : s.startsWith("error:")
              ? { name: `vm ${vm}`, ok: false, detail: s, fix: "check libvirtd" }
              : { name: `vm ${vm}`, ok: true, detail: `domain ${vm} is ${s}` },
        );
      }
    }
  }
  for (const [vm, v] of Object.entries(cfg.vms)) {
    if (v.disks && !Array.isArray(v.disks)) {
      for (const [disk, path] of Object.entries(v.disks)) {
        checks.push(existsSync(path) ? { name: `vm ${vm} disk ${disk}`, ok: true, detail: path } : { name: `vm ${vm} disk ${disk}`, ok: false, detail: `${path} does not exist`, fix: `fix vms.${vm}.disks.${disk} in the stack config` });
      }
    }
  }

  const staging = cfg.staging.path;
  if (!existsSync(staging) && opts.beforeDeploy) {
    const parent = nearestExisting(staging);
    try {
      const f = await checkLocalStaging(parent, parseSize(cfg.staging.minFree), `staging.minFree (${cfg.staging.minFree})`);
      checks.push({ name: "staging", ok: true, detail: `${staging} does not exist yet (the deploy creates it); ${parent}: local, ${Math.floor(f.freeBytes / 2 ** 20)} MiB free` });
    } catch (e) {
      checks.push({ name: "staging", ok: false, detail: `${staging} would be created in ${parent}: ${(e as Error).message}`, fix: "staging must be on a local filesystem with at least staging.minFree free; mount the staging disk first, or fix staging.path" });
    }
  } else if (!existsSync(staging)) {
    checks.push({ name: "staging", ok: false, detail: `${staging} does not exist`, fix: `create it on a local disk with room for the backups (mkdir -p ${staging}), or fix staging.path` });
  } else {
    try {
      const f = await checkLocalStaging(staging, parseSize(cfg.staging.minFree), `staging.minFree (${cfg.staging.minFree})`);
      checks.push({ name: "staging", ok: true, detail: `${staging}: local, ${Math.floor(f.freeBytes / 2 ** 20)} MiB free` });
    } catch (e) {
      checks.push({ name: "staging", ok: false, detail: (e as Error).message, fix: "staging must be a local filesystem with at least staging.minFree free" });
    }
  }
  return checks;
}

export const doctor: Command = {
  name: "doctor",
  summary: "check every prerequisite of this host's config, each with a fix (exit 3 if any fails)",
  usage:
    "kvm-backup doctor [--json] [--before-deploy]\n  The deploy runs `doctor --json --before-deploy` as its preflight (a staging directory that does not exist\n  yet is then checked where the deploy will create it).",
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { json: { type: "boolean", default: false }, "before-deploy": { type: "boolean", default: false } } });
    const cfg = loadHostConfig(ctx.configFile);
    const checks = await doctorChecks(cfg, { beforeDeploy: values["before-deploy"] });
    const ok = checks.every((c) => c.ok);
    if (values.json) ctx.stdout(JSON.stringify({ ok, host: cfg.host, checks }, null, 2) + "\n");
    else for (const c of checks) ctx.stdout(`${c.ok ? "ok  " : "FAIL"} ${c.name}: ${c.detail}${c.fix ? `\n     fix: ${c.fix}` : ""}\n`);
    return ok ? ExitCode.ok : ExitCode.preflight;
  },
};
