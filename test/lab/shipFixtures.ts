/**
 * Test helpers for ship/prune: staged backups made the way the pipeline makes them (real data, real zstd, a
 * manifest the schema accepts, written as <id>.partial and renamed), a host config file, the bundled CLI as a
 * separate process, and an inventory (backups and their file checksums) of staging or a target.
 */
import { createHash, randomBytes } from "node:crypto";
import { execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { HostConfig, type HostConfigInput } from "../../runner/config/schema.ts";
import { ImageManifest, Manifest, MANIFEST_FILE, MANIFEST_VERSION } from "../../runner/manifest.ts";
import { BUNDLE } from "./bundle.ts";

/** The runner bundle (one definition, in bundle.ts) under the name the ship and deploy tests use. */
export { BUNDLE as CLI };

export function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** An id for a backup taken `daysAgo` days (and `hour`) before 2026-11-28, as the pipeline names them. */
export function idAt(date: Date): string {
  return date.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

export interface MakeBackupOptions {
  staging: string;
  vm: string;
  id: string;
  policy: string;
  host?: string;
  /** Bytes of guest data per disk. Default 256 KiB. */
  size?: number;
  disks?: string[];
  /** zstd (default) compresses with the real zstd; none stores the raw bytes (fast for big fixtures). */
  compression?: "zstd" | "none";
}

function writeRandom(path: string, size: number): string {
  const h = createHash("sha256");
  const fd = openSync(path, "w");
  try {
    const chunk = 4 << 20;
    for (let done = 0; done < size; ) {
      const n = Math.min(chunk, size - done);
      const buf = randomBytes(n);
      // Half-random, half-zeros per chunk: compressible like a real disk, still unique per backup.
      buf.fill(0, Math.floor(n / 2));
      writeSync(fd, buf);
      h.update(buf);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return h.digest("hex");
}

/** A complete staged backup, written like the pipeline does: into <id>.partial, manifest last, then renamed. */
export function makeStagedBackup(o: MakeBackupOptions): { dir: string; manifest: ImageManifest } {
  const vmDir = join(o.staging, o.vm);
  mkdirSync(vmDir, { recursive: true });
  const partial = join(vmDir, `${o.id}.partial`);
  mkdirSync(partial);
  const size = o.size ?? 256 * 1024;
  const compression = o.compression ?? "zstd";
  const disks = (o.disks ?? ["vda"]).map((name) => {
    const raw = join(partial, `${name}.raw.tmp`);
    const rawSha = writeRandom(raw, size);
    let file: string;
    if (compression === "zstd") {
      file = `${name}.raw.zst`;
      execFileSync("zstd", ["-q", "-3", "--rm", "-o", join(partial, file), raw], { timeout: 120_000 });
    } else {
      file = `${name}.raw`;
      renameSync(raw, join(partial, file));
    }
    const stored = join(partial, file);
    return {
      name,
      source: `/var/lib/libvirt/images/${o.vm}-${name}.img`,
      format: "raw",
      virtualSize: size,
      bytesRead: size,
      bytesStored: statSync(stored).size,
      sha256: rawSha,
      storedSha256: sha256(stored),
      file,
      compression: compression === "zstd" ? { type: "zstd" as const, level: 3 } : { type: "none" as const },
    };
  });
  const t = new Date(Date.UTC(+o.id.slice(0, 4), +o.id.slice(4, 6) - 1, +o.id.slice(6, 8), +o.id.slice(9, 11), +o.id.slice(11, 13), +o.id.slice(13, 15)));
  const manifest = ImageManifest.parse({
    manifestVersion: MANIFEST_VERSION,
    id: o.id,
    host: o.host ?? "lab",
    vm: o.vm,
    policy: o.policy,
    method: "libvirt",
    format: "image",
    runnerVersion: "test",
    startedAt: t.toISOString(),
    finishedAt: new Date(t.getTime() + 60_000).toISOString(),
    snapshot: { kind: "libvirt-external", createdAt: t.toISOString(), removedAt: t.toISOString(), windowMs: 1000, quiesced: false },
    domainXml: `<domain type='qemu'><name>${o.vm}</name></domain>`,
    disks,
  });
  writeFileSync(join(partial, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + "\n");
  const dir = join(vmDir, o.id);
  renameSync(partial, dir);
  return { dir, manifest };
}

export function writeHostConfig(file: string, cfg: Omit<HostConfigInput, "version">): string {
  const doc = { version: 1 as const, ...cfg };
  HostConfig.parse(doc); // a test config the runner would refuse is a bug in the test
  writeFileSync(file, JSON.stringify(doc, null, 2) + "\n");
  return file;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

// CLIs still running when the test worker ends (a test that timed out) are killed with it, group and all.
const running = new Set<number>();
process.on("exit", () => {
  for (const pgid of running) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
});

/** The bundled CLI as its own process (and its own process group, so a test can kill -9 all of it). */
export function startCli(config: string, args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}) {
  const started = Date.now();
  const child = spawn(process.execPath, [BUNDLE, "--config", config, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
    env: { ...process.env, KVM_BACKUP_LOG: "json", ...opts.env },
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += String(d)));
  child.stderr!.on("data", (d) => (stderr += String(d)));
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch {
      /* gone */
    }
  }, opts.timeoutMs ?? 180_000);
  running.add(child.pid!);
  const done = new Promise<CliResult>((resolve) => {
    child.on("close", (code, signal) => {
      running.delete(child.pid!);
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started });
    });
  });
  return { child, done };
}

export async function runCli(config: string, args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
  return startCli(config, args, opts).done;
}

/** Backups (dirs with a manifest) under <root>/<vm>/ and the SHA-256 of each of their files, state.json aside. */
export function inventory(vmRoot: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  if (!existsSync(vmRoot)) return out;
  for (const id of readdirSync(vmRoot).sort()) {
    const dir = join(vmRoot, id);
    if (!/^\d{8}T\d{6}Z/.test(id) || !existsSync(join(dir, MANIFEST_FILE))) continue;
    out[id] = {};
    for (const f of readdirSync(dir).sort()) {
      if (f === "state.json" || f.startsWith(".")) continue;
      out[id]![f] = sha256(join(dir, f));
    }
  }
  return out;
}

/** Every file's SHA-256 checked against the manifest in the same directory; returns the problems. */
export function checkAgainstManifests(vmRoot: string): string[] {
  const problems: string[] = [];
  for (const [id, files] of Object.entries(inventory(vmRoot))) {
    const m = Manifest.parse(JSON.parse(readFileSync(join(vmRoot, id, MANIFEST_FILE), "utf8")));
    if (m.format !== "image") continue;
    for (const d of m.disks) if (files[d.file] !== d.storedSha256) problems.push(`${id}/${d.file}`);
  }
  return problems;
}

export function readStateJson(dir: string): { protected: boolean; targets: Record<string, { shippedAt?: string; verified?: boolean; pendingSince?: string; lastError?: { message: string } }> } {
  try {
    return JSON.parse(readFileSync(join(dir, "state.json"), "utf8"));
  } catch {
    return { protected: false, targets: {} };
  }
}

/** The runner's JSON log lines (KVM_BACKUP_LOG=json) from a CLI's stderr. */
export function logEvents(stderr: string): { event: string; level: string; msg: string; [k: string]: unknown }[] {
  return stderr
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });
}
