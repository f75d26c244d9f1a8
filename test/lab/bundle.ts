/**
 * The runner bundle, `dist/kvm-backup.mjs`: the single file the hosts run, and what every test that runs the CLI
 * as its own process (libvirt, LVM-in-UML, ship/prune, deploy) and the benchmark execute. One path, one build.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dirname, "../..");
export const BUNDLE = join(REPO, "dist", "kvm-backup.mjs");

let built = false;
/**
 * Builds the bundle once per process (esbuild, about a second), so a standalone `npx vitest run FILE` tests the
 * current source; `npm test` has built it already, and rebuilding gives the same file.
 */
export function ensureBundle(): string {
  if (!built) {
    execFileSync(process.execPath, [join(REPO, "runner", "build.mjs")], { cwd: REPO, stdio: "inherit", timeout: 120_000 });
    if (!existsSync(BUNDLE)) throw new Error(`building the runner (runner/build.mjs) did not produce ${BUNDLE}`);
    built = true;
  }
  return BUNDLE;
}
