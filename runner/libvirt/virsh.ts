/**
 * virsh, always against the host config's libvirtUri, with a timeout; and parsers for what it prints. The
 * parsers are pure so they are unit-tested on recorded real outputs (test/unit/fixtures/libvirt).
 */
import { run, type RunOptions, type RunResult } from "../exec.ts";
import { parseDomblklistDetails, type BlockListEntry } from "../lvm/domblklist.ts";

export type { BlockListEntry };

export const VIRSH_TIMEOUT_MS = 60_000;
/** --atomic and --no-metadata external disk snapshots plus blockcommit --active need libvirt 1.2.12 or newer. */
export const MIN_LIBVIRT_VERSION = "1.2.12";

export function virsh(uri: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run("virsh", ["-c", uri, ...args], { timeoutMs: VIRSH_TIMEOUT_MS, ...opts });
}

export interface VirshVersion {
  library: string | null;
  daemon: string | null;
  hypervisor: string | null;
}

/** `virsh version`: "Using library: libvirt 9.0.0", "Running against daemon: 9.0.0", "Running hypervisor: QEMU 7.2.22". */
export function parseVirshVersion(text: string): VirshVersion {
  const pick = (re: RegExp) => re.exec(text)?.[1] ?? null;
  return {
    library: pick(/^Using library:\s*libvirt\s+(\d+\.\d+\.\d+)/m),
    daemon: pick(/^Running against daemon:\s*(\d+\.\d+\.\d+)/m),
    hypervisor: pick(/^Running hypervisor:\s*(.+?)\s*$/m),
  };
}

export function versionAtLeast(version: string, min: string): boolean {
  const a = version.split(".").map(Number);
  const b = min.split(".").map(Number);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}

/** `virsh domstate`: "running", "paused", "shut off", ... The state is the first line. */
export function parseDomstate(text: string): string {
  return text.trim().split("\n")[0]!.trim();
}

/** The domain's state, or null when libvirt does not know the domain. */
export async function domainState(uri: string, domain: string): Promise<string | null> {
  const r = await virsh(uri, ["domstate", domain], { allowFailure: true });
  if (r.exitCode === 0) return parseDomstate(r.stdout);
  if (/failed to get domain|Domain not found/i.test(r.stderr)) return null;
  throw new Error(`\`virsh -c ${uri} domstate ${domain}\` failed: ${r.stderr.trim()}`);
}

export async function blockList(uri: string, domain: string): Promise<BlockListEntry[]> {
  return parseDomblklistDetails((await virsh(uri, ["domblklist", "--details", domain])).stdout);
}

/** Does the QEMU guest agent answer? (false when none is configured or it is not running yet) */
export async function guestAgentAnswers(uri: string, domain: string): Promise<boolean> {
  const r = await virsh(uri, ["qemu-agent-command", domain, '{"execute":"guest-ping"}', "--timeout", "5"], { allowFailure: true, timeoutMs: 15_000 });
  return r.exitCode === 0;
}

export function isActive(state: string | null): boolean {
  return state === "running" || state === "paused" || state === "in shutdown" || state === "pmsuspended";
}
