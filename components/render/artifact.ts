/**
 * The runner bundle as a versioned artifact: its content hash names the release directory on the host, so
 * a new bundle is a new directory and the switch to it is one atomic symlink rename.
 */
import { existsSync, readFileSync } from "node:fs";
import { contentId, sha256 } from "./hash.ts";

export interface BundleArtifact {
  /** Absolute path of dist/kvm-backup.mjs on the machine running Pulumi. */
  path: string;
  sha256: string;
  /** Release id: 16 hex digits of the SHA-256; the directory name under /opt/kvm-backup/releases. */
  releaseId: string;
  /** The package version the bundle was built from. */
  version: string;
}

export class BundleMissingError extends Error {
  constructor(path: string) {
    super(`the runner bundle ${path} does not exist: build it with \`npm run build\` before \`pulumi up\` (or set KVM_BACKUP_BUNDLE to a built bundle)`);
    this.name = "BundleMissingError";
  }
}

export function bundleArtifact(path: string, version: string): BundleArtifact {
  if (!existsSync(path)) throw new BundleMissingError(path);
  const sha = sha256(readFileSync(path));
  return { path, sha256: sha, releaseId: contentId(sha), version };
}
