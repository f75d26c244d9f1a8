/**
 * Staging's prune decisions: keepLast from the host config, and the rules on top of it that keep what must not
 * go (unshipped, unknown policy, policy without targets, protected), each with its reason.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { emptyState, readProtected, writeProtected, writeState } from "../../runner/backupState.ts";
import { HostConfig, type HostConfigInput } from "../../runner/config/schema.ts";
import { formatPruneLine, stagingDecisions } from "../../runner/prune.ts";
import { listBackups } from "../../runner/staging.ts";
import { makeStagedBackup } from "../lab/shipFixtures.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setup(policies: HostConfigInput["policies"], keepLast = 2) {
  const staging = mkdtempSync("/tmp/kvmb-unit-prune-");
  dirs.push(staging);
  const cfg = HostConfig.parse({
    version: 1,
    host: "lab",
    staging: { path: staging, keepLast },
    targets: { nas: { type: "path", path: "/mnt/nas" }, usb: { type: "path", path: "/mnt/usb" } },
    policies,
    vms: { web01: { policy: Object.keys(policies) } },
  });
  return { staging, cfg };
}

function shipped(dir: string, ...targets: string[]) {
  const s = emptyState();
  for (const t of targets) s.targets[t] = { shippedAt: "2026-11-28T03:00:00.000Z", verifiedAt: "2026-11-28T03:00:00.000Z", verified: true };
  writeState(dir, s);
}

const nightly = { method: "lvm" as const, schedule: "daily", retention: { keepDaily: 7 }, targets: ["nas", "usb"] };

function decide(staging: string, cfg: ReturnType<typeof setup>["cfg"]) {
  return Object.fromEntries(stagingDecisions(cfg, "web01", listBackups(staging, "web01"), readProtected(staging)));
}

describe("staging prune decisions", () => {
  it("keeps keepLast and removes older backups shipped and verified everywhere", () => {
    const { staging, cfg } = setup({ nightly });
    for (const id of ["20261125T020000Z", "20261126T020000Z", "20261127T020000Z"]) {
      const { dir } = makeStagedBackup({ staging, vm: "web01", id, policy: "nightly", size: 1024, compression: "none" });
      shipped(dir, "nas", "usb");
    }
    expect(decide(staging, cfg)).toEqual({
      "20261127T020000Z": { keep: true, reason: "kept: last 1 (staging keepLast 2)" },
      "20261126T020000Z": { keep: true, reason: "kept: last 2 (staging keepLast 2)" },
      "20261125T020000Z": { keep: false, reason: "removed: not selected by any rule (staging keepLast 2)" },
    });
  });

  it("never removes a backup missing from one target, or whose copy there was found damaged", () => {
    const { staging, cfg } = setup({ nightly }, 1);
    const a = makeStagedBackup({ staging, vm: "web01", id: "20261125T020000Z", policy: "nightly", size: 1024, compression: "none" });
    shipped(a.dir, "nas");
    const b = makeStagedBackup({ staging, vm: "web01", id: "20261126T020000Z", policy: "nightly", size: 1024, compression: "none" });
    const s = emptyState();
    s.targets.nas = { shippedAt: "x", verified: true };
    s.targets.usb = { shippedAt: "x", verified: false };
    writeState(b.dir, s);
    makeStagedBackup({ staging, vm: "web01", id: "20261127T020000Z", policy: "nightly", size: 1024, compression: "none" });
    expect(decide(staging, cfg)).toEqual({
      "20261127T020000Z": { keep: true, reason: "kept: last 1 (staging keepLast 1)" },
      "20261126T020000Z": { keep: true, reason: "kept: not yet shipped to usb (removed: not selected by any rule (staging keepLast 1))" },
      "20261125T020000Z": { keep: true, reason: "kept: not yet shipped to usb (removed: not selected by any rule (staging keepLast 1))" },
    });
  });

  it("keeps a backup whose policy is no longer in the config", () => {
    const { staging, cfg } = setup({ nightly }, 1);
    makeStagedBackup({ staging, vm: "web01", id: "20261125T020000Z", policy: "retired", size: 1024, compression: "none" });
    shipped(makeStagedBackup({ staging, vm: "web01", id: "20261127T020000Z", policy: "nightly", size: 1024, compression: "none" }).dir, "nas", "usb");
    expect(decide(staging, cfg)["20261125T020000Z"]).toEqual({
      keep: true,
      reason: 'kept: policy "retired" is not in the config, so its targets are unknown and it may be the only copy',
    });
  });

  it("applies the policy's own retention when the policy has no targets (staging is the only copy)", () => {
    const { staging, cfg } = setup({ local: { method: "lvm", schedule: "daily", retention: { keepDaily: 2 }, targets: [] } }, 1);
    for (const id of ["20261125T020000Z", "20261126T020000Z", "20261126T120000Z", "20261127T020000Z"]) {
      makeStagedBackup({ staging, vm: "web01", id, policy: "local", size: 1024, compression: "none" });
    }
    expect(decide(staging, cfg)).toEqual({
      "20261127T020000Z": { keep: true, reason: "kept: last 1 (staging keepLast 1)" },
      "20261126T120000Z": { keep: true, reason: "kept: daily 2026-11-26 (policy local); policy has no targets, staging is its only copy" },
      "20261126T020000Z": { keep: false, reason: "removed: not selected by any rule (staging keepLast 1)" },
      "20261125T020000Z": { keep: false, reason: "removed: not selected by any rule (staging keepLast 1)" },
    });
  });

  it("keeps protected backups (state flag or host registry) and does not count them for keepLast", () => {
    const { staging, cfg } = setup({ nightly }, 1);
    for (const id of ["20261125T020000Z", "20261126T020000Z", "20261127T020000Z"]) {
      shipped(makeStagedBackup({ staging, vm: "web01", id, policy: "nightly", size: 1024, compression: "none" }).dir, "nas", "usb");
    }
    writeProtected(staging, new Set(["web01/20261127T020000Z"]));
    const s = emptyState();
    s.protected = true;
    s.targets = { nas: { shippedAt: "x", verified: true }, usb: { shippedAt: "x", verified: true } };
    writeState(join(staging, "web01", "20261125T020000Z"), s);
    expect(decide(staging, cfg)).toEqual({
      "20261127T020000Z": { keep: true, reason: "kept: protected (staging keepLast 1)" },
      "20261126T020000Z": { keep: true, reason: "kept: last 1 (staging keepLast 1)" },
      "20261125T020000Z": { keep: true, reason: "kept: protected (staging keepLast 1)" },
    });
  });
});

describe("formatPruneLine", () => {
  it("one aligned line per decision", () => {
    expect(formatPruneLine({ where: "nas", vm: "web01", id: "20261127T020000Z", kind: "backup", keep: true, reason: "kept: daily 2026-11-27 (policy nightly)" })).toBe(
      "nas        web01/20261127T020000Z   keep   kept: daily 2026-11-27 (policy nightly)",
    );
    expect(formatPruneLine({ where: "staging", vm: "web01", id: "20261101T020000Z", kind: "partial", keep: false, reason: "removed: x", error: "EACCES" })).toBe(
      "staging    web01/20261101T020000Z (partial) remove removed: x -- FAILED: EACCES",
    );
  });
});
