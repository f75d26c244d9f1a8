/**
 * The replay harness's engine decisions (test/lab/deployReplay.ts), on captured-resource shapes: what is a
 * create, an update, a replacement or nothing, and what it refuses to replay. The runs over SSH are in
 * test/integration/deploy.e2e.test.ts.
 */
import { describe, expect, it } from "vitest";
import { type CapturedResource, UNKNOWN } from "../../scripts/preview-offline/capture.ts";
import { diff, EMPTY_STATE, replayUp } from "../lab/deployReplay.ts";

const connection = { host: "127.0.0.1", port: 22, user: "root", hostKey: "ssh-ed25519 AAAA", privateKey: "k", dialErrorLimit: 10, perDialTimeout: 15 };

function command(inputs: Record<string, unknown>, extra: Partial<CapturedResource> = {}): CapturedResource {
  return {
    urn: "urn:pulumi:s::p::command:remote:Command::c",
    type: "command:remote:Command",
    name: "c",
    parent: "",
    custom: true,
    inputs: { connection, addPreviousOutputInEnv: false, create: "echo hi", ...inputs },
    secretPaths: ["connection"],
    wire: {},
    dependencies: [],
    deleteBeforeReplace: true,
    replaceOnChanges: ["triggers[*]"],
    additionalSecretOutputs: ["connection"],
    provider: "",
    version: "1.2.1",
    ...extra,
  };
}

const deployed = (r: CapturedResource, failed = false) => ({ resource: r, stdout: "", stderr: "", failed });

describe("diff", () => {
  it("a resource not in the state is created", () => {
    expect(diff(command({}), undefined)).toBe("create");
  });

  it("equal inputs change nothing, whatever else changed", () => {
    expect(diff(command({ stdin: "a" }), deployed(command({ stdin: "a" })))).toBe("same");
  });

  it("a changed trigger replaces; any other changed input updates", () => {
    expect(diff(command({ triggers: ["b"] }), deployed(command({ triggers: ["a"] })))).toBe("replace");
    expect(diff(command({ stdin: "b" }), deployed(command({ stdin: "a" })))).toBe("update");
    expect(diff(command({ create: "echo 2" }), deployed(command({})))).toBe("update");
    expect(diff(command({ delete: "rm x" }), deployed(command({})))).toBe("update");
  });

  it("a resource whose last create failed is updated even with equal inputs (initialization error)", () => {
    expect(diff(command({}), deployed(command({}), true))).toBe("update");
  });

  it("a copy whose file content changed under the same path is updated", () => {
    const copy = command({ source: { kind: "asset", path: "/x" }, remotePath: "/y" }, { type: "command:remote:CopyToRemote" });
    expect(diff(copy, { ...deployed(copy), assetSha256: "1" }, "1")).toBe("same");
    expect(diff(copy, { ...deployed(copy), assetSha256: "1" }, "2")).toBe("update");
  });
});

describe("what the replay refuses before running anything", () => {
  it.each([
    ["an unknown input", command({ stdin: UNKNOWN }), "an input is unknown"],
    ["environment variables", command({ environment: { A: "1" } }), "environment is set"],
    ["previous output in the environment", command({ addPreviousOutputInEnv: true }), "addPreviousOutputInEnv"],
    ["a connection without a pinned host key", command({ connection: { ...connection, hostKey: undefined } }), "connection.hostKey is missing"],
    ["a password connection", command({ connection: { ...connection, password: "p" } }), "unsupported connection fields: password"],
    ["another provider version", command({}, { version: "1.0.0" }), "carries out 1.2.1"],
    ["another resource type", command({}, { type: "command:local:Command" }), "knows command:remote:Command and command:remote:CopyToRemote only"],
  ])("%s", async (_what, r, message) => {
    await expect(replayUp([r], EMPTY_STATE)).rejects.toThrow(message);
  });
});
