import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { diskFormatsFromDomainXml, parseDomblklistDetails } from "../../runner/lvm/domblklist.ts";
import { discoverLayout, NotOnLvmError, splitDeviceNumber } from "../../runner/lvm/layout.ts";
import { mountOf, parseMountinfo, pathInFilesystem, unescapeMountField } from "../../runner/lvm/mountinfo.ts";
import { parseLvs } from "../../runner/lvm/report.ts";
import { parseImageHeader } from "../../runner/lvm/imageProbe.ts";

const fx = (f: string) => readFileSync(new URL(`./fixtures/lvm/${f}`, import.meta.url), "utf8");
const lvs = parseLvs(fx("lvs-runner.json"));
const umlMounts = parseMountinfo(fx("mountinfo-uml.txt"));

describe("virsh domblklist --details and the domain XML (libvirt test driver)", () => {
  it("lists block and file disks, a source with a space, and an empty CD-ROM", () => {
    expect(parseDomblklistDetails(fx("domblklist-details.txt"))).toEqual([
      { type: "block", device: "disk", target: "vda", source: "/dev/vg0/web01" },
      { type: "file", device: "disk", target: "vdb", source: "/var/lib/libvirt/images/web01-data.qcow2" },
      { type: "file", device: "disk", target: "vdc", source: "/var/lib/libvirt/images/web01 scratch.raw" },
      { type: "file", device: "cdrom", target: "sda", source: null },
    ]);
  });

  it("takes each disk's format from the domain XML", () => {
    expect(Object.fromEntries(diskFormatsFromDomainXml(fx("domain.xml")))).toEqual({ vda: "raw", vdb: "qcow2", vdc: "raw", sda: "raw" });
  });

  it("refuses output that is not domblklist --details", () => {
    expect(() => parseDomblklistDetails(" Target   Source\n---\n vda /x\n")).toThrow(/not the output/);
  });
});

describe("mountinfo", () => {
  it("parses the UML mount table with ext4 and xfs on LVs", () => {
    const ext4 = umlMounts.find((m) => m.mountPoint === "/tmp/var/lib/libvirt/images")!;
    expect(ext4).toMatchObject({ major: 254, minor: 1, fsType: "ext4", source: "/dev/mapper/vg0-images", root: "/" });
    expect(umlMounts.find((m) => m.fsType === "xfs")).toMatchObject({ major: 254, minor: 2, mountPoint: "/tmp/srv/xfs" });
  });

  it("parses this machine's mount table", () => {
    const host = parseMountinfo(fx("mountinfo-host.txt"));
    expect(host.length).toBeGreaterThan(3);
    expect(mountOf(host, "/proc/self")!.fsType).toBe("proc");
  });

  it("finds the longest, latest mount holding a path", () => {
    expect(mountOf(umlMounts, "/tmp/var/lib/libvirt/images/db01.raw")!.fsType).toBe("ext4");
    expect(mountOf(umlMounts, "/tmp/var/lib/libvirt")!.fsType).toBe("tmpfs");
    expect(mountOf(umlMounts, "/tmp/srv/xfsx")!.fsType).toBe("tmpfs");
  });

  it("translates a path to the filesystem's own path, also under a bind mount", () => {
    const bind = parseMountinfo("40 1 254:1 /vms/images /var/lib/libvirt/images rw - ext4 /dev/mapper/vg0-data rw\n")[0]!;
    expect(pathInFilesystem(bind, "/var/lib/libvirt/images/a.qcow2")).toBe("/vms/images/a.qcow2");
    const plain = umlMounts.find((m) => m.mountPoint === "/tmp/var/lib/libvirt/images")!;
    expect(pathInFilesystem(plain, "/tmp/var/lib/libvirt/images/db01.raw")).toBe("/db01.raw");
  });

  it("unescapes spaces in mount points", () => {
    expect(unescapeMountField("/srv/vm\\040images")).toBe("/srv/vm images");
    expect(parseMountinfo("40 1 254:3 / /srv/vm\\040images rw - xfs /dev/mapper/vg0-x rw\n")[0]!.mountPoint).toBe("/srv/vm images");
  });
});

describe("layout discovery", () => {
  it("(a) a block device that is an LV, matched by device number (dev_t from the recorded stat)", () => {
    // stat -L of /dev/vg0/web01 in UML printed fe:0 (254:0).
    expect(fx("stat-uml.txt")).toMatch(/^\/dev\/vg0\/web01 fe:0 /m);
    const l = discoverLayout("vda", "/dev/vg0/web01", { realPath: "/dev/dm-0", kind: "block", major: 0xfe, minor: 0 }, lvs, umlMounts);
    expect(l).toMatchObject({ layout: "lv", lv: { vg: "vg0", name: "web01" } });
  });

  it("(b) an image file on ext4 on an LV (st_dev 65025 = 254:1 from the recorded stat)", () => {
    const dev = Number(/db01\.raw \S+ (\d+)/.exec(fx("stat-uml.txt"))![1]);
    const l = discoverLayout("vdb", "/tmp/var/lib/libvirt/images/db01.raw", { realPath: "/tmp/var/lib/libvirt/images/db01.raw", kind: "file", ...splitDeviceNumber(dev) }, lvs, umlMounts);
    expect(l).toMatchObject({ layout: "file-on-lv", lv: { name: "images" }, pathInFs: "/db01.raw", mount: { fsType: "ext4" } });
  });

  it("refuses a file on tmpfs and names the disk and the libvirt method", () => {
    const f = () => discoverLayout("vdc", "/tmp/x.raw", { realPath: "/tmp/x.raw", kind: "file", major: 0, minor: 19 }, lvs, umlMounts);
    expect(f).toThrow(NotOnLvmError);
    expect(f).toThrow(/disk vdc \(\/tmp\/x\.raw\) is an image file on tmpfs \(tmpfs, mounted on \/tmp\), which is not a logical volume; back this VM up with the libvirt method/);
  });

  it("refuses a block device that is not an LV, and a snapshot as a disk", () => {
    expect(() => discoverLayout("vda", "/dev/sdb", { realPath: "/dev/sdb", kind: "block", major: 8, minor: 16 }, lvs, umlMounts)).toThrow(/block device 8:16 that is not an active logical volume/);
    expect(() => discoverLayout("vda", "/dev/vg0/foreign-snap", { realPath: "/dev/dm-10", kind: "block", major: 254, minor: 10 }, lvs, umlMounts)).toThrow(/is the LVM snapshot vg0\/foreign-snap/);
  });

  it("refuses filesystems whose snapshot cannot be mounted beside the original", () => {
    const mounts = parseMountinfo("40 1 254:1 / /srv rw - btrfs /dev/mapper/vg0-images rw\n");
    expect(() => discoverLayout("vda", "/srv/a.raw", { realPath: "/srv/a.raw", kind: "file", major: 254, minor: 1 }, lvs, mounts)).toThrow(/btrfs filesystem on vg0\/images/);
  });

  it("splits Linux device numbers, also large minors", () => {
    expect(splitDeviceNumber(65025)).toEqual({ major: 254, minor: 1 });
    // glibc makedev(259, 0x1005): low minor byte, major << 8, high minor bits << 12
    expect(splitDeviceNumber(0x05 | (259 << 8) | (0x1000 << 12))).toEqual({ major: 259, minor: 0x1005 });
    expect(splitDeviceNumber(65025n)).toEqual({ major: 254, minor: 1 });
  });
});

describe("image headers (explicit disks map: no libvirt to say the format)", () => {
  it("recognises qcow2 with its virtual size and backing file, and everything else as raw", () => {
    const h = Buffer.alloc(32);
    h.writeUInt32BE(0x514649fb, 0);
    h.writeUInt32BE(3, 4);
    h.writeBigUInt64BE(1n << 30n, 24);
    expect(parseImageHeader(h)).toEqual({ format: "qcow2", virtualSize: 1 << 30, hasBackingFile: false });
    h.writeBigUInt64BE(0x200n, 8);
    expect(parseImageHeader(h).hasBackingFile).toBe(true);
    expect(parseImageHeader(Buffer.alloc(32))).toEqual({ format: "raw", virtualSize: null, hasBackingFile: false });
    expect(parseImageHeader(Buffer.alloc(0)).format).toBe("raw");
  });
});
