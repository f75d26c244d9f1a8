import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { isInvalidSnapshot, isSnapshot, parseLvs, parseVgs } from "../../runner/lvm/report.ts";
import { LvmReportError } from "../../runner/lvm/errors.ts";

const fx = (f: string) => readFileSync(new URL(`./fixtures/lvm/${f}`, import.meta.url), "utf8");

describe("lvs/vgs JSON reports (recorded in UML)", () => {
  it("reads every LV with sizes in bytes, origins, fill levels and device numbers", () => {
    const lvs = parseLvs(fx("lvs-runner.json"));
    expect(lvs.map((l) => l.name)).toEqual(["foreign-snap", "images", "kvmbk+db01+20261128T020000Z+images", "kvmbk+web01+20261128T020000Z+web01", "web01", "xfsimages"]);
    const web = lvs.find((l) => l.name === "web01")!;
    expect(web).toMatchObject({ vg: "vg0", path: "/dev/vg0/web01", sizeBytes: 256 * 1024 ** 2, origin: null, fillPercent: null, major: 254, minor: 0 });
    const snap = lvs.find((l) => l.name === "kvmbk+web01+20261128T020000Z+web01")!;
    expect(snap).toMatchObject({ origin: "web01", fillPercent: 41.85, sizeBytes: 48 * 1024 ** 2, attr: "swi-a-s---" });
    expect(isSnapshot(snap)).toBe(true);
    expect(isSnapshot(web)).toBe(false);
    expect(isInvalidSnapshot(snap)).toBe(false);
  });

  it("sees an overflowed snapshot as invalid (attr I, 100 %)", () => {
    const snap = parseLvs(fx("lvs-overflowed.json")).find((l) => l.name === "kvmbk+web01+20261128T020000Z+web01")!;
    expect(snap.attr).toBe("swi-I-s---");
    expect(snap.fillPercent).toBe(100);
    expect(isInvalidSnapshot(snap)).toBe(true);
  });

  it("reads the report of one named snapshot", () => {
    const lvs = parseLvs(fx("lvs-one-snapshot.json"));
    expect(lvs).toHaveLength(1);
    expect(lvs[0]!.fillPercent).toBeGreaterThanOrEqual(0);
  });

  it("refuses sizes in human units (the runner always asks for bytes)", () => {
    expect(() => parseLvs(fx("lvs-brief.json"))).toThrow(/lv_size of vg0\/.* is ".*m", not a byte count/);
  });

  it("accepts bytes with the B suffix", () => {
    const text = JSON.stringify({ report: [{ lv: [{ lv_name: "a", vg_name: "v", lv_path: "/dev/v/a", lv_size: "4194304B", origin: "", data_percent: "", snap_percent: "", lv_attr: "-wi-a-----" }] }] });
    expect(parseLvs(text)[0]!.sizeBytes).toBe(4194304);
  });

  it("reads volume groups", () => {
    expect(parseVgs(fx("vgs-runner.json"))).toEqual([{ name: "vg0", sizeBytes: 1069547520, freeBytes: 188743680, extentBytes: 4194304 }]);
  });

  it("says what went wrong with output that is not a report", () => {
    expect(() => parseLvs("  WARNING: something\n")).toThrow(LvmReportError);
    expect(() => parseLvs("{}")).toThrow(/without a "report" array/);
    expect(() => parseLvs(JSON.stringify({ report: [{ lv: [{ lv_name: "a" }] }] }))).toThrow(/without the field vg_name/);
    expect(() => parseLvs(JSON.stringify({ report: [{ lv: [{ lv_name: "a", vg_name: "v", lv_size: "1", origin: "o", data_percent: "abc", lv_attr: "swi-a-s---" }] }] }))).toThrow(/not a percent/);
  });
});
