/**
 * An s3 target: a bucket on an S3 API (Ceph RADOS Gateway, MinIO, a cloud provider), through the AWS SDK.
 *
 * Object storage has no directories and no rename, so the places of target.ts map onto keys like this
 * (<vm prefix> = [<prefix>/]<host>/<vm>/):
 *   <vm prefix><id>/<file>                   the backup's files (disk images, domain.xml), each with its SHA-256 as
 *                                            object metadata (x-amz-meta-sha256)
 *   <vm prefix><id>/manifest.json.incoming   the manifest while the copy is being checked ("incoming")
 *   <vm prefix><id>/manifest.json            written LAST, by a server-side copy of the checked incoming manifest:
 *                                            its presence is what makes <id>/ a backup ("final")
 * An <id>/ without manifest.json (or with only multipart uploads in progress) is an incoming copy: the next ship
 * of that backup completes it, prune removes it once a newer backup is complete. Removing a backup deletes its
 * manifest.json first, so a removal cut short leaves an incoming copy, never something that looks like a backup;
 * there is no trash on S3.
 *
 * Uploads: files larger than one part go as multipart uploads (@aws-sdk/lib-storage), parts buffered so each can be
 * retried. A failed upload is aborted by lib-storage; one cut short by kill -9 or the deadline is aborted by the next
 * upload or removal of the same backup (ListMultipartUploads under <id>/), so no orphaned parts keep using space.
 * A file already on the target with the right size and SHA-256 metadata is not sent again (a resumed ship).
 *
 * Checks (facts): `verify: full` reads every object back and hashes it, like sha256sum on the other targets;
 * `verify: ranged` takes the size and the SHA-256 metadata (computed by the runner before the upload and compared
 * with what it sent) and reads sampled ranges back, comparing them with the staged file when staging still has it.
 */
import { AbortMultipartUploadCommand, CopyObjectCommand, DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { createHash } from "node:crypto";
import { closeSync, createReadStream, createWriteStream, existsSync, openSync, readFileSync, readSync, renameSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { HostTarget } from "../config/schema.ts";
import { Manifest, MANIFEST_FILE } from "../manifest.ts";
import { backupDir, ID_RE } from "../staging.ts";
import { type BoundedS3, boundedS3 } from "./s3Client.ts";
import { readS3Credentials } from "./s3Credentials.ts";
import {
  checkId,
  checkName,
  expectedFiles,
  type FileFacts,
  type Place,
  shortTimeoutMs,
  type Target,
  type TargetContext,
  TargetError,
  type TargetListing,
  targetTimeoutMs,
  TargetVerifyError,
} from "./target.ts";

type S3Config = Extract<HostTarget, { type: "s3" }>;

export const INCOMING_MANIFEST = `${MANIFEST_FILE}.incoming`;
/** Object metadata key (sent as x-amz-meta-sha256). */
const SHA_META = "sha256";
const MiB = 1 << 20;
/** Parts of 16 MiB, 4 in flight: 64 MiB of memory at most; bigger parts for files above ~140 GiB (10000 parts max). */
const MIN_PART = 16 * MiB;
const MAX_PARTS = 9000;
const QUEUE = 4;
/** `ranged`: objects up to this size are read in full anyway; larger ones in RANGES pieces of RANGE_BYTES. */
const RANGED_FULL_LIMIT = 4 * MiB;
const RANGES = 8;
const RANGE_BYTES = MiB;

export function partSizeFor(bytes: number): number {
  return Math.max(MIN_PART, Math.ceil(bytes / MAX_PARTS / MiB) * MiB);
}

/** Start offsets of the sampled ranges: first, last and evenly spaced between (sorted, distinct). */
export function sampleOffsets(size: number, ranges = RANGES, len = RANGE_BYTES): number[] {
  if (size <= len) return [0];
  const last = size - len;
  const out = new Set<number>();
  for (let i = 0; i < ranges; i++) out.add(Math.round((last * i) / (ranges - 1)));
  return [...out].sort((a, b) => a - b);
}

function isNotFound(e: unknown): boolean {
  const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
  return err?.$metadata?.httpStatusCode === 404 || err?.name === "NotFound" || err?.name === "NoSuchKey";
}

async function sha256Stream(body: Readable): Promise<{ sha256: string; bytes: number }> {
  const h = createHash("sha256");
  let bytes = 0;
  for await (const chunk of body) {
    h.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: h.digest("hex"), bytes };
}

export class S3Target implements Target {
  readonly kind = "s3" as const;
  readonly where: string;
  readonly timeoutMs: number;
  private readonly shortMs: number;
  private readonly base: string;
  private s3?: BoundedS3;

  constructor(
    readonly name: string,
    private readonly cfg: S3Config,
    private readonly ctx: TargetContext,
  ) {
    this.timeoutMs = targetTimeoutMs(cfg);
    this.shortMs = shortTimeoutMs(this.timeoutMs);
    this.where = `s3 ${cfg.endpoint.replace(/\/$/, "")}/${cfg.bucket}${cfg.prefix ? `/${cfg.prefix}` : ""}`;
    this.base = `${cfg.prefix ? `${cfg.prefix}/` : ""}${checkName("host", ctx.host)}/`;
  }

  /** The client, made on first use: reading the credentials file is part of checking the target. */
  private get conn(): BoundedS3 {
    if (!this.s3) {
      const creds = readS3Credentials(this.cfg.credentialsFile, this.name);
      this.s3 = boundedS3(this.name, this.where, this.cfg, creds, this.timeoutMs);
    }
    return this.s3;
  }

  private vmPrefix(vm: string): string {
    return `${this.base}${checkName("VM", vm)}/`;
  }

  private key(vm: string, id: string, file: string): string {
    return `${this.vmPrefix(vm)}${checkId(id)}/${checkName("file", file)}`;
  }

  /** The key that holds `file` of the copy at `place`: only the manifest differs between incoming and final. */
  private placeKey(vm: string, id: string, place: Place, file: string): string {
    return this.key(vm, id, place === "incoming" && file === MANIFEST_FILE ? INCOMING_MANIFEST : file);
  }

  async check(): Promise<void> {
    const { client, within } = this.conn;
    await within(this.shortMs, `listing bucket ${this.cfg.bucket}`, (abortSignal) =>
      client.send(new ListObjectsV2Command({ Bucket: this.cfg.bucket, Prefix: this.base, MaxKeys: 1 }), { abortSignal }),
    );
  }

  private async listKeys(prefix: string, abortSignal: AbortSignal): Promise<{ key: string; size: number }[]> {
    const out: { key: string; size: number }[] = [];
    let token: string | undefined;
    do {
      const r = await this.conn.client.send(new ListObjectsV2Command({ Bucket: this.cfg.bucket, Prefix: prefix, ContinuationToken: token }), { abortSignal });
      for (const o of r.Contents ?? []) if (o.Key) out.push({ key: o.Key, size: o.Size ?? 0 });
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  private async listUploads(prefix: string, abortSignal: AbortSignal): Promise<{ key: string; uploadId: string }[]> {
    const out: { key: string; uploadId: string }[] = [];
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    do {
      const r = await this.conn.client.send(
        new ListMultipartUploadsCommand({ Bucket: this.cfg.bucket, Prefix: prefix, KeyMarker: keyMarker, UploadIdMarker: idMarker }),
        { abortSignal },
      );
      for (const u of r.Uploads ?? []) if (u.Key && u.UploadId) out.push({ key: u.Key, uploadId: u.UploadId });
      keyMarker = r.IsTruncated ? r.NextKeyMarker : undefined;
      idMarker = r.IsTruncated ? r.NextUploadIdMarker : undefined;
    } while (keyMarker);
    return out;
  }

  /** Abort every multipart upload under <id>/: what a killed or timed-out upload left behind. */
  private async abortUploads(vm: string, id: string, abortSignal: AbortSignal): Promise<number> {
    const uploads = await this.listUploads(`${this.vmPrefix(vm)}${checkId(id)}/`, abortSignal);
    for (const u of uploads) {
      await this.conn.client.send(new AbortMultipartUploadCommand({ Bucket: this.cfg.bucket, Key: u.key, UploadId: u.uploadId }), { abortSignal });
    }
    return uploads.length;
  }

  async list(vm: string): Promise<TargetListing> {
    const prefix = this.vmPrefix(vm);
    return this.conn.within(this.shortMs, `listing ${prefix}`, async (signal) => {
      const ids = new Map<string, boolean>();
      for (const { key } of await this.listKeys(prefix, signal)) {
        const [id, file, ...more] = key.slice(prefix.length).split("/");
        if (!id || !ID_RE.test(id) || file === undefined || more.length) continue;
        ids.set(id, (ids.get(id) ?? false) || file === MANIFEST_FILE);
      }
      for (const { key } of await this.listUploads(prefix, signal)) {
        const id = key.slice(prefix.length).split("/")[0]!;
        if (ID_RE.test(id) && !ids.has(id)) ids.set(id, false);
      }
      const listing: TargetListing = { backups: [], incoming: [], trash: [], incomplete: [] };
      for (const [id, complete] of ids) (complete ? listing.backups : listing.incoming).push(id);
      listing.backups.sort();
      listing.incoming.sort();
      return listing;
    });
  }

  private async head(key: string, abortSignal: AbortSignal): Promise<{ size: number; sha256: string | undefined } | undefined> {
    try {
      const r = await this.conn.client.send(new HeadObjectCommand({ Bucket: this.cfg.bucket, Key: key }), { abortSignal });
      return { size: r.ContentLength ?? -1, sha256: r.Metadata?.[SHA_META] };
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Upload one file with its SHA-256 as metadata, hashing what is actually sent; a difference removes the object. */
  private async putFile(path: string, key: string, sha256: string, signal: AbortSignal, ctl: AbortController): Promise<void> {
    const size = statSync(path).size;
    const hash = createHash("sha256");
    let sent = 0;
    const source = createReadStream(path, { highWaterMark: MiB });
    const body = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        sent += chunk.length;
        cb(null, chunk);
      },
    });
    source.on("error", (e) => body.destroy(e));
    source.pipe(body);
    const upload = new Upload({
      client: this.conn.client,
      params: { Bucket: this.cfg.bucket, Key: key, Body: body, ContentLength: size, Metadata: { [SHA_META]: sha256 } },
      partSize: partSizeFor(size),
      queueSize: QUEUE,
      leavePartsOnError: false,
      abortController: ctl,
    });
    try {
      await upload.done();
    } finally {
      source.destroy();
    }
    const got = hash.digest("hex");
    if (got !== sha256 || sent !== size) {
      await this.conn.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: key }), { abortSignal: signal });
      throw new TargetVerifyError(
        `target "${this.name}" (${this.where}): the staged file ${path} read as ${sent} bytes with SHA-256 ${got} during the upload, but its manifest says SHA-256 ${sha256}: ` +
          "the staged copy is damaged or changed; run `kvm-backup verify` on it (the object was removed again)",
        this.name,
      );
    }
  }

  /** SHA-256 of each local file: the manifest's for the disk images (what the target must hold), computed for the rest. */
  private async localShas(localFiles: string[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const manifestPath = localFiles.find((f) => basename(f) === MANIFEST_FILE);
    if (manifestPath) {
      const m = Manifest.safeParse(JSON.parse(readFileSync(manifestPath, "utf8")));
      if (m.success) for (const [file, f] of expectedFiles(m.data)) out.set(file, f.sha256);
    }
    for (const f of localFiles) {
      if (!out.has(basename(f))) out.set(basename(f), (await sha256Stream(createReadStream(f))).sha256);
    }
    return out;
  }

  async upload(vm: string, id: string, localFiles: string[]): Promise<void> {
    const shas = await this.localShas(localFiles);
    const manifest = localFiles.find((f) => basename(f) === MANIFEST_FILE);
    const ctl = new AbortController();
    try {
      await this.conn.within(this.timeoutMs, `uploading ${vm}/${id}`, async (signal) => {
        signal.addEventListener("abort", () => ctl.abort(), { once: true });
        await this.abortUploads(vm, id, signal);
        for (const path of localFiles.filter((f) => f !== manifest)) {
          const file = basename(path);
          const key = this.key(vm, id, file);
          const sha = shas.get(file)!;
          const there = await this.head(key, signal);
          if (there && there.size === statSync(path).size && there.sha256 === sha) continue; // sent by an earlier, interrupted ship
          await this.putFile(path, key, sha, signal, ctl);
        }
        if (manifest) {
          const text = readFileSync(manifest);
          await this.conn.client.send(
            new PutObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(vm, id, INCOMING_MANIFEST), Body: text, ContentLength: text.length, Metadata: { [SHA_META]: shas.get(MANIFEST_FILE)! } }),
            { abortSignal: signal },
          );
        }
      });
    } catch (e) {
      // A timed-out upload could not abort its multipart upload (every request ended with the deadline): try once
      // more with a short budget; if the gateway is gone, the next ship or prune of this backup does it.
      if (ctl.signal.aborted) await this.conn.within(Math.min(3_000, this.shortMs), "aborting the unfinished upload", (s) => this.abortUploads(vm, id, s)).catch(() => {});
      throw e;
    }
  }

  async facts(vm: string, id: string, place: Place, files: string[]): Promise<Map<string, FileFacts>> {
    const out = new Map<string, FileFacts>();
    await this.conn.within(this.timeoutMs, `checking ${vm}/${id}`, async (signal) => {
      for (const file of files) {
        const key = this.placeKey(vm, id, place, file);
        const head = await this.head(key, signal);
        if (!head) continue;
        if (this.cfg.verify === "full" || head.size <= RANGED_FULL_LIMIT) {
          const r = await this.conn.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: key }), { abortSignal: signal });
          const got = await sha256Stream(r.Body as Readable);
          out.set(file, { size: got.bytes, sha256: got.sha256 });
          continue;
        }
        const problem = await this.rangedProblem(key, head.size, join(backupDir(this.ctx.staging, vm, checkId(id)), file), signal);
        if (problem) throw new TargetVerifyError(`target "${this.name}" (${this.where}): ${vm}/${id}/${file}: ${problem}`, this.name);
        out.set(file, { size: head.size, sha256: head.sha256 ?? "(no sha256 metadata on the object)" });
      }
    });
    return out;
  }

  /** Read the sampled ranges back; compare with the staged file when there is one. A problem in words, or undefined. */
  private async rangedProblem(key: string, size: number, local: string, signal: AbortSignal): Promise<string | undefined> {
    const localFd = existsSync(local) && statSync(local).size === size ? openSync(local, "r") : undefined;
    try {
      for (const start of sampleOffsets(size)) {
        const len = Math.min(RANGE_BYTES, size - start);
        const r = await this.conn.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: key, Range: `bytes=${start}-${start + len - 1}` }), { abortSignal: signal });
        const got = Buffer.from(await r.Body!.transformToByteArray());
        if (got.length !== len) return `a ranged read of bytes ${start}-${start + len - 1} returned ${got.length} bytes`;
        if (localFd !== undefined) {
          const want = Buffer.alloc(len);
          readSync(localFd, want, 0, len, start);
          if (!want.equals(got)) return `bytes ${start}-${start + len - 1} differ from the staged copy`;
        }
      }
      return undefined;
    } finally {
      if (localFd !== undefined) closeSync(localFd);
    }
  }

  /** Server-side copy (metadata included), checked by size, then the source is deleted: the closest S3 has to rename. */
  private async move(from: string, to: string, signal: AbortSignal): Promise<void> {
    const src = await this.head(from, signal);
    if (!src) throw new TargetError(`target "${this.name}" (${this.where}): ${from} is missing, nothing to move to ${to}; the next ship uploads the backup again`, this.name);
    const copySource = `${this.cfg.bucket}/${from.split("/").map(encodeURIComponent).join("/")}`;
    await this.conn.client.send(new CopyObjectCommand({ Bucket: this.cfg.bucket, Key: to, CopySource: copySource, MetadataDirective: "COPY" }), { abortSignal: signal });
    const dst = await this.head(to, signal);
    if (!dst || dst.size !== src.size || dst.sha256 !== src.sha256) {
      throw new TargetVerifyError(`target "${this.name}" (${this.where}): the copy of ${from} to ${to} did not arrive intact (size ${dst?.size}, expected ${src.size})`, this.name);
    }
    await this.conn.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: from }), { abortSignal: signal });
  }

  async rename(vm: string, id: string, direction: "commit" | "reopen"): Promise<void> {
    if (direction === "reopen") {
      // A copy that failed its check: its damaged objects may still carry the right size and SHA-256 metadata,
      // which would make the next upload skip them. So reopening removes the whole copy (manifest first) and the
      // upload that follows sends every file again.
      await this.remove(vm, id, "final");
      return;
    }
    const [from, to] = [this.key(vm, id, INCOMING_MANIFEST), this.key(vm, id, MANIFEST_FILE)];
    await this.conn.within(this.shortMs, `completing ${vm}/${id} (writing its manifest.json)`, (s) => this.move(from, to, s));
  }

  async readManifestText(vm: string, id: string): Promise<string> {
    const key = this.key(vm, id, MANIFEST_FILE);
    return this.conn.within(this.shortMs, `reading ${key}`, async (abortSignal) => {
      const r = await this.conn.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: key }), { abortSignal });
      return r.Body!.transformToString("utf8");
    });
  }

  async download(vm: string, id: string, files: string[], localDir: string): Promise<void> {
    await this.conn.within(this.timeoutMs, `downloading ${vm}/${id}`, async (abortSignal) => {
      for (const file of files) {
        const r = await this.conn.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(vm, id, file) }), { abortSignal });
        const dest = join(localDir, file);
        await pipeline(r.Body as Readable, createWriteStream(`${dest}.part`));
        renameSync(`${dest}.part`, dest);
      }
    });
  }

  async remove(vm: string, id: string, place: Place): Promise<void> {
    const prefix = `${this.vmPrefix(vm)}${checkId(id)}/`;
    await this.conn.within(this.timeoutMs, `removing ${prefix}`, async (abortSignal) => {
      await this.abortUploads(vm, id, abortSignal);
      // The manifest first: from then on this is no longer a backup, whatever happens to the rest.
      if (place === "final") await this.conn.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: `${prefix}${MANIFEST_FILE}` }), { abortSignal });
      for (const { key } of await this.listKeys(prefix, abortSignal)) {
        await this.conn.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: key }), { abortSignal });
      }
    });
  }

  /** S3 has no trash (list() never reports any). */
  async removeTrash(): Promise<void> {}
}
