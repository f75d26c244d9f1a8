/**
 * `qemu-img info --output=json -U` (-U: the image is in use by a running domain; reading its header is safe).
 * The format libvirt passes to QEMU comes from the domain XML, never from probing (a guest can write a qcow2
 * header into a raw disk); qemu-img is asked with that format, for the virtual size and the backing chain.
 */
import { run } from "../exec.ts";

export interface ImageInfo {
  format: string;
  virtualSize: number;
  actualSize: number | null;
  backingFile: string | null;
}

export function parseQemuImgInfo(json: string): ImageInfo {
  const j = JSON.parse(json) as Record<string, unknown>;
  if (typeof j["virtual-size"] !== "number" || typeof j.format !== "string") throw new Error(`not the output of \`qemu-img info --output=json\`: ${json.slice(0, 200)}`);
  const backing = (j["full-backing-filename"] ?? j["backing-filename"]) as string | undefined;
  return {
    format: j.format,
    virtualSize: j["virtual-size"],
    actualSize: typeof j["actual-size"] === "number" ? j["actual-size"] : null,
    backingFile: backing ?? null,
  };
}

export async function imageInfo(path: string, format: string): Promise<ImageInfo> {
  const r = await run("qemu-img", ["info", "--output=json", "-U", "-f", format, path], { timeoutMs: 60_000 });
  return parseQemuImgInfo(r.stdout);
}
