/**
 * Where the deploy puts things on a KVM host. One object so that the scripts can be exercised under a
 * temporary root in tests (`hostLayout("/tmp/x")`, or `hosts.<host>.root` in a stack) while production uses
 * the real paths (root "/").
 */
import { ETC_DIR, HOST_CONFIG_FILE, targetKeyFile } from "../../runner/config/hostConfig.ts";

export interface HostLayout {
  /** "/" for a real install; otherwise the directory every path below is prefixed with. */
  root: string;
  /** Versioned runner releases and the `current` symlink. */
  installDir: string;
  releasesDir: string;
  currentLink: string;
  /** The operator's command: a symlink to current/kvm-backup.mjs. */
  binLink: string;
  etcDir: string;
  configFile: string;
  keysDir: string;
  unitDir: string;
  /** What systemd checks to tell whether it runs as PID 1 (sd_booted()); only looked at when root is "/". */
  systemdRunDir: string;
}

export const BUNDLE_FILE = "kvm-backup.mjs";

/** `root` "/" (or "") is the real layout; any other absolute directory prefixes every path. */
export function hostLayout(root = "/"): HostLayout {
  const p = root === "/" ? "" : root.replace(/\/+$/, "");
  if (p && !p.startsWith("/")) throw new Error(`the deploy root "${root}" must be an absolute path`);
  const installDir = `${p}/opt/kvm-backup`;
  return {
    root: p || "/",
    installDir,
    releasesDir: `${installDir}/releases`,
    currentLink: `${installDir}/current`,
    binLink: `${p}/usr/local/bin/kvm-backup`,
    etcDir: `${p}${ETC_DIR}`,
    configFile: `${p}${HOST_CONFIG_FILE}`,
    keysDir: `${p}${ETC_DIR}/keys`,
    unitDir: `${p}/etc/systemd/system`,
    systemdRunDir: `${p}/run/systemd/system`,
  };
}

export const HOST_LAYOUT = hostLayout();

export function releaseDir(layout: HostLayout, releaseId: string): string {
  return `${layout.releasesDir}/${releaseId}`;
}

export function releaseBundle(layout: HostLayout, releaseId: string): string {
  return `${releaseDir(layout, releaseId)}/${BUNDLE_FILE}`;
}

export function keyFile(layout: HostLayout, target: string): string {
  return targetKeyFile(target, layout.etcDir);
}
