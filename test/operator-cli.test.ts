import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { requireBuilt, runPlugin } from './helpers/plugin';

/** calico-ipam's operator commands, run as the built binary against a real etcd. */

let etcd: EtcdServer;
const ipam = (args: string[]) => runPlugin('calico-ipam', { env: {}, args: [...args, '--etcd-endpoints', etcd.endpoint] });

async function add(containerId: string, node = 'ops-node'): Promise<string> {
  const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'ops', type: 'calico-ipam', etcd_endpoints: etcd.endpoint, nodename: node, ipam: { type: 'calico-ipam' } });
  const r = await runPlugin('calico-ipam', {
    env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: containerId, CNI_NETNS: '/var/run/netns/none', CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' },
    stdin: conf,
  });
  expect(r.status, r.stdout + r.stderr).toBe(0);
  return ((r.json as { ips: { address: string }[] }).ips[0]?.address ?? '').split('/')[0] ?? '';
}

beforeAll(async () => {
  requireBuilt();
  etcd = await startEtcd();
  expect((await ipam(['pool', 'add', '10.60.0.0/24', '--block-size', '28'])).status).toBe(0);
});
afterAll(async () => {
  await etcd?.stop();
});

describe('calico-ipam operator commands', () => {
  it('--help lists every command; an unknown command is a clear error', async () => {
    const help = await runPlugin('calico-ipam', { env: {}, args: ['--help'] });
    expect(help.status).toBe(0);
    for (const c of ['pool add', 'pool list', 'pool rm', 'node set', 'routes', 'show', 'release', 'gc', 'check', 'config']) expect(help.stdout).toContain(`calico-ipam ${c}`);
    const bad = await runPlugin('calico-ipam', { env: {}, args: ['frobnicate'] });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/unknown command "frobnicate"/);
    expect(bad.stderr).not.toMatch(/^\s+at /m);
  });

  it('show reports pools and blocks per node, as a table and as JSON', async () => {
    const ip1 = await add('show1', 'node-x');
    await add('show2', 'node-y');
    const table = await ipam(['show']);
    expect(table.status, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/10-60-0-0-24\s+10\.60\.0\.0\/24\s+\/28\s+2\s+2\s+256\s+false/);
    expect(table.stdout).toContain('host:node-x');
    expect(table.stdout).toContain('host:node-y');
    const json = await ipam(['show', '-o', 'json']);
    const usage = JSON.parse(json.stdout) as { blocks: { affinity: string; used: number; handles: string[] }[] };
    expect(usage.blocks.find((b) => b.affinity === 'host:node-x')).toMatchObject({ used: 1, handles: ['ops.show1'] });
    const who = await ipam(['show', '--ip', ip1]);
    expect(who.stdout).toContain(`${ip1}: held by handle ops.show1`);
  });

  it('release --ip and --handle free addresses; check reports consistent data, then a corrupted handle', async () => {
    const ip = await add('rel1');
    await add('rel2');
    expect((await ipam(['release', '--ip', ip])).stdout).toContain('released handle ops.rel1');
    expect(await etcd.get('/calico/ipam/v2/handle/ops.rel1')).toBeUndefined();
    expect((await ipam(['show', '--ip', ip])).stdout).toContain('free');
    expect((await ipam(['release', '--handle', 'ops.rel2'])).status).toBe(0);
    expect(await etcd.get('/calico/ipam/v2/handle/ops.rel2')).toBeUndefined();

    const ok = await ipam(['check']);
    expect(ok.status, ok.stdout).toBe(0);
    expect(ok.stdout).toContain('consistent');
    await add('broken');
    const key = '/calico/ipam/v2/handle/ops.broken';
    const handle = JSON.parse((await etcd.get(key)) ?? '{}') as { block: Record<string, number> };
    const cidr = Object.keys(handle.block)[0] ?? '';
    await etcd.put(key, JSON.stringify({ block: { [cidr]: 3 }, deleted: false }));
    await etcd.put('/calico/ipam/v2/host/ghost/ipv4/block/10.60.0.240-28', '{"state":"pending","deleted":false}');
    const bad = await ipam(['check']);
    expect(bad.status).toBe(1);
    expect(bad.stdout).toContain(`${key}: counts 3 in block ${cidr}, but 1 ordinal(s) there carry the handle`);
    expect(bad.stdout).toMatch(/ghost.*pending/);
    await etcd.put(key, JSON.stringify({ block: { [cidr]: 1 }, deleted: false }));
    await etcd.del('/calico/ipam/v2/host/ghost/');
  });

  it('config shows and changes /calico/ipam/v2/config with upstream field names, and refuses a dead end', async () => {
    const set = await ipam(['config', '--strict-affinity', 'true', '--max-blocks-per-host', '3', '--ip-cooldown-seconds', '0']);
    expect(set.status, set.stderr).toBe(0);
    expect(JSON.parse((await etcd.get('/calico/ipam/v2/config')) ?? '{}')).toEqual({ auto_allocate_blocks: true, strict_affinity: true, maxBlocksPerHost: 3, ipCooldownSeconds: 0 });
    const show = await ipam(['config']);
    expect(JSON.parse(show.stdout)).toMatchObject({ strict_affinity: true, maxBlocksPerHost: 3 });
    const bad = await ipam(['config', '--strict-affinity', 'false', '--auto-allocate-blocks', 'false']);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/no way to get addresses/);
    expect((await ipam(['config', '--strict-affinity', 'false', '--max-blocks-per-host', '0'])).status).toBe(0);
    expect(JSON.parse((await etcd.get('/calico/ipam/v2/config')) ?? '{}')).toEqual({ auto_allocate_blocks: true, ipCooldownSeconds: 0 });
  });

  it('pool rm refuses a pool with addresses in use, and removes it with --force', async () => {
    expect((await ipam(['pool', 'add', '10.61.0.0/28', '--block-size', '28', '--name', 'tiny'])).status).toBe(0);
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'ops', type: 'calico-ipam', etcd_endpoints: etcd.endpoint, nodename: 'ops-node', ipam: { type: 'calico-ipam', ipv4_pools: ['tiny'] } });
    const r = await runPlugin('calico-ipam', { env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'tiny1', CNI_NETNS: '/x', CNI_IFNAME: 'eth0', CNI_PATH: '/x' }, stdin: conf });
    expect(r.status, r.stdout).toBe(0);
    const refused = await ipam(['pool', 'rm', 'tiny']);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/still has addresses in use/);
    expect(await etcd.get('/calico/resources/v3/projectcalico.org/ippools/tiny')).toBeDefined();
    expect((await ipam(['pool', 'rm', 'tiny', '--force'])).status).toBe(0);
    expect(await etcd.get('/calico/resources/v3/projectcalico.org/ippools/tiny')).toBeUndefined();
  });
});
