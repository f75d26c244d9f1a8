/**
 * The lvm back-end against a real libvirt domain (the shared libvirt lab): disks come from `virsh domblklist
 * --details` and the domain XML; disks that are not on LVM are refused before anything is created, naming the disk
 * and the libvirt method; a freeze journal for a domain without a guest agent does not block the run.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { HostConfig } from "../../runner/config/schema.ts";
import { PreflightError } from "../../runner/errors.ts";
import { Logger } from "../../runner/log.ts";
import { freezeJournalPath } from "../../runner/lvm/guestFreeze.ts";
import { LvmSnapshotBackend } from "../../runner/snapshot/lvmSnapshot.ts";
import type { VmContext } from "../../runner/snapshot/backend.ts";
import { createTestDomain, removeTestDomain, startLibvirtLab, type LibvirtLabInfo } from "../lab/libvirtLab.ts";

let info: LibvirtLabInfo;
let stopOwn: (() => Promise<void>) | null = null;
const NAME = `lvmtest${process.pid}`;
let staging: string;

beforeAll(async () => {
  const shared = inject("libvirt") as LibvirtLabInfo | undefined;
  if (shared) info = shared;
  else {
    const lab = await startLibvirtLab();
    info = lab.info;
    stopOwn = lab.stop;
  }
  createTestDomain(info, NAME, { qcow2Bytes: 4 << 20, rawBytes: 4 << 20 });
  staging = mkdtempSync(join(tmpdir(), "kvmbk-lvm-libvirt-"));
});

afterAll(async () => {
  if (info) removeTestDomain(info, NAME);
  if (staging) rmSync(staging, { recursive: true, force: true });
  await stopOwn?.();
});

function ctx(disks?: string[]): VmContext {
  const config = HostConfig.parse({
    version: 1,
    host: "lab",
    libvirtUri: info.uri,
    staging: { path: staging, minFree: "1MiB" },
    policies: { nightly: { method: "lvm", schedule: "daily", retention: { keepLast: 2 } } },
    vms: { [NAME]: { policy: "nightly", ...(disks ? { disks } : {}) } },
  });
  return { config, vm: NAME, vmConfig: config.vms[NAME]!, policyName: "nightly", policy: config.policies.nightly!, backupId: "20261128T020000Z", log: new Logger({}, { isTTY: false, write: () => undefined }) };
}

describe("lvm back-end on a libvirt domain", () => {
  it("reads the domain's disks and refuses the ones not on LVM, suggesting the libvirt method", async () => {
    const err = await new LvmSnapshotBackend().preflight(ctx()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PreflightError);
    expect((err as Error).message).toMatch(new RegExp(`disk vda \\(${info.dir.replace(/[.+]/g, "\\$&")}/domains/${NAME}/vda\\.qcow2\\) is an image file on .* which is not a logical volume; back this VM up with the libvirt method`));
  });

  it("names a selected disk the domain does not have", async () => {
    const err = await new LvmSnapshotBackend().preflight(ctx(["vdz"])).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(new RegExp(`VM ${NAME}: disk vdz \\(vms\\.${NAME}\\.disks\\) is not a disk of the domain`));
  });

  it("keeps the domain XML for the backup", async () => {
    expect(await new LvmSnapshotBackend().domainXml(ctx())).toMatch(new RegExp(`<name>${NAME}</name>`));
  });

  it("a freeze journal for a guest without agent is reported, kept for the next run, and does not block recovery", async () => {
    const j = freezeJournalPath(staging, NAME);
    mkdirSync(dirname(j), { recursive: true });
    writeFileSync(j, JSON.stringify({ domain: NAME, uri: info.uri, pid: 4242, since: "2026-11-28T02:00:00.000Z" }));
    const done = await new LvmSnapshotBackend().recover(ctx());
    expect(done.join("\n")).toMatch(new RegExp(`could not thaw domain ${NAME}, which the run of pid 4242 froze [\\s\\S]*domfsthaw ${NAME}`));
    expect(existsSync(j)).toBe(true);
    rmSync(j);
  });
});
