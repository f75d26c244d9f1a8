/**
 * An in-process Pulumi engine for the offline preview: a ResourceMonitor and Engine gRPC server on
 * 127.0.0.1 built from the SDK's own generated definitions (proto/*_grpc_pb.js), answering the way the
 * engine does during `pulumi preview`: URNs from the parent's qualified type, custom resources get no id
 * and unknown computed outputs, default providers are implied per package.
 */
import { createRequire } from "node:module";
import { type CapturedResource, captureRegistration, UNKNOWN, unwrapWire } from "./capture.ts";

const sdkRequire = createRequire(createRequire(import.meta.url).resolve("@pulumi/pulumi/package.json"));
/* eslint-disable @typescript-eslint/no-explicit-any */
const grpc = sdkRequire("@grpc/grpc-js") as any;
const resrpc = sdkRequire("./proto/resource_grpc_pb.js") as any;
const resproto = sdkRequire("./proto/resource_pb.js") as any;
const engrpc = sdkRequire("./proto/engine_grpc_pb.js") as any;
const engproto = sdkRequire("./proto/engine_pb.js") as any;
const structproto = sdkRequire("google-protobuf/google/protobuf/struct_pb.js") as any;
const emptyproto = sdkRequire("google-protobuf/google/protobuf/empty_pb.js") as any;

const ROOT_STACK_TYPE = "pulumi:pulumi:Stack";
const SEVERITY = ["debug", "info", "warning", "error"] as const;

/** Computed outputs of the command provider's resources, unknown until the provider ran. */
const COMPUTED_OUTPUTS: Record<string, string[]> = {
  "command:remote:Command": ["stdout", "stderr"],
  "command:local:Command": ["stdout", "stderr"],
};

export interface EngineLog {
  severity: (typeof SEVERITY)[number];
  message: string;
  urn: string;
}

export interface OfflineEngineState {
  resources: CapturedResource[];
  /** Outputs registered per URN (the stack's are the stack outputs), secrets unwrapped. */
  outputs: Map<string, { values: Record<string, unknown>; secretPaths: string[] }>;
  logs: EngineLog[];
  rootUrn: string;
}

export interface OfflineEngine {
  address: string;
  state: OfflineEngineState;
  stop(): Promise<void>;
}

export function qualifiedType(urn: string): string {
  return urn.split("::")[2] ?? "";
}

export async function startOfflineEngine(opts: { project: string; stack: string; onLog?: (l: EngineLog) => void }): Promise<OfflineEngine> {
  const state: OfflineEngineState = { resources: [], outputs: new Map(), logs: [], rootUrn: "" };
  const providers = new Set<string>();

  const newUrn = (parent: string, type: string, name: string) => {
    const parentType = parent ? qualifiedType(parent) : "";
    const qt = parentType && parentType !== ROOT_STACK_TYPE ? `${parentType}$${type}` : type;
    return `urn:pulumi:${opts.stack}::${opts.project}::${qt}::${name}`;
  };

  /** The engine registers one default provider per package and version; show it in the tree as it would. */
  const defaultProvider = (type: string, version: string): string => {
    const pkg = type.split(":")[0]!;
    const urn = `urn:pulumi:${opts.stack}::${opts.project}::pulumi:providers:${pkg}::default${version ? `_${version.replace(/[.-]/g, "_")}` : ""}`;
    if (!providers.has(urn)) {
      providers.add(urn);
      state.resources.push({
        urn, type: `pulumi:providers:${pkg}`, name: urn.split("::").pop()!, parent: "", custom: true, inputs: { version }, secretPaths: [], wire: { version },
        dependencies: [], deleteBeforeReplace: false, replaceOnChanges: [], additionalSecretOutputs: [], provider: "", version,
      });
    }
    return `${urn}::${UNKNOWN}`;
  };

  const unimplemented = (name: string) => (_call: unknown, cb: (err: unknown) => void) =>
    cb({ code: grpc.status.UNIMPLEMENTED, details: `${name} is not available in the offline preview (no providers run here)` });

  const monitor: Record<string, unknown> = {
    supportsFeature(call: any, cb: any) {
      const resp = new resproto.SupportsFeatureResponse();
      // Everything the engine of this SDK generation supports, except transforms/hooks callbacks which
      // would need a callback server (the program uses none).
      const id = call.request.getId();
      resp.setHassupport(!["transforms", "invokeTransforms", "resourceHooks", "errorHooks"].includes(id));
      cb(null, resp);
    },
    registerResource(call: any, cb: any) {
      try {
        const req = call.request;
        const type: string = req.getType();
        const urn = newUrn(req.getParent(), type, req.getName());
        const captured = captureRegistration(req, urn);
        if (req.getCustom() && !type.startsWith("pulumi:providers:") && !req.getProvider()) {
          captured.provider = defaultProvider(type, req.getVersion());
        }
        state.resources.push(captured);
        if (type === ROOT_STACK_TYPE) state.rootUrn = urn;
        const object = { ...(req.getObject()?.toJavaScript() ?? {}) };
        for (const k of COMPUTED_OUTPUTS[type] ?? []) object[k] = UNKNOWN;
        const resp = new resproto.RegisterResourceResponse();
        resp.setUrn(urn);
        resp.setId(req.getCustom() ? UNKNOWN : "");
        resp.setObject(structproto.Struct.fromJavaScript(object));
        cb(null, resp);
      } catch (e) {
        cb({ code: grpc.status.INTERNAL, details: String((e as Error).stack ?? e) });
      }
    },
    registerResourceOutputs(call: any, cb: any) {
      const secretPaths: string[] = [];
      const values = unwrapWire(call.request.getOutputs()?.toJavaScript() ?? {}, "", secretPaths) as Record<string, unknown>;
      state.outputs.set(call.request.getUrn(), { values, secretPaths });
      cb(null, new emptyproto.Empty());
    },
    registerPackage(_call: any, cb: any) {
      const resp = new resproto.RegisterPackageResponse();
      resp.setRef("offline-preview-package");
      cb(null, resp);
    },
    signalAndWaitForShutdown(_call: any, cb: any) {
      cb(null, new emptyproto.Empty());
    },
  };
  const engine: Record<string, unknown> = {
    log(call: any, cb: any) {
      const l: EngineLog = { severity: SEVERITY[call.request.getSeverity()] ?? "info", message: call.request.getMessage(), urn: call.request.getUrn() };
      state.logs.push(l);
      opts.onLog?.(l);
      cb(null, new emptyproto.Empty());
    },
    getRootResource(_call: any, cb: any) {
      const resp = new engproto.GetRootResourceResponse();
      resp.setUrn(state.rootUrn);
      cb(null, resp);
    },
    setRootResource(call: any, cb: any) {
      state.rootUrn = call.request.getUrn();
      cb(null, new engproto.SetRootResourceResponse());
    },
    requirePulumiVersion(_call: any, cb: any) {
      cb(null, new emptyproto.Empty());
    },
  };
  const complete = (service: Record<string, unknown>, impl: Record<string, unknown>, name: string) =>
    Object.fromEntries(Object.keys(service).map((m) => [m, impl[m] ?? unimplemented(`${name}.${m}`)]));

  const server = new grpc.Server({ "grpc.max_receive_message_length": 400 * 1024 * 1024 });
  server.addService(resrpc.ResourceMonitorService, complete(resrpc.ResourceMonitorService, monitor, "ResourceMonitor"));
  server.addService(engrpc.EngineService, complete(engrpc.EngineService, engine, "Engine"));
  const port: number = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err: Error | null, p: number) => (err ? reject(err) : resolve(p))),
  );
  return {
    address: `127.0.0.1:${port}`,
    state,
    stop: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}
