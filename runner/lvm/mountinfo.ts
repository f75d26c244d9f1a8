/**
 * /proc/self/mountinfo (proc(5)): which filesystem, on which device, holds a path. Used to find out whether an
 * image file lives on a filesystem on an LV, and where that filesystem's root is.
 */
export interface MountEntry {
  mountId: number;
  parentId: number;
  major: number;
  minor: number;
  /** The directory of the filesystem that is mounted here (not "/" for bind mounts). */
  root: string;
  mountPoint: string;
  options: string;
  fsType: string;
  source: string;
  superOptions: string;
}

/** mountinfo escapes space, tab, newline and backslash as octal \ooo. */
export function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const parts = line.split(" ");
    const sep = parts.indexOf("-", 6);
    if (sep < 0 || parts.length < sep + 3) throw new Error(`unreadable mountinfo line: ${line}`);
    const [maj, min] = parts[2]!.split(":").map(Number);
    out.push({
      mountId: Number(parts[0]),
      parentId: Number(parts[1]),
      major: maj!,
      minor: min!,
      root: unescapeMountField(parts[3]!),
      mountPoint: unescapeMountField(parts[4]!),
      options: parts[5]!,
      fsType: parts[sep + 1]!,
      source: unescapeMountField(parts[sep + 2]!),
      superOptions: parts[sep + 3] ?? "",
    });
  }
  return out;
}

function within(path: string, dir: string): boolean {
  return dir === "/" || path === dir || path.startsWith(dir + "/");
}

/**
 * The mount that holds `path` (an absolute, symlink-free path): the last-mounted entry with the longest mount
 * point that contains it; later entries shadow earlier ones at the same point.
 */
export function mountOf(entries: MountEntry[], path: string): MountEntry | null {
  let best: MountEntry | null = null;
  for (const e of entries) {
    if (!within(path, e.mountPoint)) continue;
    if (!best || e.mountPoint.length >= best.mountPoint.length) best = e;
  }
  return best;
}

/** The path of `path` relative to the root of its filesystem (what it is called inside a mount of the snapshot). */
export function pathInFilesystem(entry: MountEntry, path: string): string {
  const rel = entry.mountPoint === "/" ? path : path.slice(entry.mountPoint.length) || "/";
  const joined = (entry.root === "/" ? "" : entry.root) + rel;
  return joined || "/";
}
