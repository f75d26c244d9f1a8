/**
 * The `libvirt` snapshot back-end: a disk-only external snapshot of all selected disks at once
 * (`virsh snapshot-create-as --disk-only --atomic --no-metadata`). The domain then writes to new overlay files
 * and the base images are frozen; the pipeline reads the bases, then `blockcommit --active --pivot` merges the
 * overlays back and the domain runs on its base images again. A shut-off domain is read as it is, no snapshot.
 */
import { rmSync } from "node:fs";
import type { LibvirtPolicy } from "../config/schema.ts";
import { KvmBackupError, PreflightError } from "../errors.ts";
import { CommandError } from "../exec.ts";
import { diskFormatsFromDomainXml } from "../lvm/domblklist.ts";
import { imageInfo } from "../libvirt/imageInfo.ts";
import { overlayBase, overlayPath, overlaysNextTo } from "../libvirt/overlay.ts";
import {
  blockList,
  domainState,
  guestAgentAnswers,
  isActive,
  MIN_LIBVIRT_VERSION,
  parseVirshVersion,
  versionAtLeast,
  virsh,
  type BlockListEntry,
} from "../libvirt/virsh.ts";
import type { DiskToBackup, Snapshot, SnapshotBackend, VmContext } from "./backend.ts";

/** How long one blockcommit may take: it merges what the guest wrote during the backup. */
const COMMIT_TIMEOUT_MS = 3_600_000;

function libvirtPolicy(ctx: VmContext): LibvirtPolicy {
  if (ctx.policy.method !== "libvirt") throw new Error(`libvirt back-end called for a ${ctx.policy.method} policy`);
  return ctx.policy;
}

function selectedTargets(ctx: VmContext): string[] | null {
  const d = ctx.vmConfig.disks;
  if (d === undefined) return null;
  if (!Array.isArray(d)) {
    throw new PreflightError(`VM ${ctx.vm}: an explicit disks map (name -> path) is for the lvm method on QEMU without libvirt; for the libvirt method list disk targets, e.g. disks: ["vda"]`);
  }
  return d;
}

/** Commits the active overlay of one disk back into its base and pivots; copes with a job a killed run left. */
async function commitBack(uri: string, domain: string, target: string): Promise<void> {
  const r = await virsh(uri, ["blockcommit", domain, target, "--active", "--pivot", "--wait"], { timeoutMs: COMMIT_TIMEOUT_MS, allowFailure: true });
  if (r.exitCode === 0) return;
  // A runner killed during `blockcommit --wait` leaves the job running (or ready to pivot): finish that job.
  if (/block job|already active|in use by a block job/i.test(r.stderr)) {
    const until = Date.now() + COMMIT_TIMEOUT_MS;
    while (Date.now() < until) {
      const piv = await virsh(uri, ["blockjob", domain, target, "--pivot"], { allowFailure: true });
      if (piv.exitCode === 0) return;
      const info = await virsh(uri, ["blockjob", domain, target, "--info"], { allowFailure: true });
      if (/No current block job/i.test(info.stdout + info.stderr)) break;
      await new Promise((res) => setTimeout(res, 500));
    }
    const again = await virsh(uri, ["blockcommit", domain, target, "--active", "--pivot", "--wait"], { timeoutMs: COMMIT_TIMEOUT_MS, allowFailure: true });
    if (again.exitCode === 0) return;
    throw new KvmBackupError(`could not commit disk ${target} of domain ${domain} back into its base image: ${again.stderr.trim()}`);
  }
  throw new KvmBackupError(`could not commit disk ${target} of domain ${domain} back into its base image: ${r.stderr.trim()}`);
}

function onOverlay(entries: BlockListEntry[]): BlockListEntry[] {
  return entries.filter((e) => e.source !== null && overlayBase(e.source) !== null);
}

/** Deletes overlays of ours next to `bases` that the domain does not use. Never one in use. */
function removeUnusedOverlays(bases: string[], inUse: Set<string>): string[] {
  const done: string[] = [];
  for (const base of bases) {
    for (const ov of overlaysNextTo(base)) {
      if (inUse.has(ov)) continue;
      rmSync(ov, { force: true });
      done.push(`removed the stale overlay ${ov}`);
    }
  }
  return done;
}

export class LibvirtSnapshotBackend implements SnapshotBackend {
  readonly method = "libvirt" as const;

  async domainXml(ctx: VmContext): Promise<string | null> {
    return (await virsh(ctx.config.libvirtUri, ["dumpxml", ctx.vm])).stdout;
  }

  async recover(ctx: VmContext): Promise<string[]> {
    const uri = ctx.config.libvirtUri;
    const done: string[] = [];
    const state = await domainState(uri, ctx.vm);
    if (state === null) return done; // preflight says the domain is unknown
    let entries = await blockList(uri, ctx.vm);
    const stuck = onOverlay(entries);
    if (stuck.length && !isActive(state)) {
      throw new KvmBackupError(
        `domain ${ctx.vm} is ${state} while disk(s) ${stuck.map((e) => `${e.target} (${e.source})`).join(", ")} still use an overlay of an interrupted backup; ` +
          `start the domain and run \`kvm-backup recover --vm ${ctx.vm}\` (it commits the overlay back), or commit offline with \`qemu-img commit OVERLAY\` and point the disk back at its base image with \`virsh edit ${ctx.vm}\``,
      );
    }
    for (const e of stuck) {
      await commitBack(uri, ctx.vm, e.target);
      done.push(`committed disk ${e.target} back from the overlay ${e.source} of an interrupted backup`);
    }
    if (stuck.length) entries = await blockList(uri, ctx.vm);
    const still = onOverlay(entries);
    if (still.length) {
      throw new KvmBackupError(`domain ${ctx.vm}: disk(s) ${still.map((e) => e.target).join(", ")} are still on overlays after blockcommit; inspect with \`virsh -c ${uri} domblklist ${ctx.vm}\``);
    }
    const inUse = new Set(entries.flatMap((e) => (e.source ? [e.source] : [])));
    const bases = entries.flatMap((e) => (e.type === "file" && e.source ? [e.source] : []));
    done.push(...removeUnusedOverlays(bases, inUse));
    for (const d of done) ctx.log.warn("libvirt.recover", d);
    return done;
  }

  async preflight(ctx: VmContext): Promise<DiskToBackup[]> {
    const policy = libvirtPolicy(ctx);
    const uri = ctx.config.libvirtUri;
    let versionText: string;
    try {
      versionText = (await virsh(uri, ["version"])).stdout;
    } catch (e) {
      throw new PreflightError(`cannot talk to libvirt at ${uri}: ${(e as Error).message}; is libvirtd running, and is libvirtUri in the host config right?`, { cause: e });
    }
    const v = parseVirshVersion(versionText);
    for (const [what, ver] of [["libvirt library", v.library], ["libvirt daemon", v.daemon]] as const) {
      if (ver && !versionAtLeast(ver, MIN_LIBVIRT_VERSION)) {
        throw new PreflightError(`${what} is ${ver}; the libvirt method needs ${MIN_LIBVIRT_VERSION} or newer (atomic disk-only snapshots, active blockcommit); upgrade libvirt`);
      }
    }
    const state = await domainState(uri, ctx.vm);
    if (state === null) throw new PreflightError(`VM ${ctx.vm}: libvirt (${uri}) has no domain of that name; check vms.${ctx.vm} in the config and \`virsh -c ${uri} list --all\``);
    if (state === "paused" || state === "pmsuspended") ctx.log.warn("libvirt.paused", `domain ${ctx.vm} is ${state}; backing it up as it is`);
    const entries = await blockList(uri, ctx.vm);
    const formats = diskFormatsFromDomainXml(await this.domainXml(ctx) ?? "");
    const selected = selectedTargets(ctx);
    for (const t of selected ?? []) {
      if (!entries.some((e) => e.target === t)) throw new PreflightError(`VM ${ctx.vm}: disk ${t} (vms.${ctx.vm}.disks) is not a disk of the domain (it has ${entries.map((e) => e.target).join(", ")})`);
    }
    const chosen = entries.filter((e) => (selected ? selected.includes(e.target) : e.device === "disk"));
    if (!chosen.length) throw new PreflightError(`VM ${ctx.vm} has no disks to back up`);
    const disks: DiskToBackup[] = [];
    for (const e of chosen) {
      if (e.type !== "file") {
        throw new PreflightError(
          `VM ${ctx.vm}: disk ${e.target} is a ${e.type} disk (${e.source ?? "no source"}); the libvirt method backs up file-backed disks only: use a policy with method: lvm for disks on logical volumes, or leave ${e.target} out of vms.${ctx.vm}.disks`,
        );
      }
      if (!e.source) throw new PreflightError(`VM ${ctx.vm}: disk ${e.target} has no source (empty drive); leave it out of vms.${ctx.vm}.disks`);
      if (overlayBase(e.source) !== null) throw new PreflightError(`VM ${ctx.vm}: disk ${e.target} is still on the overlay ${e.source}; run \`kvm-backup recover --vm ${ctx.vm}\``);
      if (e.source.includes(",")) throw new PreflightError(`VM ${ctx.vm}: the image path of disk ${e.target} contains a comma (${e.source}), which virsh --diskspec cannot express; rename the image`);
      const format = formats.get(e.target) ?? "raw";
      let info;
      try {
        info = await imageInfo(e.source, format);
      } catch (err) {
        throw new PreflightError(`VM ${ctx.vm}: cannot read disk ${e.target} (${e.source}) as ${format}: ${(err as Error).message}`, { cause: err });
      }
      if (info.backingFile) {
        // Read through qemu-nbd, which presents the whole chain: the backup holds the flattened guest view.
        ctx.log.info("libvirt.backing", `disk ${e.target} has the backing file ${info.backingFile}; the backup stores the flattened image (whole chain)`, { disk: e.target });
      }
      disks.push({ name: e.target, source: e.source, format, virtualSize: info.virtualSize });
    }
    if (policy.snapshot.quiesce === "required" && isActive(state) && !(await guestAgentAnswers(uri, ctx.vm))) {
      throw new PreflightError(
        `VM ${ctx.vm}: the policy ${ctx.policyName} requires a quiesced snapshot (snapshot.quiesce: required), but the QEMU guest agent of the domain does not answer; install and start qemu-guest-agent in the guest (and a org.qemu.guest_agent.0 channel in the domain), or set quiesce: auto`,
      );
    }
    return disks;
  }

  async snapshot(ctx: VmContext, disks: DiskToBackup[]): Promise<Snapshot> {
    const policy = libvirtPolicy(ctx);
    const uri = ctx.config.libvirtUri;
    const log = ctx.log;
    const state = await domainState(uri, ctx.vm);
    if (!isActive(state)) {
      log.info("libvirt.offline", `domain ${ctx.vm} is ${state ?? "gone"}: reading its images as they are, without a snapshot`);
      return { kind: "none", disks: disks.map((d) => ({ ...d, readPath: d.source })), quiesced: false, createdAt: new Date(), remove: async () => undefined };
    }
    const entries = await blockList(uri, ctx.vm);
    const wanted = new Set(disks.map((d) => d.name));
    const overlays = new Map(disks.map((d) => [d.name, overlayPath(d.source, ctx.backupId)]));
    const diskspecs = entries.flatMap((e) =>
      wanted.has(e.target) ? ["--diskspec", `${e.target},snapshot=external,file=${overlays.get(e.target)}`] : e.device === "disk" || e.source ? ["--diskspec", `${e.target},snapshot=no`] : [],
    );
    let quiesce = false;
    if (policy.snapshot.quiesce !== "off") {
      quiesce = await guestAgentAnswers(uri, ctx.vm);
      if (!quiesce && policy.snapshot.quiesce === "required") {
        throw new PreflightError(`VM ${ctx.vm}: quiesce is required but the guest agent stopped answering; nothing was changed`);
      }
      if (!quiesce) log.warn("libvirt.quiesce.skipped", `the guest agent of ${ctx.vm} does not answer: the snapshot is crash-consistent, not quiesced (snapshot.quiesce: auto)`);
    }
    const create = (withQuiesce: boolean) =>
      virsh(
        uri,
        ["snapshot-create-as", ctx.vm, "--name", `kvm-backup-${ctx.backupId}`, "--disk-only", "--atomic", "--no-metadata", ...(withQuiesce ? ["--quiesce"] : []), ...diskspecs],
        { timeoutMs: 300_000 },
      );
    const createdAt = new Date();
    try {
      try {
        await create(quiesce);
      } catch (e) {
        if (!quiesce || policy.snapshot.quiesce === "required") throw e;
        log.warn("libvirt.quiesce.failed", `quiesced snapshot failed (${(e as Error).message}); taking a crash-consistent one (snapshot.quiesce: auto)`);
        quiesce = false;
        await create(false);
      }
    } catch (e) {
      // --atomic: libvirt created nothing, but an overlay file it made before failing must not be reused later.
      const after = await blockList(uri, ctx.vm).catch(() => entries);
      const used = new Set(after.flatMap((x) => (x.source ? [x.source] : [])));
      for (const ov of overlays.values()) if (!used.has(ov)) rmSync(ov, { force: true });
      if (e instanceof CommandError) throw new KvmBackupError(`VM ${ctx.vm}: the disk-only snapshot failed: ${e.message}`);
      throw e;
    }
    log.info("libvirt.snapshot.created", `snapshot of ${disks.map((d) => d.name).join(", ")} taken in ${Date.now() - createdAt.getTime()} ms${quiesce ? " (quiesced)" : ""}`, { quiesced: quiesce });
    let removed = false;
    return {
      kind: "libvirt-external",
      disks: disks.map((d) => ({ ...d, readPath: d.source })),
      quiesced: quiesce,
      createdAt,
      remove: async () => {
        if (removed) return;
        removed = true;
        const errors: string[] = [];
        for (const d of disks) {
          try {
            await commitBack(uri, ctx.vm, d.name);
          } catch (e) {
            errors.push((e as Error).message);
          }
        }
        const now = await blockList(uri, ctx.vm);
        const inUse = new Set(now.flatMap((x) => (x.source ? [x.source] : [])));
        for (const d of disks) {
          const cur = now.find((x) => x.target === d.name)?.source;
          if (cur !== d.source) errors.push(`disk ${d.name} is on ${cur ?? "nothing"} instead of its base image ${d.source}`);
          const ov = overlays.get(d.name)!;
          if (!inUse.has(ov)) rmSync(ov, { force: true });
        }
        if (errors.length) {
          throw new KvmBackupError(`VM ${ctx.vm}: removing the snapshot failed: ${errors.join("; ")}; the next run (or \`kvm-backup recover --vm ${ctx.vm}\`) commits the overlays back`);
        }
        log.info("libvirt.snapshot.removed", `domain ${ctx.vm} is back on its base images`);
      },
    };
  }
}
