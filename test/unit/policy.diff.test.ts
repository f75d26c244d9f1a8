import { spawnSync } from "node:child_process";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { policy } from "../../runner/commands/policy.ts";
import { Logger } from "../../runner/log.ts";
import { decideRetention } from "../../runner/retention.ts";
import { baseStack, PolicyRepo, stackYaml } from "./policyFixtures.ts";

let repo: PolicyRepo;
const cwd = process.cwd();

beforeEach(() => {
  repo = new PolicyRepo();
  repo.write("prod", stackYaml(baseStack()));
  repo.commit("base");
  process.chdir(repo.dir);
});
afterEach(() => {
  process.chdir(cwd);
  repo.cleanup();
});

async function diff(...args: string[]): Promise<{ code: number; out: string; json: any }> {
  let out = "";
  const code = await policy.run(["diff", ...args], { log: new Logger(), configFile: "/nonexistent", stdout: (t) => void (out += t) });
  let json: any = null;
  if (args.includes("json") && code !== 2) json = JSON.parse(out);
  return { code, out, json };
}

async function diffJson(): Promise<{ code: number; json: any; risks: string[] }> {
  const r = await diff("--format", "json");
  const risks = r.json.vms.flatMap((v: any) => v.changes.filter((c: any) => c.risk).map((c: any) => `${v.host}/${v.vm} ${c.risk}`));
  return { code: r.code, json: r.json, risks };
}

function change(mutate: (c: Record<string, any>) => void, stack = "prod"): void {
  const c = baseStack();
  mutate(c);
  repo.write(stack, stackYaml(c));
}

describe("policy diff: risky changes are flagged (exit 3)", () => {
  it("retention reduced, with the number of existing backups the new rules remove", async () => {
    change((c) => (c.policies.nightly.retention.keepDaily = 7));
    const { code, json, risks } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm01/db01 retention-reduced", "kvm01/web01 retention-reduced", "kvm02/app01 retention-reduced"]);
    const c = json.vms[0].changes.find((x: any) => x.risk === "retention-reduced");
    // Independently: daily runs at 02:00 long enough for the old rules, what they keep, and what the new rules keep of that.
    const now = new Date(json.now);
    const runs = [];
    for (let d = 0; d < 60; d++) {
      const t = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() - d, 2));
      if (t <= now) runs.push({ id: t.toISOString(), time: t });
    }
    const oldKept = decideRetention(runs, { keepDaily: 14, keepWeekly: 4 }).filter((x) => x.keep).map((x) => ({ id: x.id, time: x.time }));
    const newKept = decideRetention(oldKept, { keepDaily: 7, keepWeekly: 4 }).filter((x) => x.keep);
    expect(c.removes.of).toBe(oldKept.length);
    expect(c.removes.count).toBe(oldKept.length - newKept.length);
    expect(c.removes.count).toBeGreaterThan(0);
    expect(c.text).toContain(`removes ${c.removes.count} of the ${oldKept.length} backups`);
    expect(c.text).toContain('one backup per run of "*-*-* 02:00"');
  });

  it("a raised count is not flagged", async () => {
    change((c) => (c.policies.nightly.retention.keepDaily = 30));
    const { code, json, risks } = await diffJson();
    expect(code).toBe(0);
    expect(risks).toEqual([]);
    expect(json.vms[0].changes[0].text).toBe("policy nightly: retention keepDaily 14, keepWeekly 4 → keepDaily 30, keepWeekly 4");
  });

  it("a VM removed loses coverage", async () => {
    change((c) => delete c.hosts.kvm01.vms.db01);
    const { code, json, risks } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm01/db01 coverage-lost"]);
    expect(json.vms[0].changes[0].text).toMatch(/^no longer backed up: the VM is removed from host kvm01/);
  });

  it("a host removed: every VM on it loses coverage", async () => {
    change((c) => delete c.hosts.kvm02);
    const { code, json, risks } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm02/app01 coverage-lost"]);
    expect(json.vms[0].changes[0].text).toContain("host kvm02 is removed from the stack");
  });

  it("a stack file deleted: every VM loses coverage", async () => {
    repo.remove("prod");
    const { code, json, risks } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm01/db01 coverage-lost", "kvm01/web01 coverage-lost", "kvm02/app01 coverage-lost"]);
    expect(json.stacks).toEqual([{ stack: "prod", status: "removed" }]);
  });

  it("a target removed from the effective policy", async () => {
    change((c) => (c.policies.nightly.targets = ["nas"]));
    const { code, risks, json } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm01/db01 target-removed", "kvm01/web01 target-removed", "kvm02/app01 target-removed"]);
    expect(json.vms[0].changes[0].text).toBe("target offsite removed (path /mnt/offsite): no new backups are shipped there");
  });

  it("no target any more is lost coverage", async () => {
    change((c) => {
      c.policies.solo = { ...c.policies.nightly, targets: [] };
      c.hosts.kvm02.vms.app01.policy = "solo";
    });
    const { code, risks } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm02/app01 coverage-lost"]);
  });

  it("a method change", async () => {
    change((c) => (c.policies.nightly.method = "lvm"));
    const { code, risks, json } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm01/db01 method-changed", "kvm01/web01 method-changed", "kvm02/app01 method-changed"]);
    expect(json.vms[0].changes[0].text).toContain("method libvirt → lvm: the existing backups remain, but the backup chain starts anew");
  });

  it("a schedule with more than a day between backups", async () => {
    change((c) => (c.policies.nightly.schedule = "Mon..Fri *-*-* 02:00"));
    const { code, risks, json } = await diffJson();
    expect(code).toBe(3);
    expect(risks).toEqual(["kvm01/db01 schedule-gap", "kvm01/web01 schedule-gap", "kvm02/app01 schedule-gap"]);
    const gap = json.vms[0].changes.find((c: any) => c.risk === "schedule-gap");
    expect(gap.text).toMatch(/leaves up to 3 days between backups over the next year \(\S+ to \S+\), was 24 h$/);
  });

  it("a schedule change within a day is not flagged", async () => {
    change((c) => (c.policies.nightly.schedule = "*-*-* 00/12:00"));
    const { code, risks } = await diffJson();
    expect(code).toBe(0);
    expect(risks).toEqual([]);
  });
});

describe("policy diff: harmless changes are shown, not flagged (exit 0)", () => {
  it("reordering and comments: nothing changes", async () => {
    const c = baseStack();
    const reordered = { hosts: { kvm02: c.hosts.kvm02, kvm01: { ...c.hosts.kvm01, vms: { db01: c.hosts.kvm01.vms.db01, web01: c.hosts.kvm01.vms.web01 } } }, policies: c.policies, targets: { offsite: c.targets.offsite, nas: c.targets.nas }, sshPrivateKey: c.sshPrivateKey };
    repo.write("prod", stackYaml(reordered, "# reviewed by ops\n# every VM nightly\n"));
    const r = await diff();
    expect(r.code).toBe(0);
    expect(r.out).toContain("stack prod: unchanged");
    expect(r.out).toContain("no risky changes");
  });

  it("a new VM", async () => {
    change((c) => (c.hosts.kvm02.vms.app02 = { policy: "nightly" }));
    const { code, json } = await diffJson();
    expect(code).toBe(0);
    expect(json.vms).toHaveLength(1);
    expect(json.vms[0]).toMatchObject({ host: "kvm02", vm: "app02", status: "added" });
    expect(json.vms[0].changes[0].risk).toBeNull();
    expect(json.vms[0].changes[0].text).toMatch(/^new VM: policy nightly \(libvirt, "\*-\*-\* 02:00", keepDaily 14, keepWeekly 4, targets: nas, offsite\); largest gap between backups 24 h$/);
  });

  it("a new target and other settings", async () => {
    change((c) => {
      c.targets.usb = { type: "path", path: "/mnt/usb" };
      c.policies.nightly.targets.push("usb");
      c.policies.nightly.compression = { type: "zstd", level: 9 };
    });
    const { code, json, risks } = await diffJson();
    expect(code).toBe(0);
    expect(risks).toEqual([]);
    expect(json.vms[0].changes.map((c: any) => c.text)).toEqual(["target usb added (path /mnt/usb)", "policy nightly: compression.level: 3 → 9"]);
  });

  it("a new stack file", async () => {
    repo.write("staging", stackYaml(baseStack()));
    const { code, json } = await diffJson();
    expect(code).toBe(0);
    expect(json.stacks).toEqual([{ stack: "prod", status: "unchanged" }, { stack: "staging", status: "added" }]);
    expect(json.vms.every((v: any) => v.status === "added")).toBe(true);
  });
});

describe("policy diff: acknowledgements", () => {
  const ack = (c: Record<string, any>, a: Record<string, unknown>[]) => (c.acknowledge = a);

  it("a risky change acknowledged in the same change passes, and the reason is shown", async () => {
    change((c) => {
      c.policies.nightly.retention.keepDaily = 7;
      ack(c, [{ change: "retention-reduced", reason: "storage on nas is full, OPS-123" }]);
    });
    const text = await diff();
    expect(text.code).toBe(0);
    expect(text.out).toContain("[retention-reduced, acknowledged] policy nightly: retention");
    expect(text.out).toContain('acknowledged: "storage on nas is full, OPS-123"');
    expect(text.out).toContain("3 risky changes, all acknowledged");
    const md = await diff("--format", "markdown");
    expect(md.code).toBe(0);
    expect(md.out).toContain("retention-reduced (acknowledged: “storage on nas is full, OPS-123”)");
    expect(md.out).toContain("- prod: every VM — retention-reduced: “storage on nas is full, OPS-123” (covers 3)");
  });

  it("an acknowledgement names a host/vm and covers only that VM and kind", async () => {
    change((c) => {
      delete c.hosts.kvm01.vms.db01;
      c.policies.nightly.method = "lvm";
      ack(c, [{ vm: "kvm01/db01", change: "coverage-lost", reason: "db01 decommissioned" }, { vm: "kvm02", change: "method-changed", reason: "kvm02 moves to LVM" }]);
    });
    const { code, json } = await diffJson();
    expect(code).toBe(3);
    expect(json.risky).toBe(3);
    expect(json.unacknowledged).toBe(1);
    const open = json.vms.flatMap((v: any) => v.changes.filter((c: any) => c.risk && !c.acknowledged).map((c: any) => `${v.host}/${v.vm} ${c.risk}`));
    expect(open).toEqual(["kvm01/web01 method-changed"]);
  });

  it("an acknowledgement already at the base acknowledges nothing", async () => {
    change((c) => ack(c, [{ change: "retention-reduced", reason: "old" }]));
    repo.commit("ack of an earlier change");
    change((c) => {
      c.policies.nightly.retention.keepDaily = 7;
      ack(c, [{ change: "retention-reduced", reason: "old" }]);
    });
    const r = await diff("--base", "HEAD");
    expect(r.code).toBe(3);
    expect(r.out).toContain("[RISKY: retention-reduced]");
    expect(r.out).toContain("1 acknowledgement(s) from earlier changes are still in the stacks; they acknowledge nothing here");
  });

  it("an acknowledgement without a reason is invalid (exit 2, validate's message)", async () => {
    change((c) => ack(c, [{ change: "retention-reduced", reason: " " }]));
    const r = await diff();
    expect(r.code).toBe(2);
    expect(r.out).toContain("stacks/Pulumi.prod.yaml: acknowledge[0].reason: must say why the change is intended");
  });
});

describe("policy diff: base ref", () => {
  it("defaults to the merge base with main, so commits on a branch are reviewed together", async () => {
    repo.git("checkout", "-q", "-b", "feature");
    change((c) => (c.policies.nightly.retention.keepDaily = 7));
    repo.commit("reduce retention");
    const r = await diff();
    expect(r.code).toBe(3);
    expect(r.out).toMatch(/^policy diff against merge base with main \([0-9a-f]{12}\)/);
    const head = await diff("--base", "HEAD");
    expect(head.code).toBe(0);
  });

  it("an unknown ref is a usage error naming it", async () => {
    await expect(diff("--base", "nope")).rejects.toThrow(/"nope" is not a commit in this repository/);
  });
});

describe("policy diff as a policy repository's CI runs it (the real CLI entry)", () => {
  const BIN = `${cwd}/bin/kvm-backup.mjs`;
  const cli = (...args: string[]) => spawnSync(process.execPath, [BIN, "policy", ...args], { cwd: repo.dir, encoding: "utf8", timeout: 60_000 });

  it("exits 3 on an unacknowledged risky change with markdown on stdout, 0 once acknowledged", () => {
    change((c) => delete c.hosts.kvm01.vms.db01);
    const risky = cli("diff", "--format", "markdown");
    expect(risky.status).toBe(3);
    expect(risky.stdout).toContain("### ⛔ kvm-backup policy diff");
    expect(risky.stdout).toContain("| prod | kvm01/db01 | no longer backed up: the VM is removed from host kvm01");
    change((c) => {
      delete c.hosts.kvm01.vms.db01;
      c.acknowledge = [{ vm: "kvm01/db01", change: "coverage-lost", reason: "decommissioned" }];
    });
    const ok = cli("diff", "--format", "markdown");
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain("### ⚠️ kvm-backup policy diff");
  });
});
