/**
 * The policy model: the single source of truth for the stack config (stacks/Pulumi.<stack>.yaml, namespace
 * `kvm-backup`) and for the host config the runner reads (/etc/kvm-backup/config.json, the host's slice).
 *
 * Every name ends up in shell-free command arguments AND in paths on the host and on targets, so names are
 * restricted to a conservative character set instead of being escaped later.
 */
import { posix } from "node:path";
import { z } from "zod";
import { CalendarSyntaxError, parseCalendar } from "./calendar.ts";
import { DurationSyntaxError, parseDuration } from "./duration.ts";
import { parseSize, SIZE_HELP, SizeSyntaxError } from "./sizes.ts";
import { retentionKeepsSomething } from "../retention.ts";

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
export const NAME_HELP = "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without '..'";

export function isSafeName(name: string): boolean {
  return NAME_RE.test(name) && !name.includes("..");
}

export const Name = z.string().refine(isSafeName, { error: (iss) => `"${String(iss.input)}" is not a safe name (${NAME_HELP})` });

/** A map keyed by names. A bad key reports the key's own problem (zod's default says only "Invalid key in record"). */
function namedRecord<V extends z.ZodType>(value: V) {
  return z.record(Name, value, {
    error: (iss) => {
      if (iss.code === "invalid_key") return (iss as unknown as { issues: Array<{ message: string }> }).issues.map((i) => i.message).join("; ");
      if (iss.code === "invalid_type") return "must be a mapping of names to settings";
      return undefined;
    },
  });
}

const DISK_RE = /^[a-z][a-z0-9]{1,15}$/;
export const DiskName = z
  .string()
  .regex(DISK_RE, { error: (iss) => `"${String(iss.input)}" is not a disk target name like vda, sdb or hdc` });

const PATH_CHARS_RE = /^\/[A-Za-z0-9._\/+@-]*$/;
export function isNormalizedAbsolutePath(p: string): boolean {
  return PATH_CHARS_RE.test(p) && posix.normalize(p) === p && (p === "/" || !p.endsWith("/"));
}
export const AbsPath = z.string().refine(isNormalizedAbsolutePath, {
  error: (iss) =>
    `"${String(iss.input)}" must be an absolute, normalized path (starts with /, no "//", "/./", "/../" or trailing /; characters A-Z a-z 0-9 . _ / + @ -)`,
});

const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$|^[0-9a-fA-F:]+$/;
export const HostAddress = z
  .string()
  .regex(HOST_RE, { error: (iss) => `"${String(iss.input)}" is not a host name, IPv4 or IPv6 address` });

export const Port = z
  .number({ error: "must be a port number (1-65535)" })
  .int({ error: "must be a port number (1-65535)" })
  .min(1, { error: "must be a port number (1-65535)" })
  .max(65535, { error: "must be a port number (1-65535)" });

const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
export const UserName = z.string().regex(USER_RE, { error: (iss) => `"${String(iss.input)}" is not a Unix user name` });

const HOST_KEY_RE = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [^\n]*)?$/;
export const HostKey = z.string().regex(HOST_KEY_RE, {
  error: () =>
    'must be an OpenSSH public host key line like "ssh-ed25519 AAAAC3Nza..." (get it with `ssh-keyscan -t ed25519 HOST` and check it out of band)',
});

/**
 * A secret as it stands in a stack file: the encrypted form `pulumi config set --secret --path ...` writes.
 * A plain string there would be a secret committed to Git in clear text.
 */
export const EncryptedSecret = z.strictObject(
  { secure: z.string().min(1) },
  { error: () => 'must be a Pulumi secret ({ secure: "v1:..." }); set it with `pulumi config set --secret --path <path> <value>`' },
);
/** The same secret after the Pulumi engine decrypted it. */
export const PlainSecret = z.string().min(1, { error: "must not be empty" });

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: (iss) => `${JSON.stringify(iss.input)} is not allowed (allowed: ${values.join(", ")})` });
}

/** z.strictObject whose unknown-key error lists the allowed fields, so a typo like `retension` explains itself. */
function strict<S extends z.ZodRawShape>(shape: S) {
  const allowed = Object.keys(shape).join(", ");
  return z.strictObject(shape, {
    error: (iss) => {
      if (iss.code === "unrecognized_keys") {
        const keys = (iss as { keys: string[] }).keys.map((k) => `"${k}"`).join(", ");
        return `unknown field${(iss as { keys: string[] }).keys.length > 1 ? "s" : ""} ${keys} (allowed: ${allowed})`;
      }
      if (iss.code === "invalid_type") return `must be a mapping with the fields: ${allowed}`;
      return undefined;
    },
  });
}

function parsed<T>(parse: (v: string) => T, errors: Array<new (...a: never[]) => Error>) {
  return (value: string, ctx: z.RefinementCtx) => {
    try {
      parse(value);
    } catch (e) {
      if (errors.some((E) => e instanceof E)) ctx.addIssue({ code: "custom", message: (e as Error).message });
      else throw e;
    }
  };
}

export const Duration = z.union([z.string(), z.number()], { error: "must be a duration like \"30min\", \"6h\" or a number of seconds" })
  .superRefine((v, ctx) => parsed((x: string) => parseDuration(x), [DurationSyntaxError])(String(v), ctx));

export const Size = z.union([z.string(), z.number()], { error: `must be ${SIZE_HELP}` })
  .superRefine((v, ctx) => {
    try {
      parseSize(v);
    } catch (e) {
      if (e instanceof SizeSyntaxError) ctx.addIssue({ code: "custom", message: e.message });
      else throw e;
    }
  });

/** LVM snapshot sizes may also be a share of the origin volume: "20%". */
export const SizeOrPercent = z.union([z.string(), z.number()], { error: `must be ${SIZE_HELP} or a percent of the origin like "20%"` })
  .superRefine((v, ctx) => {
    if (typeof v === "string" && /%\s*$/.test(v)) {
      const pct = Number(v.replace(/%\s*$/, ""));
      if (!(pct > 0 && pct <= 100)) ctx.addIssue({ code: "custom", message: `"${v}" must be a percent between 0 and 100 (exclusive of 0)` });
      return;
    }
    try {
      parseSize(v);
    } catch (e) {
      if (e instanceof SizeSyntaxError) ctx.addIssue({ code: "custom", message: `${e.message}, or a percent of the origin like "20%"` });
      else throw e;
    }
  });

export const Schedule = z
  .string({ error: 'must be a systemd OnCalendar expression like "daily" or "*-*-* 02:00"' })
  .superRefine(parsed(parseCalendar, [CalendarSyntaxError]));

// ---------------------------------------------------------------- targets

/** http(s)://host[:port] of an S3 API, without credentials, path, query or fragment. */
export const S3Endpoint = z.string({ error: 'must be the URL of the S3 API, like "https://s3.eu-central-1.amazonaws.com" or "http://10.0.0.5:7480"' }).superRefine((v, ctx) => {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    ctx.addIssue({ code: "custom", message: `"${v}" is not a URL; use the S3 API's address like "https://s3.eu-central-1.amazonaws.com" or "http://10.0.0.5:7480"` });
    return;
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") ctx.addIssue({ code: "custom", message: `"${v}" must start with https:// (or http:// for a gateway on a trusted network)` });
  else if (u.username || u.password) ctx.addIssue({ code: "custom", message: "must not contain credentials: the keys are accessKeyId and secretAccessKey (secrets)" });
  else if ((u.pathname !== "/" && u.pathname !== "") || u.search || u.hash) ctx.addIssue({ code: "custom", message: `"${v}" must be only scheme, host and port (the bucket goes in "bucket", key prefixes in "prefix")` });
});

/** S3 bucket naming rules (the strict, DNS-compatible ones every provider accepts). */
export const S3Bucket = z
  .string()
  .refine((b) => /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(b) && !b.includes("..") && !/^\d+\.\d+\.\d+\.\d+$/.test(b), {
    error: (iss) => `"${String(iss.input)}" is not a valid bucket name (3-63 characters from a-z 0-9 . -, starting and ending with a letter or digit, not an IP address)`,
  });

/** A key prefix of safe names joined by "/", without leading or trailing "/"; "" for the whole bucket. */
export const S3Prefix = z.string().refine((p) => p === "" || p.split("/").every(isSafeName), {
  error: (iss) => `"${String(iss.input)}" must be names joined by "/" (each ${NAME_HELP}), without a leading or trailing "/", or "" for none`,
});

export const S3Region = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/, { error: (iss) => `"${String(iss.input)}" is not a region name like us-east-1 (self-hosted gateways accept their zonegroup name or any)` });

const targetCommon = {
  /** The longest one backup may take to ship to this target before the attempt is abandoned (retried next run). */
  timeout: Duration.default("2h"),
};

function sshTarget<S extends z.ZodType>(secret: S) {
  return strict({
    type: z.literal("ssh"),
    host: HostAddress,
    port: Port.default(22),
    user: UserName,
    path: AbsPath,
    hostKey: HostKey,
    privateKey: secret,
    ...targetCommon,
  });
}

const pathTarget = strict({
  type: z.literal("path"),
  path: AbsPath,
  ...targetCommon,
});

/** Object storage: everything but the two keys, which are secrets in the stack and a root-only file on the host. */
const s3Common = {
  type: z.literal("s3"),
  endpoint: S3Endpoint,
  bucket: S3Bucket,
  /** Key prefix inside the bucket; objects are <prefix>/<host>/<vm>/<id>/<file>. */
  prefix: S3Prefix.default(""),
  region: S3Region.default("us-east-1"),
  /** bucket in the path (https://gw/bucket/key), which most self-hosted gateways need; false: bucket.gw host names. */
  forcePathStyle: z.boolean({ error: "must be true or false" }).default(true),
  /** After upload: read every object back in full (full), or compare size, SHA-256 metadata and sampled ranges (ranged). */
  verify: oneOf(["full", "ranged"] as const).default("full"),
  ...targetCommon,
};

function s3Target<S extends z.ZodType>(secret: S) {
  return strict({ ...s3Common, accessKeyId: secret, secretAccessKey: secret });
}

function target<S extends z.ZodType>(secret: S) {
  return z.discriminatedUnion("type", [sshTarget(secret), pathTarget, s3Target(secret)], {
    error: (iss) =>
      iss.code === "invalid_union" || iss.code === "invalid_type"
        ? 'needs "type": ssh (rsync over SSH: host, port, user, path, hostKey, privateKey), path (a mounted directory: path) or s3 (object storage: endpoint, bucket, prefix, region, accessKeyId, secretAccessKey)'
        : undefined,
  });
}

/** On the host the private key is a root-only file next to the config, never a value in the config itself. */
const hostSshTarget = strict({
  type: z.literal("ssh"),
  host: HostAddress,
  port: Port.default(22),
  user: UserName,
  path: AbsPath,
  hostKey: HostKey,
  keyFile: AbsPath,
  ...targetCommon,
});
/** The S3 keys are a root-only file (AWS credentials file format) next to the config. */
const hostS3Target = strict({ ...s3Common, credentialsFile: AbsPath });
export const HostTarget = z.discriminatedUnion("type", [hostSshTarget, pathTarget, hostS3Target]);

// ---------------------------------------------------------------- policies

export const Compression = z
  .discriminatedUnion(
    "type",
    [
      strict({
        type: z.literal("zstd"),
        level: z.number().int().min(1).max(19, { error: "zstd level must be 1-19" }).default(3),
        threads: z.number().int().min(0).max(256).default(0),
      }),
      strict({ type: z.literal("gzip"), level: z.number().int().min(1).max(9, { error: "gzip level must be 1-9" }).default(6) }),
      strict({ type: z.literal("none") }),
    ],
    { error: () => 'needs "type": zstd (with level 1-19, threads; 0 = one per core), gzip (level 1-9) or none' },
  )
  .default({ type: "zstd", level: 3, threads: 0 });

const count = z.number().int({ error: "must be a whole number" }).min(0, { error: "must be 0 or more" });

export const Retention = strict({
  keepLast: count.optional(),
  keepHourly: count.optional(),
  keepDaily: count.optional(),
  keepWeekly: count.optional(),
  keepMonthly: count.optional(),
  keepYearly: count.optional(),
}).refine(retentionKeepsSomething, {
  error: "keeps nothing: set at least one of keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly above 0",
});

export const Limits = strict({
  nice: z.number().int().min(-20).max(19, { error: "nice must be -20..19" }).default(10),
  ioClass: oneOf(["idle", "best-effort", "realtime"] as const).default("best-effort"),
  ioPriority: z.number().int().min(0).max(7, { error: "ioPriority must be 0..7" }).default(7),
  cpuQuota: z
    .string()
    .regex(/^[1-9][0-9]{0,4}%$/, { error: 'must be a percent like "50%" (100% = one core)' })
    .optional(),
  timeout: Duration.default("6h"),
}).default({ nice: 10, ioClass: "best-effort", ioPriority: 7, timeout: "6h" });

/**
 * How a repository-format policy stores its backups (restic). `ingest`: staged streams the frozen disk into a
 * zstd image on staging first and feeds it to restic after the snapshot is gone (the snapshot window of the
 * image format); direct feeds restic while the snapshot lives (no staged image, a longer window). See
 * README.md (The repository format) for the measurements behind the default.
 */
export const RepositoryOptions = strict({
  ingest: oneOf(["staged", "direct"] as const).default("staged"),
  /** restic's own compression (zstd inside the repository). */
  compression: oneOf(["auto", "max", "off"] as const).default("auto"),
});

export const BACKUP_FORMATS = ["image", "repository"] as const;

const policyCommon = {
  schedule: Schedule,
  randomizedDelay: Duration.default("30min"),
  compression: Compression,
  retention: Retention,
  limits: Limits,
  targets: z.array(Name).default([]),
  /** image (default): one compressed image file per disk and backup; repository: a deduplicating restic repository. */
  format: oneOf(BACKUP_FORMATS).optional(),
  repository: RepositoryOptions.optional(),
};

export const LvmSnapshot = strict({
  size: SizeOrPercent.default("20%"),
  maxFillPercent: z.number().min(10).max(95, { error: "maxFillPercent must be 10-95: a snapshot must never fill up" }).default(80),
  /** When the fill level reaches maxFillPercent, grow the snapshot by this much while the VG has room... */
  extendBy: SizeOrPercent.optional(),
  /** ...but never beyond this size; then abort. Without extendBy the run aborts at maxFillPercent. */
  extendMax: SizeOrPercent.optional(),
  pollInterval: Duration.default("1s"),
}).default({ size: "20%", maxFillPercent: 80, pollInterval: "1s" });

export const LibvirtSnapshot = strict({
  quiesce: oneOf(["auto", "required", "off"] as const).default("auto"),
}).default({ quiesce: "auto" });

/**
 * Restore drills (`kvm-backup drill`, README.md (Restore drills)): on `schedule` the newest backup of each
 * VM of the policy is restored into a scratch domain without network, booted, and must answer (guest agent
 * `guest-ping`, or a console line matching `consolePattern`) within `bootTimeout`. `memory`/`vcpus` replace the
 * VM's own for the scratch domain; `limits` apply to the drill's service (restore and boot wait).
 */
export const Drill = strict({
  schedule: Schedule,
  randomizedDelay: Duration.default("30min"),
  bootTimeout: Duration.default("10min"),
  consolePattern: z
    .string()
    .min(1)
    .superRefine((v, ctx) => {
      try {
        new RegExp(v);
      } catch (e) {
        ctx.addIssue({ code: "custom", message: `is not a valid regular expression: ${(e as Error).message}` });
      }
    })
    .optional(),
  memory: Size.optional(),
  vcpus: z.number().int().min(1).max(256, { error: "vcpus must be 1-256" }).optional(),
  limits: Limits,
});
export type DrillPolicy = z.output<typeof Drill>;

export const Policy = z.discriminatedUnion(
  "method",
  [
    strict({ method: z.literal("lvm"), ...policyCommon, snapshot: LvmSnapshot, drill: Drill.optional() }),
    strict({ method: z.literal("libvirt"), ...policyCommon, snapshot: LibvirtSnapshot, drill: Drill.optional() }),
  ],
  { error: () => 'needs "method": lvm (LVM snapshots) or libvirt (libvirt disk-only external snapshots)' },
);

// ---------------------------------------------------------------- hosts

export const Staging = strict({
  path: AbsPath,
  /** Complete backups kept on the host itself; an unshipped backup is kept regardless. */
  keepLast: z.number().int().min(1, { error: "keepLast must be 1 or more: the newest backup stays on the host until shipped" }).default(2),
  minFree: Size.default("10GiB"),
});

export const Vm = strict({
  policy: z.union([Name, z.array(Name).min(1)], { error: "must be a policy name or a list of policy names" }),
  /**
   * Either a selection of the domain's disks by target name (["vda"]) or, for QEMU without libvirt, an explicit
   * map of disk name to LV or image path.
   */
  disks: z.union([z.array(DiskName).min(1), z.record(DiskName, AbsPath)], {
    error: 'must be a list of disk target names like ["vda"] or a map of disk name to path like { vda: /dev/vg0/web01 }',
  }).optional(),
});

const LibvirtUri = z
  .string()
  .regex(/^qemu(\+unix)?:\/\/\/(system|session)(\?socket=\/[A-Za-z0-9._\/-]+)?$/, { error: 'must be a local libvirt URI like "qemu:///system"' });

function host<S extends z.ZodType>(secret: S) {
  return strict({
    address: HostAddress,
    port: Port.default(22),
    user: UserName.default("root"),
    hostKey: HostKey,
    privateKey: secret.optional(),
    libvirtUri: LibvirtUri.default("qemu:///system"),
    staging: Staging,
    vms: namedRecord(Vm),
    /**
     * Where the deploy installs on the host: "/" (runner in /opt/kvm-backup, config in /etc/kvm-backup, units in
     * /etc/systemd/system). Another directory prefixes every one of those paths and the units name the prefixed
     * paths; timers are then only enabled inside that directory (`systemctl --root`), never in the running
     * systemd. For tests and trial installs.
     */
    root: AbsPath.default("/"),
  });
}

export function policyNames(vm: { policy: string | string[] }): string[] {
  return typeof vm.policy === "string" ? [vm.policy] : vm.policy;
}

function known(names: Iterable<string>): string {
  const list = [...names];
  return list.length ? `known: ${list.join(", ")}` : "none are defined";
}

type AnyTargets = Record<string, { type: string }>;
type AnyPolicies = Record<string, { method: string; targets: string[] }>;
type AnyVms = Record<string, { policy: string | string[] }>;

/** References between sections: checked once both sides parsed, with the path of the referring field. */
function checkReferences(
  ctx: z.RefinementCtx,
  targets: AnyTargets,
  policies: AnyPolicies,
  vmSets: Array<{ path: (string | number)[]; vms: AnyVms }>,
) {
  for (const [pname, p] of Object.entries(policies)) {
    p.targets.forEach((t, i) => {
      if (!(t in targets)) {
        ctx.addIssue({ code: "custom", path: ["policies", pname, "targets", i], message: `unknown target "${t}" (${known(Object.keys(targets))})` });
      }
    });
  }
  for (const set of vmSets) {
    for (const [vname, vm] of Object.entries(set.vms)) {
      const names = policyNames(vm);
      const vmPath = [...set.path, vname, "policy"];
      names.forEach((pn, i) => {
        if (!(pn in policies)) {
          ctx.addIssue({
            code: "custom",
            path: typeof vm.policy === "string" ? vmPath : [...vmPath, i],
            message: `unknown policy "${pn}" (${known(Object.keys(policies))})`,
          });
        }
      });
      const methods = new Set(names.filter((n) => n in policies).map((n) => policies[n]!.method));
      if (methods.size > 1) {
        ctx.addIssue({
          code: "custom",
          path: vmPath,
          message: `policies ${names.join(", ")} use different snapshot methods (${[...methods].join(" and ")}); one VM must use one method, because LVM and libvirt snapshots of the same disk do not mix`,
        });
      }
    }
  }
}

/**
 * format: repository needs the repository password, and targets restic can reach the way the runner does
 * (ssh through restic's sftp back-end, path as a local repository).
 */
function checkRepositoryFormat(
  ctx: z.RefinementCtx,
  targets: AnyTargets,
  policies: Record<string, { format?: string; targets: string[] }>,
  hasPassword: boolean,
  passwordField: string,
  passwordHelp: string,
) {
  const repoPolicies = Object.entries(policies).filter(([, p]) => p.format === "repository");
  if (repoPolicies.length && !hasPassword) {
    ctx.addIssue({
      code: "custom",
      path: [passwordField],
      message: `policies ${repoPolicies.map(([n]) => n).join(", ")} use format: repository, which needs ${passwordField} (${passwordHelp})`,
    });
  }
  for (const [pname, p] of repoPolicies) {
    p.targets.forEach((t, i) => {
      const type = targets[t]?.type;
      if (type !== undefined && type !== "ssh" && type !== "path" && type !== "s3") {
        ctx.addIssue({ code: "custom", path: ["policies", pname, "targets", i], message: `target "${t}" is a ${type} target; format: repository ships to ssh, path and s3 targets only` });
      }
    });
  }
}

// ---------------------------------------------------------------- acknowledgements

export const RISKY_CHANGES = ["retention-reduced", "coverage-lost", "target-removed", "method-changed", "schedule-gap"] as const;
export type RiskyChangeKind = (typeof RISKY_CHANGES)[number];

/**
 * A reviewed "yes, on purpose" for a risky change `kvm-backup policy diff` flags. It applies only in the change
 * that adds it (one already at the base ref acknowledges nothing), so every risky change needs its own reason,
 * and that reason is in the same pull request as the change. `vm`: "host/vm", "host" (every VM of the host) or
 * unset (every VM of the stack).
 */
export const Acknowledgement = strict({
  vm: z
    .string()
    .refine((v) => v.split("/").length <= 2 && v.split("/").every(isSafeName), {
      error: (iss) => `"${String(iss.input)}" must be "host/vm" or "host" (${NAME_HELP})`,
    })
    .optional(),
  change: oneOf(RISKY_CHANGES),
  reason: z.string().trim().min(1, { error: "must say why the change is intended (it is shown in the review)" }),
});

function stackConfig<S extends z.ZodType>(secret: S) {
  return strict({
    /** The SSH key Pulumi uses for every host that does not set its own `privateKey`. */
    sshPrivateKey: secret.optional(),
    targets: namedRecord(target(secret)).default({}),
    policies: namedRecord(Policy),
    hosts: namedRecord(host(secret)),
    /** Risky policy changes made on purpose, each with a reason (see Acknowledgement). */
    acknowledge: z.array(Acknowledgement).optional(),
    /** Encrypts every restic repository (format: repository); losing it loses those backups. */
    repositoryPassword: secret.optional(),
  }).superRefine((cfg, ctx) => {
    const c = cfg as unknown as {
      sshPrivateKey?: unknown;
      targets: AnyTargets;
      policies: AnyPolicies;
      hosts: Record<string, { vms: AnyVms; privateKey?: unknown }>;
    };
    const vmSets = Object.entries(c.hosts).map(([hname, h]) => ({ path: ["hosts", hname, "vms"], vms: h.vms }));
    checkReferences(ctx, c.targets, c.policies, vmSets);
    checkRepositoryFormat(ctx, c.targets, c.policies, (cfg as { repositoryPassword?: unknown }).repositoryPassword !== undefined, "repositoryPassword", "a Pulumi secret: `pulumi config set --secret --path repositoryPassword <password>`");
    if (c.sshPrivateKey === undefined) {
      for (const [hname, h] of Object.entries(c.hosts)) {
        if (h.privateKey === undefined) {
          ctx.addIssue({
            code: "custom",
            path: ["hosts", hname, "privateKey"],
            message: "no SSH private key for this host: set hosts.<host>.privateKey or sshPrivateKey as a secret (`pulumi config set --secret --path sshPrivateKey < key`)",
          });
        }
      }
    }
  });
}

/** The stack config as written in stacks/Pulumi.<stack>.yaml: secrets must be encrypted. */
export const StackFileConfig = stackConfig(EncryptedSecret);
/** The stack config as the Pulumi program receives it: secrets decrypted by the engine. */
export const StackConfig = stackConfig(PlainSecret);
export type StackConfig = z.output<typeof StackConfig>;
export type StackFileConfig = z.output<typeof StackFileConfig>;

export const HOST_CONFIG_VERSION = 1;

/** What the runner reads on one host: that host's slice of the stack, without secrets. */
export const HostConfig = strict({
  version: z.literal(HOST_CONFIG_VERSION, { error: `must be ${HOST_CONFIG_VERSION}: this runner reads host config version ${HOST_CONFIG_VERSION}` }),
  host: Name,
  libvirtUri: LibvirtUri.default("qemu:///system"),
  staging: Staging,
  targets: namedRecord(HostTarget).default({}),
  policies: namedRecord(Policy),
  vms: namedRecord(Vm),
  /** The restic repositories' password (format: repository), a root-only file; never the password itself. */
  repositoryPasswordFile: AbsPath.optional(),
}).superRefine((cfg, ctx) => {
  checkReferences(ctx, cfg.targets, cfg.policies, [{ path: ["vms"], vms: cfg.vms }]);
  checkRepositoryFormat(ctx, cfg.targets, cfg.policies, cfg.repositoryPasswordFile !== undefined, "repositoryPasswordFile", "the root-only file `pulumi up` installs from the stack's repositoryPassword");
});

export type HostConfig = z.output<typeof HostConfig>;
export type HostConfigInput = z.input<typeof HostConfig>;
export type Policy = z.output<typeof Policy>;
export type LvmPolicy = Extract<Policy, { method: "lvm" }>;
export type LibvirtPolicy = Extract<Policy, { method: "libvirt" }>;
export type Target = z.output<ReturnType<typeof target<typeof PlainSecret>>>;
export type HostTarget = z.output<typeof HostTarget>;
export type Host = z.output<ReturnType<typeof host<typeof PlainSecret>>>;
export type Vm = z.output<typeof Vm>;
export type Compression = z.output<typeof Compression>;
export type RetentionRules = z.output<typeof Retention>;
export type BackupFormat = (typeof BACKUP_FORMATS)[number];
export type RepositoryOptions = z.output<typeof RepositoryOptions>;

/** A policy's format; unset means image (configs written before the repository format). */
export function policyFormat(p: { format?: BackupFormat }): BackupFormat {
  return p.format ?? "image";
}

/** A repository-format policy's options, defaults filled in. */
export function repositoryOptions(p: { repository?: RepositoryOptions }): RepositoryOptions {
  return p.repository ?? RepositoryOptions.parse({});
}
