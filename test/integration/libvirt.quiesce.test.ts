/**
 * snapshot.quiesce on a domain without a guest agent: `required` fails cleanly before any snapshot (exit 3, no
 * overlay, no partial, the domain untouched); `auto` proceeds crash-consistent with a warning.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestDomain, domainSources, domainState, removeTestDomain, type TestDomain } from "../lab/libvirtLab.ts";
import { backups, cli, mkdirp, overlayFiles, partials, writeConfig } from "./libvirtRunner.ts";
import { ensureBundle } from "../lab/bundle.ts";

const lab = inject("libvirt");
const VM = "qz1";

describe("libvirt method: quiesce without a guest agent", () => {
  let dom: TestDomain;
  let dir: string;
  let staging: string;

  beforeAll(() => {
    ensureBundle();
    dir = mkdirp(join(lab.dir, "t-quiesce"));
    staging = mkdirp(join(dir, "staging"));
    dom = createTestDomain(lab, VM, { dir: join(dir, "images") });
  });
  afterAll(() => removeTestDomain(lab, VM));

  it("quiesce: required fails with exit 3 naming the guest agent, and leaves no overlay and no partial", () => {
    const config = writeConfig(lab, join(dir, "required.json"), { staging, vm: VM, quiesce: "required" });
    const r = cli(config, ["run", "--no-ship"]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.lines.filter((l) => l.level === "error").at(-1)?.msg).toMatch(/requires a quiesced snapshot .* guest agent .* does not answer/);
    expect(r.lines.some((l) => l.event === "libvirt.snapshot.created")).toBe(false);
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(join(dir, "images"))).toEqual([]);
    expect(partials(staging, VM)).toEqual([]);
    expect(backups(staging, VM)).toEqual([]);
    expect(domainState(lab, VM)).toBe("running");
  });

  it("quiesce: auto proceeds with a warning and records quiesced: false", () => {
    const config = writeConfig(lab, join(dir, "auto.json"), { staging, vm: VM, quiesce: "auto" });
    const r = cli(config, ["run", "--no-ship"]);
    expect(r.status, r.stderr).toBe(0);
    const warn = r.lines.find((l) => l.event === "libvirt.quiesce.skipped");
    expect(warn?.level).toBe("warn");
    expect(warn?.msg).toMatch(/crash-consistent, not quiesced/);
    const ids = backups(staging, VM);
    expect(ids).toHaveLength(1);
    const m = JSON.parse(readFileSync(join(staging, VM, ids[0]!, "manifest.json"), "utf8"));
    expect(m.snapshot.quiesced).toBe(false);
    expect(domainSources(lab, VM)).toEqual({ vda: dom.disks[0]!.path, vdb: dom.disks[1]!.path });
    expect(overlayFiles(join(dir, "images"))).toEqual([]);
  });
});
