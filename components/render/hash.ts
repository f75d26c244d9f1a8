import { createHash } from "node:crypto";

export function sha256(content: string | Buffer): string {
  return createHash("sha256").update(content).digest("hex");
}

/** The short content id used in host-side names (release directories): 16 hex digits of the SHA-256. */
export function contentId(sha: string): string {
  return sha.slice(0, 16);
}
