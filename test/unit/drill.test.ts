/**
 * Restore drills, the pure parts: the scratch domain's XML from a saved domain XML (a production-like UEFI VM
 * with every kind of device a drill must not take along), the live-XML check, console reading, drill settings in
 * the schema, and the drill lines of status and the Prometheus textfile.
 */
import { createHash } from "node:crypto";
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { finished } from "node:stream/promises";
import type { Writable } from "node:stream";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkDrillDomain, drillDomainXml, DrillXmlError } from "../../runner/drill/drillDomainXml.ts";
import { FATAL_CONSOLE_PATTERNS, plainLine, Tail } from "../../runner/drill/bootWatch.ts";
import { drillSettings } from "../../runner/drill/drill.ts";
import { restoreSparse, StagingSpaceError } from "../../runner/drill/sparseRestore.ts";
import { HostConfig } from "../../runner/config/schema.ts";
import { prometheusText, statusText, type VmStatus } from "../../runner/statusReport.ts";

const saved = readFileSync(join(import.meta.dirname, "fixtures", "drill", "web01-uefi.xml"), "utf8");
const scratch = "/srv/staging/.kvm-backup/drill-scratch/web01";
const opts = {
  name: "kvm-backup-drill-web01",
  uuid: "11111111-2222-4333-8444-555555555555",
  disks: { vda: `${scratch}/vda.raw`, vdb: `${scratch}/vdb.raw` },
  scratchDir: scratch,
  consoleLog: `${scratch}/console.log`,
  nvram: `${scratch}/VARS.fd`,
};

describe("drill domain XML", () => {
  const d = drillDomainXml(saved, opts);

  it("has a new name, UUID and description, no id, metadata, title or static security label", () => {
    expect(d.xml).toContain("<name>kvm-backup-drill-web01</name>");
    expect(d.xml).toContain(`<uuid>${opts.uuid}</uuid>`);
    expect(d.xml).not.toContain("5c2f1f8e-3a4b");
    expect(d.xml).not.toMatch(/<domain[^>]*\bid=/);
    expect(d.xml).not.toMatch(/<metadata|<title|<seclabel|libosinfo/);
    expect(d.xml).toContain("<description>kvm-backup restore drill");
  });

  it("has no network interface, host device, shared directory, TPM, vsock, graphics or remote RNG", () => {
    for (const tag of ["interface", "hostdev", "filesystem", "tpm", "vsock", "graphics"]) expect(d.xml, tag).not.toContain(`<${tag}`);
    expect(d.xml).not.toContain("egd");
    expect(d.xml).toContain("<backend model='random'>/dev/urandom</backend>".replace(/'/g, '"'));
    expect(d.removed).toEqual(expect.arrayContaining(["<interface bridge vnet3 mac 52:54:00:12:34:56 br0>", "<interface network mac 52:54:00:12:34:57 default>", "<hostdev pci>", "<graphics vnc>"]));
    expect(d.removed.join(" ")).toMatch(/disk vdc \(not in the backup\)/);
  });

  it("points the backed-up disks at the restored raw copies, without the original's sources or backing chain", () => {
    const disks = [...d.xml.matchAll(/<disk [\s\S]*?<\/disk>/g)].map((m) => m[0]);
    expect(disks).toHaveLength(3); // vda, vdb, the emptied CD-ROM; vdc (not backed up) is gone
    expect(disks[0]).toMatch(/<disk type="file" device="disk">/);
    expect(disks[0]).toContain(`<source file="${scratch}/vda.raw"/>`);
    expect(disks[0]).toMatch(/<driver name="qemu" type="raw" cache="none" io="native" discard="unmap"\/>/);
    expect(disks[1]).toContain(`<source file="${scratch}/vdb.raw"/>`);
    expect(disks[1]).not.toMatch(/backingStore|base\.qcow2|qcow2/);
    expect(disks[2]).toMatch(/device="cdrom"/);
    expect(disks[2]).not.toContain("<source");
    expect(d.xml).not.toMatch(/\/dev\/vg0|\/var\/lib\/libvirt\/images|debian-12\.iso/);
  });

  it("logs the console to a file in the scratch directory and keeps only the guest agent channel, without its socket path", () => {
    expect(d.xml).toMatch(new RegExp(`<serial type="file"><source path="${scratch}/console.log"/><target type="isa-serial" port="0">`));
    expect(d.xml).not.toMatch(/<console|\/dev\/pts|spicevmc|domain-7-web01/);
    expect(d.hasAgentChannel).toBe(true);
    expect(d.xml).toMatch(/<channel type="unix">\s*<target type="virtio" name="org.qemu.guest_agent.0"\/>/);
  });

  it("uses a copy of the UEFI variables in the scratch directory, and ends the domain on power-off and crash", () => {
    expect(d.originalNvram).toBe("/var/lib/libvirt/qemu/nvram/web01_VARS.fd");
    expect(d.xml).toContain(`<nvram template="/usr/share/OVMF/OVMF_VARS_4M.fd">${scratch}/VARS.fd</nvram>`);
    expect(d.xml).toContain("<on_crash>destroy</on_crash>");
    expect(d.xml).toContain("<on_poweroff>destroy</on_poweroff>");
  });

  it("applies the drill's memory and vCPUs", () => {
    const small = drillDomainXml(saved, { ...opts, memoryKiB: 1048576, vcpus: 1 });
    expect(small.xml).toContain('<memory unit="KiB">1048576</memory>');
    expect(small.xml).toContain('<currentMemory unit="KiB">1048576</currentMemory>');
    expect(small.xml).toMatch(/<vcpu placement="static">1<\/vcpu>/);
  });

  it("refuses XML that is not a domain, and a backup disk the domain does not have", () => {
    expect(() => drillDomainXml("<domain><name>x", opts)).toThrow(DrillXmlError);
    expect(() => drillDomainXml("<network/>", opts)).toThrow(/not a libvirt <domain>/);
    expect(() => drillDomainXml(saved, { ...opts, disks: { ...opts.disks, vdz: `${scratch}/vdz.raw` } })).toThrow(/no disk vdz/);
  });

  it("passes its own output through the live-XML check; a leak of any kind is named", () => {
    expect(checkDrillDomain(d.xml, scratch)).toEqual([]);
    expect(checkDrillDomain(saved, scratch)).toEqual(
      expect.arrayContaining([
        "it has <interface bridge vnet3 mac 52:54:00:12:34:56 br0>",
        "it has <hostdev pci>",
        "it has <filesystem mount /srv/shared>",
        "disk vda uses /dev/vg0/web01-root, outside the scratch directory /srv/staging/.kvm-backup/drill-scratch/web01",
        "disk vdb has a backing chain",
        "its UEFI variables are /var/lib/libvirt/qemu/nvram/web01_VARS.fd, outside the scratch directory",
      ]),
    );
    expect(checkDrillDomain(d.xml.replace(`${scratch}/vda.raw`, `${scratch}/../../web01/vda.raw`), scratch)[0]).toMatch(/outside the scratch directory/);
  });
});

describe("drill console", () => {
  const dir = mkdtempSync(join(tmpdir(), "kvmb-drill-unit-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("reads complete new lines only, across calls", () => {
    const f = join(dir, "console.log");
    const t = new Tail(f);
    expect(t.lines()).toEqual([]);
    appendFileSync(f, "one\r\ntw");
    expect(t.lines()).toEqual(["one"]);
    appendFileSync(f, "o\nthree\n");
    expect(t.lines()).toEqual(["two", "three"]);
    expect(t.lines()).toEqual([]);
  });

  it("strips colours and control characters; knows the lines after which a guest does not come up", () => {
    expect(plainLine("\x1b[0;1;31mYou are in emergency mode.\x1b[0m\r")).toBe("You are in emergency mode.");
    const fatal = (l: string) => FATAL_CONSOLE_PATTERNS.some((re) => re.test(l));
    expect(fatal("[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)")).toBe(true);
    expect(fatal("ALERT!  /dev/vda does not exist.  Dropping to a shell!")).toBe(true);
    expect(fatal("[  OK  ] Reached target multi-user.target - Multi-User System.")).toBe(false);
  });
});

describe("sparse restore", () => {
  const dir = mkdtempSync(join(tmpdir(), "kvmb-sparse-unit-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  // 8 MiB: 1 MiB of data at 2 MiB, the rest zeros; the reader hands it over in odd-sized chunks.
  const image = Buffer.alloc(8 << 20);
  image.fill(0xab, 2 << 20, 3 << 20);
  const sha = createHash("sha256").update(image).digest("hex");
  const disk = { name: "vda", virtualSize: image.length, sha256: sha } as Parameters<typeof restoreSparse>[1];
  const reader = (data: Buffer) => async (sink: Writable) => {
    for (let off = 0; off < data.length; off += 3_000_017) sink.write(data.subarray(off, off + 3_000_017));
    sink.end();
    await finished(sink);
    return { sha256: createHash("sha256").update(data).digest("hex"), bytes: data.length };
  };

  it("writes the data and leaves the zeros as holes, at the full length", async () => {
    const to = join(dir, "vda.raw");
    const r = await restoreSparse(reader(image), disk, to, dir, 0);
    expect(readFileSync(to).equals(image)).toBe(true);
    expect(statSync(to).size).toBe(image.length);
    expect(r.allocatedBytes).toBeLessThanOrEqual((1 << 20) + 2 * 65536);
    expect(statSync(to).blocks * 512).toBeLessThan(2 << 20);
  });

  it("fails on bytes that do not match the manifest, and when staging would fall below minFree", async () => {
    const other = Buffer.from(image);
    other[5] = 1;
    await expect(restoreSparse(reader(other), disk, join(dir, "bad.raw"), dir, 0)).rejects.toThrow(/does not match the manifest/);
    await expect(restoreSparse(reader(image), disk, join(dir, "full.raw"), dir, Number.MAX_SAFE_INTEGER)).rejects.toThrow(StagingSpaceError);
    expect(existsSync(join(dir, "full.raw"))).toBe(false);
  });
});

describe("drill settings", () => {
  const base = {
    version: 1,
    host: "h",
    staging: { path: "/srv/staging" },
    policies: {
      plain: { method: "libvirt", schedule: "daily", retention: { keepLast: 1 } },
      drilled: { method: "libvirt", schedule: "daily", retention: { keepLast: 1 }, drill: { schedule: "Sun 04:00", bootTimeout: "5min", memory: "2GiB", vcpus: 1, consolePattern: "login:" } },
    },
    vms: { a: { policy: ["plain", "drilled"] }, b: { policy: "plain" } },
  };

  it("come from the VM's first policy with a drill, else the defaults", () => {
    const cfg = HostConfig.parse(base);
    expect(cfg.policies.drilled!.drill).toMatchObject({ randomizedDelay: "30min", limits: { nice: 10, timeout: "6h" } });
    const a = drillSettings(cfg, "a");
    expect(a).toMatchObject({ policy: "drilled", bootTimeoutMs: 300_000, memoryKiB: 2097152, vcpus: 1 });
    expect(a.consolePattern?.test("labguest login: ")).toBe(true);
    expect(drillSettings(cfg, "b")).toEqual({ policy: null, bootTimeoutMs: 600_000 });
  });

  it("reject a bad pattern, schedule or field with the path and what is allowed", () => {
    const bad = (drill: object) => {
      const r = HostConfig.safeParse({ ...base, policies: { ...base.policies, drilled: { ...base.policies.drilled, drill } } });
      expect(r.success).toBe(false);
      return r.error!.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("\n");
    };
    expect(bad({ schedule: "daily", consolePattern: "login(" })).toMatch(/policies\.drilled\.drill\.consolePattern: is not a valid regular expression/);
    expect(bad({ schedule: "every tuesday" })).toMatch(/policies\.drilled\.drill\.schedule: /);
    expect(bad({ schedule: "daily", timeout: "5min" })).toMatch(/unknown field "timeout" \(allowed: schedule, randomizedDelay, bootTimeout, consolePattern, memory, vcpus, limits\)/);
  });
});

describe("status with drills", () => {
  const row: VmStatus = {
    vm: "web01",
    backups: 2,
    lastSuccessId: "20261128T020000Z",
    lastSuccessAt: "2026-11-28T02:01:40.000Z",
    ageSeconds: 3600,
    lastWindowMs: 1500,
    lastStoredBytes: 1000,
    peakFillPercent: null,
    lastRun: { at: "2026-11-28T02:01:41.000Z", ok: true },
    lastDrill: { at: "2026-11-27T04:10:00.000Z", ok: true, id: "20261127T020000Z", ageSeconds: 100_000, answerSeconds: 23.4 },
  };

  it("shows the last drill, its age and answer time; a failed one loudly", () => {
    expect(statusText([row])).toMatch(/last drill passed 27\.8 h ago \(backup 20261127T020000Z, answered after 23\.4 s\)/);
    expect(statusText([{ ...row, lastDrill: { ...row.lastDrill!, ok: false, answerSeconds: null, error: "boom" } }])).toMatch(/LAST DRILL FAILED 27\.8 h ago: boom/);
    expect(statusText([{ ...row, lastDrill: null }])).not.toMatch(/drill/);
  });

  it("exports drill metrics to Prometheus", () => {
    const t = prometheusText("kvm1", [row]);
    expect(t).toContain('kvm_backup_last_drill_success{host="kvm1",vm="web01"} 1');
    expect(t).toContain(`kvm_backup_last_drill_timestamp_seconds{host="kvm1",vm="web01"} ${Date.parse("2026-11-27T04:10:00.000Z") / 1000}`);
    expect(t).toContain('kvm_backup_last_drill_age_seconds{host="kvm1",vm="web01"} 100000');
    expect(t).toContain('kvm_backup_last_drill_answer_seconds{host="kvm1",vm="web01"} 23.4');
    const failed = prometheusText("kvm1", [{ ...row, lastDrill: { ...row.lastDrill!, ok: false, answerSeconds: null } }]);
    expect(failed).toContain('kvm_backup_last_drill_success{host="kvm1",vm="web01"} 0');
    expect(failed).not.toContain("answer_seconds");
  });
});
