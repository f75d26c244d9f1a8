/**
 * The stream step on its own, with the real compressor and real files (no libvirt needed): the stored file
 * decompresses to the image and the SHA-256 is the image's; a compressor that stops making progress (SIGSTOP, as
 * a process stuck on a hung disk) or dies is noticed at once, every child is gone and nothing hangs.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Logger } from "../../runner/log.ts";
import { streamDisk } from "../../runner/stream.ts";
import type { FrozenDisk } from "../../runner/snapshot/backend.ts";
import { knownBytes } from "../lab/libvirtLab.ts";

const SIZE = 24 << 20;
const quiet = new Logger({}, { isTTY: false, write: () => undefined });

/** Our children named `name` (the compressor), from /proc. */
function childrenNamed(name: string): number[] {
  const r = spawnSync("pgrep", ["-P", String(process.pid), "-x", name], { encoding: "utf8" });
  return r.stdout.split("\n").filter(Boolean).map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitFor<T>(what: string | (() => string), f: () => T | undefined, ms = 20_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${typeof what === "string" ? what : what()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("stream step: real compressor, real files", () => {
  let dir: string;
  let image: string;
  let disk: FrozenDisk;
  let imageSha: string;
  let qcow2: string;

  beforeAll(() => {
    dir = mkdtempSync("/tmp/kvmb-stream-");
    image = join(dir, "disk.raw");
    const buf = Buffer.alloc(SIZE);
    knownBytes("stream", SIZE / 2).copy(buf);
    writeFileSync(image, buf);
    imageSha = createHash("sha256").update(buf).digest("hex");
    disk = { name: "vda", source: image, readPath: image, format: "raw", virtualSize: SIZE };
    qcow2 = join(dir, "disk.qcow2");
    execFileSync("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", image, qcow2], { timeout: 60_000 });
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("raw and qcow2: the stored file decompresses to the image; the SHA-256 is the image's", async () => {
    for (const d of [disk, { ...disk, readPath: qcow2, source: qcow2, format: "qcow2" }]) {
      const out = join(dir, `${d.format}.zst`);
      const r = await streamDisk({ disk: d, outFile: out, compression: { type: "zstd", level: 3, threads: 0 }, signal: new AbortController().signal, log: quiet });
      expect(r).toEqual({ bytesRead: SIZE, sha256: imageSha });
      const back = execFileSync("zstd", ["-q", "-d", "-c", out], { maxBuffer: 2 * SIZE });
      expect(createHash("sha256").update(back).digest("hex")).toBe(imageSha);
    }
  });

  it("an image shorter than its recorded size fails as incomplete, never a short backup", async () => {
    const p = streamDisk({ disk: { ...disk, virtualSize: SIZE + 4096 }, outFile: join(dir, "short.zst"), compression: { type: "zstd", level: 1, threads: 1 }, signal: new AbortController().signal, log: quiet });
    await expect(p).rejects.toThrow(/read 25165824 bytes from .*disk\.raw, but the image has 25169920; the backup would be incomplete/);
  });

  it("a compressor that stops making progress is stopped after stallMs, with a message; no child is left", async () => {
    const started = Date.now();
    // zstd -19 on one thread is slow enough that the stream is still running when it is stopped.
    const p = streamDisk({ disk, outFile: join(dir, "stall.zst"), compression: { type: "zstd", level: 19, threads: 1 }, signal: new AbortController().signal, log: quiet, stallMs: 1500 });
    const outcome = p.then(() => null, (e: Error) => e);
    const pid = await waitFor("the compressor to start", () => childrenNamed("zstd")[0]);
    process.kill(pid, "SIGSTOP");
    const err = await outcome;
    expect(err?.message).toMatch(/disk vda: the stream made no progress for 2 s \(the compressor has read \d+ of 25165824 bytes, the checksum reader \d+\)/);
    expect(Date.now() - started).toBeLessThan(15_000);
    await waitFor("the stopped compressor to be killed", () => (alive(pid) && readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]![0] !== "Z" ? undefined : true), 5_000);
  });

  it("a compressor that dies fails the stream at once with its exit, and the checksum reader stops too", async () => {
    const started = Date.now();
    const p = streamDisk({ disk, outFile: join(dir, "dies.zst"), compression: { type: "zstd", level: 19, threads: 1 }, signal: new AbortController().signal, log: quiet });
    const outcome = p.then(() => null, (e: Error) => e);
    const pid = await waitFor("the compressor to start", () => childrenNamed("zstd")[0]);
    process.kill(pid, "SIGKILL");
    const err = await outcome;
    expect(err?.message).toMatch(/disk vda: the compressor zstd failed \(exit SIGKILL\)/);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it("kill -9 of the runner takes the compressor, nbdcopy and qemu-nbd with it (their lock would block blockcommit)", async () => {
    // A big sparse image keeps nbdcopy, qemu-nbd and zstd busy for seconds (a small one is read into zstd at once).
    const sparse = join(dir, "sparse.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", sparse, "2G"], { timeout: 60_000 });
    const script = `import { streamDisk } from ${JSON.stringify(join(import.meta.dirname, "../../runner/stream.ts"))};
      import { Logger } from ${JSON.stringify(join(import.meta.dirname, "../../runner/log.ts"))};
      await streamDisk({ disk: { name: "vda", source: "${sparse}", readPath: "${sparse}", format: "qcow2", virtualSize: ${2 * 2 ** 30} }, outFile: "${join(dir, "killed.zst")}",
        compression: { type: "zstd", level: 19, threads: 1 }, signal: new AbortController().signal, log: new Logger({}, { isTTY: false, write: () => undefined }) });`;
    const runner = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "ignore", "pipe"] });
    let runnerErr = "";
    runner.stderr!.on("data", (b: Buffer) => (runnerErr += b.toString()));
    const descendants = (pid: number): number[] => {
      const kids = spawnSync("pgrep", ["-P", String(pid)], { encoding: "utf8" }).stdout.split("\n").filter(Boolean).map(Number);
      return kids.flatMap((k) => [k, ...descendants(k)]);
    };
    const names = (pids: number[]) => pids.map((p) => readFileSync(`/proc/${p}/comm`, "utf8").trim()).sort();
    // The compressor and the nbdcopy/qemu-nbd pairs feeding it and the checksum reader.
    let seen = "";
    const kids = await waitFor(() => `the stream's children (last seen: ${seen || "none"})`, () => {
      if (runner.exitCode !== null) throw new Error(`the stream process ended early (exit ${runner.exitCode}): ${runnerErr}`);
      const d = descendants(runner.pid!);
      try {
        const n = names(d);
        seen = n.join(",");
        return ["zstd", "nbdcopy", "qemu-nbd"].every((x) => n.includes(x)) ? d : undefined;
      } catch {
        return undefined;
      }
    });
    runner.kill("SIGKILL");
    const living = () => kids.filter((p) => alive(p) && !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${p}/stat`, "utf8")));
    await waitFor("every child of the killed runner to die", () => (living().length ? undefined : true), 5_000).catch(() => {
      throw new Error(`still running after kill -9 of the runner: ${names(living()).join(", ")}`);
    });
  });

  it("the caller's abort stops the stream and kills the compressor", async () => {
    const ctrl = new AbortController();
    const p = streamDisk({ disk, outFile: join(dir, "abort.zst"), compression: { type: "zstd", level: 19, threads: 1 }, signal: ctrl.signal, log: quiet });
    const outcome = p.then(() => null, (e: Error) => e);
    const pid = await waitFor("the compressor to start", () => childrenNamed("zstd")[0]);
    ctrl.abort(new Error("time limit"));
    expect((await outcome)?.message).toBe("time limit");
    await waitFor("the compressor to be gone", () => (childrenNamed("zstd").includes(pid) ? undefined : true), 5_000);
  });
});
