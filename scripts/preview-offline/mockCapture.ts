/**
 * Runs the program under pulumi.runtime.setMocks and captures every registration from the wire (see
 * capture.ts). For tests: the mock provider answers each resource with its inputs, a Command's stdout with
 * a fixed version line (or what `commandStdout` gives, e.g. the stdout a replay on a real host recorded).
 */
import * as pulumi from "@pulumi/pulumi";
import { createRequire } from "node:module";
import { runProgram, type ProgramOptions } from "../../components/program.ts";
import { stackFilePath } from "../../runner/config/loadStack.ts";
import { type CapturedResource, captureRegistration } from "./capture.ts";
import { pulumiConfigFor } from "./stackConfig.ts";

const require = createRequire(import.meta.url);
const settings = require("@pulumi/pulumi/runtime/settings") as {
  getMonitor(): { registerResource(req: unknown, cb: (err: unknown, resp: { getUrn(): string }) => void): void };
  waitForRPCs(): Promise<void>;
};

export const MOCK_RUNNER_VERSION = "0.0.0-mock";

export interface MockCaptureOptions extends Omit<ProgramOptions, "config"> {
  overrides?: Record<string, unknown>;
  /** A command's stdout by resource name (e.g. what it printed on a real host); default MOCK_RUNNER_VERSION. */
  commandStdout?: (name: string) => string | undefined;
}

export async function captureWithMocks(opts: MockCaptureOptions): Promise<{ resources: CapturedResource[]; outputs: unknown }> {
  await pulumi.runtime.setMocks(
    {
      newResource: (args) => ({
        id: `${args.name}-id`,
        state:
          args.type === "command:remote:Command"
            ? { ...args.inputs, stdout: opts.commandStdout?.(args.name) ?? `${MOCK_RUNNER_VERSION}\n`, stderr: "" }
            : args.inputs,
      }),
      call: () => ({}),
    },
    "kvm-backup",
    opts.stack,
    false,
  );
  const env = pulumiConfigFor(stackFilePath(opts.projectDir, opts.stack), opts.overrides);
  pulumi.runtime.setAllConfig(env.config, env.secretKeys);
  const resources: CapturedResource[] = [];
  const monitor = settings.getMonitor();
  const register = monitor.registerResource.bind(monitor);
  monitor.registerResource = (req, cb) =>
    register(req, (err, resp) => {
      if (!err) resources.push(captureRegistration(req as Parameters<typeof captureRegistration>[0], resp.getUrn()));
      cb(err, resp);
    });
  const hosts = runProgram({ ...opts, config: new pulumi.Config("kvm-backup") });
  const outputs = await new Promise((resolve) => pulumi.output(hosts).apply(resolve));
  await settings.waitForRPCs();
  return { resources, outputs };
}
