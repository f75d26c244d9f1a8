import type { Command } from "./command.ts";
import { validate } from "./validate.ts";
import { ship } from "./ship.ts";
import { prune } from "./prune.ts";
import { protect } from "./protect.ts";
import { verifyTarget } from "./verifyTarget.ts";
import { run } from "./run.ts";
import { recover } from "./recover.ts";
import { list } from "./list.ts";
import { verify } from "./verify.ts";
import { restore } from "./restore.ts";
import { drill } from "./drill.ts";
import { status } from "./status.ts";
import { doctor } from "./doctor.ts";
import { shipStatus } from "./shipStatus.ts";
import { policy } from "./policy.ts";

/** Every subcommand, in the order `--help` lists them. Add new commands here. */
export const commands: Command[] = [validate];
commands.push(ship, prune, protect, verifyTarget, shipStatus);
commands.splice(1, 0, run, recover);
commands.splice(3, 0, list, verify, restore, status, doctor);
commands.push(policy);
commands.splice(commands.indexOf(restore) + 1, 0, drill);
