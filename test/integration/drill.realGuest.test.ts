/**
 * On ONE real Debian guest (guest agent, a heartbeat line per second on each of its two ext4 disks), booted once
 * for the whole file (TCG: every boot costs 20-60 s):
 *   - a backup with quiesce: auto is quiesced (manifest) while the guest writes: both restored filesystems are
 *     clean (no needs_recovery) and their heartbeat files end at the snapshot time; an unquiesced backup of the
 *     same guest needs journal recovery (e2fsck -fn is silent about both, so it proves nothing);
 *   - a drill does not start while a backup of the VM holds its lock;
 *   - restore drills: kill -9 mid-drill leaves a scratch domain without any network interface, which the next
 *     run removes; the quiesced backup, drilled from its copy on a path target, boots and its agent answers;
 *     a backup whose root superblock is zeroed
 *     (checksums fine) fails with the console's reason; no scratch domain or file is left; status and the
 *     Prometheus textfile report the last drill; the original domain keeps running throughout.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, cpSync, existsSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { domainState, removeTestDomain, virshLab, virshLabTry } from "../lab/libvirtLab.ts";
import { guestImageOrThrow } from "../lab/guestImage.ts";
import { ext4Features, ext4ReadFile, guestClockOffset, startRealGuest, waitForAgent, type RealGuest } from "../lab/realGuest.ts";
import { idAt, sha256, startCli, writeHostConfig } from "../lab/shipFixtures.ts";
import { idTime } from "../../runner/staging.ts";
import { backups, cli, cliBackground, ensureBundle, logLines, mkdirp } from "./libvirtRunner.ts";

const lab = inject("libvirt");
const provided = inject("guest");
const VM = "dg1";
const DRILL_DOMAIN = `kvm-backup-drill-${VM}`;

describe("real guest: quiesced backups and restore drills", () => {
  let dir: string;
  let staging: string;
  let guest: RealGuest;
  let domId: string;
  let quiesced: string;
  let unquiesced: string;
  const configs: Record<string, string> = {};
  const prom = () => join(dir, "prom", "kvm_backup.prom");

  const writeCfg = (name: string, quiesce: "auto" | "off") =>
    (configs[name] = writeHostConfig(join(dir, `${name}.json`), {
      host: "lab",
      libvirtUri: lab.uri,
      staging: { path: staging, minFree: "0", keepLast: 5 },
      targets: { offsite: { type: "path", path: mkdirp(join(dir, "offsite")) } },
      policies: {
        nightly: {
          method: "libvirt",
          schedule: "daily",
          retention: { keepLast: 5 },
          compression: { type: "zstd", level: 1, threads: 0 },
          snapshot: { quiesce },
          targets: ["offsite"],
          drill: { schedule: "weekly", bootTimeout: "200s" },
        },
      },
      vms: { [VM]: { policy: "nightly" } },
    }));

  /** The stored images of a backup, decompressed into <dir>/<id>/<disk>.raw */
  const unpack = (id: string): Record<string, string> => {
    const out = mkdirp(join(dir, "unpacked", id));
    const m = JSON.parse(readFileSync(join(staging, VM, id, "manifest.json"), "utf8"));
    const files: Record<string, string> = {};
    for (const d of m.disks) {
      files[d.name] = join(out, `${d.name}.raw`);
      if (!existsSync(files[d.name]!)) execFileSync("zstd", ["-q", "-d", "-f", join(staging, VM, id, d.file), "-o", files[d.name]!], { timeout: 120_000 });
    }
    return files;
  };

  const lastHeartbeat = (raw: string, path: string) => {
    const lines = ext4ReadFile(raw, path).trim().split("\n");
    const [t, n] = lines.at(-1)!.split(" ").map(Number);
    return { time: t!, count: n!, lines: lines.length };
  };

  beforeAll(async () => {
    ensureBundle();
    dir = mkdirp(join(lab.dir, "t-drill"));
    staging = mkdirp(join(dir, "staging"));
    writeCfg("auto", "auto");
    writeCfg("off", "off");
    guest = startRealGuest(lab, guestImageOrThrow(provided), VM, join(dir, "guest"));
    const secs = await waitForAgent(lab, guest);
    console.log(`real guest ${VM}: guest-ping answered ${secs.toFixed(1)} s after the start (TCG)`);
    domId = virshLab(lab, ["domid", VM]).trim();
  }, 260_000);

  afterAll(() => {
    virshLabTry(lab, ["destroy", DRILL_DOMAIN]);
    removeTestDomain(lab, VM);
  });

  it("quiesce: auto takes a quiesced snapshot of the writing guest; a drill meanwhile is refused by the VM lock", async () => {
    const bg = cliBackground(configs.auto!, ["run", "--no-ship"]);
    await bg.until("libvirt.snapshot.created");
    // Held still while the drill tries (a fast machine could finish the backup first); its streams just wait.
    process.kill(bg.child.pid!, "SIGSTOP");
    const d = cli(configs.auto!, ["drill", "--vm", VM, "--wait", "0"]);
    process.kill(bg.child.pid!, "SIGCONT");
    expect(d.status, d.stderr).toBe(1);
    expect(d.stderr).toMatch(/VM dg1 \(restore drill\) is locked by pid \d+ \(kvm-backup --config \S+ run --no-ship/);
    expect(await bg.exited, bg.stderr().slice(-3000)).toBe(0);
    const created = logLines(bg.stderr()).find((l) => l.event === "libvirt.snapshot.created");
    expect(created?.quiesced).toBe(true);
    const ids = backups(staging, VM);
    expect(ids).toHaveLength(1);
    quiesced = ids[0]!;
    const m = JSON.parse(readFileSync(join(staging, VM, quiesced, "manifest.json"), "utf8"));
    expect(m.snapshot.quiesced).toBe(true);
    expect(m.disks.map((x: { name: string }) => x.name)).toEqual(["vda", "vdb"]);
    expect(domainState(lab, VM)).toBe("running");
  });

  it("the quiesced images are clean ext4 (no needs_recovery) and the heartbeats on both disks end at the snapshot time", () => {
    const m = JSON.parse(readFileSync(join(staging, VM, quiesced, "manifest.json"), "utf8"));
    const raw = unpack(quiesced);
    for (const disk of ["vda", "vdb"]) expect(ext4Features(raw[disk]!), disk).not.toContain("needs_recovery");
    const snapAt = Date.parse(m.snapshot.createdAt) / 1000 + guestClockOffset(lab, VM);
    const root = lastHeartbeat(raw.vda!, "/var/lib/heartbeat.log");
    const data = lastHeartbeat(raw.vdb!, "/heartbeat.log");
    // The freeze flushed every line written before it: the last one is from the second before the snapshot.
    expect(root.time).toBeGreaterThanOrEqual(Math.floor(snapAt) - 3);
    expect(root.time).toBeLessThanOrEqual(Math.ceil(snapAt) + 1);
    expect(data.time).toBeGreaterThanOrEqual(Math.floor(snapAt) - 3);
    expect(data.time).toBeLessThanOrEqual(Math.ceil(snapAt) + 1);
    expect(Math.abs(root.count - data.count)).toBeLessThanOrEqual(1);
  });

  it("kill -9 during a drill leaves its scratch domain: no network interface, new name and UUID, only scratch disks", async () => {
    const { child, done } = startCli(configs.auto!, ["drill", "--vm", VM], { timeoutMs: 240_000 });
    let err = "";
    child.stderr!.on("data", (b) => (err += String(b)));
    const until = Date.now() + 180_000;
    while (!err.includes('"drill.domain.started"') && Date.now() < until && child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
    expect(err, err.slice(-3000)).toContain('"drill.domain.started"');
    const live = virshLab(lab, ["dumpxml", DRILL_DOMAIN]);
    process.kill(-child.pid!, "SIGKILL");
    await done;

    const scratch = join(staging, ".kvm-backup", "drill-scratch", VM);
    expect(live).not.toMatch(/<interface\b/);
    expect(live).toContain(`<name>${DRILL_DOMAIN}</name>`);
    const uuid = (xml: string) => /<uuid>([^<]+)<\/uuid>/.exec(xml)![1];
    expect(uuid(live)).not.toBe(uuid(virshLab(lab, ["dumpxml", VM])));
    const sources = [...live.matchAll(/<source file='([^']+)'/g)].map((x) => x[1]!);
    expect(sources.filter((s) => s.endsWith(".raw")).sort()).toEqual([join(scratch, "vda.raw"), join(scratch, "vdb.raw")]);
    expect(sources.filter((s) => s.includes(guest.dir))).toEqual([]);
    expect(live).toContain(join(scratch, "console.log"));
    // Killed: the scratch domain and files are still there for the next run to remove.
    expect(domainState(lab, DRILL_DOMAIN)).toBe("running");
    expect(existsSync(scratch)).toBe(true);
    expect(domainState(lab, VM)).toBe("running");
  });

  it("the next run removes the killed drill's domain and files; its unquiesced backup (quiesce: off) needs journal recovery", () => {
    const r = cli(configs.off!, ["run", "--no-ship"]);
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    const leftover = r.lines.filter((l) => l.event === "drill.leftover").map((l) => l.msg).join("\n");
    expect(leftover).toMatch(/destroyed the scratch domain kvm-backup-drill-dg1 of an interrupted restore drill/);
    expect(leftover).toMatch(/deleted the scratch files of an interrupted restore drill/);
    expect(virshLab(lab, ["list", "--all", "--name"])).not.toContain(DRILL_DOMAIN);
    expect(existsSync(join(staging, ".kvm-backup", "drill-scratch", VM))).toBe(false);
    unquiesced = backups(staging, VM).find((id) => id !== quiesced)!;
    const m = JSON.parse(readFileSync(join(staging, VM, unquiesced, "manifest.json"), "utf8"));
    expect(m.snapshot.quiesced).toBe(false);
    const raw = unpack(unquiesced);
    expect(ext4Features(raw.vda!)).toContain("needs_recovery");
    // ...which a read-only fsck does not notice: it passes on both, so it proves nothing about consistency.
    for (const img of [raw.vda!, unpack(quiesced).vda!]) {
      const fsck = spawnSync("e2fsck", ["-fn", img], { encoding: "utf8", timeout: 120_000 });
      expect(fsck.status, `${img}: ${fsck.stdout}${fsck.stderr}`).toBe(0);
    }
  });

  it("a drill of the quiesced backup's copy on the target boots and the guest agent answers", () => {
    const ship = cli(configs.auto!, ["ship", "--vm", VM], 300_000);
    expect(ship.status, ship.stderr.slice(-3000)).toBe(0);
    const r = cli(configs.auto!, ["drill", "--vm", VM, "--id", quiesced, "--from", "offsite"], 300_000);
    expect(r.status, r.stderr.slice(-4000)).toBe(0);
    expect(r.lines.filter((l) => l.event === "drill.leftover")).toEqual([]);
    const passed = r.lines.find((l) => l.event === "drill.passed");
    expect(passed?.answeredBy).toBe("guest-agent");
    const drillStart = r.lines.find((l) => l.event === "drill.start");
    console.log(`drill of the quiesced backup: guest agent answered after ${passed?.answerSeconds} s; the whole drill took ${((Date.parse(passed!.ts) - Date.parse(drillStart!.ts)) / 1000).toFixed(1)} s`);
    expect(r.lines.find((l) => l.event === "drill.start")?.from).toBe("offsite");
    expect(r.stdout).toMatch(new RegExp(`dg1 drill passed: backup ${quiesced} from offsite, guest agent answered after [\\d.]+ s`));
    expect(existsSync(join(staging, ".kvm-backup", "fetch", `${VM}-${quiesced}`))).toBe(false);
    expect(virshLab(lab, ["list", "--all", "--name"])).not.toContain(DRILL_DOMAIN);
    expect(existsSync(join(staging, ".kvm-backup", "drill-scratch", VM))).toBe(false);
    const state = JSON.parse(readFileSync(join(staging, VM, quiesced, "state.json"), "utf8"));
    expect(state.drill).toMatchObject({ ok: true, answeredBy: "guest-agent", from: "offsite" });
    const s = cli(configs.auto!, ["status", "--json", "--textfile", prom()]);
    expect(JSON.parse(s.stdout).vms[0].lastDrill).toMatchObject({ ok: true, id: quiesced });
    expect(readFileSync(prom(), "utf8")).toMatch(/kvm_backup_last_drill_success\{host="lab",vm="dg1"\} 1/);
    expect(virshLab(lab, ["domid", VM]).trim()).toBe(domId);
  });

  it("a backup whose root superblock is zeroed (checksums fine) fails the drill with the console's reason and leaves nothing", () => {
    // A copy of the quiesced backup, as the newest backup, whose vda has its primary ext4 superblock zeroed and a
    // manifest that matches the damaged bytes (stored uncompressed: the image unpacked above, moved): every
    // checksum passes, the guest cannot mount its root.
    const id = idAt(new Date(idTime(backups(staging, VM).at(-1)!).getTime() + 1000));
    expect(backups(staging, VM)).not.toContain(id);
    const dst = join(staging, VM, `${id}.partial`);
    cpSync(join(staging, VM, quiesced), dst, { recursive: true });
    rmSync(join(dst, "state.json"), { force: true });
    rmSync(join(dst, "vda.raw.zst"));
    const raw = join(dst, "vda.raw");
    renameSync(unpack(quiesced).vda!, raw);
    const fd = openSync(raw, "r+");
    writeSync(fd, Buffer.alloc(1024), 0, 1024, 1024);
    closeSync(fd);
    const m = JSON.parse(readFileSync(join(dst, "manifest.json"), "utf8"));
    const vda = m.disks.find((d: { name: string }) => d.name === "vda");
    Object.assign(vda, { file: "vda.raw", compression: { type: "none" }, sha256: sha256(raw), bytesStored: statSync(raw).size });
    vda.storedSha256 = vda.sha256;
    m.id = id;
    writeFileSync(join(dst, "manifest.json"), JSON.stringify(m, null, 2));
    renameSync(dst, join(staging, VM, id));

    const r = cli(configs.auto!, ["drill", "--vm", VM], 300_000);
    expect(r.status, r.stderr.slice(-4000)).toBe(1);
    const failed = r.lines.find((l) => l.event === "drill.failed");
    const started = r.lines.find((l) => l.event === "drill.domain.started");
    console.log(`drill of the broken backup: failed ${((Date.parse(failed!.ts) - Date.parse(started!.ts)) / 1000).toFixed(1)} s after the start: ${failed?.msg.slice(0, 200)}`);
    expect(failed?.msg).toMatch(new RegExp(`restore drill of VM dg1, backup ${id}, FAILED: the guest cannot boot: its console says ".+"`));
    expect(failed?.msg).toMatch(/every disk matched its SHA-256/);
    expect(r.stdout).toMatch(/dg1 drill FAILED: /);
    expect(virshLab(lab, ["list", "--all", "--name"])).not.toContain(DRILL_DOMAIN);
    expect(existsSync(join(staging, ".kvm-backup", "drill-scratch", VM))).toBe(false);
    const s = cli(configs.auto!, ["status", "--textfile", prom()]);
    expect(s.stdout).toMatch(/dg1: .*LAST DRILL FAILED .* ago: restore drill of VM dg1, backup \S+, FAILED/);
    expect(readFileSync(prom(), "utf8")).toMatch(/kvm_backup_last_drill_success\{host="lab",vm="dg1"\} 0/);
    expect(JSON.parse(readFileSync(join(staging, VM, id, "state.json"), "utf8")).drill).toMatchObject({ ok: false });
    // The original ran through every backup and drill.
    expect(domainState(lab, VM)).toBe("running");
    expect(virshLab(lab, ["domid", VM]).trim()).toBe(domId);
  });
});
