/**
 * `list --target NAME`: the complete backups a target holds (read from the target itself: its listing and each
 * backup's manifest there), and the unfinished copies next to them, which are never backups.
 */
import type { HostConfig } from "../config/schema.ts";
import { formatBytes } from "../config/sizes.ts";
import { UsageError } from "../errors.ts";
import { Manifest } from "../manifest.ts";
import { openTarget } from "./openTarget.ts";

export interface TargetBackupRow {
  target: string;
  vm: string;
  id: string;
  /** Absent when the manifest on the target cannot be read as one (the row says so). */
  policy?: string;
  method?: string;
  finishedAt?: string;
  disks: string[];
  virtualBytes: number;
  storedBytes: number;
  problem?: string;
}

export interface TargetContents {
  target: string;
  where: string;
  backups: TargetBackupRow[];
  /** Unfinished copies (completed by the next ship, or removed by prune once a newer backup is complete). */
  incoming: { vm: string; id: string }[];
}

export async function listTarget(cfg: HostConfig, name: string, vms: string[]): Promise<TargetContents> {
  if (!(name in cfg.targets)) throw new UsageError(`unknown target "${name}" (known: ${Object.keys(cfg.targets).join(", ") || "none are configured"})`);
  const target = openTarget(cfg, name);
  await target.check();
  const out: TargetContents = { target: name, where: target.where, backups: [], incoming: [] };
  for (const vm of vms) {
    const listing = await target.list(vm);
    for (const id of listing.incoming) out.incoming.push({ vm, id });
    for (const id of listing.backups) {
      const row: TargetBackupRow = { target: name, vm, id, disks: [], virtualBytes: 0, storedBytes: 0 };
      let parsed;
      try {
        parsed = Manifest.safeParse(JSON.parse(await target.readManifestText(vm, id)));
      } catch (e) {
        if (!(e instanceof SyntaxError)) throw e;
      }
      if (parsed?.success) {
        const m = parsed.data;
        Object.assign(row, {
          policy: m.policy,
          method: m.method,
          finishedAt: m.finishedAt,
          disks: m.disks.map((d) => d.name),
          virtualBytes: m.disks.reduce((s, d) => s + d.virtualSize, 0),
          storedBytes: m.disks.reduce((s, d) => s + d.bytesStored, 0),
        });
      } else {
        row.problem = "its manifest.json is not a valid manifest";
      }
      out.backups.push(row);
    }
  }
  return out;
}

export function formatTargetContents(c: TargetContents): string {
  const lines: string[] = [];
  if (!c.backups.length) lines.push(`no backups on ${c.target} (${c.where})`);
  for (const r of c.backups) {
    lines.push(
      r.problem
        ? `${r.vm}/${r.id}  on ${r.target}  ${r.problem}`
        : `${r.vm}/${r.id}  ${r.policy}  ${r.disks.join(",")}  ${formatBytes(r.storedBytes)} of ${formatBytes(r.virtualBytes)}  on ${r.target}`,
    );
  }
  for (const u of c.incoming) lines.push(`${u.vm}/${u.id}  unfinished copy on ${c.target} (not a backup)`);
  return lines.join("\n") + "\n";
}
