/**
 * The deploy scripts, executed for real with sh under a temporary root (hostLayout(root)): what `create`
 * installs, that it is idempotent and atomic, that a bad transfer changes nothing, and that `delete`
 * removes only what was installed and tolerates a half-gone host. systemd is not PID 1 here, so the unit
 * script takes its documented "install, start at next boot" branch.
 */
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { sha256 } from "../../components/render/hash.ts";
import { type HostLayout, hostLayout, keyFile, releaseBundle } from "../../components/render/layout.ts";
import {
  renderConfigInstall,
  renderConfigRemove,
  renderKeyInstall,
  renderKeyRemove,
  renderPreflight,
  renderReleaseDirCreate,
  renderReleaseDirRemove,
  renderRunnerInstall,
  renderRunnerUninstall,
  renderStagingCreate,
  renderUnitsInstall,
  renderUnitsRemove,
  unitsStdin,
} from "../../components/render/scripts.ts";
import { shq } from "../../components/render/shell.ts";

let root: string;
let layout: HostLayout;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "kvm-backup-scripts-"));
  layout = hostLayout(root);
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

function sh(script: string, stdin = ""): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("sh", ["-c", script], { input: stdin, encoding: "utf8", timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const mode = (p: string) => statSync(p).mode & 0o777;

/** A stand-in bundle: prints its version, and `doctor` answers with the exit code baked into it. */
function bundleText(version: string, doctorExit = 0): string {
  return [
    "#!/usr/bin/env node",
    `const a = process.argv.slice(2);`,
    `if (a.includes("--version")) { console.log(${JSON.stringify(version)}); process.exit(0); }`,
    `if (a.includes("doctor")) { console.log(JSON.stringify({ ok: ${doctorExit === 0}, problems: ${doctorExit === 0 ? "[]" : '["zstd is not installed"]'}, config: process.env.KVM_BACKUP_CONFIG })); process.exit(${doctorExit}); }`,
    "process.exit(2);",
    "",
  ].join("\n");
}

function stageRelease(version: string, doctorExit = 0): { releaseId: string; sha: string } {
  const text = bundleText(version, doctorExit);
  const sha = sha256(text);
  const releaseId = sha.slice(0, 16);
  expect(sh(renderReleaseDirCreate({ hostName: "h1", releaseId, layout })).status).toBe(0);
  writeFileSync(releaseBundle(layout, releaseId), text); // what CopyToRemote does
  return { releaseId, sha };
}

function install(version: string) {
  const { releaseId, sha } = stageRelease(version);
  const r = sh(renderRunnerInstall({ hostName: "h1", releaseId, bundleSha256: sha, layout }));
  return { releaseId, sha, r };
}

describe("shq", () => {
  it("quotes so that sh reads back the exact value", () => {
    for (const v of ["plain", "it's", "$(reboot)", "a b\tc", "`x`", "\\"]) {
      expect(sh(`printf %s ${shq(v)}`).stdout).toBe(v);
    }
  });
});

describe("runner release, install and uninstall", () => {
  it("switches current atomically to the new release, links the command and prints the installed version", () => {
    const { releaseId, r } = install("1.0.0");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe("1.0.0");
    expect(readlinkSync(layout.currentLink)).toBe(`releases/${releaseId}`);
    expect(readlinkSync(layout.binLink)).toBe(`${layout.currentLink}/kvm-backup.mjs`);
    expect(mode(releaseBundle(layout, releaseId))).toBe(0o755);
    expect(existsSync(`${layout.currentLink}.new`)).toBe(false);
  });

  it("is idempotent and keeps the previous release, dropping older ones", () => {
    const a = install("1.0.0");
    expect(install("1.0.0").r.status).toBe(0);
    const b = install("2.0.0");
    expect(b.r.stdout.trim()).toBe("2.0.0");
    expect(existsSync(join(layout.releasesDir, a.releaseId))).toBe(true);
    const c = install("3.0.0");
    expect(c.r.status).toBe(0);
    expect(existsSync(join(layout.releasesDir, a.releaseId))).toBe(false);
    expect(existsSync(join(layout.releasesDir, b.releaseId))).toBe(true);
    expect(readlinkSync(layout.currentLink)).toBe(`releases/${c.releaseId}`);
  });

  it("refuses a bundle that does not match its hash and leaves the running release in place", () => {
    const good = install("1.0.0");
    const { releaseId, sha } = stageRelease("2.0.0");
    writeFileSync(releaseBundle(layout, releaseId), "truncated");
    const r = sh(renderRunnerInstall({ hostName: "h1", releaseId, bundleSha256: sha, layout }));
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("kvm-backup deploy (runner install) on host h1:");
    expect(r.stderr).toContain("arrived incomplete or changed in transit");
    expect(readlinkSync(layout.currentLink)).toBe(`releases/${good.releaseId}`);
  });

  it("uninstall removes the command link, current and releases, keeps anything else, and runs twice", () => {
    install("1.0.0");
    const staging = join(layout.installDir, "staging");
    mkdirSync(join(staging, "web01"), { recursive: true });
    writeFileSync(join(staging, "web01", "manifest.json"), "{}");
    for (let i = 0; i < 2; i++) {
      const r = sh(renderRunnerUninstall({ hostName: "h1", layout }));
      expect(r.status).toBe(0);
    }
    expect(existsSync(layout.binLink)).toBe(false);
    expect(existsSync(layout.currentLink)).toBe(false);
    expect(existsSync(layout.releasesDir)).toBe(false);
    expect(readFileSync(join(staging, "web01", "manifest.json"), "utf8")).toBe("{}");
  });

  it("release removal deletes a release that never became active, keeps the active one, and runs twice", () => {
    const active = install("1.0.0");
    const inactive = stageRelease("2.0.0"); // copied, but its preflight failed: never switched to
    for (let i = 0; i < 2; i++) {
      const r = sh(renderReleaseDirRemove({ hostName: "h1", releaseId: inactive.releaseId, layout }));
      expect(r.status).toBe(0);
    }
    expect(existsSync(join(layout.releasesDir, inactive.releaseId))).toBe(false);
    const kept = sh(renderReleaseDirRemove({ hostName: "h1", releaseId: active.releaseId, layout }));
    expect(kept.stdout).toBe(`release ${active.releaseId} is active; kept\n`);
    expect(readFileSync(releaseBundle(layout, active.releaseId), "utf8")).toContain("1.0.0");
  });

  it("release removal on a host with nothing else installed leaves no directory behind", () => {
    const { releaseId } = stageRelease("1.0.0");
    expect(sh(renderReleaseDirRemove({ hostName: "h1", releaseId, layout })).status).toBe(0);
    expect(existsSync(layout.installDir)).toBe(false);
  });

  it("uninstall leaves a kvm-backup command that is not ours alone", () => {
    mkdirSync(join(root, "usr/local/bin"), { recursive: true });
    writeFileSync(layout.binLink, "#!/bin/sh\n");
    expect(sh(renderRunnerUninstall({ hostName: "h1", layout })).status).toBe(0);
    expect(lstatSync(layout.binLink).isFile()).toBe(true);
  });
});

describe("preflight", () => {
  const config = '{"version":1}\n';

  it("passes when doctor passes, with the candidate config, and leaves no temp files", () => {
    const { releaseId, sha } = stageRelease("1.0.0", 0);
    const temps = () => readdirSync("/tmp").filter((n) => n.startsWith("kvm-backup-preflight."));
    const before = temps();
    const r = sh(renderPreflight({ hostName: "h1", releaseId, bundleSha256: sha, configSha256: sha256(config), layout }), config);
    expect(temps().filter((n) => !before.includes(n))).toEqual([]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`preflight passed (release ${releaseId}`);
    expect(existsSync(layout.currentLink)).toBe(false);
  });

  it("fails with exit 3 and the doctor's report when the host is not ready, changing nothing", () => {
    const { releaseId, sha } = stageRelease("1.0.0", 3);
    const r = sh(renderPreflight({ hostName: "h1", releaseId, bundleSha256: sha, configSha256: sha256(config), layout }), config);
    expect(r.status).toBe(3);
    expect(r.stderr).toContain("zstd is not installed");
    expect(r.stderr).toContain("kvm-backup doctor found problems (exit 3");
    expect(r.stderr).toContain("nothing was changed on this host");
    expect(r.stdout).toBe("");
    expect(existsSync(layout.currentLink)).toBe(false);
    expect(existsSync(layout.configFile)).toBe(false);
  });

  it("fails when the config on stdin is not the one the program rendered", () => {
    const { releaseId, sha } = stageRelease("1.0.0", 0);
    const r = sh(renderPreflight({ hostName: "h1", releaseId, bundleSha256: sha, configSha256: sha256(config), layout }), '{"version":');
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("the host config arrived incomplete");
  });
});

describe("config", () => {
  const text = '{"version":1,"host":"h1"}\n';

  it("installs the config from stdin as 0600 in a 0700 directory and says only its hash", () => {
    const r = sh(renderConfigInstall({ hostName: "h1", configSha256: sha256(text), layout }), text);
    expect(r.status).toBe(0);
    expect(readFileSync(layout.configFile, "utf8")).toBe(text);
    expect(mode(layout.configFile)).toBe(0o600);
    expect(mode(layout.etcDir)).toBe(0o700);
    expect(r.stdout).toBe(`config ${sha256(text).slice(0, 16)} installed\n`);
  });

  it("a truncated transfer leaves the previous config in place", () => {
    sh(renderConfigInstall({ hostName: "h1", configSha256: sha256(text), layout }), text);
    const next = '{"version":1,"host":"h1","x":1}\n';
    const r = sh(renderConfigInstall({ hostName: "h1", configSha256: sha256(next), layout }), next.slice(0, 10));
    expect(r.status).toBe(1);
    expect(readFileSync(layout.configFile, "utf8")).toBe(text);
    expect(existsSync(`${layout.configFile}.new`)).toBe(false);
  });

  it("removal deletes the config and tolerates a host where it is already gone", () => {
    sh(renderConfigInstall({ hostName: "h1", configSha256: sha256(text), layout }), text);
    expect(sh(renderConfigRemove({ hostName: "h1", layout })).status).toBe(0);
    expect(existsSync(layout.configFile)).toBe(false);
    expect(sh(renderConfigRemove({ hostName: "h1", layout })).status).toBe(0);
  });
});

describe("target keys", () => {
  const key = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END OPENSSH PRIVATE KEY-----\n";

  it("installs the key from stdin as a 0600 file; neither the script nor its output contains the key", () => {
    const script = renderKeyInstall({ hostName: "h1", target: "offsite", layout });
    expect(script).not.toContain("c2VjcmV0");
    const r = sh(script, key);
    expect(r.status).toBe(0);
    expect(r.stdout + r.stderr).not.toContain("c2VjcmV0");
    expect(readFileSync(keyFile(layout, "offsite"), "utf8")).toBe(key);
    expect(mode(keyFile(layout, "offsite"))).toBe(0o600);
    expect(mode(layout.keysDir)).toBe(0o700);
  });

  it("refuses an empty key", () => {
    const r = sh(renderKeyInstall({ hostName: "h1", target: "offsite", layout }), "");
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("the private key of target offsite is empty");
    expect(existsSync(keyFile(layout, "offsite"))).toBe(false);
  });

  it("removal deletes only that key and runs on a half-gone host", () => {
    sh(renderKeyInstall({ hostName: "h1", target: "a", layout }), key);
    sh(renderKeyInstall({ hostName: "h1", target: "b", layout }), key);
    expect(sh(renderKeyRemove({ hostName: "h1", target: "a", layout })).status).toBe(0);
    expect(existsSync(keyFile(layout, "a"))).toBe(false);
    expect(existsSync(keyFile(layout, "b"))).toBe(true);
    rmSync(layout.etcDir, { recursive: true });
    expect(sh(renderKeyRemove({ hostName: "h1", target: "b", layout })).status).toBe(0);
  });
});

describe("staging directory", () => {
  it("is created root-only and an existing one with backups is kept as it is", () => {
    const path = join(root, "var/lib/kvm-backup/staging");
    expect(sh(renderStagingCreate({ hostName: "h1", path })).status).toBe(0);
    expect(mode(path)).toBe(0o700);
    writeFileSync(join(path, "keep"), "backup");
    expect(sh(renderStagingCreate({ hostName: "h1", path })).status).toBe(0);
    expect(readFileSync(join(path, "keep"), "utf8")).toBe("backup");
  });
});

describe("systemd units", () => {
  const service = "[Service]\nType=oneshot\nExecStart=/usr/local/bin/kvm-backup run --policy p\n";
  const timer = "[Timer]\nOnCalendar=daily\n";

  function installUnits(svc = service, tim = timer + "[Install]\nWantedBy=timers.target\n", stdinOverride?: string) {
    const { stdin, serviceBytes } = unitsStdin(svc, tim);
    return sh(
      renderUnitsInstall({ hostName: "h1", policyName: "p", serviceBytes, serviceSha256: sha256(svc), timerSha256: sha256(tim), layout }),
      stdinOverride ?? stdin,
    );
  }

  const wants = () => join(layout.unitDir, "timers.target.wants", "kvm-backup-p.timer");

  it("splits stdin into the two unit files exactly and enables the timer inside the root only (systemctl --root)", () => {
    const svc = service + "# ünïcode in a comment\n";
    const r = installUnits(svc);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(readFileSync(join(layout.unitDir, "kvm-backup-p.service"), "utf8")).toBe(svc);
    expect(readFileSync(join(layout.unitDir, "kvm-backup-p.timer"), "utf8")).toBe(timer + "[Install]\nWantedBy=timers.target\n");
    expect(mode(join(layout.unitDir, "kvm-backup-p.timer"))).toBe(0o644);
    // systemctl --root writes the link relative to that root, as the system in it will see it at boot.
    expect(readlinkSync(wants())).toBe("/etc/systemd/system/kvm-backup-p.timer");
    expect(r.stdout).toBe(`kvm-backup-p.timer installed and enabled under ${root}\n`);
    expect(spawnSync("systemctl", [`--root=${root}`, "is-enabled", "kvm-backup-p.timer"], { encoding: "utf8" }).stdout.trim()).toBe("enabled");
    // Again (every update runs create again): still enabled, nothing else.
    expect(installUnits(svc).status).toBe(0);
    expect(readlinkSync(wants())).toBe("/etc/systemd/system/kvm-backup-p.timer");
  });

  it("a timer that cannot be enabled fails the step with systemctl's words", () => {
    const r = installUnits(service, "[Timer]\nOnCalendar=daily\n[Install]\nWantedBy=../../evil\n");
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("systemctl --root=");
    expect(r.stderr).toContain("enable kvm-backup-p.timer failed:");
  });

  it("a damaged transfer keeps the installed units", () => {
    installUnits();
    const r = installUnits(service.replace("p\n", "q\n"), timer, "garbage");
    expect(r.status).toBe(1);
    expect(readFileSync(join(layout.unitDir, "kvm-backup-p.service"), "utf8")).toBe(service);
  });

  it("removal disables the timer, deletes both units, twice without error, and nothing else", () => {
    installUnits();
    writeFileSync(join(layout.unitDir, "other.service"), "x");
    for (let i = 0; i < 2; i++) expect(sh(renderUnitsRemove({ hostName: "h1", policyName: "p", layout })).status).toBe(0);
    expect(existsSync(join(layout.unitDir, "kvm-backup-p.service"))).toBe(false);
    expect(existsSync(join(layout.unitDir, "kvm-backup-p.timer"))).toBe(false);
    expect(() => lstatSync(wants())).toThrow(/ENOENT/);
    expect(existsSync(join(layout.unitDir, "other.service"))).toBe(true);
  });

  it("under root / the script only ever talks to a running systemd (offline enable otherwise)", () => {
    const real = renderUnitsInstall({ hostName: "h1", policyName: "p", serviceBytes: 1, serviceSha256: "0".repeat(64), timerSha256: "0".repeat(64) });
    expect(real).toContain("if [ -d '/run/systemd/system' ]; then\n  systemctl daemon-reload\n  systemctl enable 'kvm-backup-p.timer'\n  systemctl restart 'kvm-backup-p.timer'");
    expect(real).toContain("systemctl --root='/' enable 'kvm-backup-p.timer'");
    const prefixed = renderUnitsInstall({ hostName: "h1", policyName: "p", serviceBytes: 1, serviceSha256: "0".repeat(64), timerSha256: "0".repeat(64), layout });
    expect(prefixed).not.toMatch(/systemctl (daemon-reload|enable|restart)/);
    expect(renderUnitsRemove({ hostName: "h1", policyName: "p", layout })).not.toMatch(/systemctl (daemon-reload|disable --now)/);
  });
});
