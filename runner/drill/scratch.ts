/**
 * Where a restore drill lives while it runs, and how what a killed drill left is found again:
 *   domain   kvm-backup-drill-<vm>                            transient (gone once destroyed), one per VM
 *   files    <staging>/.kvm-backup/drill-scratch/<vm>/        restored disks, console log, UEFI variables
 * Both names follow from the VM name alone, and a drill holds the VM's lock, so the next drill, run or recover of
 * the VM (holding the same lock) can remove both without asking whether they are still in use.
 */
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../log.ts";
import { virsh } from "../libvirt/virsh.ts";
import { runtimeDir } from "../staging.ts";
import { KvmBackupError } from "../errors.ts";
import type { HostConfig } from "../config/schema.ts";
import type { Lock } from "../lock.ts";
import { lockVm } from "../pipeline.ts";

export const DRILL_DOMAIN_PREFIX = "kvm-backup-drill-";

export function drillDomainName(vm: string): string {
  return `${DRILL_DOMAIN_PREFIX}${vm}`;
}

export function drillScratchDir(staging: string, vm: string): string {
  return join(runtimeDir(staging), "drill-scratch", vm);
}

/** Destroys the drill domain of `vm` if libvirt has it (transient: destroying removes it). true when it did. */
export async function destroyDrillDomain(uri: string, vm: string): Promise<boolean> {
  const name = drillDomainName(vm);
  const r = await virsh(uri, ["destroy", name], { allowFailure: true, timeoutMs: 60_000 });
  if (r.exitCode === 0) {
    // A persistent domain of that name (someone defined one by hand from our XML) would survive destroy.
    await virsh(uri, ["undefine", "--nvram", name], { allowFailure: true });
    return true;
  }
  if (/failed to get domain|Domain not found|domain is not running/i.test(r.stderr)) {
    const u = await virsh(uri, ["undefine", "--nvram", name], { allowFailure: true });
    return u.exitCode === 0;
  }
  throw new KvmBackupError(`could not destroy the drill domain ${name}: ${r.stderr.trim()}; destroy it with \`virsh -c ${uri} destroy ${name}\``);
}

/**
 * Removes a previous drill's domain and scratch files of `vm`. The caller holds the VM lock. Libvirt is asked
 * only when a scratch directory exists or `always` (the drill itself): a host whose VMs never ran a drill, or
 * that has no libvirt (LVM without libvirt), is never asked.
 */
export async function removeDrillLeftovers(uri: string, staging: string, vm: string, log: Logger, always = false): Promise<string[]> {
  const done: string[] = [];
  const dir = drillScratchDir(staging, vm);
  const hasDir = existsSync(dir);
  if (hasDir || always) {
    if (await destroyDrillDomain(uri, vm)) done.push(`destroyed the scratch domain ${drillDomainName(vm)} of an interrupted restore drill`);
  }
  if (hasDir) {
    rmSync(dir, { recursive: true, force: true });
    done.push(`deleted the scratch files of an interrupted restore drill (${dir})`);
  }
  for (const d of done) log.warn("drill.leftover", d);
  return done;
}

/**
 * Before a backup run: the leftovers of a killed drill of each VM, if the VM's lock is free (a VM that is busy
 * is left alone; whoever holds its lock cleans up). Never fails the run.
 */
export async function removeDrillLeftoversBeforeRun(cfg: HostConfig, vms: string[], log: Logger): Promise<void> {
  for (const vm of vms) {
    if (!existsSync(drillScratchDir(cfg.staging.path, vm))) continue;
    let lock: Lock | null = null;
    try {
      lock = lockVm(cfg.staging.path, vm, "removing drill leftovers");
      await removeDrillLeftovers(cfg.libvirtUri, cfg.staging.path, vm, log.child({ vm }));
    } catch (e) {
      log.warn("drill.leftover.failed", `could not remove what an interrupted restore drill of ${vm} left: ${(e as Error).message}`, { vm });
    } finally {
      lock?.release();
    }
  }
}
