import { parseArgs } from "node:util";
import { ConfigError, formatProblem } from "../config/configErrors.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { diffStacks, type StackSide } from "../policy/diff.ts";
import { planStacks } from "../policy/plan.ts";
import { type Format, renderDiff } from "../policy/renderDiff.ts";
import { renderPlan } from "../policy/renderPlan.ts";
import { readSizesFiles } from "../policy/sizes.ts";
import {
  defaultBaseRef,
  parseStackText,
  resolveRef,
  stacksAtRef,
  stacksInWorkTree,
  stackTextAtRef,
  stackTextInWorkTree,
} from "../policy/stackSource.ts";
import type { Command, CommandContext } from "./command.ts";

const USAGE = [
  "kvm-backup policy diff [--base REF] [--stack S ...] [--format text|markdown|json]",
  "kvm-backup policy plan [--stack S ...] [--days N] [--sizes status.json ...] [--format text|markdown|json]",
  "  diff: what changes for every VM between REF (default: the merge base with origin/HEAD, main or master) and",
  "        the working tree; exit 0 nothing risky, 3 a risky change not acknowledged, 2 invalid stack or usage.",
  "  plan: next runs, backups kept at steady state on staging and every target, storage per target.",
  "        --days N: length of the simulated history (default: as long as the retention rules reach).",
  "        --sizes: `kvm-backup status --json` of a host (repeatable), for the storage column.",
].join("\n");

function format(v: string | undefined): Format {
  const f = v ?? "text";
  if (f !== "text" && f !== "markdown" && f !== "json") throw new UsageError(`--format ${f} is not allowed (allowed: text, markdown, json)`);
  return f;
}

function parseOrReport(text: string, shown: string, ctx: CommandContext, bad: { n: number }) {
  try {
    return parseStackText(text, shown);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    bad.n++;
    for (const p of e.problems) ctx.stdout(formatProblem(p) + "\n");
    return null;
  }
}

async function diff(argv: string[], ctx: CommandContext): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { base: { type: "string" }, stack: { type: "string", multiple: true }, format: { type: "string" } } });
  const fmt = format(values.format);
  const cwd = process.cwd();
  const base = values.base
    ? { ref: await resolveRef(values.base, cwd), label: values.base }
    : await defaultBaseRef(cwd).then((b) => ({ ref: b.ref, label: `merge base with ${b.branch} (${b.ref.slice(0, 12)})` }));
  const names = values.stack?.length ? values.stack : [...new Set([...(await stacksAtRef(base.ref, cwd)), ...stacksInWorkTree(cwd)])].sort();
  if (!names.length) throw new UsageError("no stack files in ./stacks at the base ref or in the working tree; run in the policy repository or pass --stack");
  const bad = { n: 0 };
  const baseSides: StackSide[] = [];
  const headSides: StackSide[] = [];
  for (const stack of names) {
    const old = await stackTextAtRef(stack, base.ref, cwd);
    const now = stackTextInWorkTree(stack, cwd);
    baseSides.push({ stack, config: old === null ? null : parseOrReport(old, `${base.label}:stacks/Pulumi.${stack}.yaml`, ctx, bad) });
    headSides.push({ stack, config: now === null ? null : parseOrReport(now, `stacks/Pulumi.${stack}.yaml`, ctx, bad) });
  }
  if (bad.n) {
    ctx.stdout("policy diff needs valid stack files on both sides; fix the problems above (`kvm-backup validate`)\n");
    return ExitCode.usage;
  }
  const d = diffStacks(baseSides, headSides, { baseLabel: base.label, now: new Date() });
  ctx.stdout(renderDiff(d, fmt));
  return d.unacknowledged ? ExitCode.preflight : ExitCode.ok;
}

async function plan(argv: string[], ctx: CommandContext): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { stack: { type: "string", multiple: true }, days: { type: "string" }, sizes: { type: "string", multiple: true }, format: { type: "string" } },
  });
  const fmt = format(values.format);
  let days: number | undefined;
  if (values.days !== undefined) {
    days = Number(values.days);
    if (!Number.isInteger(days) || days < 1 || days > 3660) throw new UsageError(`--days ${values.days} must be a whole number of days from 1 to 3660`);
  }
  const cwd = process.cwd();
  const names = values.stack?.length ? values.stack : stacksInWorkTree(cwd);
  if (!names.length) throw new UsageError("no stack files in ./stacks; run in the policy repository or pass --stack");
  const bad = { n: 0 };
  const stacks = [];
  for (const stack of names) {
    const text = stackTextInWorkTree(stack, cwd);
    if (text === null) throw new UsageError(`no stack file stacks/Pulumi.${stack}.yaml`);
    const config = parseOrReport(text, `stacks/Pulumi.${stack}.yaml`, ctx, bad);
    if (config) stacks.push({ stack, config });
  }
  if (bad.n) return ExitCode.usage;
  const sizes = values.sizes?.length ? readSizesFiles(values.sizes) : undefined;
  ctx.stdout(renderPlan(await planStacks(stacks, { now: new Date(), days, sizes }), fmt));
  return ExitCode.ok;
}

export const policy: Command = {
  name: "policy",
  summary: "review stack changes offline: `policy diff` (consequences, exit 3 if risky) and `policy plan`",
  usage: USAGE,
  async run(argv, ctx) {
    const [sub, ...rest] = argv;
    if (sub === "diff") return diff(rest, ctx);
    if (sub === "plan") return plan(rest, ctx);
    throw new UsageError(`${sub ? `unknown policy subcommand "${sub}"` : "no policy subcommand given"}; use diff or plan\n\nusage: ${USAGE}`);
  },
};
