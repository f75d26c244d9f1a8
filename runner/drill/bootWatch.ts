/**
 * Waiting for a drill guest to prove it started: the QEMU guest agent answers `guest-ping`, or (guests without
 * an agent) a line of the serial console matches the policy's pattern. Stops early, with the console line as the
 * reason, when the console shows that the guest cannot get further (kernel panic, initramfs or emergency shell,
 * no bootable device), or when the domain is gone (powered off or crashed: the drill domain is destroyed then).
 */
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { domainState, guestAgentAnswers, isActive } from "../libvirt/virsh.ts";

/** Console lines after which a guest will not answer by itself. */
export const FATAL_CONSOLE_PATTERNS: RegExp[] = [
  /Kernel panic - not syncing.*/,
  /ALERT! .* does not exist.*/,
  /Dropping to a shell!?/,
  /Gave up waiting for root (file system )?device.*/,
  /You are in emergency mode.*/,
  /Entering emergency mode.*/,
  /Give root password for maintenance.*/,
  /No bootable device.*/,
  /Boot failed: .*/,
];

export interface WatchOptions {
  uri: string;
  domain: string;
  consoleLog: string;
  timeoutMs: number;
  /** Ask the guest agent (the domain has the channel). */
  agent: boolean;
  /** A console line matching this counts as an answer. */
  consolePattern?: RegExp;
  signal?: AbortSignal;
  pollMs?: number;
}

export type WatchResult =
  | { ok: true; answeredBy: "guest-agent" | "console"; seconds: number; line?: string }
  | { ok: false; reason: string; seconds: number };

/** Reads what was appended to a file since the last call (the console log, written by QEMU). */
export class Tail {
  private pos = 0;
  private partial = "";
  constructor(private readonly file: string) {}

  /** Complete new lines (a line still being written waits for the next call). */
  lines(): string[] {
    let size: number;
    try {
      size = statSync(this.file).size;
    } catch {
      return [];
    }
    if (size <= this.pos) return [];
    const buf = Buffer.alloc(Math.min(size - this.pos, 4 << 20));
    const fd = openSync(this.file, "r");
    try {
      this.pos += readSync(fd, buf, 0, buf.length, this.pos);
    } finally {
      closeSync(fd);
    }
    const text = this.partial + buf.toString("utf8");
    const parts = text.split(/\r?\n/);
    this.partial = parts.pop() ?? "";
    return parts;
  }
}

/** Printable text of a console line: escape sequences (colours) out, control characters out. */
export function plainLine(line: string): string {
  // eslint-disable-next-line no-control-regex
  return line.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "").trim();
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((res) => {
    const t = setTimeout(res, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), res()), { once: true });
  });

export async function watchBoot(o: WatchOptions): Promise<WatchResult> {
  const started = Date.now();
  const seconds = () => Math.round((Date.now() - started) / 100) / 10;
  const tail = new Tail(o.consoleLog);
  const pollMs = o.pollMs ?? 1000;
  while (true) {
    if (o.signal?.aborted) throw o.signal.reason;
    for (const raw of tail.lines()) {
      const line = plainLine(raw);
      if (!line) continue;
      if (o.consolePattern?.test(line)) return { ok: true, answeredBy: "console", seconds: seconds(), line };
      const fatal = FATAL_CONSOLE_PATTERNS.find((re) => re.test(line));
      if (fatal) return { ok: false, reason: `the guest cannot boot: its console says "${line.slice(0, 300)}"`, seconds: seconds() };
    }
    const state = await domainState(o.uri, o.domain);
    if (!isActive(state)) return { ok: false, reason: `the domain ${state === null ? "is gone (the guest powered off or crashed)" : `is ${state}`} before it answered`, seconds: seconds() };
    if (o.agent && (await guestAgentAnswers(o.uri, o.domain))) return { ok: true, answeredBy: "guest-agent", seconds: seconds() };
    if (Date.now() - started >= o.timeoutMs) {
      const what = [o.agent ? "the guest agent did not answer guest-ping" : null, o.consolePattern ? `no console line matched /${o.consolePattern.source}/` : null].filter(Boolean).join(" and ");
      return { ok: false, reason: `${what} within ${Math.round(o.timeoutMs / 1000)} s (drill.bootTimeout)`, seconds: seconds() };
    }
    await sleep(pollMs, o.signal);
  }
}
