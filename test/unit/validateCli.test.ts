/**
 * `kvm-backup validate` as a policy repository's CI runs it: the real CLI entry (node bin/kvm-backup.mjs),
 * exit 0 for valid stacks, 2 with every problem (file: path: message) for invalid ones.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const BIN = resolve("bin/kvm-backup.mjs");
const LAB = readFileSync("stacks/Pulumi.lab.yaml", "utf8");
let dir: string;

function validate(args: string[], cwd = process.cwd()) {
  const r = spawnSync(process.execPath, [BIN, "validate", ...args], { cwd, encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The lab stack with one textual change, so every case is a stack file an operator could write. */
function variant(name: string, from: string | RegExp, to: string): string {
  const text = LAB.replace(from, to);
  if (text === LAB) throw new Error(`variant ${name}: ${String(from)} not found in the lab stack`);
  writeFileSync(join(dir, "stacks", `Pulumi.${name}.yaml`), text);
  return name;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kvm-backup-validate-"));
  mkdirSync(join(dir, "stacks"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("kvm-backup validate", () => {
  it("exits 0 for both example stacks, by name and by default (every stacks/Pulumi.*.yaml)", () => {
    const byName = validate(["--stack", "lab", "--stack", "prod.example"]);
    expect(byName.stdout).toBe("stacks/Pulumi.lab.yaml: valid\nstacks/Pulumi.prod.example.yaml: valid\n");
    expect(byName.status).toBe(0);
    const all = validate([]);
    expect(all.stdout).toContain("stacks/Pulumi.prod.example.yaml: valid\n");
    expect(all.status).toBe(0);
  });

  it("exits 2 and names file, path and problem for each rejection", () => {
    const cases: Array<[string, string]> = [
      [variant("typo", "      retention:\n", "      retension:\n"), 'policies.lab-nightly: unknown field "retension"'],
      [variant("unsafe", "        lab-vm:\n", "        lab vm:\n"), 'hosts.lab.vms.lab vm: "lab vm" is not a safe name'],
      [variant("nothing", /keepLast: 3\n\s+keepDaily: 7\n/, "keepLast: 0\n"), "policies.lab-nightly.retention: keeps nothing"],
      [variant("relative", "path: /var/lib/kvm-backup/staging", "path: var/lib/kvm-backup/staging"), 'hosts.lab.staging.path: "var/lib/kvm-backup/staging" must be an absolute, normalized path'],
      [variant("unnormalized", "path: /var/lib/kvm-backup/staging", "path: /var/lib/../kvm-backup/staging"), 'hosts.lab.staging.path: "/var/lib/../kvm-backup/staging" must be an absolute, normalized path'],
      [variant("notarget", "        - lab-ssh\n", "        - offsite\n"), 'policies.lab-nightly.targets[0]: unknown target "offsite" (known: lab-ssh)'],
      [variant("schedule", 'schedule: "*-*-* 02:00"', 'schedule: "*-*-* 25:00"'), "policies.lab-nightly.schedule: "],
      [variant("plain", /privateKey:\n\s+secure: v1:PLACEHOLDER:set-with-pulumi-config-set-secret\n(\s+libvirtUri)/, "privateKey: -----BEGIN-KEY-----\n$1"), "hosts.lab.privateKey: must be a Pulumi secret"],
      [variant("nopolicy", "policy: lab-nightly", "policy: lab-nigthly"), 'hosts.lab.vms.lab-vm.policy: unknown policy "lab-nigthly" (known: lab-nightly)'],
    ];
    const r = validate(cases.flatMap(([name]) => ["--stack", name]), dir);
    expect(r.status).toBe(2);
    for (const [name, message] of cases) expect(r.stdout).toContain(`stacks/Pulumi.${name}.yaml: ${message}`);
    expect(r.stdout).not.toContain(": valid");
  }, 60_000);

  it("a VM with two policies of different methods exits 2", () => {
    const name = "mixed";
    const text = LAB.replace("  kvm-backup:hosts:\n", "    lvm-daily:\n      method: lvm\n      schedule: daily\n      retention:\n        keepDaily: 3\n  kvm-backup:hosts:\n").replace(
      "policy: lab-nightly",
      "policy: [lab-nightly, lvm-daily]",
    );
    writeFileSync(join(dir, "stacks", `Pulumi.${name}.yaml`), text);
    const r = validate(["--stack", name], dir);
    expect(r.status).toBe(2);
    expect(r.stdout).toContain("stacks/Pulumi.mixed.yaml: hosts.lab.vms.lab-vm.policy: policies lab-nightly, lvm-daily use different snapshot methods (libvirt and lvm)");
  });

  it("reports the valid files too and still exits 2 when one is invalid; a missing file is a problem", () => {
    writeFileSync(join(dir, "stacks", "Pulumi.good.yaml"), LAB);
    const r = validate(["--stack", "good", "--stack", "absent"], dir);
    expect(r.stdout).toBe("stacks/Pulumi.good.yaml: valid\nstacks/Pulumi.absent.yaml: (file): no such stack file\n");
    expect(r.status).toBe(2);
  });

  it("without stack files to find it exits 2 and says what to pass", () => {
    const empty = mkdtempSync(join(dir, "empty-"));
    const r = validate([], empty);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("no stack files given and none found in ./stacks");
  });
});
