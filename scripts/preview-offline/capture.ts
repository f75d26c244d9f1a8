/**
 * What a Pulumi program registered, read from the wire (RegisterResourceRequest), the same way the engine
 * sees it: secrets are still marked, assets still assets. Used by the offline preview's resource monitor and
 * by the mock-based component tests, so both check exactly what `pulumi up` would receive.
 */
const SIG = "4dabf18193072939515e22adb298388d";
const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";
const ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17";
const ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7";
const OUTPUT_VALUE_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4";
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

export interface CapturedAsset {
  kind: "asset" | "archive";
  path?: string;
  text?: string;
  uri?: string;
}

export interface CapturedResource {
  urn: string;
  type: string;
  name: string;
  /** The parent's URN ("" for the stack itself). */
  parent: string;
  custom: boolean;
  /** Inputs with secrets unwrapped and assets as {kind, path|text}; keep them away from logs. */
  inputs: Record<string, unknown>;
  /** Dotted paths of every input that was a secret on the wire ("stdin", "connection"). */
  secretPaths: string[];
  /** The inputs as sent, secret markers included. */
  wire: Record<string, unknown>;
  dependencies: string[];
  deleteBeforeReplace: boolean;
  replaceOnChanges: string[];
  additionalSecretOutputs: string[];
  provider: string;
  version: string;
}

interface RegisterResourceRequestLike {
  getType(): string;
  getName(): string;
  getParent(): string;
  getCustom(): boolean;
  getObject(): { toJavaScript(): Record<string, unknown> } | undefined;
  getDependenciesList(): string[];
  getDeletebeforereplace(): boolean;
  getReplaceonchangesList(): string[];
  getAdditionalsecretoutputsList(): string[];
  getProvider(): string;
  getVersion(): string;
}

function isSig(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) && SIG in (v as object);
}

/** Unwraps secret markers (recording where they were) and turns asset markers into CapturedAsset. */
export function unwrapWire(value: unknown, path: string, secrets: string[]): unknown {
  if (Array.isArray(value)) return value.map((v, i) => unwrapWire(v, `${path}[${i}]`, secrets));
  if (isSig(value)) {
    const sig = value[SIG];
    if (sig === SECRET_SIG) {
      secrets.push(path);
      return unwrapWire(value.value, path, []);
    }
    if (sig === OUTPUT_VALUE_SIG) {
      if (value.secret === true) secrets.push(path);
      return "value" in value ? unwrapWire(value.value, path, value.secret === true ? [] : secrets) : UNKNOWN;
    }
    if (sig === ASSET_SIG || sig === ARCHIVE_SIG) {
      const a: CapturedAsset = { kind: sig === ASSET_SIG ? "asset" : "archive" };
      if (typeof value.path === "string") a.path = value.path;
      if (typeof value.text === "string") a.text = value.text;
      if (typeof value.uri === "string") a.uri = value.uri;
      return a;
    }
    return value;
  }
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, unwrapWire(v, path ? `${path}.${k}` : k, secrets)]));
  }
  return value;
}

export function captureRegistration(req: RegisterResourceRequestLike, urn: string): CapturedResource {
  const wire = req.getObject()?.toJavaScript() ?? {};
  const secretPaths: string[] = [];
  const inputs = unwrapWire(wire, "", secretPaths) as Record<string, unknown>;
  return {
    urn,
    type: req.getType(),
    name: req.getName(),
    parent: req.getParent(),
    custom: req.getCustom(),
    inputs,
    secretPaths,
    wire,
    dependencies: req.getDependenciesList(),
    deleteBeforeReplace: req.getDeletebeforereplace(),
    replaceOnChanges: req.getReplaceonchangesList(),
    additionalSecretOutputs: req.getAdditionalsecretoutputsList(),
    provider: req.getProvider(),
    version: req.getVersion(),
  };
}

/** Every string in `wire` that is NOT inside a secret marker (what would be stored in clear in the state). */
export function plainStrings(wire: unknown, out: string[] = []): string[] {
  if (typeof wire === "string") out.push(wire);
  else if (Array.isArray(wire)) wire.forEach((v) => plainStrings(v, out));
  else if (isSig(wire)) {
    const secretOutput = wire[SIG] === OUTPUT_VALUE_SIG && wire.secret === true;
    if (wire[SIG] !== SECRET_SIG && !secretOutput) Object.values(wire).forEach((v) => plainStrings(v, out));
  } else if (wire !== null && typeof wire === "object") Object.values(wire).forEach((v) => plainStrings(v, out));
  return out;
}

/** URNs registered more than once. */
export function duplicateUrns(resources: Pick<CapturedResource, "urn">[]): string[] {
  const seen = new Set<string>();
  const dups = new Set<string>();
  for (const r of resources) (seen.has(r.urn) ? dups : seen).add(r.urn);
  return [...dups];
}

/**
 * The custom resources in an order the engine could create them: each after every resource it depends on,
 * otherwise in registration order. Deletes run in the reverse order. For replaying a capture.
 */
export function creationOrder(resources: CapturedResource[]): CapturedResource[] {
  const custom = resources.filter((r) => r.custom && !r.type.startsWith("pulumi:providers:"));
  const byUrn = new Map(custom.map((r) => [r.urn, r]));
  const done = new Set<string>();
  const order: CapturedResource[] = [];
  while (order.length < custom.length) {
    const next = custom.find((r) => !done.has(r.urn) && r.dependencies.every((d) => !byUrn.has(d) || done.has(d)));
    if (!next) throw new Error(`dependency cycle among: ${custom.filter((r) => !done.has(r.urn)).map((r) => r.urn).join(", ")}`);
    done.add(next.urn);
    order.push(next);
  }
  return order;
}
