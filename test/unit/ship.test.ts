/**
 * Pure parts of ship and the targets: parsing of recorded coreutils output, comparison against the manifest,
 * quoting, the ssh options (pinned key, never accept-new), names that may reach a remote path, status text.
 */
import { describe, expect, it } from "vitest";
import { HostTarget } from "../../runner/config/schema.ts";
import { formatTargetStatus } from "../../runner/ship.ts";
import { aliveIntervalSeconds, knownHostsLine, shellQuote, SshTarget } from "../../runner/targets/sshTarget.ts";
import { classifyEntries, compareFacts, parseFacts, parseFindListing, placePath, shortTimeoutMs, targetTimeoutMs, vmPath } from "../../runner/targets/target.ts";

const A = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const M = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447";

describe("parseFacts (recorded `stat -c '%s %n'` and `sha256sum` output, one file missing)", () => {
  const stat = "3 /tmp/rec/a.raw.zst\n12 /tmp/rec/manifest.json\n";
  const sums = `${A}  /tmp/rec/a.raw.zst\n${M}  /tmp/rec/manifest.json\n`;
  it("gives size and checksum by file name, and leaves the missing file out", () => {
    expect(Object.fromEntries(parseFacts(sums, stat))).toEqual({
      "a.raw.zst": { size: 3, sha256: A },
      "manifest.json": { size: 12, sha256: M },
    });
  });
  it("ignores a checksum without a size (and the reverse)", () => {
    expect(parseFacts(sums, "3 /tmp/rec/a.raw.zst\n").size).toBe(1);
    expect(parseFacts("", stat).size).toBe(0);
  });
  it("accepts the binary-mode marker of sha256sum", () => {
    expect(parseFacts(`${A} */x/a.raw.zst\n`, "3 /x/a.raw.zst\n").get("a.raw.zst")).toEqual({ size: 3, sha256: A });
  });
});

describe("compareFacts", () => {
  const expected = new Map([
    ["vda.raw.zst", { size: 3, sha256: A }],
    ["manifest.json", { size: 12, sha256: M }],
  ]);
  it("is empty when everything matches", () => {
    expect(compareFacts(expected, new Map(expected))).toEqual([]);
  });
  it("names every missing file, wrong size and wrong checksum", () => {
    expect(compareFacts(expected, new Map([["vda.raw.zst", { size: 3, sha256: M }]]))).toEqual([`vda.raw.zst: SHA-256 ${M}, expected ${A}`, "manifest.json: missing"]);
    expect(compareFacts(expected, new Map([["vda.raw.zst", { size: 2, sha256: A }], ["manifest.json", { size: 12, sha256: M }]]))).toEqual(["vda.raw.zst: size 2 bytes, expected 3"]);
  });
});

describe("target listing (recorded `find -printf '%y %P\\n'` output)", () => {
  const out = [
    "d 20261126T020000Z",
    "d .incoming-20261128T020000Z",
    "f .incoming-20261128T020000Z/vda.raw.zst",
    "d 20261127T020000Z",
    "f 20261127T020000Z/vda.raw.zst",
    "f 20261127T020000Z/manifest.json",
    "d .trash-20261101T020000Z",
    "d lost+found",
    "f stray-file",
  ].join("\n");
  it("a directory is a backup only with manifest.json; incoming and trash are recognised; the rest ignored", () => {
    expect(parseFindListing(out)).toEqual({
      backups: ["20261127T020000Z"],
      incoming: ["20261128T020000Z"],
      trash: ["20261101T020000Z"],
      incomplete: ["20261126T020000Z"],
    });
  });
  it("sorts by id (= by age)", () => {
    expect(classifyEntries([{ name: "20261127T020000Z", hasManifest: true }, { name: "20261126T020000Z-2", hasManifest: true }, { name: "20261126T020000Z", hasManifest: true }]).backups).toEqual([
      "20261126T020000Z",
      "20261126T020000Z-2",
      "20261127T020000Z",
    ]);
  });
});

describe("remote paths are built only from safe names and ids", () => {
  it("builds the documented layout", () => {
    expect(vmPath("/srv/b", "kvm1", "web01")).toBe("/srv/b/kvm1/web01");
    expect(placePath("/srv/b", "kvm1", "web01", "20261127T020000Z", "final")).toBe("/srv/b/kvm1/web01/20261127T020000Z");
    expect(placePath("/srv/b", "kvm1", "web01", "20261127T020000Z", "incoming")).toBe("/srv/b/kvm1/web01/.incoming-20261127T020000Z");
    expect(placePath("/srv/b", "kvm1", "web01", "20261127T020000Z", "trash")).toBe("/srv/b/kvm1/web01/.trash-20261127T020000Z");
  });
  it.each(["..", "../etc", "a/b", "-rf", "a b", "$(id)", "x'y", ""])("refuses the VM name %j", (vm) => {
    expect(() => vmPath("/srv/b", "kvm1", vm)).toThrow(/not a safe name/);
  });
  it.each(["latest", "20261127T020000Z/..", "../20261127T020000Z", "20261127"])("refuses the id %j", (id) => {
    expect(() => placePath("/srv/b", "kvm1", "web01", id, "final")).toThrow(/not a backup id/);
  });
});

describe("shellQuote", () => {
  it("single-quotes every argument, including embedded quotes", () => {
    expect(shellQuote("/srv/b")).toBe("'/srv/b'");
    expect(shellQuote("a'b")).toBe(`'a'\\''b'`);
    expect(shellQuote("$(rm -rf /)")).toBe("'$(rm -rf /)'");
  });
});

describe("ssh options", () => {
  const cfg = HostTarget.parse({
    type: "ssh",
    host: "nas.example.org",
    port: 2222,
    user: "backup",
    path: "/srv/backups",
    hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMr0m+e7lV0ZQ0ZWzF0e9Xo5Yp2wQ3mQ1m3m3m3m3m3m comment here",
    keyFile: "/etc/kvm-backup/keys/nas.key",
    timeout: "2h",
  });
  const t = new SshTarget("nas", cfg as Extract<HostTarget, { type: "ssh" }>, { host: "kvm1", staging: "/var/lib/kvm-backup" });
  const opts = t.sshOptions();
  const o = (k: string) => opts.filter((_, i) => opts[i - 1] === "-o" && opts[i]!.startsWith(`${k}=`)).map((v) => v.slice(k.length + 1));

  it("pins the host key with StrictHostKeyChecking yes and a generated known_hosts, ignoring every other config", () => {
    expect(o("StrictHostKeyChecking")).toEqual(["yes"]);
    expect(o("UserKnownHostsFile")).toEqual(["/var/lib/kvm-backup/.kvm-backup/ssh/nas.known_hosts"]);
    expect(o("GlobalKnownHostsFile")).toEqual(["/dev/null"]);
    expect(opts.slice(0, 2)).toEqual(["-F", "/dev/null"]);
    expect(opts.join(" ")).not.toMatch(/accept-new|=no\b.*StrictHost|StrictHostKeyChecking=no/);
  });
  it("offers only the configured key, never asks, and bounds connect and silence", () => {
    expect(o("IdentitiesOnly")).toEqual(["yes"]);
    expect(o("IdentityFile")).toEqual(["/etc/kvm-backup/keys/nas.key"]);
    expect(o("BatchMode")).toEqual(["yes"]);
    expect(o("ConnectTimeout")).toEqual(["10"]);
    expect(o("ServerAliveInterval")).toEqual(["15"]);
    expect(o("ServerAliveCountMax")).toEqual(["3"]);
    expect(opts.slice(-4)).toEqual(["-p", "2222", "-l", "backup"]);
  });
  it("no option value contains a space (rsync -e splits on spaces)", () => {
    expect(opts.every((a) => !/\s/.test(a))).toBe(true);
  });
  it("the shared-connection socket changes when the pinned key changes", () => {
    const other = new SshTarget("nas", { ...cfg, hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDifferentKeyDifferentKeyDifferentKeyDiff" } as Extract<HostTarget, { type: "ssh" }>, {
      host: "kvm1",
      staging: "/var/lib/kvm-backup",
    });
    const mux = (x: string[]) => x[x.findIndex((v) => v.startsWith("ControlPath="))];
    expect(mux(other.sshOptions())).not.toBe(mux(opts));
    expect(mux(opts)).toMatch(/^ControlPath=\/var\/lib\/kvm-backup\/\.kvm-backup\/ssh\/[0-9a-f]{16}\.mux$/);
  });
  it("goes without a shared connection when the socket path would be too long for a Unix socket", () => {
    const deep = new SshTarget("nas", cfg as Extract<HostTarget, { type: "ssh" }>, { host: "kvm1", staging: `/${"d".repeat(90)}` }).sshOptions();
    expect(deep.some((v) => v.startsWith("ControlPath="))).toBe(false);
    expect(deep).toContain("ControlMaster=no");
  });
  it("known_hosts line: alias, type and key only (the comment is dropped)", () => {
    expect(knownHostsLine("kvm-backup-target-nas", cfg.type === "ssh" ? cfg.hostKey : "")).toBe(
      "kvm-backup-target-nas ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMr0m+e7lV0ZQ0ZWzF0e9Xo5Yp2wQ3mQ1m3m3m3m3m3m\n",
    );
  });
});

describe("timeouts", () => {
  it("keep-alive scales with the target timeout between 2 and 15 s", () => {
    expect(aliveIntervalSeconds(5_000)).toBe(2);
    expect(aliveIntervalSeconds(30_000)).toBe(3);
    expect(aliveIntervalSeconds(7_200_000)).toBe(15);
  });
  it("target timeout from the config's duration; infinity is capped at a week", () => {
    expect(targetTimeoutMs(HostTarget.parse({ type: "path", path: "/mnt/b", timeout: "1h 30min" }))).toBe(5_400_000);
    expect(targetTimeoutMs(HostTarget.parse({ type: "path", path: "/mnt/b", timeout: 45 }))).toBe(45_000);
    expect(targetTimeoutMs(HostTarget.parse({ type: "path", path: "/mnt/b", timeout: "infinity" }))).toBe(7 * 24 * 3600 * 1000);
    expect(targetTimeoutMs(HostTarget.parse({ type: "path", path: "/mnt/b" }))).toBe(7_200_000);
    expect(shortTimeoutMs(7_200_000)).toBe(60_000);
    expect(shortTimeoutMs(20_000)).toBe(20_000);
  });
});

describe("formatTargetStatus", () => {
  it("shows per target what is pending and since when, with the last error", () => {
    expect(
      formatTargetStatus([
        {
          target: "nas",
          where: "ssh backup@nas:22/srv/b",
          pending: [
            { vm: "web01", id: "20261127T020000Z", since: "2026-11-27T02:10:00.000Z", lastError: 'target "nas": cannot connect' },
            { vm: "web01", id: "20261128T020000Z", since: undefined, lastError: undefined },
          ],
          lastShippedAt: "2026-11-26T02:12:00.000Z",
        },
        { target: "mnt", where: "path /mnt/b", pending: [], lastShippedAt: undefined },
      ]),
    ).toBe(
      [
        "targets:",
        "  nas (ssh backup@nas:22/srv/b): 2 backups pending since 2026-11-27T02:10:00.000Z; last shipped 2026-11-26T02:12:00.000Z",
        '    web01/20261127T020000Z pending since 2026-11-27T02:10:00.000Z: target "nas": cannot connect',
        "    web01/20261128T020000Z pending",
        "  mnt (path /mnt/b): up to date; last shipped never",
        "",
      ].join("\n"),
    );
  });
  it("says when there are no targets", () => {
    expect(formatTargetStatus([])).toBe("targets: none configured\n");
  });
});

describe("state.json", () => {
  it("a missing or unreadable state means nothing shipped; writes are whole-file and read back", async () => {
    const { mkdtempSync, writeFileSync, readdirSync, rmSync } = await import("node:fs");
    const { readState, writeState, updateState, isShippedTo, targetState } = await import("../../runner/backupState.ts");
    const dir = mkdtempSync("/tmp/kvmb-unit-state-");
    try {
      expect(readState(dir)).toEqual({ stateVersion: 1, protected: false, targets: {} });
      writeFileSync(`${dir}/state.json`, "{ half");
      expect(readState(dir)).toEqual({ stateVersion: 1, protected: false, targets: {} });
      updateState(dir, (s) => {
        targetState(s, "nas").shippedAt = "2026-11-28T03:00:00.000Z";
      });
      // shipped but not (yet) verified does not count
      expect(isShippedTo(readState(dir), "nas")).toBe(false);
      updateState(dir, (s) => void (targetState(s, "nas").verified = true));
      expect(isShippedTo(readState(dir), "nas")).toBe(true);
      expect(isShippedTo(readState(dir), "usb")).toBe(false);
      writeState(dir, { ...readState(dir), protected: true });
      expect(readState(dir).protected).toBe(true);
      expect(readdirSync(dir)).toEqual(["state.json"]); // no temp files left behind
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});
