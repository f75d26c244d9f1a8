import { parseArgs } from "node:util";
import { readState } from "../backupState.ts";
import { loadHostConfig } from "../config/hostConfig.ts";
import { formatBytes } from "../config/sizes.ts";
import { ExitCode } from "../errors.ts";
import { listBackups } from "../staging.ts";
import { formatTargetContents, listTarget } from "../targets/listTarget.ts";
import type { Command } from "./command.ts";
import { selectVms } from "./vmSelection.ts";

export const list: Command = {
  name: "list",
  summary: "list the complete backups in staging (--json for scripts)",
  usage:
    "kvm-backup list [--vm NAME ...] [--target NAME] [--json]\n  Oldest first. A directory without manifest.json is never listed: it is not a backup.\n" +
    "  --target: what that target holds, read from the target (its manifests), instead of staging.",
  async run(argv, ctx) {
    const { values } = parseArgs({ args: argv, options: { vm: { type: "string", multiple: true }, json: { type: "boolean", default: false }, target: { type: "string" } } });
    const cfg = loadHostConfig(ctx.configFile);
    if (values.target !== undefined) {
      const contents = await listTarget(cfg, values.target, selectVms(cfg, values.vm));
      ctx.stdout(values.json ? JSON.stringify(contents, null, 2) + "\n" : formatTargetContents(contents));
      return ExitCode.ok;
    }
    const rows = selectVms(cfg, values.vm).flatMap((vm) =>
      listBackups(cfg.staging.path, vm).map((b) => {
        const state = readState(b.dir);
        return {
          vm,
          id: b.id,
          policy: b.manifest.policy,
          method: b.manifest.method,
          /** image: compressed files in the directory; repository: in the staging restic repository (storedBytes = new data). */
          format: b.manifest.format,
          finishedAt: b.manifest.finishedAt,
          disks: b.manifest.disks.map((d) => d.name),
          virtualBytes: b.manifest.disks.reduce((s, d) => s + d.virtualSize, 0),
          storedBytes: b.manifest.disks.reduce((s, d) => s + d.bytesStored, 0),
          snapshotWindowMs: b.manifest.snapshot.windowMs,
          quiesced: b.manifest.snapshot.quiesced,
          protected: state.protected,
          shippedTo: Object.entries(state.targets).filter(([, t]) => t.shippedAt).map(([n]) => n),
          dir: b.dir,
        };
      }),
    );
    if (values.json) {
      ctx.stdout(JSON.stringify(rows, null, 2) + "\n");
      return ExitCode.ok;
    }
    if (!rows.length) ctx.stdout(`no backups in ${cfg.staging.path}\n`);
    for (const r of rows) {
      ctx.stdout(
        `${r.vm}/${r.id}  ${r.policy}  ${r.disks.join(",")}  ${formatBytes(r.storedBytes)}${r.format === "repository" ? " new in the repository" : ""} of ${formatBytes(r.virtualBytes)}  window ${r.snapshotWindowMs ?? "-"} ms${r.quiesced ? "  quiesced" : ""}${r.protected ? "  protected" : ""}${r.shippedTo.length ? `  shipped: ${r.shippedTo.join(",")}` : ""}\n`,
      );
    }
    return ExitCode.ok;
  },
};
