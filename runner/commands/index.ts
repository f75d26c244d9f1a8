import type { Command } from "./command.ts";
import { validate } from "./validate.ts";

/** Every subcommand, in the order `--help` lists them. Add new commands here. */
export const commands: Command[] = [validate];
