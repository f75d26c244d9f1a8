/**
 * Where the deploy puts things on a KVM host. One object so that the scripts can be exercised under a
 * temporary root in tests (`hostLayout("/tmp/x")`) while production uses the real paths.
 */
import { ETC_DIR, HOST_CONFIG_FILE, targetKeyFile } from "../../runner/config/hostConfig.ts";

export interface HostLayout {
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
  /** What systemd checks to tell whether it runs as PID 1 (sd_booted()). */
  systemdRunDir: string;
}

export const BUNDLE_FILE = "kvm-backup.mjs";

export function hostLayout(root = ""): HostLayout {
  const installDir = `${root}/opt/kvm-backup`;
  return {
    installDir,
    releasesDir: `${installDir}/releases`,
    currentLink: `${installDir}/current`,
    binLink: `${root}/usr/local/bin/kvm-backup`,
    etcDir: `${root}${ETC_DIR}`,
    configFile: `${root}${HOST_CONFIG_FILE}`,
    keysDir: `${root}${ETC_DIR}/keys`,
    unitDir: `${root}/etc/systemd/system`,
    systemdRunDir: `${root}/run/systemd/system`,
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
