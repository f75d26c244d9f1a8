/**
 * verify-target: read every backup back on a target (size and SHA-256 on the target's side) and compare it with
 * its manifest. A damaged copy is recorded (damaged.json; and in the staging copy's state, so the next `ship`
 * sends it again while staging still has it) and no longer counts as the target's newest verified backup.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { targetState, updateState } from "../backupState.ts";
import type { HostConfig } from "../config/schema.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { LockedError } from "../lock.ts";
import type { Logger } from "../log.ts";
import { Manifest, MANIFEST_FILE } from "../manifest.ts";
import { checkCopy, expectedForStaged, lockBackup } from "../ship.ts";
import { listBackups } from "../staging.ts";
import { verifyRepositoryCopies } from "../repository/verifyRepositoryCopies.ts";
import { clearDamaged, markDamaged } from "./damaged.ts";
import { openTarget } from "./openTarget.ts";
import { expectedFiles, TargetError, TargetVerifyError } from "./target.ts";

export interface VerifyOutcome {
  vm: string;
  id: string;
  result: "ok" | "damaged" | "skipped" | "failed";
  message?: string;
}

export async function verifyTarget(cfg: HostConfig, name: string, opts: { log: Logger; vms?: string[]; id?: string; readDataSubset?: string }): Promise<VerifyOutcome[]> {
  const staging = cfg.staging.path;
  const target = openTarget(cfg, name);
  const log = opts.log.child({ target: name });
  await target.check();
  const out: VerifyOutcome[] = [];
  // Repository-format backups on this target are checked in its restic repository (verifyRepositoryCopies).
  out.push(...(await verifyRepositoryCopies(cfg, name, { ...opts, log })));
  for (const vm of opts.vms ?? Object.keys(cfg.vms)) {
    const listing = await target.list(vm);
    for (const id of listing.backups) {
      if (opts.id !== undefined && id !== opts.id) continue;
      let lock;
      try {
        lock = lockBackup(staging, vm, id, `verify on ${name}`);
      } catch (e) {
        if (!(e instanceof LockedError)) throw e;
        out.push({ vm, id, result: "skipped", message: e.message });
        continue;
      }
      const staged = listBackups(staging, vm).find((b) => b.id === id);
      try {
        let expected;
        if (staged) {
          expected = await expectedForStaged(staged);
        } else {
          const parsed = Manifest.safeParse(JSON.parse(await target.readManifestText(vm, id)));
          if (!parsed.success) throw new TargetVerifyError(`target "${name}": ${vm}/${id}/${MANIFEST_FILE} is not a valid manifest`, name);
          expected = expectedFiles(parsed.data);
        }
        await checkCopy(target, vm, id, "final", expected);
        clearDamaged(staging, name, `${vm}/${id}`);
        if (staged && existsSync(join(staged.dir, MANIFEST_FILE))) {
          updateState(staged.dir, (s) => {
            const t = targetState(s, name);
            t.verifiedAt = new Date().toISOString();
            if (t.shippedAt) t.verified = true;
          });
        }
        log.info("verify.ok", `${vm}/${id} on ${name}: every file matches its manifest`, { vm });
        out.push({ vm, id, result: "ok" });
      } catch (e) {
        if (e instanceof TargetVerifyError) {
          markDamaged(staging, name, `${vm}/${id}`, [e.message]);
          if (staged) {
            updateState(staged.dir, (s) => {
              const t = targetState(s, name);
              t.verified = false;
              t.lastError = { at: new Date().toISOString(), message: e.message };
            });
          }
          const next = staged ? "the next `kvm-backup ship` copies it again from staging" : "staging no longer has it; keep the damaged copy for inspection, it no longer counts as verified";
          log.error("verify.damaged", `${e.message}; ${next}`, { vm });
          out.push({ vm, id, result: "damaged", message: `${e.message}; ${next}` });
        } else if (e instanceof TargetError) {
          out.push({ vm, id, result: "failed", message: e.message });
          throw e;
        } else throw e;
      } finally {
        lock.release();
      }
    }
  }
  return out;
}

/**
 * `kvm-backup verify --target NAME [--vm VM ...] (ID | --all)` and `verify-target`: check on the target, print
 * one line per backup, exit 1 if any copy is damaged or could not be checked.
 */
export async function verifyTargetCommand(
  cfg: HostConfig,
  name: string,
  opts: { log: Logger; vms?: string[]; id?: string; stdout: (t: string) => void; readDataSubset?: string },
): Promise<number> {
  if (!(name in cfg.targets)) throw new UsageError(`unknown target "${name}" (known: ${Object.keys(cfg.targets).join(", ") || "none"})`);
  const outcomes = await verifyTarget(cfg, name, opts);
  for (const o of outcomes) opts.stdout(`${name} ${o.vm}/${o.id} ${o.result}${o.message ? `: ${o.message}` : ""}\n`);
  if (opts.id !== undefined && outcomes.length === 0) throw new UsageError(`target "${name}" holds no backup ${opts.id}`);
  return outcomes.some((o) => o.result !== "ok") ? ExitCode.backupFailed : ExitCode.ok;
}
