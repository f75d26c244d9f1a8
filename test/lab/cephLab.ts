/**
 * A real single-node Ceph cluster with a RADOS Gateway on 127.0.0.1: the S3 target of the tests.
 *
 * No systemd and no block device: one monitor created by hand (ceph-authtool, monmaptool, ceph-mon --mkfs), one
 * bluestore OSD on a sparse file, pools of size 1, and radosgw with the beast frontend. Every path the daemons
 * use (data, logs, run dir, admin sockets, the cluster log) is inside one temp directory, so nothing lands in
 * /var/lib/ceph or /var/log/ceph and two test runs on one machine never share a cluster. No mgr is needed.
 *
 * Pitfalls this avoids (found on Debian 12's Ceph 16.2):
 *  - with `auth ... required = none`, radosgw never opens its port unless `ms mon client mode = crc`;
 *  - the mon stops accepting writes on a fuller disk unless `mon data avail warn/crit` are set low;
 *  - pools default to 32 PGs and rgw creates ~7 of them: too many for one OSD, so 8 PGs each;
 *  - teardown order: radosgw, then the OSD, then the mon (an OSD without its mon hangs on shutdown).
 * The gateway's S3 user gets keys radosgw-admin generates, read from its stdout: no secret is ever on a command
 * line, not even in the fixture (the tests read /proc/PID/cmdline of everything during a run).
 *
 * Every wait has a deadline; a failed start throws with the tail of every daemon's log. Everything works from the
 * info alone, so a test process can stop and continue the gateway (SIGSTOP/SIGCONT) by its PID.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { freePort } from "./sshdLab.ts";
import { readPid } from "./daemonPid.ts";

export interface CephLabInfo {
  dir: string;
  /** http://127.0.0.1:PORT */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  conf: string;
  pidFiles: { mon: string; osd: string; rgw: string };
  logDir: string;
  /** How long the start took, ms (reported by the global setup). */
  startMs: number;
}

const TOOLS: Array<[string, string]> = [
  ["ceph-mon", "ceph-mon"],
  ["ceph-osd", "ceph-osd"],
  ["radosgw", "radosgw"],
  ["radosgw-admin", "radosgw"],
  ["ceph-authtool", "ceph-common"],
  ["monmaptool", "ceph-common"],
  ["ceph", "ceph-common"],
];

function need(tool: string, pkg: string): void {
  const r = spawnSync("sh", ["-c", 'command -v "$1"', "sh", tool]);
  if (r.status !== 0) throw new Error(`ceph lab: ${tool} is missing; install the Debian package ${pkg} (scripts/lab-packages.txt: ceph-mon ceph-osd radosgw)`);
}

function cephConf(dir: string, fsid: string, monPort: number, rgwPort: number): string {
  return [
    "[global]",
    `fsid = ${fsid}`,
    "mon initial members = a",
    `mon host = v1:127.0.0.1:${monPort}`,
    "public addr = 127.0.0.1",
    "ms bind msgr2 = false",
    "auth cluster required = none",
    "auth service required = none",
    "auth client required = none",
    "ms mon client mode = crc",
    `keyring = ${dir}/keyring`,
    `run dir = ${dir}/run`,
    `admin socket = ${dir}/run/$cluster-$name.asok`,
    `log file = ${dir}/log/$cluster-$name.log`,
    `mon cluster log file = ${dir}/log/cluster.log`,
    `mon data = ${dir}/mon/$cluster-$id`,
    `osd data = ${dir}/osd/$cluster-$id`,
    "osd objectstore = bluestore",
    `bluestore block path = ${dir}/osd/$cluster-$id.block`,
    "bluestore block create = true",
    // Sparse: only what the tests write takes space.
    "bluestore block size = 8589934592",
    "osd memory target = 939524096",
    "osd pool default size = 1",
    "osd pool default min size = 1",
    "mon allow pool size one = true",
    "osd crush chooseleaf type = 0",
    "osd pool default pg num = 8",
    "osd pool default pgp num = 8",
    "osd pool default pg autoscale mode = off",
    "mon max pg per osd = 1000",
    // The OSD would place itself in the CRUSH map with mon commands at start; under load those can race its
    // monmap ("wrong fsid", and the OSD exits). The fixture places it before the start instead.
    "osd crush update on start = false",
    "osd class update on start = false",
    "mon data avail warn = 2",
    "mon data avail crit = 1",
    // Every map change (each pool rgw creates) otherwise waits a 1 s proposal interval: ~10 s of the start.
    "paxos propose interval = 0.01",
    "paxos min wait = 0.01",
    "",
    "[client.rgw.lab]",
    `rgw frontends = beast endpoint=127.0.0.1:${rgwPort}`,
    `rgw data = ${dir}/rgw`,
    "",
  ].join("\n");
}

function logTails(logDir: string, chars = 3000): string {
  if (!existsSync(logDir)) return "(no logs)";
  return readdirSync(logDir)
    .sort()
    .map((f) => {
      let text = "";
      try {
        text = readFileSync(join(logDir, f), "utf8").slice(-chars);
      } catch {
        text = "(unreadable)";
      }
      return `--- ${join(logDir, f)}\n${text}`;
    })
    .join("\n");
}

/** A ceph tool with a deadline; resolves with stdout, rejects with its stderr. */
function tool(file: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`\`${file} ${args.join(" ")}\` failed${err.killed ? ` (killed after ${timeoutMs / 1000} s)` : ""}: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
  });
}

/** A daemon in the foreground (-f: it logs to its log file), in its own process group, its PID recorded. */
function daemon(file: string, args: string[], pidFile: string, stderrFile: string): ChildProcess {
  const err = openSync(stderrFile, "a");
  const child = spawn(file, args, { detached: true, stdio: ["ignore", "ignore", err] });
  closeSync(err);
  child.unref();
  if (!child.pid) throw new Error(`ceph lab: could not start ${file}`);
  writeFileSync(pidFile, `${child.pid}\n`);
  return child;
}

/** A failure that waiting longer cannot fix (a daemon exited). */
class Fatal extends Error {}

async function retryUntil<T>(what: string, deadlineMs: number, attempt: () => Promise<T>): Promise<T> {
  const until = Date.now() + deadlineMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      return await attempt();
    } catch (e) {
      if (e instanceof Fatal) throw new Error(`ceph lab: ${what}: ${e.message}`);
      last = e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`ceph lab: ${what} within ${deadlineMs / 1000} s (last error: ${(last as Error)?.message ?? "none"})`);
}

function httpStatus(url: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "GET", timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}

/** SIGSTOP / SIGCONT the gateway (a gateway that stops answering without closing its port). */
export function signalRadosgw(info: CephLabInfo, signal: "SIGSTOP" | "SIGCONT"): void {
  const pid = readPid(info.pidFiles.rgw);
  if (pid === undefined) throw new Error("ceph lab: radosgw is not running");
  process.kill(pid, signal);
}

async function stopByPid(pidFile: string, deadlineMs: number): Promise<void> {
  const pid = readPid(pidFile);
  if (pid === undefined) return;
  try {
    process.kill(pid, "SIGCONT"); // a test may have left it stopped; SIGTERM would wait forever
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    /* gone */
  }
}

export async function stopCephLab(info: Pick<CephLabInfo, "dir" | "pidFiles">): Promise<void> {
  await stopByPid(info.pidFiles.rgw, 3_000); // it drains requests for 5-10 s; its data goes with the temp dir anyway
  await stopByPid(info.pidFiles.osd, 15_000);
  await stopByPid(info.pidFiles.mon, 10_000);
  rmSync(info.dir, { recursive: true, force: true });
}

export async function startCephLab(opts: { deadlineMs?: number; log?: (msg: string) => void } = {}): Promise<{ info: CephLabInfo; stop: () => Promise<void> }> {
  for (const [t, pkg] of TOOLS) need(t, pkg);
  const deadlineMs = opts.deadlineMs ?? 120_000;
  const started = Date.now();
  const phase = (name: string) => opts.log?.(`ceph lab: ${name} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const dir = mkdtempSync("/tmp/kvmb-ceph-");
  for (const d of ["run", "log", "mon", "osd", "rgw"]) mkdirSync(join(dir, d));
  const conf = join(dir, "ceph.conf");
  const logDir = join(dir, "log");
  const pidFiles = { mon: join(dir, "run", "mon.pid"), osd: join(dir, "run", "osd.pid"), rgw: join(dir, "run", "rgw.pid") };
  const [monPort, rgwPort] = [await freePort(), await freePort()];
  const fsid = randomUUID();
  writeFileSync(conf, cephConf(dir, fsid, monPort, rgwPort));
  const c = ["-c", conf];
  const left = () => Math.max(1000, deadlineMs - (Date.now() - started));
  try {
    await tool("ceph-authtool", ["--create-keyring", join(dir, "keyring"), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"], 30_000);
    await tool("monmaptool", ["--create", "--fsid", fsid, "--addv", "a", `[v1:127.0.0.1:${monPort}]`, join(dir, "monmap")], 30_000);
    await tool("ceph-mon", [...c, "--mkfs", "-i", "a", "--monmap", join(dir, "monmap"), "--keyring", join(dir, "keyring")], 60_000);
    daemon("ceph-mon", [...c, "-i", "a", "-f"], pidFiles.mon, join(logDir, "mon.stderr"));
    phase("mon started");
    const osdUuid = randomUUID();
    const osdId = (await retryUntil("the mon did not allocate an OSD id", left(), () => tool("ceph", [...c, "--connect-timeout", "10", "osd", "new", osdUuid], 20_000))).trim();
    if (osdId !== "0") throw new Error(`ceph lab: expected OSD id 0, the mon gave ${JSON.stringify(osdId)}`);
    // Retried (it is idempotent): on a loaded machine a client's first mon command can race its monmap and be
    // refused ("problem getting command descriptions from mon", the mon logs fsid 0000...).
    await retryUntil("the mon did not place the OSD in the CRUSH map", left(), () => tool("ceph", [...c, "--connect-timeout", "10", "osd", "crush", "add", "osd.0", "1.0", "root=default"], 30_000));
    // The gateway waits for its pools by itself; starting it now overlaps its start with the OSD's.
    const startRgw = () => daemon("radosgw", [...c, "-n", "client.rgw.lab", "-f"], pidFiles.rgw, join(logDir, "rgw.stderr"));
    startRgw();
    let rgwStarts = 1;
    mkdirSync(join(dir, "osd", "ceph-0"));
    await tool("ceph-osd", [...c, "-i", "0", "--mkfs", "--osd-uuid", osdUuid], Math.min(left(), 90_000));
    phase("OSD created");
    daemon("ceph-osd", [...c, "-i", "0", "-f"], pidFiles.osd, join(logDir, "osd.stderr"));
    const endpoint = `http://127.0.0.1:${rgwPort}`;
    await retryUntil(`radosgw did not answer on ${endpoint}`, left(), async () => {
      // radosgw's own mon commands (pool creation) can meet the same race and end it: start it again, twice at most.
      if (readPid(pidFiles.rgw) === undefined && rgwStarts < 3) {
        opts.log?.(`ceph lab: radosgw exited during its start; starting it again`);
        startRgw();
        rgwStarts++;
      }
      for (const [name, f] of Object.entries(pidFiles)) if (readPid(f) === undefined) throw new Fatal(`${name === "rgw" ? "radosgw" : `ceph-${name}`} exited (see its log)`);
      const s = await httpStatus(endpoint, 2000);
      if (s !== 200) throw new Error(`HTTP ${s}`);
    });
    phase("gateway answering");
    const admin = [...c, "-n", "client.admin", "user"];
    const uid = "--uid=kvm-backup-lab";
    // Retried like the mon commands; a try that created the user before failing leaves it to `user info`.
    const userJson = await retryUntil("radosgw-admin could not create the S3 user", left(), () =>
      tool("radosgw-admin", [...admin, "create", uid, "--display-name=kvm-backup lab"], 60_000).catch((e: Error) => {
        if (/exists/i.test(e.message)) return tool("radosgw-admin", [...admin, "info", uid], 60_000);
        throw e;
      }),
    );
    const user = JSON.parse(userJson) as { keys: Array<{ access_key: string; secret_key: string }> };
    const key = user.keys[0];
    if (!key) throw new Error("ceph lab: radosgw-admin user create returned no keys");
    const info: CephLabInfo = {
      dir,
      endpoint,
      region: "us-east-1",
      accessKeyId: key.access_key,
      secretAccessKey: key.secret_key,
      conf,
      pidFiles,
      logDir,
      startMs: Date.now() - started,
    };
    phase("ready");
    return { info, stop: () => stopCephLab(info) };
  } catch (e) {
    const logs = logTails(logDir);
    await stopCephLab({ dir, pidFiles });
    throw new Error(`${(e as Error).message}\n${logs}`);
  }
}

declare module "vitest" {
  export interface ProvidedContext {
    ceph: CephLabInfo;
  }
}
