// Bundles the runner into one file that needs only Node >= 18 on the host (no node_modules there).
import { build } from "esbuild";
import { readFileSync } from "node:fs";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
await build({
  entryPoints: [new URL("./cli.ts", import.meta.url).pathname],
  outfile: new URL("../dist/kvm-backup.mjs", import.meta.url).pathname,
  bundle: true,
  platform: "node",
  target: "node18",
  format: "esm",
  minify: false,
  legalComments: "none",
  define: { __KVM_BACKUP_VERSION__: JSON.stringify(pkg.version) },
  // Some bundled CommonJS dependencies call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __kvmCreateRequire } from 'node:module'; const require = __kvmCreateRequire(import.meta.url);" },
  logLevel: "warning",
});
