/**
 * Test-side look at the Ceph lab's buckets (independent of the runner's S3 code): buckets per test file, keys
 * with size and metadata, multipart uploads in progress, and the credentials file a deploy would install.
 */
import {
  CreateBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { renderS3Credentials } from "../../runner/targets/s3Credentials.ts";
import type { CephLabInfo } from "./cephLab.ts";

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";

export function labS3(info: CephLabInfo): S3Client {
  return new S3Client({
    endpoint: info.endpoint,
    region: info.region,
    forcePathStyle: true,
    credentials: { accessKeyId: info.accessKeyId, secretAccessKey: info.secretAccessKey },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    requestHandler: { connectionTimeout: 5000, socketTimeout: 20_000 },
  });
}

/** A fresh bucket with a unique name (bucket names are global on the gateway). */
export async function newBucket(s3: S3Client, stem: string): Promise<string> {
  const bucket = `${stem}-${randomBytes(4).toString("hex")}`;
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  return bucket;
}

/** Every key under `prefix` with its size, sorted. */
export async function keys(s3: S3Client, bucket: string, prefix = ""): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  let token: string | undefined;
  do {
    const r = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of r.Contents ?? []) out[o.Key!] = o.Size ?? 0;
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

export async function metadata(s3: S3Client, bucket: string, key: string): Promise<Record<string, string>> {
  return (await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))).Metadata ?? {};
}

/** Multipart uploads in progress (what ListMultipartUploads reports), with the number of parts each has. */
export async function multipartUploads(s3: S3Client, bucket: string): Promise<{ key: string; parts: number }[]> {
  const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  const out: { key: string; parts: number }[] = [];
  for (const u of r.Uploads ?? []) {
    const p = await s3.send(new ListPartsCommand({ Bucket: bucket, Key: u.Key!, UploadId: u.UploadId! }));
    out.push({ key: u.Key!, parts: p.Parts?.length ?? 0 });
  }
  return out;
}

export async function putText(s3: S3Client, bucket: string, key: string, text: string): Promise<void> {
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: text }));
}

/** The credentials file as `pulumi up` installs it: AWS credentials format, mode 0600. */
export function writeCredentials(file: string, keys: { accessKeyId: string; secretAccessKey: string }): string {
  writeFileSync(file, renderS3Credentials("lab", keys), { mode: 0o600 });
  return file;
}
