import { spawn } from 'node:child_process';
import path from 'node:path';
import { expect, it } from 'vitest';
import { requireBuilt } from './helpers/plugin';

/** The README's main command, run end to end (without the package set-up, which the test run did). */
it('the two-host demo networks four pods, each host on its own block, and every ping succeeds', async () => {
  requireBuilt();
  const { status, out } = await new Promise<{ status: number; out: string }>((resolve) => {
    const child = spawn('bash', [path.resolve(__dirname, '../scripts/demo.sh'), '--no-setup'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.on('close', (code) => resolve({ status: code ?? 1, out }));
  });
  expect(status, out).toBe(0);
  const pods = [...out.matchAll(/^pod (\w+) on (host-[ab]): (10\.244\.\d+\.\d+)$/gm)].map((m) => ({ pod: m[1], host: m[2], ip: m[3] ?? '' }));
  expect(pods).toHaveLength(4);
  expect(new Set(pods.map((p) => p.ip)).size).toBe(4);
  const blocks = [...out.matchAll(/^(10\.244\.\d+\.\d+\/26)\s+demo-pool\s+host:(host-[ab])/gm)].map((m) => ({ cidr: m[1], host: m[2] }));
  expect(new Set(blocks.map((b) => b.host))).toEqual(new Set(['host-a', 'host-b']));
  expect(out).toMatch(/blackhole 10\.244\.\d+\.\d+\/26 proto bird/);
  expect(out).toMatch(/10\.244\.\d+\.\d+\/26 via 10\.99\.0\.[12] dev eth0 proto bird/);
  expect(out).toContain('pings: 6 of 6 succeeded');
  expect(out).toContain('IPAM handles left in etcd: 0');
}, 180_000);
