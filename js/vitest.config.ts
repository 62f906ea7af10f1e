import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "node",
    include: ["test/**/*.test.ts"],
    // The shared fixture is written by the Python side; a missing file is reported by the test itself.
    testTimeout: 10_000,
  },
});
