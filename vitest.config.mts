import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Separate processes: the harness registers process 'exit' handlers that stop etcd and remove netns.
    pool: 'forks',
    // A 2-core machine: more workers only make the process-spawning integration tests slower.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
