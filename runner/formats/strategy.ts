/** The format strategy of a policy. */
import { policyFormat, type Policy } from "../config/schema.ts";
import type { BackupFormatStrategy } from "./format.ts";
import { imageFormat } from "./imageFormat.ts";
import { repositoryFormat } from "./repositoryFormat.ts";

export function formatFor(policy: Policy): BackupFormatStrategy {
  return policyFormat(policy) === "repository" ? repositoryFormat : imageFormat;
}
