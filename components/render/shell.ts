/**
 * Quoting for the few values the deploy scripts name (host-side paths, policy and target names, hashes).
 * Those values are already restricted by the schema to a conservative character set; quoting them anyway
 * means a future schema change cannot turn a name into shell syntax.
 */
export function shq(value: string): string {
  if (value.includes("\0")) throw new Error("a shell argument cannot contain a NUL byte");
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
