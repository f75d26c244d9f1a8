/**
 * Guest freeze around snapshot creation, with real virsh against libvirt's built-in test driver (test:///default
 * runs inside virsh, no daemon; its domain "test" is running and supports domfsfreeze/domfsthaw). What matters:
 * the thaw is guaranteed (finally, watchdog) and a journal left by a killed run makes the next run thaw.
 */
import { existsSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { freezeGuest, freezeJournalPath, thawLeftFrozen } from "../../runner/lvm/guestFreeze.ts";
import { Logger } from "../../runner/log.ts";

const URI = "test:///default";
const lines: string[] = [];
const log = new Logger({}, { isTTY: false, write: (t) => void lines.push(t) });
const dirs: string[] = [];
function staging(): string {
  const d = mkdtempSync(join(tmpdir(), "kvmbk-freeze-"));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("guest freeze (virsh, libvirt test driver)", () => {
  it("keeps a journal while frozen and removes it on thaw", async () => {
    const s = staging();
    const frozen = await freezeGuest(s, "web01", URI, "test", log);
    expect(existsSync(freezeJournalPath(s, "web01"))).toBe(true);
    await frozen.thaw();
    expect(existsSync(freezeJournalPath(s, "web01"))).toBe(false);
    await frozen.thaw(); // idempotent
  });

  it("the watchdog thaws a guest whose snapshot creation hangs", async () => {
    const s = staging();
    const frozen = await freezeGuest(s, "web01", URI, "test", log, 200);
    const end = Date.now() + 10_000;
    while (existsSync(freezeJournalPath(s, "web01")) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(freezeJournalPath(s, "web01"))).toBe(false);
    expect(lines.join("")).toMatch(/was frozen for 0.2 s; thawing it now/);
    await frozen.thaw();
  });

  it("the next run thaws a domain a killed run left frozen", async () => {
    const s = staging();
    const j = freezeJournalPath(s, "web01");
    mkdirSync(dirname(j), { recursive: true });
    writeFileSync(j, JSON.stringify({ domain: "test", uri: URI, pid: 999999, since: "2026-11-28T02:00:00.000Z" }));
    expect(await thawLeftFrozen(s, "web01")).toEqual(["thawed the filesystems of domain test, left frozen by the run of pid 999999 at 2026-11-28T02:00:00.000Z"]);
    expect(existsSync(j)).toBe(false);
    expect(await thawLeftFrozen(s, "web01")).toEqual([]);
  });

  it("a journal for a domain that no longer exists is dropped (it cannot be frozen)", async () => {
    const s = staging();
    const j = freezeJournalPath(s, "gone");
    mkdirSync(dirname(j), { recursive: true });
    writeFileSync(j, JSON.stringify({ domain: "no-such-domain", uri: URI, pid: 1, since: "x" }));
    expect(await thawLeftFrozen(s, "gone")).toHaveLength(1);
    expect(existsSync(j)).toBe(false);
  });
});
