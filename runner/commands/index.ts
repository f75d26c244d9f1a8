import type { Command } from "./command.ts";
import { validate } from "./validate.ts";
import { ship } from "./ship.ts";
import { prune } from "./prune.ts";
import { protect } from "./protect.ts";
import { verifyTarget } from "./verifyTarget.ts";
import { run } from "./run.ts";
import { recover } from "./recover.ts";
import { shipStatus } from "./shipStatus.ts";

/** Every subcommand, in the order `--help` lists them. Add new commands here. */
export const commands: Command[] = [validate];
commands.push(ship, prune, protect, verifyTarget, shipStatus);
commands.splice(1, 0, run, recover);
