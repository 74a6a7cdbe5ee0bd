/**
 * Datastore faults under load: many built calico-ipam processes allocate on 12 nodes against a 3-member
 * etcd cluster while (a) the leader is killed and revived and (b) quorum is lost for a few seconds. Then:
 * no address given twice, every failure a clean "try again later" (11), the stored IPAM data consistent,
 * nothing a successful ADD got is lost, and ADDs work again. Also: an unreachable etcd (closed port, or a
 * listener that never answers) fails ADD and DEL with 11 within the default per-request deadline. And, in
 * process on a store that loses the reply to a committed write, the allocator keeps exactly one address.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cniErrorProblem, expectCniError } from './helpers/cni-error';
import { freePorts } from './helpers/etcd';
import { startEtcdCluster, type EtcdCluster } from './helpers/etcd-cluster';
import { etcdctl, getPrefix, type EtcdctlTarget } from './helpers/etcdctl';
import { checkIpamInvariants } from './helpers/ipam-invariants';
import { ipamConf } from './helpers/conf';
import { cniEnv, requireBuilt, runPlugin, type PluginRun } from './helpers/plugin';
import { parseCidr, parseIp, cidrContains } from '../shared/ipam/cidr';
import { Allocator } from '../shared/ipam/allocator';
import { addPool } from '../shared/ipam/pools';
import { MemoryStore } from '../shared/store/memory';
import type { Compare, KeyValue, Op, Read, Store, TxnResult } from '../shared/store/store';

const NET = 'faultnet';
const NODES = Array.from({ length: 12 }, (_, i) => `fnode-${i}`);
/** Messages a datastore failure may carry; anything else (a crash, a TypeError) is a bug. */
const TRY_AGAIN_MSG = /etcd (unavailable|TLS handshake failed)|gave up after \d+ attempts|did not finish within|changed concurrently/;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

type Transport = 'grpc' | 'http';

interface AddOutcome {
  cid: string;
  node: string;
  start: number;
  end: number;
  run: PluginRun;
}

function conf(endpoints: string, node: string, transport: Transport): string {
  return ipamConf({ endpoint: endpoints, name: NET, nodename: node, extra: { etcd_transport: transport } });
}

function addIp(r: PluginRun): string | undefined {
  const ips = (r.json as { ips?: { address?: string }[] } | undefined)?.ips;
  return ips?.[0]?.address?.split('/')[0];
}

/** Index of the cluster's current leader, from `etcdctl endpoint status`. */
async function leaderIndex(cluster: EtcdCluster): Promise<number> {
  const live = cluster.members.filter((m) => m.pid !== undefined).map((m) => m.client);
  let out = '';
  // An election may be under way just after a member came back: ask again for a few seconds.
  for (const until = Date.now() + 10_000; Date.now() < until; await sleep(200)) {
    out = await etcdctl({ endpoints: live.join(',') }, ['endpoint', 'status', '-w', 'json']).catch((e: unknown) => String(e));
    let st: { Endpoint: string; Status: { header: { member_id: number | string }; leader: number | string } }[];
    try {
      st = JSON.parse(out) as typeof st;
    } catch {
      continue;
    }
    const leader = st.find((s) => String(s.Status.header.member_id) === String(s.Status.leader));
    const i = cluster.members.findIndex((m) => m.client === leader?.Endpoint);
    if (i >= 0) return i;
  }
  throw new Error(`no leader among ${live.join(', ')}: ${out}`);
}

/** Runs ADDs with `concurrency` workers, round-robin over the nodes, until stop() is called. */
function startLoad(opts: { endpoints: string; transport: Transport; concurrency: number; prefix: string; env?: Record<string, string> }) {
  const outcomes: AddOutcome[] = [];
  let stopping = false;
  let n = 0;
  const worker = async () => {
    while (!stopping) {
      const i = n++;
      const cid = `${opts.prefix}${i}`;
      const node = NODES[i % NODES.length] as string;
      const start = Date.now();
      const run = await runPlugin('calico-ipam', {
        env: { ...cniEnv({ command: 'ADD', containerId: cid, netns: `/var/run/netns/${cid}` }), ...(opts.env ?? {}) },
        stdin: conf(opts.endpoints, node, opts.transport),
        timeoutMs: 90_000,
      });
      outcomes.push({ cid, node, start, end: Date.now(), run });
    }
  };
  const workers = Array.from({ length: opts.concurrency }, worker);
  return {
    outcomes,
    async stop(): Promise<AddOutcome[]> {
      stopping = true;
      await Promise.all(workers);
      return outcomes;
    },
  };
}

/** Key of every pending affinity whose block does not exist: what a claim cut off between its two phases leaves. */
function orphanPendingAffinities(kv: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [key, value] of kv) {
    const m = /^\/calico\/ipam\/v2\/host\/[^/]+\/ipv([46])\/block\/([^/]+)$/.exec(key);
    if (!m) continue;
    const state = (JSON.parse(value) as { state?: string }).state;
    if (state === 'pending' && !kv.has(`/calico/ipam/v2/assignment/ipv${m[1]}/block/${m[2]}`)) out.push(key);
  }
  return out;
}

/** Handle id -> the addresses its blocks say it holds. */
function heldAddresses(kv: Map<string, string>): Map<string, string[]> {
  const held = new Map<string, string[]>();
  for (const [key, value] of kv) {
    if (!key.startsWith('/calico/ipam/v2/assignment/ipv4/block/')) continue;
    const b = JSON.parse(value) as { cidr: string; allocations: (number | null)[]; attributes: { handle_id?: string }[] | null };
    const c = parseCidr(b.cidr);
    if (!c) throw new Error(`bad block ${key}`);
    b.allocations.forEach((idx, ord) => {
      if (idx === null) return;
      const h = b.attributes?.[idx]?.handle_id ?? '?';
      const v = c.base + BigInt(ord);
      const ip = [24n, 16n, 8n, 0n].map((s) => String((v >> s) & 255n)).join('.');
      held.set(h, [...(held.get(h) ?? []), ip]);
    });
  }
  return held;
}

interface ScenarioReport {
  adds: number;
  ok: number;
  failed: number;
  failedDuringQuorumLoss: number;
  committedButFailed: number;
  orphanPending: string[];
  sampleMsg: string | undefined;
}

/**
 * The whole fault scenario for one transport on a fresh cluster. Timeline: load for `warmMs`; kill the
 * leader; `downMs`; revive it; `warmMs`; kill two members (no quorum); `outageMs`; revive both; `warmMs`;
 * stop the load; then the checks.
 */
async function scenario(transport: Transport, t: { warmMs: number; downMs: number; outageMs: number; concurrency: number }): Promise<ScenarioReport> {
  const cluster = await startEtcdCluster(3);
  try {
    const target: EtcdctlTarget = { endpoints: cluster.endpoints };
    const pool = await runPlugin('calico-ipam', { env: {}, args: ['pool', 'add', '10.210.0.0/16', '--etcd-endpoints', cluster.endpoints] });
    expect(pool.status, pool.stderr).toBe(0);
    const prefix = `f${transport}`;
    // A short per-request deadline, so a 5 s outage really fails requests instead of only delaying them.
    const load = startLoad({ endpoints: cluster.endpoints, transport, concurrency: t.concurrency, prefix, env: { CALICO_ETCD_TIMEOUT_MS: '1500' } });

    await sleep(t.warmMs);
    const leader = await leaderIndex(cluster);
    await cluster.kill(leader);
    await sleep(t.downMs);
    await cluster.revive(leader);
    await sleep(t.warmMs);

    const survivor = (await leaderIndex(cluster) + 1) % 3;
    const victims = [0, 1, 2].filter((i) => i !== survivor);
    const lossStart = Date.now();
    for (const i of victims) await cluster.kill(i);
    await sleep(t.outageMs);
    await Promise.all(victims.map((i) => cluster.revive(i)));
    const lossEnd = Date.now();
    await sleep(t.warmMs);
    const outcomes = await load.stop();

    // Once quorum is back, ADDs succeed again: one more on every node, default deadline.
    const after: AddOutcome[] = [];
    await Promise.all(
      [0, 1, 2, 3].map(async (w) => {
        for (let k = w; k < NODES.length; k += 4) {
          const cid = `${prefix}after${k}`;
          const node = NODES[k] as string;
          const start = Date.now();
          const run = await runPlugin('calico-ipam', { env: cniEnv({ command: 'ADD', containerId: cid, netns: `/var/run/netns/${cid}` }), stdin: conf(cluster.endpoints, node, transport) });
          after.push({ cid, node, start, end: Date.now(), run });
        }
      }),
    );
    for (const a of after) expect(a.run.status, `ADD ${a.cid} after recovery: ${a.run.stdout}${a.run.stderr}`).toBe(0);

    const all = [...outcomes, ...after];
    const ok = all.filter((o) => o.run.status === 0);
    const failed = all.filter((o) => o.run.status !== 0);

    // Every failure is a clean CNI "try again later" object with a non-zero exit and no stack trace.
    for (const f of failed) {
      const problem = cniErrorProblem(f.run, 11, TRY_AGAIN_MSG);
      expect(problem, `ADD ${f.cid} on ${f.node}: ${problem ?? ''}\nstdout: ${f.run.stdout}\nstderr: ${f.run.stderr.slice(0, 2000)}`).toBeUndefined();
    }
    // The fault was real: ADDs overlapping the outage failed, and the load ran before and after it.
    const duringLoss = failed.filter((f) => f.start < lossEnd && f.end > lossStart);
    expect(duringLoss.length, 'no ADD failed while quorum was lost').toBeGreaterThan(0);
    expect(ok.filter((o) => o.end < lossStart).length).toBeGreaterThan(5);

    // No address twice among successful ADDs.
    const ips = ok.map((o) => addIp(o.run));
    expect(ips.every((ip) => ip !== undefined && parseIp(ip) !== undefined)).toBe(true);
    const seen = new Map<string, string>();
    for (const o of ok) {
      const ip = addIp(o.run) as string;
      expect(seen.get(ip), `${ip} given to ${seen.get(ip) ?? ''} and ${o.cid}`).toBeUndefined();
      seen.set(ip, o.cid);
      const pool16 = parseCidr('10.210.0.0/16');
      const parsed = parseIp(ip);
      expect(pool16 && parsed && cidrContains(pool16, 4, parsed.value)).toBe(true);
    }

    // The stored data: consistent, except pending affinities of claims that were cut off between their
    // two transactions by the outage (a pending affinity whose block was never written; gc removes those).
    const kv = await getPrefix(target, '/calico/ipam/');
    const orphanPending = orphanPendingAffinities(kv);
    const violations = checkIpamInvariants(kv).filter((v) => !orphanPending.some((k) => v.startsWith(`${k}: `)));
    expect(violations).toEqual([]);

    // Nothing a successful ADD got is lost: its handle exists and holds exactly the address it was given.
    const held = heldAddresses(kv);
    for (const o of ok) {
      const h = `${NET}.${o.cid}`;
      expect(kv.has(`/calico/ipam/v2/handle/${h}`), `handle ${h} missing`).toBe(true);
      expect(held.get(h), `addresses held by ${h}`).toEqual([addIp(o.run)]);
    }

    // A failed ADD may still have committed (the reply was lost with the member): the runtime DELs after
    // a failed ADD, and that DEL releases it. Every such DEL succeeds now and leaves no handle behind.
    const committedButFailed = failed.filter((f) => kv.has(`/calico/ipam/v2/handle/${NET}.${f.cid}`)).length;
    for (const f of failed) {
      const del = await runPlugin('calico-ipam', { env: cniEnv({ command: 'DEL', containerId: f.cid }), stdin: conf(cluster.endpoints, f.node, transport) });
      expect(del.status, `DEL ${f.cid}: ${del.stdout}${del.stderr}`).toBe(0);
    }
    const afterDel = await getPrefix(target, '/calico/ipam/');
    for (const f of failed) expect(afterDel.has(`/calico/ipam/v2/handle/${NET}.${f.cid}`)).toBe(false);
    const stillPending = orphanPendingAffinities(afterDel);
    expect(checkIpamInvariants(afterDel).filter((v) => !stillPending.some((k) => v.startsWith(`${k}: `)))).toEqual([]);

    // What the outage left pending is exactly what gc would remove (dry run: nothing changes).
    for (const key of stillPending) {
      const node = key.split('/')[5] ?? '';
      const gc = await runPlugin('calico-ipam', { env: {}, args: ['gc', '--node', node, '--grace', '0', '--dry-run', '--etcd-endpoints', cluster.endpoints] });
      expect(gc.status, gc.stderr).toBe(0);
      expect(gc.stdout).toContain(`would remove-pending-affinity ${key}`);
    }
    expect(await getPrefix(target, '/calico/ipam/')).toEqual(afterDel);

    const sampleMsg = (failed[0]?.run.json as { msg?: string } | undefined)?.msg;
    return { adds: all.length, ok: ok.length, failed: failed.length, failedDuringQuorumLoss: duringLoss.length, committedButFailed, orphanPending: stillPending, sampleMsg };
  } finally {
    await cluster.stop();
  }
}

beforeAll(() => {
  requireBuilt();
});

describe('a 3-member etcd losing a member, then quorum, under allocation load on 12 nodes', () => {
  it('http transport (the default): no duplicate, every failure a clean 11, consistent data, nothing lost, ADDs work again', async () => {
    const r = await scenario('http', { warmMs: 2000, downMs: 2500, outageMs: 5000, concurrency: 4 });
    console.log('faults http:', JSON.stringify(r));
  }, 150_000);

  it('grpc transport (etcd_transport "grpc", the etcd3 client): the same guarantees', async () => {
    const r = await scenario('grpc', { warmMs: 2500, downMs: 3000, outageMs: 5000, concurrency: 4 });
    console.log('faults grpc:', JSON.stringify(r));
  }, 150_000);
});

describe('an unreachable etcd fails ADD and DEL with 11 within the default deadline', () => {
  /** A listener that accepts connections and never says a word: the request deadline must end the call. */
  let silent: net.Server | undefined;
  const sockets = new Set<net.Socket>();
  let silentUrl = '';
  let closedUrl = '';

  beforeAll(async () => {
    const [port] = (await freePorts(1)) as [number];
    closedUrl = `http://127.0.0.1:${port}`; // freePorts closed it again: connections are refused
    silent = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((resolve) => silent?.listen(0, '127.0.0.1', () => resolve()));
    const addr = silent.address();
    if (addr === null || typeof addr === 'string') throw new Error('no address');
    silentUrl = `http://127.0.0.1:${addr.port}`;
  });

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => (silent ? silent.close(() => resolve()) : resolve()));
  });

  for (const transport of ['grpc', 'http'] as const) {
    for (const kind of ['closed port', 'silent listener'] as const) {
      it(`${transport}, ${kind}: ADD and DEL of calico-ipam, DEL of calico, each 11 in < 15 s`, async () => {
        const url = kind === 'closed port' ? closedUrl : silentUrl;
        const cid = `unreach${transport}${kind.length}`;
        const stdin = conf(url, 'fnode-0', transport);
        // CALICO_ETCD_TIMEOUT_MS is not set (runPlugin passes only PATH and what is given): default deadline.
        const runs = await Promise.all([
          ['calico-ipam', 'ADD'],
          ['calico-ipam', 'DEL'],
          ['calico', 'DEL'],
        ].map(async ([bin, command]) => {
          const t0 = Date.now();
          const r = await runPlugin(bin as string, {
            env: cniEnv({ command: command as string, containerId: cid, netns: command === 'ADD' ? `/var/run/netns/${cid}` : '' }),
            stdin: bin === 'calico' ? JSON.stringify({ ...(JSON.parse(stdin) as object), type: 'calico' }) : stdin,
            timeoutMs: 30_000,
          });
          return { what: `${bin} ${command}`, r, ms: Date.now() - t0 };
        }));
        for (const { what, r, ms } of runs) {
          const err = expectCniError(r, 11, /etcd unavailable/);
          expect(err.msg, what).toContain(url);
          expect(ms, `${what} took ${ms} ms`).toBeLessThan(15_000);
          // One endpoint: one try with the 5 s default deadline, not one more per retry.
          if (kind === 'silent listener') expect(ms, `${what} took ${ms} ms`).toBeLessThan(9_000);
        }
      }, 40_000);
    }
  }
});

/**
 * The reply of a committed write lost on the way back: etcd's clients then retry the same transaction
 * (the etcd3 client on another endpoint, the http store on the next one), and that copy fails its compare
 * because the first one did commit. The allocator sees a conflict and tries again; it must find the
 * address it already holds instead of taking a second one (or refusing its own address as "in use").
 */
class LostReplyStore implements Store {
  /** Loses the reply of the next committed transaction whose ops match. */
  lose: ((ops: readonly Op[]) => boolean) | undefined;
  lost = 0;
  constructor(readonly inner: MemoryStore) {}
  get identity(): string {
    return this.inner.identity;
  }
  get roundTrips(): number {
    return this.inner.roundTrips;
  }
  read(reads: readonly Read[]): Promise<KeyValue[][]> {
    return this.inner.read(reads);
  }
  async txn(compares: readonly Compare[], ops: readonly Op[]): Promise<TxnResult> {
    const first = await this.inner.txn(compares, ops);
    if (!first.succeeded || !this.lose?.(ops)) return first;
    this.lose = undefined;
    this.lost++;
    return this.inner.txn(compares, ops); // the client's retry, after the lost reply
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

describe('a lost reply to a committed write (the client retries it)', () => {
  const attrs = { node: 'n1', timestamp: '2024-01-01 00:00:00 +0000 UTC' };
  const handleWrite = (h: string) => (ops: readonly Op[]) => ops.some((op) => op.op === 'put' && op.key === `/calico/ipam/v2/handle/${h}`);
  const cases: { name: string; warm: boolean; ips?: string[]; families?: (4 | 6)[] }[] = [
    { name: 'claiming a new block', warm: false },
    { name: 'in an existing block', warm: true },
    { name: 'an exact address (IP=)', warm: true, ips: ['10.0.0.50'] },
    { name: 'the second family of a dual-stack ADD', warm: true, families: [4, 6] },
  ];
  for (const c of cases) {
    it(`${c.name}: the handle holds exactly the addresses the ADD reports`, async () => {
      const mem = new MemoryStore();
      await addPool(mem, { cidr: '10.0.0.0/16' });
      await addPool(mem, { cidr: 'fd00:10::/64' });
      const store = new LostReplyStore(mem);
      const alloc = new Allocator({ store, node: 'n1' });
      if (c.warm) await alloc.assign({ handleId: 'h0', attrs, families: [{ family: 4 }, { family: 6 }] });
      const families = (c.families ?? [4]).map((family) => ({ family }));
      if (c.families?.length === 2) {
        // Lose the reply of the second family's write: the one that puts an IPv6 block into the handle.
        store.lose = (ops) => ops.some((op) => op.op === 'put' && op.key === '/calico/ipam/v2/handle/h1' && op.value.includes('fd00'));
      } else {
        store.lose = handleWrite('h1');
      }
      const out = await alloc.assign({ handleId: 'h1', attrs, families, ...(c.ips ? { ips: c.ips } : {}) });
      expect(store.lost).toBe(1);
      const held = (await alloc.addressesOf('h1')).map((a) => a.ip).sort();
      expect(held).toEqual(out.allocations.map((a) => a.ip).sort());
      expect(held).toHaveLength(families.length);
      if (c.ips) expect(held).toEqual(c.ips);
      expect(checkIpamInvariants(mem.snapshot('/calico/ipam/'))).toEqual([]);
      // The release can lose its reply too: the retry finds the handle gone, and that is success.
      store.lose = (ops) => ops.some((op) => op.op === 'delete' && op.key === '/calico/ipam/v2/handle/h1');
      await alloc.releaseHandle('h1');
      expect(store.lost).toBe(2);
      expect(await alloc.addressesOf('h1')).toEqual([]);
      expect(checkIpamInvariants(mem.snapshot('/calico/ipam/'))).toEqual([]);
    });
  }
});
