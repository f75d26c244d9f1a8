/**
 * The shell scripts the deploy runs on a host through @pulumi/command (remote.Command `create` / `delete`).
 *
 * Rules every script follows:
 * - POSIX sh (the remote login shell runs it): no bashisms.
 * - Data never travels on the command line or in the script: configs, unit files and keys come on stdin and
 *   are checked against their SHA-256 (a truncated transfer never becomes live); the only values written
 *   into a script are host-side paths, names the schema restricted, hex hashes and lengths, all quoted.
 * - `create` is idempotent (it also runs on every update) and switches files in with a rename, so a failed
 *   deploy leaves the previous file working.
 * - `delete` tolerates a half-gone host and never fails for a missing file; it removes only what the deploy
 *   installed and never touches the staging directory or any backup.
 * - stdout is stored in the Pulumi state: it carries one status line, never a secret.
 */
import { repositoryPasswordFile } from "../../runner/config/hostConfig.ts";
import { HOST_LAYOUT, type HostLayout, keyFile, releaseBundle, releaseDir } from "./layout.ts";
import { shq } from "./shell.ts";
import { type JobKind, unitNames } from "./units.ts";

/** Root check and a `fail MESSAGE [CODE]` helper that names the host. */
function prelude(hostName: string, what: string): string {
  return [
    `fail() { printf 'kvm-backup deploy (%s) on host %s: %s\\n' ${shq(what)} ${shq(hostName)} "$1" >&2; exit "\${2:-1}"; }`,
    `[ "$(id -u)" = 0 ] || fail ${shq(`must run as root to install the runner, its config and systemd units; connect as root (hosts.${hostName}.user)`)}`,
  ].join("\n");
}

/** `fail` unless FILE has SHA; the temp file is removed first so a bad transfer leaves nothing behind. */
function verifySha(file: string, sha: string, what: string): string {
  return `printf '%s  %s\\n' ${shq(sha)} ${shq(file)} | sha256sum -c --status - || { rm -f ${shq(file)}; fail ${shq(`${what} arrived incomplete or changed in transit (expected sha256 ${sha}); run pulumi up again`)}; }`;
}

/** The PATH systemd gives system services (`systemd-path search-binaries-default`). */
export const SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export interface ReleaseScriptArgs {
  hostName: string;
  releaseId: string;
  layout?: HostLayout;
}

/** Creates the (inactive) directory the bundle is copied into. Nothing runs from it until the switch. */
export function renderReleaseDirCreate({ hostName, releaseId, layout = HOST_LAYOUT }: ReleaseScriptArgs): string {
  return [
    "set -eu",
    prelude(hostName, "release directory"),
    "umask 022",
    `mkdir -p ${shq(releaseDir(layout, releaseId))}`,
    `chmod 0755 ${shq(layout.installDir)} ${shq(layout.releasesDir)} ${shq(releaseDir(layout, releaseId))}`,
    `echo ${shq(`release directory ${releaseId} ready`)}`,
    "",
  ].join("\n");
}

/**
 * Removes a release directory unless it is the active one: what a failed preflight left (the copied bundle of
 * a release that never became current), so a destroy after it leaves nothing. When a new bundle replaces this
 * one, this runs while `current` still points here, and the runner install later keeps it as the previous
 * release.
 */
export function renderReleaseDirRemove({ hostName, releaseId, layout = HOST_LAYOUT }: ReleaseScriptArgs): string {
  return [
    "set -u",
    prelude(hostName, "release directory removal"),
    `if [ "$(readlink ${shq(layout.currentLink)} 2>/dev/null)" = ${shq(`releases/${releaseId}`)} ]; then`,
    `  echo ${shq(`release ${releaseId} is active; kept`)}`,
    "else",
    `  rm -rf -- ${shq(releaseDir(layout, releaseId))}`,
    `  echo ${shq(`release directory ${releaseId} removed`)}`,
    "fi",
    `rmdir ${shq(layout.releasesDir)} 2>/dev/null || true`,
    `rmdir ${shq(layout.installDir)} 2>/dev/null || true`,
    "",
  ].join("\n");
}

export interface PreflightScriptArgs extends ReleaseScriptArgs {
  bundleSha256: string;
  configSha256: string;
}

/**
 * Runs `kvm-backup doctor --json --before-deploy` from the bundle about to be installed, against the config
 * about to be installed (read from stdin into a private temp dir). Exit 3 with the doctor's report when the host is not
 * ready; the runner, config, keys and units depend on this resource, so nothing else changes on the host.
 */
export function renderPreflight({ hostName, releaseId, bundleSha256, configSha256, layout = HOST_LAYOUT }: PreflightScriptArgs): string {
  const bundle = releaseBundle(layout, releaseId);
  return [
    "set -u",
    prelude(hostName, "preflight"),
    `command -v node >/dev/null 2>&1 || fail "Node.js is not installed; the runner needs Node.js >= 18 (Debian: apt-get install nodejs); nothing was changed on this host" 3`,
    `node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' || fail "Node.js $(node --version) is too old; the runner needs Node.js >= 18; nothing was changed on this host" 3`,
    // The units start the runner through `#!/usr/bin/env node` with systemd's PATH, not the login shell's.
    `(PATH=${SYSTEMD_PATH}; command -v node >/dev/null 2>&1) || fail "node is on the login PATH ($(command -v node)) but not on the PATH systemd gives services (${SYSTEMD_PATH}), so the timers could not start the runner; install Node.js from the distribution (apt-get install nodejs) or link it into /usr/local/bin; nothing was changed on this host" 3`,
    `command -v sha256sum >/dev/null 2>&1 || fail "sha256sum (coreutils) is missing" 3`,
    verifySha(bundle, bundleSha256, `the runner bundle ${bundle}`),
    `tmpd=$(mktemp -d /tmp/kvm-backup-preflight.XXXXXX) || fail "cannot create a temporary directory in /tmp"`,
    `trap 'rm -rf "$tmpd"' EXIT`,
    `cat > "$tmpd/config.json" || fail "cannot read the host config from stdin"`,
    `printf '%s  %s\\n' ${shq(configSha256)} "$tmpd/config.json" | sha256sum -c --status - || fail ${shq(`the host config arrived incomplete (expected sha256 ${configSha256}); run pulumi up again`)}`,
    `if report=$(KVM_BACKUP_CONFIG="$tmpd/config.json" node ${shq(bundle)} --config "$tmpd/config.json" doctor --json --before-deploy 2>"$tmpd/stderr"); then`,
    `  echo ${shq(`preflight passed (release ${releaseId}, config ${configSha256.slice(0, 16)})`)}`,
    "else",
    "  rc=$?",
    `  printf '%s\\n' "$report" >&2`,
    `  cat "$tmpd/stderr" >&2`,
    `  fail "kvm-backup doctor found problems (exit $rc, report above); fix them and run pulumi up again; nothing was changed on this host" 3`,
    "fi",
    "",
  ].join("\n");
}

/**
 * Activates a release: verify the copied bundle, point `current` at it with an atomic rename, keep the
 * previous release (a failed later upgrade can be rolled back by hand) and drop older ones. Prints the
 * installed version, which the stack exports.
 */
export function renderRunnerInstall({ hostName, releaseId, bundleSha256, layout = HOST_LAYOUT }: ReleaseScriptArgs & { bundleSha256: string }): string {
  const bundle = releaseBundle(layout, releaseId);
  const rel = `releases/${releaseId}`;
  return [
    "set -eu",
    prelude(hostName, "runner install"),
    "umask 022",
    verifySha(bundle, bundleSha256, `the runner bundle ${bundle}`),
    `chmod 0755 ${shq(bundle)}`,
    `prev=$(readlink ${shq(layout.currentLink)} 2>/dev/null || true)`,
    `ln -sfn ${shq(rel)} ${shq(`${layout.currentLink}.new`)}`,
    `mv -fT ${shq(`${layout.currentLink}.new`)} ${shq(layout.currentLink)}`,
    `mkdir -p "$(dirname ${shq(layout.binLink)})"`,
    `ln -sfn ${shq(`${layout.currentLink}/kvm-backup.mjs`)} ${shq(`${layout.binLink}.new`)}`,
    `mv -fT ${shq(`${layout.binLink}.new`)} ${shq(layout.binLink)}`,
    `for d in ${shq(layout.releasesDir)}/*; do`,
    `  [ -d "$d" ] || continue`,
    `  case "releases/$(basename "$d")" in ${shq(rel)}|"$prev") ;; *) rm -rf -- "$d" ;; esac`,
    "done",
    `v=$(node ${shq(bundle)} --version) || fail ${shq(`the installed runner does not start: node ${bundle} --version failed`)}`,
    `echo "$v"`,
    "",
  ].join("\n");
}

/** Removes the runner: the command link (only if it is ours), `current` and every release. */
export function renderRunnerUninstall({ hostName, layout = HOST_LAYOUT }: { hostName: string; layout?: HostLayout }): string {
  return [
    "set -u",
    prelude(hostName, "runner removal"),
    `case "$(readlink ${shq(layout.binLink)} 2>/dev/null)" in ${shq(layout.installDir)}/*) rm -f ${shq(layout.binLink)} ;; esac`,
    `rm -f ${shq(layout.currentLink)} ${shq(`${layout.currentLink}.new`)}`,
    `rm -rf -- ${shq(layout.releasesDir)}`,
    // Only if empty: never remove anything else an operator put there (e.g. a staging directory).
    `rmdir ${shq(layout.installDir)} 2>/dev/null || true`,
    `echo 'runner removed'`,
    "",
  ].join("\n");
}

export interface ConfigScriptArgs {
  hostName: string;
  configSha256: string;
  layout?: HostLayout;
}

/** Installs the host config from stdin as a root-only file, switched in by rename. */
export function renderConfigInstall({ hostName, configSha256, layout = HOST_LAYOUT }: ConfigScriptArgs): string {
  const tmp = `${layout.configFile}.new`;
  return [
    "set -eu",
    prelude(hostName, "config install"),
    "umask 077",
    `mkdir -p ${shq(layout.etcDir)}`,
    `chmod 0700 ${shq(layout.etcDir)}`,
    `cat > ${shq(tmp)}`,
    verifySha(tmp, configSha256, "the host config"),
    `chmod 0600 ${shq(tmp)}`,
    `mv -f ${shq(tmp)} ${shq(layout.configFile)}`,
    `echo ${shq(`config ${configSha256.slice(0, 16)} installed`)}`,
    "",
  ].join("\n");
}

export function renderConfigRemove({ hostName, layout = HOST_LAYOUT }: { hostName: string; layout?: HostLayout }): string {
  return [
    "set -u",
    prelude(hostName, "config removal"),
    `rm -f ${shq(layout.configFile)} ${shq(`${layout.configFile}.new`)}`,
    `rmdir ${shq(layout.etcDir)} 2>/dev/null || true`,
    `echo 'config removed'`,
    "",
  ].join("\n");
}

export interface KeyScriptArgs {
  hostName: string;
  target: string;
  layout?: HostLayout;
}

/** Installs a secret from stdin (a secret input) as a root-only file in the keys directory: 0600, never echoed. */
function renderSecretFileInstall(hostName: string, layout: HostLayout, file: string, what: string, empty: string): string {
  const tmp = `${file}.new`;
  return [
    "set -eu",
    prelude(hostName, what),
    "umask 077",
    `mkdir -p ${shq(layout.keysDir)}`,
    `chmod 0700 ${shq(layout.etcDir)} ${shq(layout.keysDir)}`,
    `cat > ${shq(tmp)}`,
    `[ -s ${shq(tmp)} ] || { rm -f ${shq(tmp)}; fail ${shq(empty)}; }`,
    `chmod 0600 ${shq(tmp)}`,
    `mv -f ${shq(tmp)} ${shq(file)}`,
    `echo ${shq(`${what} installed`)}`,
    "",
  ].join("\n");
}

function renderSecretFileRemove(hostName: string, layout: HostLayout, file: string, what: string, removal: string): string {
  return [
    "set -u",
    prelude(hostName, removal),
    `rm -f ${shq(file)} ${shq(`${file}.new`)}`,
    `rmdir ${shq(layout.keysDir)} 2>/dev/null || true`,
    `rmdir ${shq(layout.etcDir)} 2>/dev/null || true`,
    `echo ${shq(`${what} removed`)}`,
    "",
  ].join("\n");
}

/** Installs a target's private key from stdin (a secret input): 0600, root, never echoed. */
export function renderKeyInstall({ hostName, target, layout = HOST_LAYOUT }: KeyScriptArgs): string {
  return renderSecretFileInstall(hostName, layout, keyFile(layout, target), `key of target ${target}`, `the private key of target ${target} is empty; set it with pulumi config set --secret --path 'targets.${target}.privateKey' < KEYFILE`);
}

export function renderKeyRemove({ hostName, target, layout = HOST_LAYOUT }: KeyScriptArgs): string {
  return renderSecretFileRemove(hostName, layout, keyFile(layout, target), `key of target ${target}`, `key removal of target ${target}`);
}

/** Installs the restic repositories' password (format: repository) from stdin: 0600, root, never echoed. */
export function renderRepositoryPasswordInstall({ hostName, layout = HOST_LAYOUT }: { hostName: string; layout?: HostLayout }): string {
  return renderSecretFileInstall(hostName, layout, repositoryPasswordFile(layout.etcDir), "repository password", "the repository password is empty; set it with pulumi config set --secret repositoryPassword");
}

export function renderRepositoryPasswordRemove({ hostName, layout = HOST_LAYOUT }: { hostName: string; layout?: HostLayout }): string {
  return renderSecretFileRemove(hostName, layout, repositoryPasswordFile(layout.etcDir), "repository password", "repository password removal");
}

export interface StagingScriptArgs {
  hostName: string;
  path: string;
}

/** Ensures the staging directory exists, root-only (it holds VM disk images). There is no delete script. */
export function renderStagingCreate({ hostName, path }: StagingScriptArgs): string {
  return [
    "set -eu",
    prelude(hostName, "staging directory"),
    `mkdir -p ${shq(path)}`,
    `chmod 0700 ${shq(path)}`,
    `echo ${shq(`staging directory ${path} ready`)}`,
    "",
  ].join("\n");
}

export interface UnitScriptArgs {
  hostName: string;
  policyName: string;
  /** Byte length of the service unit: stdin is the service unit followed by the timer unit. */
  serviceBytes: number;
  serviceSha256: string;
  timerSha256: string;
  layout?: HostLayout;
  /** The policy's backup units (default) or its restore drill units. */
  job?: JobKind;
}

/** The stdin of the unit script: both units back to back (the script splits them by the service's length). */
export function unitsStdin(service: string, timer: string): { stdin: string; serviceBytes: number } {
  return { stdin: service + timer, serviceBytes: Buffer.byteLength(service, "utf8") };
}

/**
 * Enables a timer. With systemd running (root "/" and /run/systemd/system present): daemon-reload, enable,
 * restart. Otherwise (a container, a chroot, or a deploy under another root) `systemctl --root` links the timer
 * into timers.target.wants on the file system only, so it starts at the next boot of that system; a deploy
 * under another root never talks to the running systemd.
 */
function enableTimer(layout: HostLayout, timer: string): string[] {
  const offline = [
    `command -v systemctl >/dev/null 2>&1 || fail "systemctl is missing: the timers need systemd (apt-get install systemd)"`,
    `out=$(systemctl --root=${shq(layout.root)} enable ${shq(timer)} 2>&1) || fail ${shq(`systemctl --root=${layout.root} enable ${timer} failed:`)}" $out"`,
  ];
  if (layout.root !== "/") return [...offline, `echo ${shq(`${timer} installed and enabled under ${layout.root}`)}`];
  return [
    `if [ -d ${shq(layout.systemdRunDir)} ]; then`,
    "  systemctl daemon-reload",
    `  systemctl enable ${shq(timer)}`,
    `  systemctl restart ${shq(timer)}`,
    `  echo ${shq(`${timer} enabled`)}`,
    "else",
    ...offline.map((l) => `  ${l}`),
    `  echo ${shq(`${timer} installed and enabled; systemd is not running here, so it starts at the next boot`)}`,
    "fi",
  ];
}

/** The reverse of enableTimer; never fails (the unit may be gone already). */
function disableTimer(layout: HostLayout, timer: string): string[] {
  const offline = `systemctl --root=${shq(layout.root)} disable ${shq(timer)} >/dev/null 2>&1 || true`;
  // The wants link by hand as well, for a host where systemctl is gone.
  const link = `rm -f ${shq(`${layout.unitDir}/timers.target.wants/${timer}`)}`;
  if (layout.root !== "/") return [offline, link];
  return [`if [ -d ${shq(layout.systemdRunDir)} ]; then systemctl disable --now ${shq(timer)} >/dev/null 2>&1 || true; else ${offline}; fi`, link];
}

/**
 * Installs the service and timer of one policy and (re-)enables the timer (see enableTimer for a host
 * without systemd running).
 */
export function renderUnitsInstall({ hostName, policyName, serviceBytes, serviceSha256, timerSha256, layout = HOST_LAYOUT, job = "backup" }: UnitScriptArgs): string {
  const u = unitNames(policyName, job);
  const svc = `${layout.unitDir}/${u.service}`;
  const tim = `${layout.unitDir}/${u.timer}`;
  return [
    "set -eu",
    prelude(hostName, `${job === "drill" ? "drill units" : "units"} of policy ${policyName}`),
    "umask 022",
    `mkdir -p ${shq(layout.unitDir)}`,
    `tmpd=$(mktemp -d) || fail "cannot create a temporary directory"`,
    `trap 'rm -rf "$tmpd"' EXIT`,
    `cat > "$tmpd/units"`,
    // head/tail on a regular file are exact (on a pipe head may read ahead), hence the temp file.
    `head -c ${serviceBytes} "$tmpd/units" > ${shq(`${svc}.new`)}`,
    `tail -c +${serviceBytes + 1} "$tmpd/units" > ${shq(`${tim}.new`)}`,
    verifySha(`${svc}.new`, serviceSha256, `the unit ${u.service}`),
    verifySha(`${tim}.new`, timerSha256, `the unit ${u.timer}`),
    `chmod 0644 ${shq(`${svc}.new`)} ${shq(`${tim}.new`)}`,
    `mv -f ${shq(`${svc}.new`)} ${shq(svc)}`,
    `mv -f ${shq(`${tim}.new`)} ${shq(tim)}`,
    ...enableTimer(layout, u.timer),
    "",
  ].join("\n");
}

/** Disables the timer and removes both units. A backup that is running finishes; backups stay where they are. */
export function renderUnitsRemove({ hostName, policyName, layout = HOST_LAYOUT, job = "backup" }: { hostName: string; policyName: string; layout?: HostLayout; job?: JobKind }): string {
  const u = unitNames(policyName, job);
  return [
    "set -u",
    prelude(hostName, `${job === "drill" ? "drill units" : "units"} removal of policy ${policyName}`),
    ...disableTimer(layout, u.timer),
    `rm -f ${shq(`${layout.unitDir}/${u.timer}`)} ${shq(`${layout.unitDir}/${u.service}`)} ${shq(`${layout.unitDir}/${u.timer}.new`)} ${shq(`${layout.unitDir}/${u.service}.new`)}`,
    `rmdir ${shq(`${layout.unitDir}/timers.target.wants`)} 2>/dev/null || true`,
    ...(layout.root === "/" ? [`if [ -d ${shq(layout.systemdRunDir)} ]; then systemctl daemon-reload || true; fi`] : []),
    `echo ${shq(`${u.timer} removed`)}`,
    "",
  ].join("\n");
}
