#!/usr/bin/env node
// Operator entry point in this repository (`npx kvm-backup ...`): runs the TypeScript source through tsx.
// Hosts run the bundled dist/kvm-backup.mjs instead.
import { register } from "tsx/esm/api";
register();
await import("../runner/cli.ts");
