/**
 * The kvm-backup Pulumi program: validates stacks/Pulumi.<stack>.yaml, then installs the runner, its config,
 * the target keys and one systemd timer per policy on every host of the stack.
 * Stack output `hosts`: per host the installed runner version and release, the config hash and, per policy,
 * the schedule and its next run.
 */
import * as pulumi from "@pulumi/pulumi";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { runProgram } from "./components/program.ts";

export const hosts = runProgram({ projectDir: dirname(fileURLToPath(import.meta.url)), stack: pulumi.getStack() });
