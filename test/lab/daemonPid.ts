/** The PID a lab daemon wrote to its pid file, if that process is still alive (signal 0 reaches it). */
import { readFileSync } from "node:fs";

export function readPid(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, "utf8").trim());
    if (!pid) return undefined;
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}
