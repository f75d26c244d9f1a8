import { parseArgs } from "node:util";
import { ConfigError, formatProblem } from "../config/configErrors.ts";
import { displayPath, loadStackFile, stackFilePath } from "../config/loadStack.ts";
import { UsageError } from "../errors.ts";
import type { Command } from "./command.ts";

export const validate: Command = {
  name: "validate",
  summary: "check stack files offline with the schema (exit 0 valid, 2 invalid)",
  usage: "kvm-backup validate [--stack NAME ...] [FILE ...]\n  Without arguments: every stacks/Pulumi.*.yaml under the current directory.",
  async run(argv, ctx) {
    const { values, positionals } = parseArgs({ args: argv, options: { stack: { type: "string", multiple: true } }, allowPositionals: true });
    const files = [...(values.stack ?? []).map((s) => stackFilePath(process.cwd(), s)), ...positionals];
    if (!files.length) {
      const { readdirSync } = await import("node:fs");
      let names: string[] = [];
      try {
        names = readdirSync("stacks").filter((n) => /^Pulumi\..+\.yaml$/.test(n));
      } catch {
        /* reported below */
      }
      if (!names.length) throw new UsageError("no stack files given and none found in ./stacks (Pulumi.<stack>.yaml); pass --stack NAME or FILE");
      files.push(...names.sort().map((n) => `stacks/${n}`));
    }
    let bad = 0;
    for (const file of files) {
      try {
        loadStackFile(file);
        ctx.stdout(`${displayPath(file)}: valid\n`);
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        bad++;
        for (const p of e.problems) ctx.stdout(formatProblem(p) + "\n");
      }
    }
    return bad ? 2 : 0;
  },
};
