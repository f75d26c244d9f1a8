declare const __KVM_BACKUP_VERSION__: string | undefined;

/** Baked in by the bundler; when run from source, read from package.json. */
export const VERSION: string =
  typeof __KVM_BACKUP_VERSION__ === "string"
    ? __KVM_BACKUP_VERSION__
    : ((await import("../package.json", { with: { type: "json" } })).default as { version: string }).version + "-dev";
