import { describe, expect, it } from "vitest";
import { isRunnerSnapshotOf, snapshotName } from "../../runner/lvm/snapshotName.ts";
import { resolveExtendPlan, resolveSnapshotSize, roundUpToExtents } from "../../runner/lvm/snapshotSize.ts";

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

describe("snapshot names", () => {
  it("carries the prefix, the VM, the backup id and the origin", () => {
    expect(snapshotName("web01", "20261128T020000Z", "web01-disk")).toBe("kvmbk+web01+20261128T020000Z+web01-disk");
  });

  it("recognises only this runner's snapshots of this VM", () => {
    const n = snapshotName("web01", "20261128T020000Z-2", "root");
    expect(isRunnerSnapshotOf(n, "web01")).toBe(true);
    expect(isRunnerSnapshotOf(n, "web0")).toBe(false);
    expect(isRunnerSnapshotOf(n, "web01+20261128T020000Z-2")).toBe(false);
    // Another VM whose name extends this one's cannot collide: "+" ends the VM part.
    expect(isRunnerSnapshotOf(snapshotName("web01.old", "20261128T020000Z", "root"), "web01")).toBe(false);
    expect(isRunnerSnapshotOf("foreign-snap", "web01")).toBe(false);
    expect(isRunnerSnapshotOf("kvmbk+web01+notanid+root", "web01")).toBe(false);
    expect(isRunnerSnapshotOf("kvmbk-web01-20261128T020000Z-root", "web01")).toBe(false);
  });

  it("stays within LVM's 127 characters", () => {
    const n = snapshotName("v".repeat(64), "20261128T020000Z-12", "o".repeat(127));
    expect(n.length).toBe(127);
    expect(isRunnerSnapshotOf(n, "v".repeat(64))).toBe(true);
  });

  it("refuses names LVM reserves", () => {
    expect(() => snapshotName("db_tmeta", "20261128T020000Z", "root")).toThrow(/reserves; rename/);
  });
});

describe("snapshot sizes", () => {
  it("rounds up to whole extents, at least one", () => {
    expect(roundUpToExtents(1, 4 * MiB)).toBe(4 * MiB);
    expect(roundUpToExtents(4 * MiB, 4 * MiB)).toBe(4 * MiB);
    expect(roundUpToExtents(4 * MiB + 1, 4 * MiB)).toBe(8 * MiB);
    expect(roundUpToExtents(0, 4 * MiB)).toBe(4 * MiB);
  });

  it("takes a percent of the origin or an absolute size", () => {
    expect(resolveSnapshotSize("20%", 256 * MiB, 4 * MiB)).toBe(52 * MiB); // 51.2 MiB -> 13 extents
    expect(resolveSnapshotSize("48MiB", 256 * MiB, 4 * MiB)).toBe(48 * MiB);
    expect(resolveSnapshotSize(50_000_000, 256 * MiB, 4 * MiB)).toBe(48 * MiB);
    expect(resolveSnapshotSize("10%", 100 * GiB, 32 * MiB)).toBe(10 * GiB);
    expect(resolveSnapshotSize("3%", 10 * GiB, 32 * MiB)).toBe(320 * MiB); // 307.2 MiB -> 10 extents of 32 MiB
  });

  it("extends by steps up to a ceiling that defaults to the origin size", () => {
    expect(resolveExtendPlan(undefined, undefined, 256 * MiB, 4 * MiB)).toEqual({ stepBytes: null, ceilingBytes: 256 * MiB });
    expect(resolveExtendPlan("10%", "50%", 256 * MiB, 4 * MiB)).toEqual({ stepBytes: 28 * MiB, ceilingBytes: 128 * MiB });
    expect(resolveExtendPlan("1GiB", "3GiB", 100 * GiB, 4 * MiB)).toEqual({ stepBytes: GiB, ceilingBytes: 3 * GiB });
  });
});
