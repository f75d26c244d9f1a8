/**
 * The `lvm` snapshot back-end: classic copy-on-write LVM snapshots of the LVs that hold a VM's disks, watched by
 * the fill guard while the pipeline streams them. Layout (a), an LV as the disk: the snapshot device is streamed.
 * Layout (b), an image file on a filesystem on an LV: the snapshot is mounted read-only and the file streamed.
 *
 * Where the disks come from: libvirt (domblklist + domain XML; the guest is frozen around snapshot creation when
 * its agent answers) or the explicit `disks` map for QEMU without libvirt, where no virsh is called at all and
 * the backup is crash-consistent (like pulling the power cord), never frozen.
 */
import { accessSync, constants, realpathSync, rmdirSync, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { parseDuration } from "../config/duration.ts";
import { formatBytes } from "../config/sizes.ts";
import type { LvmPolicy } from "../config/schema.ts";
import { PreflightError, KvmBackupError } from "../errors.ts";
import { run } from "../exec.ts";
import { diskFormatsFromDomainXml, parseDomblklistDetails } from "../lvm/domblklist.ts";
import { FillGuard } from "../lvm/fillGuard.ts";
import { agentAnswers, freezeGuest, thawLeftFrozen, type FrozenGuest } from "../lvm/guestFreeze.ts";
import { probeImage } from "../lvm/imageProbe.ts";
import { discoverLayout, NotOnLvmError, splitDeviceNumber, type SourceFacts } from "../lvm/layout.ts";
import { createSnapshot, extendSnapshot, listLogicalVolumes, listVolumeGroups, removeSnapshot } from "../lvm/lvmTools.ts";
import { isSnapshot, type LogicalVolume } from "../lvm/report.ts";
import { leftoverMountDirs, mountDir, mountsOfDevice, mountSnapshot, readMountTable, unmountSnapshot } from "../lvm/snapshotMount.ts";
import { isRunnerSnapshotOf, snapshotName, SNAPSHOT_PREFIX, SnapshotNameError } from "../lvm/snapshotName.ts";
import { resolveExtendPlan, resolveSnapshotSize, type ExtendPlan } from "../lvm/snapshotSize.ts";
import type { DiskToBackup, FrozenDisk, Snapshot, SnapshotBackend, VmContext } from "./backend.ts";

interface OriginPlan {
  lv: LogicalVolume;
  layout: "lv" | "file-on-lv";
  fsType: string | null;
  snapshotName: string;
  sizeBytes: number;
  extentBytes: number;
  extend: ExtendPlan;
  disks: { disk: DiskToBackup; pathInFs: string | null }[];
}

interface Plan {
  /** The libvirt domain, or null for the explicit `disks` map (QEMU without libvirt). */
  domain: string | null;
  origins: OriginPlan[];
}

function lvmPolicy(ctx: VmContext): LvmPolicy {
  if (ctx.policy.method !== "lvm") throw new Error(`lvm back-end called for a ${ctx.policy.method} policy`);
  return ctx.policy;
}

function explicitDisks(ctx: VmContext): Record<string, string> | null {
  const d = ctx.vmConfig.disks;
  return d && !Array.isArray(d) ? d : null;
}

function onPath(tool: string): boolean {
  for (const dir of (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(delimiter)) {
    try {
      accessSync(join(dir, tool), constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

function requireTools(tools: string[], why: string): void {
  const missing = tools.filter((t) => !onPath(t));
  if (missing.length) {
    throw new PreflightError(`${missing.join(", ")} not found on PATH (needed ${why}); install them (Debian: apt-get install lvm2 util-linux${tools.includes("virsh") ? " libvirt-clients" : ""})`);
  }
}

function sourceFacts(disk: string, source: string): SourceFacts {
  let realPath: string;
  let st;
  try {
    realPath = realpathSync(source);
    st = statSync(realPath, { bigint: true });
  } catch (e) {
    throw new PreflightError(`disk ${disk}: cannot read its source ${source}: ${(e as Error).message}`);
  }
  if (st.isBlockDevice()) return { realPath, kind: "block", ...splitDeviceNumber(st.rdev) };
  if (st.isFile()) return { realPath, kind: "file", ...splitDeviceNumber(st.dev) };
  return { realPath, kind: "other", major: 0, minor: 0 };
}

async function blockDeviceSize(path: string): Promise<number> {
  const res = await run("blockdev", ["--getsize64", path], { timeoutMs: 30_000 });
  return Number(res.stdout.trim());
}

export class LvmSnapshotBackend implements SnapshotBackend {
  readonly method = "lvm" as const;

  async domainXml(ctx: VmContext): Promise<string | null> {
    if (explicitDisks(ctx)) return null;
    const res = await run("virsh", ["-c", ctx.config.libvirtUri, "dumpxml", ctx.vm], { timeoutMs: 30_000 });
    return res.stdout;
  }

  async recover(ctx: VmContext): Promise<string[]> {
    const done: string[] = [];
    const staging = ctx.config.staging.path;
    if (!explicitDisks(ctx)) done.push(...(await thawLeftFrozen(staging, ctx.vm)));
    if (!onPath("lvs")) return done; // without LVM there can be no snapshot; preflight reports the missing tools
    const mine = (await listLogicalVolumes()).filter((lv) => isRunnerSnapshotOf(lv.name, ctx.vm) && isSnapshot(lv));
    for (const lv of mine) {
      if (lv.major !== null && lv.minor !== null) {
        for (const dir of mountsOfDevice(lv.major, lv.minor)) {
          await unmountSnapshot(dir);
          done.push(`unmounted the leftover snapshot mount ${dir}`);
        }
      }
      await removeWithRetry(lv.vg, lv.name);
      done.push(`removed the leftover snapshot ${lv.vg}/${lv.name} (${lv.fillPercent ?? "?"} % full)`);
    }
    for (const dir of leftoverMountDirs(staging, `${SNAPSHOT_PREFIX}${ctx.vm}+`)) {
      if (readMountTable().some((m) => m.mountPoint === dir)) await unmountSnapshot(dir);
      try {
        rmdirSync(dir);
        done.push(`removed the leftover mount directory ${dir}`);
      } catch {
        /* not empty: not ours to delete */
      }
    }
    for (const d of done) ctx.log.warn("lvm.recover", d);
    return done;
  }

  async preflight(ctx: VmContext): Promise<DiskToBackup[]> {
    lvmPolicy(ctx);
    const explicit = explicitDisks(ctx);
    requireTools(["lvs", "vgs", "lvcreate", "lvextend", "lvremove", "blockdev", ...(explicit ? [] : ["virsh"])], "by the lvm method");
    const disks = await this.listDisks(ctx);
    const plan = await this.plan(ctx, disks);
    if (plan.origins.some((o) => o.layout === "file-on-lv")) requireTools(["mount", "umount"], "to mount filesystem snapshots");
    await checkSpace(plan, lvmPolicy(ctx));
    return disks;
  }

  /** The VM's disks with format and size: from libvirt, or from the explicit map. */
  private async listDisks(ctx: VmContext): Promise<DiskToBackup[]> {
    const explicit = explicitDisks(ctx);
    const wanted: { name: string; source: string; format: string | null }[] = [];
    if (explicit) {
      for (const [name, source] of Object.entries(explicit)) wanted.push({ name, source, format: null });
    } else {
      const uri = ctx.config.libvirtUri;
      const list = await run("virsh", ["-c", uri, "domblklist", "--details", ctx.vm], { timeoutMs: 30_000, allowFailure: true });
      if (list.exitCode !== 0) {
        throw new PreflightError(`VM ${ctx.vm}: libvirt (${uri}) has no domain of that name (${list.stderr.trim()}); for QEMU without libvirt, list its disks in the host config (vms.${ctx.vm}.disks: { vda: /dev/vg/lv })`);
      }
      const formats = diskFormatsFromDomainXml((await run("virsh", ["-c", uri, "dumpxml", ctx.vm], { timeoutMs: 30_000 })).stdout);
      const selected = Array.isArray(ctx.vmConfig.disks) ? ctx.vmConfig.disks : null;
      const entries = parseDomblklistDetails(list.stdout).filter((e) => (selected ? selected.includes(e.target) : e.device === "disk"));
      for (const name of selected ?? []) {
        if (!entries.some((e) => e.target === name)) throw new PreflightError(`VM ${ctx.vm}: disk ${name} (vms.${ctx.vm}.disks) is not a disk of the domain`);
      }
      for (const e of entries) {
        if (!e.source) throw new PreflightError(`VM ${ctx.vm}: disk ${e.target} has no source (empty drive); leave it out of vms.${ctx.vm}.disks`);
        if (e.type !== "file" && e.type !== "block") {
          throw new PreflightError(`VM ${ctx.vm}: disk ${e.target} is a ${e.type} disk (${e.source}); the lvm method backs up block devices and image files on LVs only`);
        }
        wanted.push({ name: e.target, source: e.source, format: formats.get(e.target) ?? "raw" });
      }
    }
    if (!wanted.length) throw new PreflightError(`VM ${ctx.vm} has no disks to back up`);
    const out: DiskToBackup[] = [];
    for (const w of wanted) {
      const facts = sourceFacts(w.name, w.source);
      let info;
      try {
        info = probeImage(facts.realPath);
      } catch (e) {
        throw new PreflightError(`disk ${w.name}: cannot read ${w.source}: ${(e as Error).message}`);
      }
      const format = w.format ?? info.format;
      if (format === "qcow2" && info.hasBackingFile) {
        throw new PreflightError(`disk ${w.name} (${w.source}) is a qcow2 image with a backing file; the lvm method copies single images only: flatten it (qemu-img rebase -b "") or use the libvirt method`);
      }
      if (format !== "raw" && format !== "qcow2") throw new PreflightError(`disk ${w.name} (${w.source}) has the format ${format}; only raw and qcow2 are supported`);
      const virtualSize =
        format === "qcow2" && info.virtualSize !== null ? info.virtualSize : facts.kind === "block" ? await blockDeviceSize(facts.realPath) : statSync(facts.realPath).size;
      out.push({ name: w.name, source: w.source, format, virtualSize });
    }
    return out;
  }

  private async plan(ctx: VmContext, disks: DiskToBackup[]): Promise<Plan> {
    const policy = lvmPolicy(ctx);
    const [lvs, vgs] = await Promise.all([listLogicalVolumes(), listVolumeGroups()]);
    const mounts = readMountTable();
    const byOrigin = new Map<string, OriginPlan>();
    for (const disk of disks) {
      let layout;
      try {
        layout = discoverLayout(disk.name, disk.source, sourceFacts(disk.name, disk.source), lvs, mounts);
      } catch (e) {
        if (e instanceof NotOnLvmError) throw new PreflightError(`VM ${ctx.vm}: ${e.message}`);
        throw e;
      }
      const key = `${layout.lv.vg}/${layout.lv.name}`;
      let o = byOrigin.get(key);
      if (!o) {
        const vg = vgs.find((g) => g.name === layout.lv.vg);
        if (!vg) throw new PreflightError(`VM ${ctx.vm}: volume group ${layout.lv.vg} of disk ${disk.name} is not listed by vgs`);
        let name: string;
        try {
          name = snapshotName(ctx.vm, ctx.backupId, layout.lv.name);
        } catch (e) {
          if (e instanceof SnapshotNameError) throw new PreflightError(`VM ${ctx.vm}: ${e.message}`);
          throw e;
        }
        o = {
          lv: layout.lv,
          layout: layout.layout,
          fsType: layout.layout === "file-on-lv" ? layout.mount.fsType : null,
          snapshotName: name,
          sizeBytes: resolveSnapshotSize(policy.snapshot.size, layout.lv.sizeBytes, vg.extentBytes),
          extentBytes: vg.extentBytes,
          extend: resolveExtendPlan(policy.snapshot.extendBy, policy.snapshot.extendMax, layout.lv.sizeBytes, vg.extentBytes),
          disks: [],
        };
        byOrigin.set(key, o);
      }
      o.disks.push({ disk, pathInFs: layout.layout === "file-on-lv" ? layout.pathInFs : null });
    }
    return { domain: explicitDisks(ctx) ? null : ctx.vm, origins: [...byOrigin.values()] };
  }

  async snapshot(ctx: VmContext, disks: DiskToBackup[]): Promise<Snapshot> {
    const policy = lvmPolicy(ctx);
    const plan = await this.plan(ctx, disks);
    await checkSpace(plan, policy);
    const log = ctx.log;
    const staging = ctx.config.staging.path;
    const created: OriginPlan[] = [];
    const mounted: string[] = [];
    let quiesced = false;
    let createdAt = new Date();
    let guard: FillGuard | null = null;
    const cleanup = async () => {
      guard?.halt();
      const errors: string[] = [];
      for (const dir of mounted.splice(0)) {
        try {
          await unmountSnapshot(dir);
        } catch (e) {
          errors.push((e as Error).message);
        }
      }
      for (const o of created.splice(0)) {
        try {
          await removeWithRetry(o.lv.vg, o.snapshotName);
          log.info("lvm.snapshot.removed", `removed snapshot ${o.lv.vg}/${o.snapshotName}`, { snapshot: o.snapshotName });
        } catch (e) {
          errors.push((e as Error).message);
        }
      }
      if (errors.length) {
        throw new KvmBackupError(`could not remove every LVM snapshot of VM ${ctx.vm}: ${errors.join("; ")}; the next run retries, or remove them with lvremove (names start with ${SNAPSHOT_PREFIX}${ctx.vm}+)`);
      }
    };
    try {
      let frozen: FrozenGuest | null = null;
      if (plan.domain) {
        const uri = ctx.config.libvirtUri;
        const state = await run("virsh", ["-c", uri, "domstate", plan.domain], { timeoutMs: 30_000 });
        if (state.stdout.trim() === "running" && (await agentAnswers(uri, plan.domain))) {
          frozen = await freezeGuest(staging, ctx.vm, uri, plan.domain, log);
          quiesced = true;
        } else if (state.stdout.trim() === "running") {
          log.warn("lvm.freeze.skipped", `the guest agent of ${plan.domain} does not answer: the snapshot is crash-consistent, not quiesced`);
        }
      }
      try {
        createdAt = new Date();
        // Back to back, with everything resolved beforehand, so several disks are snapshotted as close together as LVM allows.
        for (const o of plan.origins) {
          await createSnapshot(o.lv.vg, o.lv.name, o.snapshotName, o.sizeBytes, o.layout === "lv");
          created.push(o);
        }
      } finally {
        await frozen?.thaw();
      }
      log.info("lvm.snapshot.created", `created ${created.length} snapshot(s) in ${Date.now() - createdAt.getTime()} ms${quiesced ? " with the guest frozen" : ""}`, {
        snapshots: created.map((o) => ({ name: `${o.lv.vg}/${o.snapshotName}`, bytes: o.sizeBytes })),
        quiesced,
      });
      // The watch starts with the snapshots, not when the pipeline asks for it: mounting (journal replay) and any
      // delay before the stream already fill them. An abort before the pipeline subscribed is delivered on subscribe.
      let listener: ((reason: Error) => void) | null = null;
      let pending: Error | null = null;
      guard = new FillGuard(
        {
          snapshots: plan.origins.map((o) => ({ vg: o.lv.vg, name: o.snapshotName, plan: o.extend, extentBytes: o.extentBytes })),
          maxFillPercent: policy.snapshot.maxFillPercent,
          pollMs: Math.max(50, parseDuration(policy.snapshot.pollInterval) * 1000),
          log,
          deps: { listLvs: (names) => listLogicalVolumes(names, 10_000), listVgs: listVolumeGroups, extend: extendSnapshot },
        },
        (reason) => {
          pending = reason;
          listener?.(reason);
        },
      ).start();
      const frozenDisks: FrozenDisk[] = [];
      for (const o of plan.origins) {
        const device = `/dev/${o.lv.vg}/${o.snapshotName}`;
        if (o.layout === "lv") {
          for (const d of o.disks) frozenDisks.push({ ...d.disk, readPath: device });
          continue;
        }
        const dir = mountDir(staging, o.snapshotName);
        await mountSnapshot(device, dir, o.fsType!);
        mounted.push(dir);
        for (const d of o.disks) frozenDisks.push({ ...d.disk, readPath: join(dir, d.pathInFs!) });
      }
      // Keep the order the caller gave.
      frozenDisks.sort((a, b) => disks.findIndex((d) => d.name === a.name) - disks.findIndex((d) => d.name === b.name));
      const watching = guard;
      let removed = false;
      return {
        kind: "lvm",
        disks: frozenDisks,
        quiesced,
        createdAt,
        guard(abort) {
          listener = abort;
          if (pending) abort(pending);
          return watching;
        },
        async remove() {
          if (removed) return;
          removed = true;
          await cleanup();
        },
      };
    } catch (e) {
      await cleanup().catch((c: Error) => log.error("lvm.cleanup.failed", c.message));
      throw e;
    }
  }
}

async function checkSpace(plan: Plan, policy: LvmPolicy): Promise<void> {
  const need = new Map<string, number>();
  for (const o of plan.origins) need.set(o.lv.vg, (need.get(o.lv.vg) ?? 0) + o.sizeBytes);
  const vgs = await listVolumeGroups();
  for (const [vgName, bytes] of need) {
    const vg = vgs.find((g) => g.name === vgName);
    const free = vg?.freeBytes ?? 0;
    if (bytes > free) {
      const lvsNamed = plan.origins.filter((o) => o.lv.vg === vgName).map((o) => `${o.lv.name} (${formatBytes(o.lv.sizeBytes)})`).join(", ");
      throw new PreflightError(
        `volume group ${vgName} has ${formatBytes(free)} free, but the snapshots of ${lvsNamed} need ${formatBytes(bytes)} (snapshot.size ${JSON.stringify(policy.snapshot.size)}); free space in ${vgName} (vgextend, or lvreduce another LV) or lower snapshot.size`,
      );
    }
  }
}

async function removeWithRetry(vg: string, name: string): Promise<void> {
  let last: unknown;
  // A stream that was just killed may keep the device open for a moment ("Logical volume in use").
  for (let i = 0; i < 30; i++) {
    try {
      await removeSnapshot(vg, name);
      return;
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  throw last;
}
