/**
 * One restore drill of one VM:
 *   VM lock (waits for a backup of the VM to finish) -> remove a previous drill's leftovers -> choose the backup
 *   (newest complete one in staging or on the --from target, or --id) and lock it (prune keeps it) -> open it
 *   (drillSource.ts: staging, or fetched/read from the target) -> scratch directory -> restore every disk sparse,
 *   checksum-verified -> drill domain XML (no network, new name/UUID, restored disks) -> `virsh create --paused`
 *   -> check the live XML -> resume -> wait for the guest to answer -> ALWAYS destroy the domain and delete the
 *   scratch files -> record the outcome (backup state.json, per-VM record for status).
 * A failed drill means: the backup's bytes are intact (they passed the checksum) but a VM made from them did not
 * start; the message says what the guest showed.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { parseDuration } from "../config/duration.ts";
import { parseSize } from "../config/sizes.ts";
import { policyNames, type HostConfig } from "../config/schema.ts";
import { updateState, type DrillState } from "../backupState.ts";
import { ExitCode, KvmBackupError, UsageError, type ExitCodeValue } from "../errors.ts";
import { virsh } from "../libvirt/virsh.ts";
import { LockedError, type Lock } from "../lock.ts";
import type { Logger } from "../log.ts";
import type { ManifestDisk, RepositoryDisk } from "../manifest.ts";
import { DOMAIN_XML_FILE, lockVm } from "../pipeline.ts";
import { lockBackup } from "../ship.ts";
import { vmDir } from "../staging.ts";
import { drillBackupId, openDrillSource, type DrillSource } from "./drillSource.ts";
import { watchBoot, type WatchResult } from "./bootWatch.ts";
import { checkDrillDomain, drillDomainXml } from "./drillDomainXml.ts";
import { writeDrillRecord } from "./drillRecord.ts";
import { destroyDrillDomain, drillDomainName, drillScratchDir, removeDrillLeftovers } from "./scratch.ts";
import { restoreSparse } from "./sparseRestore.ts";

/** The drill ran and the guest did not answer: the backup does not make a VM that starts. */
export class DrillFailedError extends KvmBackupError {}

export const DEFAULT_BOOT_TIMEOUT = "10min";

export interface DrillSettings {
  /** The policy whose drill settings apply; null when none of the VM's policies has a drill (defaults). */
  policy: string | null;
  bootTimeoutMs: number;
  consolePattern?: RegExp;
  memoryKiB?: number;
  vcpus?: number;
}

/** The drill settings of a VM: those of its first policy that has `drill`, else the defaults. */
export function drillSettings(cfg: HostConfig, vm: string): DrillSettings {
  for (const p of policyNames(cfg.vms[vm]!)) {
    const d = cfg.policies[p]?.drill;
    if (!d) continue;
    return {
      policy: p,
      bootTimeoutMs: parseDuration(d.bootTimeout) * 1000,
      consolePattern: d.consolePattern ? new RegExp(d.consolePattern) : undefined,
      memoryKiB: d.memory !== undefined ? Math.ceil(parseSize(d.memory) / 1024) : undefined,
      vcpus: d.vcpus,
    };
  }
  return { policy: null, bootTimeoutMs: parseDuration(DEFAULT_BOOT_TIMEOUT) * 1000 };
}

export interface DrillOptions {
  log: Logger;
  signal?: AbortSignal;
  /** The backup to drill; default the newest complete one in staging (or on the target `from`). */
  id?: string;
  /** "staging" (default) or a target's name: drill the copy that target holds. */
  from?: string;
  /** Overrides drill.bootTimeout (ms). */
  bootTimeoutMs?: number;
  /** How long to wait for a backup (or other work) of the VM holding its lock. */
  lockWaitMs?: number;
}

export interface DrillOutcome {
  vm: string;
  ok: boolean;
  id: string | null;
  answerSeconds: number | null;
  answeredBy: DrillState["answeredBy"];
  error?: string;
  exitCode: ExitCodeValue;
  /** false: interrupted or refused before it started (usage); nothing recorded. */
  recorded: boolean;
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

async function waitForVmLock(staging: string, vm: string, waitMs: number, log: Logger, signal?: AbortSignal): Promise<Lock> {
  const until = Date.now() + waitMs;
  let told = false;
  while (true) {
    try {
      return lockVm(staging, vm, "restore drill");
    } catch (e) {
      if (!(e instanceof LockedError) || Date.now() >= until) throw e;
      if (!told) log.info("drill.wait", `${e.message.replace(/;.*$/, "")}; the drill waits for it (a drill never runs alongside a backup of the same VM)`);
      told = true;
    }
    await sleep(Math.min(5000, Math.max(0, until - Date.now())));
    if (signal?.aborted) throw signal.reason;
  }
}

function savedDomainXml(b: DrillSource): string {
  if (b.manifest.domainXml) return b.manifest.domainXml;
  const file = join(b.dir, DOMAIN_XML_FILE);
  if (b.dir && existsSync(file)) return readFileSync(file, "utf8");
  throw new KvmBackupError(
    `backup ${b.vm}/${b.id} has no saved domain XML (a backup of a VM libvirt does not know, method ${b.manifest.method}); a drill boots the VM as libvirt defined it, so drills need VMs that are libvirt domains`,
  );
}

/** Drill one VM. Never throws for a drill that ran; the outcome says what happened. */
export async function drillVm(cfg: HostConfig, vm: string, opts: DrillOptions): Promise<DrillOutcome> {
  const staging = cfg.staging.path;
  const uri = cfg.libvirtUri;
  const log = opts.log.child({ vm });
  const settings = drillSettings(cfg, vm);
  const bootTimeoutMs = opts.bootTimeoutMs ?? settings.bootTimeoutMs;
  const domain = drillDomainName(vm);
  const scratch = drillScratchDir(staging, vm);
  let vmLock: Lock | null = null;
  let backupLock: Lock | null = null;
  let backup: DrillSource | null = null;
  let started = false;
  const t0 = Date.now();
  let watch: WatchResult | null = null;
  let failure: unknown = null;
  try {
    mkdirSync(vmDir(staging, vm), { recursive: true });
    vmLock = await waitForVmLock(staging, vm, opts.lockWaitMs ?? 3_600_000, log, opts.signal);
    await removeDrillLeftovers(uri, staging, vm, log, true);
    const id = await drillBackupId(cfg, vm, opts.from, opts.id);
    // Locked before it is read: prune must not remove it (in staging or on the target) during the drill.
    backupLock = lockBackup(staging, vm, id, "restore drill");
    backup = await openDrillSource(cfg, vm, opts.from, id);
    const b = backup;
    const disks: Array<ManifestDisk | RepositoryDisk> = b.manifest.disks;
    const saved = savedDomainXml(b);
    log.info("drill.start", `restore drill of VM ${vm}: backup ${b.id} from ${b.from} (${disks.map((d) => d.name).join(", ")}) into the scratch domain ${domain}`, { id: b.id, from: b.from, policy: settings.policy });

    // The domain XML first: a drill that cannot tell whether the guest started fails before restoring anything.
    const diskPaths = Object.fromEntries(disks.map((d) => [d.name, join(scratch, `${d.name}.raw`)]));
    const plan = (nvram?: string) =>
      drillDomainXml(saved, {
        name: domain,
        uuid: randomUUID(),
        disks: diskPaths,
        scratchDir: scratch,
        consoleLog: join(scratch, "console.log"),
        nvram,
        memoryKiB: settings.memoryKiB,
        vcpus: settings.vcpus,
        description: `kvm-backup restore drill of VM ${vm}, backup ${b.id} (scratch domain, destroyed after the drill)`,
      });
    const first = plan();
    if (!first.hasAgentChannel && !settings.consolePattern) {
      throw new KvmBackupError(
        `VM ${vm}: its domain has no guest agent channel (org.qemu.guest_agent.0) and the policy sets no drill.consolePattern, so a drill cannot tell whether the guest started; add the channel and qemu-guest-agent in the guest, or set drill.consolePattern to a line the guest prints on its serial console when it is up`,
      );
    }

    mkdirSync(scratch, { recursive: true, mode: 0o700 });
    writeFileSync(join(scratch, "drill.json"), JSON.stringify({ vm, id: b.id, domain, pid: process.pid, startedAt: new Date(t0).toISOString() }) + "\n");
    const minFree = parseSize(cfg.staging.minFree);
    for (const d of disks) {
      const t = Date.now();
      const r = await restoreSparse(b.reader(d), d, diskPaths[d.name]!, staging, minFree, opts.signal);
      log.info("drill.restore.disk", `disk ${d.name} restored (${d.virtualSize} bytes, ${r.allocatedBytes} allocated, SHA-256 verified) in ${((Date.now() - t) / 1000).toFixed(1)} s`, { disk: d.name });
    }
    let nvram: string | undefined;
    if (first.originalNvram) {
      nvram = join(scratch, "VARS.fd");
      // The original's UEFI variables hold its boot entries; a copy is read, never the original written.
      if (existsSync(first.originalNvram)) copyFileSync(first.originalNvram, nvram);
      else log.warn("drill.nvram", `the UEFI variable store ${first.originalNvram} of VM ${vm} is missing; the drill starts from the firmware's template`);
    }
    const dom = plan(nvram);
    if (dom.removed.length) log.info("drill.removed", `left out of the scratch domain: ${dom.removed.join(", ")}`);
    const xmlFile = join(scratch, "domain.xml");
    writeFileSync(xmlFile, dom.xml);

    started = true;
    await virsh(uri, ["create", "--paused", xmlFile], { timeoutMs: 120_000 });
    const live = (await virsh(uri, ["dumpxml", domain])).stdout;
    const problems = checkDrillDomain(live, scratch);
    if (problems.length) {
      throw new KvmBackupError(`refusing to start the drill domain ${domain}: ${problems.join("; ")}; this is a bug in kvm-backup, please report it with the saved domain XML of ${vm}`);
    }
    await virsh(uri, ["resume", domain]);
    log.info("drill.domain.started", `scratch domain ${domain} started (no network); waiting up to ${Math.round(bootTimeoutMs / 1000)} s for the guest to answer`, { domain, id: b.id });
    watch = await watchBoot({ uri, domain, consoleLog: join(scratch, "console.log"), timeoutMs: bootTimeoutMs, agent: dom.hasAgentChannel, consolePattern: settings.consolePattern, signal: opts.signal });
  } catch (e) {
    failure = e;
  } finally {
    // Whatever happened: the scratch domain and files go (destroy first: the directory is the crash marker).
    try {
      backup?.cleanup();
      if (vmLock) {
        if (started) await destroyDrillDomain(uri, vm);
        rmSync(scratch, { recursive: true, force: true });
      }
    } catch (e) {
      log.error("drill.cleanup.failed", `could not remove the scratch domain ${domain} or ${scratch}: ${(e as Error).message}; the next drill, run or \`kvm-backup recover --vm ${vm}\` removes them`);
      failure ??= e;
    }
  }

  const interrupted = failure !== null && opts.signal?.aborted === true;
  const usage = failure instanceof UsageError || failure instanceof LockedError;
  let outcome: DrillOutcome;
  if (failure !== null) {
    const message = (failure as Error).message ?? String(failure);
    outcome = { vm, ok: false, id: backup?.id ?? null, answerSeconds: null, answeredBy: null, error: `restore drill of VM ${vm}${backup ? `, backup ${backup.id},` : ""} could not be carried out: ${message}`, exitCode: failure instanceof KvmBackupError ? failure.exitCode : ExitCode.backupFailed, recorded: !interrupted && !usage };
    if (!(failure instanceof KvmBackupError)) log.debug("drill.crash", (failure as Error).stack ?? String(failure));
  } else if (watch!.ok) {
    outcome = { vm, ok: true, id: backup!.id, answerSeconds: watch!.seconds, answeredBy: watch!.answeredBy, exitCode: ExitCode.ok, recorded: true };
  } else {
    const w = watch as Extract<WatchResult, { ok: false }>;
    outcome = {
      vm,
      ok: false,
      id: backup!.id,
      answerSeconds: null,
      answeredBy: null,
      error: new DrillFailedError(
        `restore drill of VM ${vm}, backup ${backup!.id}, FAILED: ${w.reason}. The backup's data is intact (every disk matched its SHA-256), but a VM made from it does not start: ` +
          `check that the snapshot was quiesced (manifest: snapshot.quiesced), that the backup holds every disk the VM boots from, and boot a restore by hand (\`kvm-backup restore --vm ${vm} --id ${backup!.id} --to DIR\`)`,
      ).message,
      exitCode: ExitCode.backupFailed,
      recorded: true,
    };
  }
  if (outcome.ok) {
    log.info("drill.passed", `restore drill of VM ${vm} passed: backup ${outcome.id} booted and the ${outcome.answeredBy === "console" ? "console showed the expected line" : "guest agent answered"} after ${outcome.answerSeconds} s (drill took ${Math.round((Date.now() - t0) / 1000)} s)`, {
      id: outcome.id,
      answerSeconds: outcome.answerSeconds,
      answeredBy: outcome.answeredBy,
    });
  } else if (interrupted) {
    log.warn("drill.interrupted", `restore drill of VM ${vm} interrupted; scratch domain and files removed, nothing recorded`);
  } else {
    log.error("drill.failed", outcome.error!, { id: outcome.id, exitCode: outcome.exitCode });
  }
  if (outcome.recorded) recordOutcome(staging, backup, backup?.from ?? opts.from ?? "staging", outcome, log);
  vmLock?.release();
  backupLock?.release();
  return outcome;
}

function recordOutcome(staging: string, backup: DrillSource | null, from: string, o: DrillOutcome, log: Logger): void {
  const state: DrillState = { at: new Date().toISOString(), ok: o.ok, answerSeconds: o.answerSeconds, answeredBy: o.answeredBy, from, ...(o.error ? { error: o.error } : {}) };
  try {
    if (backup?.staged && existsSync(backup.staged.dir)) updateState(backup.staged.dir, (s) => void (s.drill = state));
    writeDrillRecord(staging, { vm: o.vm, id: o.id, ...state });
  } catch (e) {
    log.warn("drill.record", `could not record the drill of ${o.vm} for \`kvm-backup status\`: ${(e as Error).message}`);
  }
}
