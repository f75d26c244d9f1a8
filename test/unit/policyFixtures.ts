/** Small real Git repositories with stack files, for the policy tests (real `git`, temp dirs). */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";

// Schedules, retention periods and the rendered time zone depend on the zone: the policy tests run in UTC.
process.env.TZ = "UTC";

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM2Q3dZwFZCj84kagaIQeV0kAzXXG7/N0kBEnubd/53g";

/** A valid stack config (the kvm-backup namespace), to be changed per test. */
export function baseStack(): Record<string, any> {
  return {
    sshPrivateKey: { secure: "v1:PLACEHOLDER" },
    targets: { nas: { type: "path", path: "/mnt/nas" }, offsite: { type: "path", path: "/mnt/offsite" } },
    policies: {
      nightly: {
        method: "libvirt",
        schedule: "*-*-* 02:00",
        retention: { keepDaily: 14, keepWeekly: 4 },
        targets: ["nas", "offsite"],
      },
    },
    hosts: {
      kvm01: {
        address: "10.0.0.1",
        hostKey: KEY,
        staging: { path: "/var/lib/kvm-backup/staging", keepLast: 2 },
        vms: { web01: { policy: "nightly" }, db01: { policy: "nightly" } },
      },
      kvm02: {
        address: "10.0.0.2",
        hostKey: KEY,
        staging: { path: "/var/lib/kvm-backup/staging" },
        vms: { app01: { policy: "nightly" } },
      },
    },
  };
}

export function stackYaml(cfg: Record<string, any>, comment = ""): string {
  const config: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(cfg)) config[`kvm-backup:${k}`] = v;
  return `${comment}${stringify({ config })}`;
}

export class PolicyRepo {
  readonly dir: string;
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "kvm-backup-policy-"));
    this.git("init", "-q", "-b", "main");
    this.git("config", "user.email", "test@example.invalid");
    this.git("config", "user.name", "policy test");
    mkdirSync(join(this.dir, "stacks"));
  }
  git(...args: string[]): string {
    return execFileSync("git", args, { cwd: this.dir, encoding: "utf8", timeout: 30_000 });
  }
  write(stack: string, text: string): void {
    writeFileSync(join(this.dir, "stacks", `Pulumi.${stack}.yaml`), text);
  }
  remove(stack: string): void {
    rmSync(join(this.dir, "stacks", `Pulumi.${stack}.yaml`));
  }
  commit(message: string): void {
    this.git("add", "-A", "stacks");
    this.git("commit", "-q", "--allow-empty", "-m", message);
  }
  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
