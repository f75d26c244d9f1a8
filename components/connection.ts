import type * as pulumi from "@pulumi/pulumi";
import type { types } from "@pulumi/command";

/** What a KvmHost needs to reach its host; the private key is a secret Output. */
export interface HostConnectionArgs {
  address: string;
  port: number;
  user: string;
  /** The pinned OpenSSH public host key line: the provider refuses any other host key. */
  hostKey: string;
  privateKey: pulumi.Input<string>;
}

export type Connection = types.input.remote.ConnectionArgs;

/**
 * The one connection object of a host, shared by every command and copy on it. @pulumi/command stores it
 * (as a secret) with each resource; building it once keeps it identical everywhere.
 */
export function hostConnection(args: HostConnectionArgs): Connection {
  return { host: args.address, port: args.port, user: args.user, hostKey: args.hostKey, privateKey: args.privateKey };
}
