/** `policy diff` for people (text, markdown for a pull request comment) and for tools (json). */
import type { Change, PolicyDiff } from "./diff.ts";

export type Format = "text" | "markdown" | "json";

function mark(c: Change): string {
  if (!c.risk) return "";
  return c.acknowledged ? `[${c.risk}, acknowledged] ` : `[RISKY: ${c.risk}] `;
}

function verdict(d: PolicyDiff): string {
  if (!d.risky) return "no risky changes";
  if (!d.unacknowledged) return `${d.risky} risky change${d.risky > 1 ? "s" : ""}, all acknowledged`;
  return `${d.unacknowledged} of ${d.risky} risky change${d.risky > 1 ? "s" : ""} not acknowledged: add an entry to \`acknowledge:\` in the stack with a reason, or undo the change`;
}

export function renderDiffText(d: PolicyDiff): string {
  const out = [`policy diff against ${d.base} (reference time ${d.now})`];
  for (const s of d.stacks) {
    out.push("", `stack ${s.stack}: ${s.status}`);
    for (const v of d.vms.filter((x) => x.stack === s.stack)) {
      out.push(`  ${v.host}/${v.vm} (${v.status})`);
      for (const c of v.changes) {
        out.push(`    - ${mark(c)}${c.text}`);
        if (c.acknowledged) out.push(`      acknowledged: "${c.acknowledged.reason}"`);
      }
    }
  }
  for (const a of d.acknowledgements.applied.filter((x) => x.used === 0)) {
    out.push("", `note: acknowledgement in ${a.stack} (${a.vm ?? "every VM"}, ${a.change}: "${a.reason}") matches no risky change in this diff`);
  }
  if (d.acknowledgements.earlier.length) {
    out.push("", `${d.acknowledgements.earlier.length} acknowledgement(s) from earlier changes are still in the stacks; they acknowledge nothing here`);
  }
  out.push("", verdict(d));
  return out.join("\n") + "\n";
}

const md = (s: string) => s.replace(/\|/g, "\\|");

export function renderDiffMarkdown(d: PolicyDiff): string {
  const head = d.unacknowledged ? "⛔" : d.risky ? "⚠️" : "✅";
  const out = [`### ${head} kvm-backup policy diff`, "", `Against \`${d.base}\`; ${verdict(d)}.`, ""];
  if (!d.vms.length) out.push("No VM's backups change.", "");
  else {
    out.push("| Stack | VM | Change | Risk |", "|---|---|---|---|");
    for (const v of d.vms) {
      for (const c of v.changes) {
        const risk = !c.risk ? "" : c.acknowledged ? `${c.risk} (acknowledged: “${md(c.acknowledged.reason)}”)` : `**${c.risk}**`;
        out.push(`| ${v.stack} | ${v.host}/${v.vm} | ${md(c.text)} | ${risk} |`);
      }
    }
    out.push("");
  }
  const applied = d.acknowledgements.applied;
  if (applied.length) {
    out.push("Acknowledgements added in this change:", "");
    for (const a of applied) {
      out.push(`- ${a.stack}: ${a.vm ?? "every VM"} — ${a.change}: “${a.reason}”${a.used ? ` (covers ${a.used})` : " (matches nothing)"}`);
    }
    out.push("");
  }
  out.push(`<sub>Stacks: ${d.stacks.map((s) => `${s.stack} (${s.status})`).join(", ") || "none"}. Reference time ${d.now}.</sub>`);
  return out.join("\n") + "\n";
}

export function renderDiff(d: PolicyDiff, format: Format): string {
  if (format === "json") return JSON.stringify(d, null, 2) + "\n";
  return format === "markdown" ? renderDiffMarkdown(d) : renderDiffText(d);
}
