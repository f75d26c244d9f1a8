import type * as pulumi from "@pulumi/pulumi";

/**
 * Options every remote command of the deploy uses.
 * - deleteBeforeReplace: a replaced command's `delete` removes the same paths its successor's `create`
 *   writes; create-before-delete would remove the new files.
 * - addPreviousOutputInEnv: false, because passing PULUMI_COMMAND_STDOUT needs sshd AcceptEnv and the
 *   scripts do not use it.
 */
export const COMMAND_ARGS = { addPreviousOutputInEnv: false } as const;

export function commandOptions(parent: pulumi.Resource, dependsOn: pulumi.Input<pulumi.Resource>[] = []): pulumi.CustomResourceOptions {
  return { parent, dependsOn, deleteBeforeReplace: true };
}
