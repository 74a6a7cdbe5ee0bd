/**
 * calico-ipam end to end: the BUILT binary, run as separate processes (many at once, on several node
 * names), against a real etcd; every stored value is read back with etcdctl and checked against
 * libcalico-go's layout and against checkIpamInvariants.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { cniEnv, requireBuilt, runPlugin, type PluginRun } from './helpers/plugin';
import { ipamConf } from './helpers/conf';
import { checkIpamInvariants } from './helpers/ipam-invariants';
import { cidrContains, formatCidr, parseCidr, parseIp } from '../shared/ipam/cidr';
import { Allocator } from '../shared/ipam/allocator';
import { addPool } from '../shared/ipam/pools';
import { HttpEtcdStore } from '../shared/etcd/http-store';
import { DEFAULT_REQUEST_TIMEOUT_MS } from '../shared/etcd/config';

const NODES = ['node-a', 'node-b', 'node-c'] as const;
const PROCS_PER_NODE = 8;
const ADDS_PER_PROC = 40;
const TOTAL = NODES.length * PROCS_PER_NODE * ADDS_PER_PROC;
const MAIN_POOL = '10.128.0.0/16';
const BLOCK_KEYS = ['cidr', 'affinity', 'allocations', 'unallocated', 'attributes', 'sequenceNumber', 'sequenceNumberForAllocation', 'deleted'];
const GO_TIME = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,9})? \+0000 UTC$/;
/** Each plugin process may wait long on a busy 2-core machine; the tests bound the whole run instead. */
const PROC_TIMEOUT = 180_000;

let etcd: EtcdServer | undefined;

function server(): EtcdServer {
  if (!etcd) throw new Error('etcd not started');
  return etcd;
}

interface CallOptions {
  ipam?: Record<string, unknown>;
  args?: string;
  cniVersion?: string;
}

function call(command: 'ADD' | 'DEL', node: string, containerId: string, o: CallOptions = {}): Promise<PluginRun> {
  return runPlugin('calico-ipam', {
    env: cniEnv({ command, containerId, netns: `/var/run/netns/${containerId}`, ...(o.args ? { args: o.args } : {}) }),
    stdin: ipamConf({ endpoint: server().endpoint, nodename: node, ...(o.ipam ? { ipam: o.ipam } : {}), ...(o.cniVersion ? { cniVersion: o.cniVersion } : {}) }),
    timeoutMs: PROC_TIMEOUT,
  });
}

function cli(args: string[]): Promise<PluginRun> {
  return runPlugin('calico-ipam', { env: {}, args: [...args, '--etcd-endpoints', server().endpoint], timeoutMs: PROC_TIMEOUT });
}

interface Added {
  node: string;
  containerId: string;
  run: PluginRun;
}

/** Runs `streams` sequences in parallel; each runs its jobs one after another. */
async function inStreams<T, R>(streams: T[][], fn: (job: T) => Promise<R>): Promise<R[]> {
  const per = await Promise.all(
    streams.map(async (jobs) => {
      const out: R[] = [];
      for (const j of jobs) out.push(await fn(j));
      return out;
    }),
  );
  return per.flat();
}

function ipsOf(r: PluginRun): { address: string; version?: string }[] {
  return ((r.json as { ips?: { address: string; version?: string }[] } | undefined)?.ips ?? []);
}

function describeFailures(runs: Added[]): string {
  return runs
    .filter((a) => a.run.status !== 0)
    .slice(0, 5)
    .map((a) => `${a.node}/${a.containerId}: status ${a.run.status} ${a.run.stdout.trim()} ${a.run.stderr.trim().slice(0, 500)}`)
    .join('\n');
}

/** The block a result address (block-masked, e.g. 10.128.3.5/26) belongs to, as "10.128.3.0/26". */
function blockOf(address: string): string {
  const c = parseCidr(address);
  if (!c) throw new Error(`not a CIDR: ${address}`);
  return formatCidr(c);
}

function blockKey(cidr: string): string {
  return `/calico/ipam/v2/assignment/ipv${cidr.includes(':') ? 6 : 4}/block/${cidr.replace('/', '-')}`;
}

interface RawBlock {
  cidr: string;
  affinity: string | null;
  allocations: (number | null)[];
  unallocated: number[];
  attributes: { handle_id: string; secondary: Record<string, string> }[];
}

async function ipamState(): Promise<Map<string, string>> {
  return server().getPrefix('/calico/ipam/');
}

function allocatedOrdinals(kv: Map<string, string>): number {
  let n = 0;
  for (const [k, v] of kv) if (k.startsWith('/calico/ipam/v2/assignment/')) n += (JSON.parse(v) as RawBlock).allocations.filter((a) => a !== null).length;
  return n;
}

function handleKeys(kv: Map<string, string>): string[] {
  return [...kv.keys()].filter((k) => k.startsWith('/calico/ipam/v2/handle/'));
}

beforeAll(async () => {
  requireBuilt();
  etcd = await startEtcd();
});

afterAll(async () => {
  await etcd?.stop();
});

describe('calico-ipam on etcd', () => {
  let added: Added[] = [];

  it('pool add (CLI) writes a Calico v3 IPPool', async () => {
    const r = await cli(['pool', 'add', MAIN_POOL, '--name', 'main']);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('main');
    const raw = await server().get('/calico/resources/v3/projectcalico.org/ippools/main');
    expect(raw).toBeDefined();
    const pool = JSON.parse(raw ?? '{}') as { kind: string; apiVersion: string; metadata: Record<string, unknown>; spec: Record<string, unknown> };
    expect(pool.kind).toBe('IPPool');
    expect(pool.apiVersion).toBe('projectcalico.org/v3');
    expect(pool.metadata.name).toBe('main');
    expect(pool.metadata.uid).toEqual(expect.any(String));
    expect(pool.metadata.creationTimestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(pool.metadata.resourceVersion).toBeUndefined();
    expect(pool.spec).toMatchObject({ cidr: MAIN_POOL, blockSize: 26, nodeSelector: 'all()' });
    const again = await cli(['pool', 'add', MAIN_POOL, '--name', 'main']);
    expect(again.status).not.toBe(0);
  });

  it(
    `${NODES.length} nodes × ${PROCS_PER_NODE} parallel processes × ${ADDS_PER_PROC} ADDs: ${TOTAL} distinct addresses in the node's own blocks, stored as upstream`,
    async () => {
      const streams: { node: string; containerId: string }[][] = [];
      for (const node of NODES) {
        for (let p = 0; p < PROCS_PER_NODE; p++) {
          streams.push(Array.from({ length: ADDS_PER_PROC }, (_, i) => ({ node, containerId: `c-${node}-${p}-${i}` })));
        }
      }
      added = await inStreams(streams, async (j) => ({ ...j, run: await call('ADD', j.node, j.containerId) }));
      expect(added).toHaveLength(TOTAL);
      expect(added.filter((a) => a.run.status !== 0), describeFailures(added)).toHaveLength(0);

      const pool = parseCidr(MAIN_POOL);
      if (!pool) throw new Error('parse');
      const seen = new Map<string, string>();
      for (const a of added) {
        const ips = ipsOf(a.run);
        expect(ips, a.run.stdout).toHaveLength(1);
        const address = ips[0]?.address ?? '';
        expect(address).toMatch(/^10\.128\.\d+\.\d+\/26$/);
        const ip = address.split('/')[0] ?? '';
        expect(seen.get(ip), `${ip} handed to ${a.containerId} and ${seen.get(ip)}`).toBeUndefined();
        seen.set(ip, a.containerId);
        const parsed = parseIp(ip);
        expect(parsed && cidrContains(pool, parsed.family, parsed.value)).toBe(true);
      }
      expect(seen.size).toBe(TOTAL);

      const kv = await ipamState();
      for (const a of added) {
        const address = ipsOf(a.run)[0]?.address ?? '';
        const ip = address.split('/')[0] ?? '';
        const cidr = blockOf(address);
        const rawBlock = kv.get(blockKey(cidr));
        expect(rawBlock, `block ${cidr} of ${a.containerId}`).toBeDefined();
        const block = JSON.parse(rawBlock ?? '{}') as RawBlock;
        expect(block.affinity).toBe(`host:${a.node}`);
        const ord = Number((parseIp(ip)?.value ?? 0n) - (parseCidr(cidr)?.base ?? 0n));
        const attr = block.attributes[block.allocations[ord] ?? -1];
        expect(attr?.handle_id).toBe(`net1.${a.containerId}`);
        expect(attr?.secondary.node).toBe(a.node);
        expect(attr?.secondary.timestamp).toMatch(GO_TIME);
        expect(kv.get(`/calico/ipam/v2/handle/net1.${a.containerId}`)).toBe(`{"block":{"${cidr}":1},"deleted":false}`);
      }

      const blocks = [...kv].filter(([k]) => k.startsWith('/calico/ipam/v2/assignment/ipv4/block/'));
      const perNode = new Map<string, number>();
      for (const [key, value] of blocks) {
        const obj = JSON.parse(value) as RawBlock;
        expect(key).toBe(blockKey(obj.cidr));
        expect(Object.keys(obj)).toEqual(BLOCK_KEYS);
        expect(obj.allocations).toHaveLength(64);
        expect(value).toMatch(/"sequenceNumber":\d{19},/);
        expect(value).toMatch(/"sequenceNumberForAllocation":\{("\d+":\d{19},?)*\},"deleted":false\}$/);
        if (obj.affinity) perNode.set(obj.affinity, (perNode.get(obj.affinity) ?? 0) + 1);
      }
      for (const node of NODES) expect(perNode.get(`host:${node}`) ?? 0).toBeGreaterThanOrEqual(Math.ceil((TOTAL / NODES.length) / 64));

      const affinities = [...kv].filter(([k]) => k.startsWith('/calico/ipam/v2/host/'));
      expect(affinities.length).toBe(blocks.length);
      for (const [key, value] of affinities) {
        expect(key).toMatch(/^\/calico\/ipam\/v2\/host\/node-[abc]\/ipv4\/block\/10\.128\.\d+\.\d+-26$/);
        expect(value).toBe('{"state":"confirmed","deleted":false}');
      }
      expect(handleKeys(kv)).toHaveLength(TOTAL);
      expect(allocatedOrdinals(kv)).toBe(TOTAL);
      expect(checkIpamInvariants(kv)).toEqual([]);

      for (const node of NODES) {
        const n = JSON.parse((await server().get(`/calico/resources/v3/projectcalico.org/nodes/${node}`)) ?? 'null') as { kind: string; metadata: { name: string } } | null;
        expect(n?.kind).toBe('Node');
        expect(n?.metadata.name).toBe(node);
      }
    },
    900_000,
  );

  it('a second ADD with the same container id returns the same address and allocates nothing', async () => {
    expect(added.length).toBe(TOTAL);
    const sample = NODES.flatMap((node) => added.filter((a) => a.node === node).slice(0, 2));
    const before = await ipamState();
    const again = await Promise.all(sample.map((a) => call('ADD', a.node, a.containerId)));
    again.forEach((r, i) => {
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(ipsOf(r)).toEqual(ipsOf(sample[i]?.run ?? r));
    });
    const after = await ipamState();
    expect(allocatedOrdinals(after)).toBe(allocatedOrdinals(before));
    expect(after).toEqual(before);
  });

  it(
    `DEL of all ${TOTAL} (in parallel) frees every address and removes every handle; a repeated DEL succeeds`,
    async () => {
      expect(added.length).toBe(TOTAL);
      const byStream = new Map<string, Added[]>();
      for (const a of added) {
        const stream = a.containerId.replace(/-\d+$/, '');
        byStream.set(stream, [...(byStream.get(stream) ?? []), a]);
      }
      const dels = await inStreams([...byStream.values()], async (a) => ({ ...a, run: await call('DEL', a.node, a.containerId) }));
      expect(dels.filter((d) => d.run.status !== 0), describeFailures(dels)).toHaveLength(0);
      for (const d of dels) expect(d.run.stdout.trim()).toBe('');

      const kv = await ipamState();
      expect(handleKeys(kv)).toEqual([]);
      expect(allocatedOrdinals(kv)).toBe(0);
      for (const a of added) {
        const address = ipsOf(a.run)[0]?.address ?? '';
        const cidr = blockOf(address);
        const block = JSON.parse(kv.get(blockKey(cidr)) ?? '{}') as RawBlock;
        const ord = Number((parseIp(address.split('/')[0] ?? '')?.value ?? 0n) - (parseCidr(cidr)?.base ?? 0n));
        expect(block.allocations[ord]).toBeNull();
        expect(block.unallocated).toContain(ord);
        // Empty blocks stay affine to their node, as upstream.
        expect(block.affinity).toBe(`host:${a.node}`);
      }
      expect(checkIpamInvariants(kv)).toEqual([]);

      const repeat = await Promise.all(added.slice(0, 3).map((a) => call('DEL', a.node, a.containerId)));
      for (const r of repeat) expect(r.status, r.stdout + r.stderr).toBe(0);
    },
    900_000,
  );

  it('a pool too small for the demand fails the excess with code 110, and DEL of all leaves nothing allocated', async () => {
    const pool = await cli(['pool', 'add', '10.200.0.0/28', '--name', 'tiny', '--block-size', '28']);
    expect(pool.status, pool.stdout + pool.stderr).toBe(0);
    const ipam = { ipv4_pools: ['tiny'] };
    const streams = [0, 1, 2, 3].map((s) =>
      Array.from({ length: 5 }, (_, i) => ({ node: s % 2 === 0 ? 'tiny-a' : 'tiny-b', containerId: `tiny-${s}-${i}` })),
    );
    const runs = await inStreams(streams, async (j) => ({ ...j, run: await call('ADD', j.node, j.containerId, { ipam }) }));
    const ok = runs.filter((r) => r.run.status === 0);
    const failed = runs.filter((r) => r.run.status !== 0);
    expect(ok).toHaveLength(16);
    expect(failed).toHaveLength(4);
    const ips = ok.map((r) => ipsOf(r.run)[0]?.address.split('/')[0]);
    expect(new Set(ips).size).toBe(16);
    for (const ip of ips) expect(ip).toMatch(/^10\.200\.0\.\d+$/);
    for (const f of failed) {
      const err = f.run.json as { code: number; msg: string };
      expect(err.code, f.run.stdout).toBe(110);
      expect(err.msg).toMatch(/tiny/);
      expect(err.msg).toMatch(/exhausted|no free/);
      expect(f.run.stderr).not.toMatch(/^\s+at\s/m);
    }
    // The runtime DELs every attachment, the failed ones too.
    const dels = await Promise.all(runs.map((r) => call('DEL', r.node, r.containerId, { ipam })));
    for (const d of dels) expect(d.status, d.stdout + d.stderr).toBe(0);
    const kv = await ipamState();
    expect(handleKeys(kv)).toEqual([]);
    expect(allocatedOrdinals(kv)).toBe(0);
    expect(checkIpamInvariants(kv)).toEqual([]);
    const rm = await cli(['pool', 'rm', 'tiny']);
    expect(rm.status, rm.stdout + rm.stderr).toBe(0);
  });

  it('IPv6 only: an address from the /122 blocks of an IPv6 pool, stored under ipv6 keys', async () => {
    const pool = await cli(['pool', 'add', 'fd00:10::/120', '--name', 'v6', '--block-size', '122']);
    expect(pool.status, pool.stdout + pool.stderr).toBe(0);
    const ipam = { assign_ipv4: 'false', assign_ipv6: 'true' };
    const jobs = NODES.flatMap((node) => [0, 1].map((i) => ({ node, containerId: `v6-${node}-${i}` })));
    const runs = await Promise.all(jobs.map(async (j) => ({ ...j, run: await call('ADD', j.node, j.containerId, { ipam }) })));
    const kv = await ipamState();
    const seen = new Set<string>();
    for (const r of runs) {
      expect(r.run.status, r.run.stdout + r.run.stderr).toBe(0);
      const ips = ipsOf(r.run);
      expect(ips).toHaveLength(1);
      const address = ips[0]?.address ?? '';
      expect(address).toMatch(/^fd00:10::([0-9a-f]{1,4})?\/122$/);
      seen.add(address.split('/')[0] ?? '');
      const cidr = blockOf(address);
      const block = JSON.parse(kv.get(blockKey(cidr)) ?? 'null') as RawBlock | null;
      expect(block?.cidr).toBe(cidr);
      expect(block?.affinity).toBe(`host:${r.node}`);
      expect(block?.allocations).toHaveLength(64);
      expect(kv.get(`/calico/ipam/v2/host/${r.node}/ipv6/block/${cidr.replace('/', '-')}`)).toBe('{"state":"confirmed","deleted":false}');
      expect(kv.get(`/calico/ipam/v2/handle/net1.${r.containerId}`)).toBe(`{"block":{"${cidr}":1},"deleted":false}`);
    }
    expect(seen.size).toBe(jobs.length);
    expect(checkIpamInvariants(kv)).toEqual([]);
    const dels = await Promise.all(runs.map((r) => call('DEL', r.node, r.containerId, { ipam })));
    for (const d of dels) expect(d.status, d.stdout + d.stderr).toBe(0);
    const end = await ipamState();
    expect(handleKeys(end)).toEqual([]);
    expect(allocatedOrdinals(end)).toBe(0);
  });

  it('dual stack: one IPv4 and one IPv6 address under one handle, printed in the requested CNI version', async () => {
    const ipam = { assign_ipv4: 'true', assign_ipv6: 'true' };
    const versions = ['1.0.0', '0.3.1', '0.2.0'];
    const runs = await Promise.all(
      NODES.map(async (node, i) => {
        const cniVersion = versions[i] ?? '1.0.0';
        return { node, containerId: `dual-${node}`, cniVersion, run: await call('ADD', node, `dual-${node}`, { ipam, cniVersion }) };
      }),
    );
    const kv = await ipamState();
    for (const r of runs) {
      expect(r.run.status, r.run.stdout + r.run.stderr).toBe(0);
      const out = r.run.json as Record<string, unknown>;
      expect(out.cniVersion).toBe(r.cniVersion);
      let v4 = '';
      let v6 = '';
      if (r.cniVersion === '0.2.0') {
        v4 = (out.ip4 as { ip: string }).ip;
        v6 = (out.ip6 as { ip: string }).ip;
        expect(out.dns).toEqual({});
      } else {
        const ips = ipsOf(r.run);
        expect(ips).toHaveLength(2);
        v4 = ips[0]?.address ?? '';
        v6 = ips[1]?.address ?? '';
        if (r.cniVersion === '0.3.1') {
          expect(ips.map((x) => x.version)).toEqual(['4', '6']);
          expect(out.dns).toEqual({});
        } else {
          expect(ips.every((x) => x.version === undefined)).toBe(true);
          expect('dns' in out).toBe(false);
        }
      }
      expect(v4).toMatch(/^10\.128\.\d+\.\d+\/26$/);
      expect(v6).toMatch(/^fd00:10::([0-9a-f]{1,4})?\/122$/);
      const handle = JSON.parse(kv.get(`/calico/ipam/v2/handle/net1.${r.containerId}`) ?? 'null') as { block: Record<string, number> } | null;
      expect(handle?.block).toEqual({ [blockOf(v4)]: 1, [blockOf(v6)]: 1 });
    }
    expect(checkIpamInvariants(kv)).toEqual([]);
    const dels = await Promise.all(runs.map((r) => call('DEL', r.node, r.containerId, { ipam, cniVersion: r.cniVersion })));
    for (const d of dels) expect(d.status, d.stdout + d.stderr).toBe(0);
    const end = await ipamState();
    expect(handleKeys(end)).toEqual([]);
    expect(allocatedOrdinals(end)).toBe(0);
  });

  it('IP= in CNI_ARGS assigns exactly that address; in use is code 111, outside the pools code 112', async () => {
    const first = await call('ADD', 'node-a', 'exact-1', { args: 'IgnoreUnknown=1;IP=10.128.200.7' });
    expect(first.status, first.stdout + first.stderr).toBe(0);
    expect(ipsOf(first)).toEqual([{ address: '10.128.200.7/32' }]);
    let kv = await ipamState();
    const block = JSON.parse(kv.get(blockKey('10.128.200.0/26')) ?? 'null') as RawBlock | null;
    expect(block?.attributes[block.allocations[7] ?? -1]?.handle_id).toBe('net1.exact-1');
    expect(kv.get('/calico/ipam/v2/handle/net1.exact-1')).toBe('{"block":{"10.128.200.0/26":1},"deleted":false}');

    const v6 = await call('ADD', 'node-b', 'exact-6', { args: 'IP=fd00:10::77' });
    expect(v6.status, v6.stdout + v6.stderr).toBe(0);
    expect(ipsOf(v6)).toEqual([{ address: 'fd00:10::77/128' }]);

    const taken = await call('ADD', 'node-b', 'exact-2', { args: 'IP=10.128.200.7' });
    expect(taken.status).not.toBe(0);
    expect((taken.json as { code: number; msg: string }).code).toBe(111);
    expect((taken.json as { msg: string }).msg).toContain('10.128.200.7');
    const outside = await call('ADD', 'node-b', 'exact-3', { args: 'IP=192.168.50.1' });
    expect((outside.json as { code: number }).code).toBe(112);
    const junk = await call('ADD', 'node-b', 'exact-4', { args: 'IP=not-an-ip' });
    expect((junk.json as { code: number }).code).toBe(7);

    // ADD/DEL/ADD of the same address for another container works.
    expect((await call('DEL', 'node-a', 'exact-1')).status).toBe(0);
    const reuse = await call('ADD', 'node-b', 'exact-2', { args: 'IP=10.128.200.7' });
    expect(reuse.status, reuse.stdout + reuse.stderr).toBe(0);
    expect(ipsOf(reuse)).toEqual([{ address: '10.128.200.7/32' }]);

    for (const [node, cid] of [['node-b', 'exact-2'], ['node-b', 'exact-3'], ['node-b', 'exact-4'], ['node-b', 'exact-6']] as const) {
      expect((await call('DEL', node, cid)).status).toBe(0);
    }
    kv = await ipamState();
    expect(handleKeys(kv)).toEqual([]);
    expect(allocatedOrdinals(kv)).toBe(0);
    expect(checkIpamInvariants(kv)).toEqual([]);
  });
});

describe("the node agent's grouped IPAM on etcd (in-process allocator)", () => {
  it('16 ADDs in one guarded transaction and 16 DELs in one, stored as single assignments are', async () => {
    const node = 'group-node';
    const store = new HttpEtcdStore({ endpoints: [server().endpoint], transport: 'http', requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS });
    try {
      // Only this node may use the pool, so the other tests' ADDs never see it.
      await addPool(store, { cidr: '10.129.0.0/24', name: 'group', nodeSelector: `projectcalico.org/name == '${node}'` });
      const al = new Allocator({ store, node });
      const first = await al.assign({ handleId: 'net1.group-first', attrs: { node }, families: [{ family: 4 }] });
      const block = first.allocations[0]?.blockCidr ?? '';
      const ids = Array.from({ length: 16 }, (_, i) => `net1.group-${i}`);
      const trips = store.roundTrips;
      const out = await al.assignTogether(ids.map((handleId) => ({ handleId, attrs: { node }, families: [{ family: 4 }] })));
      expect(store.roundTrips - trips).toBe(3);
      const ips = out.map((o) => (o.status === 'fulfilled' && o.value.together === 16 ? o.value.allocations[0]?.ip : `not together: ${JSON.stringify(o)}`));
      expect(new Set([first.allocations[0]?.ip, ...ips]).size).toBe(17);
      let kv = await ipamState();
      for (const id of ids) expect(kv.get(`/calico/ipam/v2/handle/${id}`)).toBe(`{"block":{"${block}":1},"deleted":false}`);
      expect(checkIpamInvariants(kv)).toEqual([]);

      const delTrips = store.roundTrips;
      const freed = await al.releaseTogether([...ids.map((id) => [id]), ['net1.group-first']]);
      expect(store.roundTrips - delTrips).toBe(3);
      expect(freed.map((f) => (f.status === 'fulfilled' ? f.value.map((a) => a.ip) : []))).toEqual([...ips.map((ip) => [ip]), [first.allocations[0]?.ip]]);
      kv = await ipamState();
      expect(handleKeys(kv).filter((k) => k.includes('group-'))).toEqual([]);
      expect(checkIpamInvariants(kv)).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
