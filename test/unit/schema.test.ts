/**
 * The policy model: both example stacks are valid, and each rejection names the path and says what is
 * wrong and what is allowed.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { ConfigError, problemsFromZod } from "../../runner/config/configErrors.ts";
import { hostConfigJson, parseHostConfig, renderHostConfig } from "../../runner/config/hostConfig.ts";
import { loadStackFile, namespaceConfig } from "../../runner/config/loadStack.ts";
import { HostConfig, StackConfig, StackFileConfig } from "../../runner/config/schema.ts";

const projectDir = process.cwd();
const work = mkdtempSync(join(tmpdir(), "kvm-backup-schema-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function fileConfig(stack: string): Record<string, any> {
  const file = join(projectDir, "stacks", `Pulumi.${stack}.yaml`);
  return structuredClone(namespaceConfig(file, readFileSync(file, "utf8")).config) as Record<string, any>;
}

/** Problems as "path: message" for the file-mode schema. */
function problems(cfg: unknown, schema: typeof StackFileConfig | typeof StackConfig = StackFileConfig): string[] {
  const r = schema.safeParse(cfg);
  return r.success ? [] : problemsFromZod("f", r.error).map((p) => `${p.path}: ${p.message}`);
}

function expectOnly(cfg: unknown, path: string, message: string | RegExp) {
  const ps = problems(cfg);
  expect(ps).toHaveLength(1);
  const [p, ...rest] = ps[0]!.split(": ");
  expect(p).toBe(path);
  const msg = rest.join(": ");
  if (typeof message === "string") expect(msg).toBe(message);
  else expect(msg).toMatch(message);
}

describe("valid configs", () => {
  it.each(["lab", "prod.example"])("stacks/Pulumi.%s.yaml is valid", (stack) => {
    expect(problems(fileConfig(stack))).toEqual([]);
    expect(() => loadStackFile(join(projectDir, "stacks", `Pulumi.${stack}.yaml`), projectDir)).not.toThrow();
  });

  it("applies the documented defaults", () => {
    const cfg = StackConfig.parse({
      sshPrivateKey: "k",
      policies: { p: { method: "lvm", schedule: "daily", retention: { keepDaily: 7 } } },
      hosts: { h: { address: "h.example", hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK92nViB90vLGfI", staging: { path: "/srv/staging" }, vms: { v: { policy: "p" } } } },
    });
    const h = cfg.hosts.h!;
    expect([h.port, h.user, h.libvirtUri, h.staging.keepLast, h.staging.minFree]).toEqual([22, "root", "qemu:///system", 2, "10GiB"]);
    const p = cfg.policies.p!;
    expect(p.randomizedDelay).toBe("30min");
    expect(p.compression).toEqual({ type: "zstd", level: 3, threads: 0 });
    expect(p.limits).toEqual({ nice: 10, ioClass: "best-effort", ioPriority: 7, timeout: "6h" });
    expect(p.method === "lvm" && p.snapshot).toEqual({ size: "20%", maxFillPercent: 80, pollInterval: "1s" });
    expect(p.targets).toEqual([]);
    expect(cfg.targets).toEqual({});
  });

  it("one VM may use two policies of the same method, with a disk selection or an explicit disk map", () => {
    const cfg = fileConfig("prod.example");
    expect(cfg.hosts.kvm01.vms.web01).toEqual({ policy: ["nightly", "weekly"], disks: ["vda", "vdb"] });
    expect(cfg.hosts.kvm01.vms.legacy01.disks).toEqual({ vda: "/dev/vg0/legacy01-root", vdb: "/dev/vg0/legacy01-data" });
    expect(problems(cfg)).toEqual([]);
  });

  it("the host config the deploy renders passes the same schema and round-trips through JSON", () => {
    const cfg = fileConfig("prod.example");
    cfg.sshPrivateKey = "k";
    cfg.hosts.kvm02.privateKey = "k";
    cfg.targets.offsite.privateKey = "k";
    const stack = StackConfig.parse(cfg);
    for (const h of Object.keys(stack.hosts)) {
      const hc = renderHostConfig(stack, h);
      expect(HostConfig.safeParse(hc).success).toBe(true);
      expect(parseHostConfig(hostConfigJson(hc), "config.json")).toEqual(hc);
      expect(hostConfigJson(hc)).not.toContain("privateKey");
    }
  });
});

describe("rejections (one per rule, message and path)", () => {
  it("unknown keys, e.g. a typo like retension", () => {
    const cfg = fileConfig("lab");
    cfg.policies["lab-nightly"].retension = cfg.policies["lab-nightly"].retention;
    expectOnly(cfg, "policies.lab-nightly", 'unknown field "retension" (allowed: method, schedule, randomizedDelay, compression, retention, limits, targets, format, repository, snapshot, drill)');
  });

  it("unknown top-level keys of the namespace", () => {
    const cfg = fileConfig("lab");
    cfg.host = {};
    expectOnly(cfg, "(top level)", /^unknown field "host" \(allowed: sshPrivateKey, targets, policies, hosts, acknowledge, repositoryPassword\)$/);
  });

  const unsafe = ["bad name", "../etc", "-rf", "a/b", "$(reboot)", "x;y", "..", ""];
  const NOT_SAFE = (n: string) => `"${n}" is not a safe name (1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without '..')`;

  it.each(unsafe)("unsafe host name %j", (n) => {
    const cfg = fileConfig("lab");
    cfg.hosts[n] = cfg.hosts.lab;
    delete cfg.hosts.lab;
    expectOnly(cfg, `hosts.${n}`, NOT_SAFE(n));
  });

  it.each(unsafe)("unsafe VM name %j", (n) => {
    const cfg = fileConfig("lab");
    cfg.hosts.lab.vms[n] = { policy: "lab-nightly" };
    expectOnly(cfg, `hosts.lab.vms.${n}`, NOT_SAFE(n));
  });

  it.each(unsafe)("unsafe policy name %j (as a key)", (n) => {
    const cfg = fileConfig("lab");
    cfg.policies[n] = cfg.policies["lab-nightly"];
    expectOnly(cfg, `policies.${n}`, NOT_SAFE(n));
  });

  it.each(unsafe)("unsafe target name %j (as a key)", (n) => {
    const cfg = fileConfig("lab");
    cfg.targets[n] = { type: "path", path: "/mnt/x" };
    expectOnly(cfg, `targets.${n}`, NOT_SAFE(n));
  });

  it("unsafe names where a policy names its targets and a VM its policy (single and list)", () => {
    // A reference that is not a safe name is also unknown: both are reported at the same path.
    const a = fileConfig("lab");
    a.policies["lab-nightly"].targets = ["lab-ssh", "a b"];
    expect(problems(a)).toEqual([`policies.lab-nightly.targets[1]: ${NOT_SAFE("a b")}`, 'policies.lab-nightly.targets[1]: unknown target "a b" (known: lab-ssh)']);
    const b = fileConfig("lab");
    b.hosts.lab.vms["lab-vm"].policy = "$(x)";
    expect(problems(b)).toContain(`hosts.lab.vms.lab-vm.policy: ${NOT_SAFE("$(x)")}`);
    const c = fileConfig("lab");
    c.hosts.lab.vms["lab-vm"].policy = ["lab-nightly", "x/y"];
    expect(problems(c)[0]).toMatch(/^hosts\.lab\.vms\.lab-vm\.policy(\[1\])?: /);
    expect(problems(c).join("\n")).toContain(NOT_SAFE("x/y"));
  });

  it("a VM with two policies of different methods", () => {
    const cfg = fileConfig("prod.example");
    cfg.hosts.kvm01.vms.web01.policy = ["nightly", "hourly-db"];
    expectOnly(
      cfg,
      "hosts.kvm01.vms.web01.policy",
      "policies nightly, hourly-db use different snapshot methods (lvm and libvirt); one VM must use one method, because LVM and libvirt snapshots of the same disk do not mix",
    );
  });

  it.each([[{ keepLast: 0 }], [{}], [{ keepDaily: 0, keepWeekly: 0 }]])("a retention that keeps nothing: %j", (retention) => {
    const cfg = fileConfig("lab");
    cfg.policies["lab-nightly"].retention = retention;
    expectOnly(cfg, "policies.lab-nightly.retention", "keeps nothing: set at least one of keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly above 0");
  });

  it.each(["var/lib/kvm-backup", "./staging", "/var//lib", "/var/lib/../tmp", "/var/./lib", "/var/lib/", "/var/lib kvm"])(
    "a relative or non-normalized staging path %j",
    (path) => {
      const cfg = fileConfig("lab");
      cfg.hosts.lab.staging.path = path;
      expectOnly(
        cfg,
        "hosts.lab.staging.path",
        `"${path}" must be an absolute, normalized path (starts with /, no "//", "/./", "/../" or trailing /; characters A-Z a-z 0-9 . _ / + @ -)`,
      );
    },
  );

  it("a policy naming a missing target", () => {
    const cfg = fileConfig("lab");
    cfg.policies["lab-nightly"].targets = ["lab-ssh", "offsite"];
    expectOnly(cfg, "policies.lab-nightly.targets[1]", 'unknown target "offsite" (known: lab-ssh)');
  });

  it.each(["*-*-* 25:00", "every night", "Mon..Funday 02:00", ""])("an invalid schedule %j", (schedule) => {
    const cfg = fileConfig("lab");
    cfg.policies["lab-nightly"].schedule = schedule;
    const ps = problems(cfg);
    expect(ps).toHaveLength(1);
    expect(ps[0]).toMatch(/^policies\.lab-nightly\.schedule: .+/);
    expect(ps[0]).toContain(JSON.stringify(schedule));
  });

  it.each([
    ["hosts.lab.privateKey", (c: any, v: unknown) => (c.hosts.lab.privateKey = v)],
    ["targets.lab-ssh.privateKey", (c: any, v: unknown) => (c.targets["lab-ssh"].privateKey = v)],
    ["sshPrivateKey", (c: any, v: unknown) => (c.sshPrivateKey = v)],
  ])("a plain-text secret at %s", (path, set) => {
    const cfg = fileConfig("lab");
    set(cfg, "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n");
    expectOnly(cfg, path, 'must be a Pulumi secret ({ secure: "v1:..." }); set it with `pulumi config set --secret --path <path> <value>`');
  });

  it("a host without any SSH private key", () => {
    const cfg = fileConfig("lab");
    delete cfg.hosts.lab.privateKey;
    expectOnly(cfg, "hosts.lab.privateKey", /^no SSH private key for this host: set hosts.<host>.privateKey or sshPrivateKey as a secret/);
  });

  it("an unknown policy lists the known ones", () => {
    const cfg = fileConfig("prod.example");
    cfg.hosts.kvm01.vms.web01.policy = "nightyl";
    expectOnly(cfg, "hosts.kvm01.vms.web01.policy", 'unknown policy "nightyl" (known: nightly, weekly, hourly-db)');
  });

  it("an unknown policy in a list names its index", () => {
    const cfg = fileConfig("prod.example");
    cfg.hosts.kvm01.vms.web01.policy = ["nightly", "weakly"];
    expectOnly(cfg, "hosts.kvm01.vms.web01.policy[1]", 'unknown policy "weakly" (known: nightly, weekly, hourly-db)');
  });

  it("a bad pinned host key says how to get one", () => {
    const cfg = fileConfig("lab");
    cfg.hosts.lab.hostKey = "AAAAC3NzaC1lZDI1NTE5";
    expectOnly(cfg, "hosts.lab.hostKey", /^must be an OpenSSH public host key line like "ssh-ed25519 AAAAC3Nza\.\.\." \(get it with `ssh-keyscan -t ed25519 HOST`/);
  });

  it("every problem is reported at once, with the stack file's name, as `validate` prints them", () => {
    const cfg = fileConfig("prod.example");
    cfg.hosts.kvm01.vms.web01.policy = "nightyl";
    cfg.policies.nightly.retention = { keepDaily: 0 };
    cfg.policies.weekly.retension = {};
    mkdirSync(join(work, "stacks"), { recursive: true });
    const file = join(work, "stacks", "Pulumi.prod.yaml");
    writeFileSync(file, stringify({ config: Object.fromEntries(Object.entries(cfg).map(([k, v]) => [`kvm-backup:${k}`, v])) }));
    let err: unknown;
    try {
      loadStackFile(file, work);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const lines = (err as ConfigError).message.split("\n").sort();
    expect(lines).toEqual(
      [
        'stacks/Pulumi.prod.yaml: hosts.kvm01.vms.web01.policy: unknown policy "nightyl" (known: nightly, weekly, hourly-db)',
        "stacks/Pulumi.prod.yaml: policies.nightly.retention: keeps nothing: set at least one of keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly above 0",
        'stacks/Pulumi.prod.yaml: policies.weekly: unknown field "retension" (allowed: method, schedule, randomizedDelay, compression, retention, limits, targets, format, repository, snapshot, drill)',
      ].sort(),
    );
  });
});
