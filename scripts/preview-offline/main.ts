/**
 * npm run preview:offline -- <stack> [--config-file overrides.json] [--json]
 * Prints the resource tree (URNs, types, parents) and the stack outputs; exits non-zero on any program
 * error or duplicate URN.
 */
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { capturePreview, formatOutputs, formatTree } from "./preview.ts";

const USAGE = "usage: npm run preview:offline -- <stack> [--config-file overrides.json] [--json]";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    options: { "config-file": { type: "string" }, json: { type: "boolean", default: false }, help: { type: "boolean", default: false } },
    allowPositionals: true,
  });
  if (values.help || positionals.length !== 1) {
    process.stderr.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const projectDir = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
  let overrides: Record<string, unknown> = {};
  if (values["config-file"]) {
    try {
      overrides = JSON.parse(readFileSync(values["config-file"], "utf8")) as Record<string, unknown>;
    } catch (e) {
      process.stderr.write(`preview:offline: cannot read --config-file ${values["config-file"]}: ${(e as Error).message}\n`);
      return 2;
    }
  }
  const result = await capturePreview({ projectDir, stack: positionals[0]!, overrides, echo: !values.json });
  if (values.json) {
    // Machine-readable: URNs, types, parents, options; input values are left out (they hold secrets).
    const tree = result.resources.map(({ urn, type, name, parent, custom, dependencies, deleteBeforeReplace, secretPaths, provider }) => ({
      urn, type, name, parent, custom, dependencies, deleteBeforeReplace, secretPaths, provider,
    }));
    process.stdout.write(JSON.stringify({ exitCode: result.exitCode, duplicates: result.duplicates, resources: tree }, null, 2) + "\n");
  } else {
    process.stdout.write(`Resources (${result.resources.length}):\n${formatTree(result.resources)}\n\nOutputs:\n${formatOutputs(result.outputs, result.secretOutputs)}\n`);
  }
  if (result.duplicates.length) {
    process.stderr.write(`preview:offline: duplicate URNs:\n  ${result.duplicates.join("\n  ")}\n`);
    return 1;
  }
  const errors = result.logs.filter((l) => l.severity === "error");
  if (result.exitCode !== 0 || errors.length) {
    process.stderr.write(`preview:offline: the program failed (exit ${result.exitCode}${errors.length ? `, ${errors.length} error(s) logged` : ""})\n`);
    return result.exitCode || 1;
  }
  return 0;
}

process.exitCode = await main();
