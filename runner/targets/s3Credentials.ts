/**
 * An s3 target's access keys on the host: one root-only file in the AWS shared credentials format, so an operator
 * can point the aws CLI at it for debugging (AWS_SHARED_CREDENTIALS_FILE=... aws s3 ls --endpoint-url ...):
 *
 *   [default]
 *   aws_access_key_id = AKIA...
 *   aws_secret_access_key = ...
 *
 * `pulumi up` writes it from the two stack secrets (components/remoteTarget.ts, through stdin); the runner reads it
 * here and hands the keys to the S3 client in memory, or to restic in the child's environment: never a command
 * line, a log line or stdout. Error messages name the file and the problem, never a value from it.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { TargetSetupError } from "./target.ts";

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

/** A key as the file holds it: one token, no whitespace (which would break the line format). */
const KEY_RE = /^[\x21-\x7e]+$/;

/** The file's content. Throws a plain Error naming the stack field (never its value) when a key cannot be written. */
export function renderS3Credentials(target: string, c: S3Credentials): string {
  for (const [field, v] of [["accessKeyId", c.accessKeyId], ["secretAccessKey", c.secretAccessKey]] as const) {
    if (!KEY_RE.test(v)) throw new Error(`targets.${target}.${field} must be one token of printable characters without spaces or line breaks (check the value you set with pulumi config set --secret)`);
  }
  return `[default]\naws_access_key_id = ${c.accessKeyId}\naws_secret_access_key = ${c.secretAccessKey}\n`;
}

/** The keys of the [default] section (the only one the deploy writes); undefined fields when absent. */
export function parseS3Credentials(text: string): Partial<S3Credentials> {
  const out: Partial<S3Credentials> = {};
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    const s = /^\[\s*([^\]]+?)\s*\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const kv = /^([A-Za-z_]+)\s*=\s*(\S+)$/.exec(line);
    if (!kv || section !== "default") continue;
    if (kv[1] === "aws_access_key_id") out.accessKeyId = kv[2];
    if (kv[1] === "aws_secret_access_key") out.secretAccessKey = kv[2];
  }
  return out;
}

/** Read the file, refusing one that others can read (checked on the open file, so it is the one read). */
export function readS3Credentials(file: string, target: string): S3Credentials {
  const at = `target "${target}": the S3 credentials file ${file}`;
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    throw new TargetSetupError(`${at} cannot be read (${(e as NodeJS.ErrnoException).code}); it is installed by \`pulumi up\` from targets.${target}.accessKeyId and secretAccessKey`, target);
  }
  let text: string;
  try {
    const st = fstatSync(fd);
    if ((st.mode & 0o077) !== 0) {
      throw new TargetSetupError(
        `refusing ${at}: its mode is ${(st.mode & 0o777).toString(8).padStart(4, "0")}, readable by others; run \`chmod 600 ${file}\` (and rotate the keys if someone may have read them)`,
        target,
      );
    }
    if (st.size > 64 * 1024) throw new TargetSetupError(`${at} is ${st.size} bytes, too large for a credentials file; reinstall it with \`pulumi up\``, target);
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < st.size) {
      const n = readSync(fd, buf, got, st.size - got, got);
      if (n === 0) break;
      got += n;
    }
    text = buf.subarray(0, got).toString("utf8");
  } finally {
    closeSync(fd);
  }
  const c = parseS3Credentials(text);
  const missing = (["accessKeyId", "secretAccessKey"] as const).filter((k) => !c[k]).map((k) => (k === "accessKeyId" ? "aws_access_key_id" : "aws_secret_access_key"));
  if (missing.length) throw new TargetSetupError(`${at} has no ${missing.join(" and no ")} in its [default] section; reinstall it with \`pulumi up\``, target);
  return c as S3Credentials;
}
