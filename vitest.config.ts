import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: "unit",
          include: ["test/unit/**/*.test.ts"],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts"],
          globalSetup: ["test/lab/globalSetup.ts"],
          testTimeout: 240_000,
          hookTimeout: 240_000,
          // Lab services (libvirtd, sshd) are shared by the run; real disks and domains are slow under TCG.
          fileParallelism: false,
        },
      },
    ],
  },
});
