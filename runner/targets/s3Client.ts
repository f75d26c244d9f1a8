/**
 * The S3 client an s3 target uses: explicit settings only (no profile, environment or instance metadata decides
 * anything), timeouts and retries on every request, and a deadline that ends every request of an operation at once.
 *
 * - connect timeout and socket idle timeout per request; a gateway that accepts the connection but stops
 *   answering (a stopped radosgw: the kernel still completes the handshake) fails the request after the idle timeout;
 * - up to MAX_ATTEMPTS attempts per request (the SDK's standard retry: timeouts, resets, 5xx, throttling);
 * - the operation's deadline (the target's timeout) aborts every request still running, including those
 *   @aws-sdk/lib-storage sends by itself for the parts of a multipart upload, and no retry follows an abort;
 * - requestChecksumCalculation/responseChecksumValidation WHEN_REQUIRED: Ceph RGW (16.2) answers a streamed
 *   PutObject with the SDK's default flexible checksums with 411 MissingContentLength; the runner checks
 *   content itself (SHA-256 metadata and read-back, s3Target.ts).
 */
import { S3Client, S3ServiceException } from "@aws-sdk/client-s3";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import type { S3Credentials } from "./s3Credentials.ts";
import { TargetError, TargetFullError, TargetSetupError, TargetTimeoutError, TargetUnreachableError } from "./target.ts";

export const MAX_ATTEMPTS = 4;

export interface S3Settings {
  endpoint: string;
  region: string;
  forcePathStyle: boolean;
}

/** Per-request timeouts from the target's budget: idle 1/4 of it, between 2 s (tests) and 60 s (the 2 h default). */
export function requestTimeouts(targetTimeoutMs: number): { connectMs: number; idleMs: number } {
  const idleMs = Math.min(60_000, Math.max(2_000, Math.round(targetTimeoutMs / 4)));
  return { connectMs: Math.min(10_000, idleMs), idleMs };
}

/** Passes every request to the SDK's own handler, with the current operation's deadline added to its signal. */
class DeadlineHandler extends NodeHttpHandler {
  deadline: AbortSignal | undefined;

  override handle(request: Parameters<NodeHttpHandler["handle"]>[0], options: Parameters<NodeHttpHandler["handle"]>[1] = {}): ReturnType<NodeHttpHandler["handle"]> {
    const signals = [options.abortSignal as AbortSignal | undefined, this.deadline].filter((s): s is AbortSignal => s !== undefined);
    return super.handle(request, { ...options, abortSignal: signals.length > 1 ? AbortSignal.any(signals) : signals[0] });
  }
}

export interface BoundedS3 {
  client: S3Client;
  /** Run `fn` with every request it makes ending at `ms`; a timeout becomes a TargetTimeoutError naming `what`. */
  within<T>(ms: number, what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  destroy(): void;
}

export function boundedS3(target: string, where: string, s: S3Settings, creds: S3Credentials, targetTimeoutMs: number): BoundedS3 {
  // The SDK would print a deprecation notice for Node 20 to stderr, where the runner's JSON log goes.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";
  const t = requestTimeouts(targetTimeoutMs);
  const handler = new DeadlineHandler({ connectionTimeout: t.connectMs, socketTimeout: t.idleMs });
  const client = new S3Client({
    endpoint: s.endpoint,
    region: s.region,
    forcePathStyle: s.forcePathStyle,
    credentials: { accessKeyId: creds.accessKeyId, secretAccessKey: creds.secretAccessKey },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    maxAttempts: MAX_ATTEMPTS,
    retryMode: "standard",
    requestHandler: handler,
    logger: { trace() {}, debug() {}, info() {}, warn() {}, error() {} },
  });
  return {
    client,
    async within(ms, what, fn) {
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), ms);
      timer.unref();
      const outer = handler.deadline;
      handler.deadline = outer ? AbortSignal.any([outer, ctl.signal]) : ctl.signal;
      try {
        return await fn(ctl.signal);
      } catch (e) {
        if (ctl.signal.aborted && !(e instanceof TargetError)) {
          throw new TargetTimeoutError(
            `target "${target}" (${where}): ${what} did not finish within ${Math.round(ms / 1000)} s (the gateway stopped answering, or is too slow for the target's timeout); the backup stays in staging and is shipped on the next run`,
            target,
          );
        }
        throw s3Failure(e, target, where, what, t.idleMs);
      } finally {
        clearTimeout(timer);
        handler.deadline = outer;
      }
    },
    destroy: () => client.destroy(),
  };
}

const CREDENTIAL_CODES = new Set(["InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed", "InvalidSecurity"]);

/** Any error from the SDK as a TargetError that says what failed and what to do; never includes a key. */
export function s3Failure(e: unknown, target: string, where: string, what: string, idleMs: number): TargetError {
  if (e instanceof TargetError) return e;
  const at = `target "${target}" (${where}): ${what}`;
  const err = e as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number; attempts?: number } };
  const status = err.$metadata?.httpStatusCode;
  const attempts = err.$metadata?.attempts;
  const code = e instanceof S3ServiceException ? e.name : (err.code ?? err.name ?? "Error");
  const detail = `${code}${status ? ` (HTTP ${status})` : ""}${attempts && attempts > 1 ? ` after ${attempts} attempts` : ""}`;
  if (CREDENTIAL_CODES.has(code)) {
    return new TargetSetupError(
      `${at}: the gateway refused the access keys (${detail}); check targets.${target}.accessKeyId and secretAccessKey in the stack (and that the gateway's clock is right), then \`pulumi up\``,
      target,
    );
  }
  // Before the generic 403: RGW answers a full quota with 403 QuotaExceeded.
  if (code === "QuotaExceeded" || code === "EntityTooLarge" || status === 507) {
    return new TargetFullError(`${at}: the gateway refused more data (${detail}); raise the quota or adjust retention, the backup is retried on the next run`, target);
  }
  if (code === "AccessDenied" || status === 403) {
    return new TargetSetupError(`${at}: access denied (${detail}); the keys are valid but may not use this bucket or prefix: grant them read, write, list and delete there`, target);
  }
  if (code === "NoSuchBucket") {
    return new TargetSetupError(`${at}: the bucket does not exist (${detail}); create it on the gateway (the runner never creates buckets) or fix targets.${target}.bucket`, target);
  }
  if (code === "TimeoutError" || code === "ETIMEDOUT" || code === "RequestTimeout") {
    return new TargetTimeoutError(`${at}: the gateway did not answer for ${Math.round(idleMs / 1000)} s (${detail}); check it, the backup stays in staging and is shipped on the next run`, target);
  }
  if (["ECONNREFUSED", "ECONNRESET", "EPIPE", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"].includes(code)) {
    return new TargetUnreachableError(`${at}: cannot reach the gateway (${detail}); check that it is up and reachable, the backup is retried on the next run`, target);
  }
  if (status !== undefined && status >= 500) {
    return new TargetUnreachableError(`${at}: the gateway failed (${detail}: ${err.message ?? ""}); the backup is retried on the next run`, target);
  }
  return new TargetError(`${at} failed: ${detail}: ${err.message ?? String(e)}`, target);
}
