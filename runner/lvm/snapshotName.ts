/**
 * Names of the snapshots this runner creates: `kvmbk+<vm>+<backup id>+<origin LV>`. VM names cannot contain "+"
 * (see NAME_RE in the schema) but LV names can, so the prefix `kvmbk+<vm>+` identifies the runner's snapshots of
 * exactly one VM; recovery removes those and never touches a snapshot someone else made.
 */
export const SNAPSHOT_PREFIX = "kvmbk+";
/** LVM refuses LV names longer than this. */
const MAX_LV_NAME = 127;
const ID_PART_RE = /^\d{8}T\d{6}Z(?:-\d+)?$/;

/** Substrings LVM reserves for its internal volumes (lvm(8), "VALID NAMES"). */
const RESERVED = ["_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig"];

export class SnapshotNameError extends Error {}

export function snapshotName(vm: string, backupId: string, originLv: string): string {
  if (vm.includes("+")) throw new SnapshotNameError(`VM name "${vm}" contains "+"`);
  if (!ID_PART_RE.test(backupId)) throw new SnapshotNameError(`"${backupId}" is not a backup id`);
  const head = `${SNAPSHOT_PREFIX}${vm}+${backupId}+`;
  const name = head + originLv.slice(0, Math.max(0, MAX_LV_NAME - head.length));
  const reserved = RESERVED.find((r) => name.includes(r));
  if (reserved) {
    throw new SnapshotNameError(`the snapshot name "${name}" would contain "${reserved}", which LVM reserves; rename the VM or the LV "${originLv}"`);
  }
  return name;
}

/** Whether `lvName` is a snapshot this runner made for `vm` (any run). */
export function isRunnerSnapshotOf(lvName: string, vm: string): boolean {
  const head = `${SNAPSHOT_PREFIX}${vm}+`;
  if (!lvName.startsWith(head)) return false;
  const rest = lvName.slice(head.length);
  const plus = rest.indexOf("+");
  return plus > 0 && ID_PART_RE.test(rest.slice(0, plus));
}
