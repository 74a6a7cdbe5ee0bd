/**
 * `kill -9` of the calico plugin (in-process IPAM, real netns, real etcd) at random points of ADD. What a
 * killed ADD leaves must be undone completely: by the runtime's DEL (no address, handle, endpoint, veth or
 * host route left; `calico-ipam gc` then clears claims left pending), or, when the container vanished
 * without a DEL, by `calico-ipam gc` (whose --dry-run only reports and changes nothing).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { revision } from './helpers/etcdctl';
import { checkIpamInvariants } from './helpers/ipam-invariants';
import { spawnPlugin, waitGroupGone } from './helpers/kill';
import { createNetns, type Netns } from './helpers/netns';
import { addPool, cniEnv, requireBuilt, runPlugin } from './helpers/plugin';
import { encodeAffinity } from '../shared/calico/model';

const exec = promisify(execFile);
const NET = 'k9net';
const POOL_PREFIX = '10.232.';
const POOL = '10.232.0.0/16';
/** A fresh node per ADD, so every ADD claims a block (the two-phase claim is a window a kill can hit). */
const nodeFor = (cid: string) => `k9-${cid}`;
const WEP_PREFIX = '/calico/resources/v3/projectcalico.org/workloadendpoints/';

let etcd: EtcdServer | undefined;
const namespaces: Netns[] = [];

function must<T>(v: T | undefined): T {
  if (v === undefined) throw new Error('not set up');
  return v;
}

function conf(cid: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    cniVersion: '1.0.0',
    name: NET,
    type: 'calico',
    etcd_endpoints: must(etcd).endpoint,
    nodename: nodeFor(cid),
    ipam: { type: 'calico-ipam' },
    ...extra,
  });
}

/** Container ids differ in their first 11 characters, which name the host veth (cali + 11). */
function containerId(tag: string, round: number): string {
  return `${tag}${String(round).padStart(3, '0')}x${process.pid}`;
}

async function netns(): Promise<Netns> {
  const n = await createNetns('ctsk9');
  namespaces.push(n);
  return n;
}

async function out(argv: string[]): Promise<string> {
  const [file, ...args] = argv as [string, ...string[]];
  return (await exec(file, args, { encoding: 'utf8' })).stdout;
}

/** What one container left behind, from etcd and the host. */
interface Leftovers {
  handle: boolean;
  addresses: string[];
  endpoints: string[];
  veths: string[];
}

async function leftovers(cid: string): Promise<Leftovers> {
  const e = must(etcd);
  const handleId = `${NET}.${cid}`;
  const handle = (await e.get(`/calico/ipam/v2/handle/${handleId}`)) !== undefined;
  const addresses: string[] = [];
  for (const [key, value] of await e.getPrefix('/calico/ipam/v2/assignment/')) {
    const b = JSON.parse(value) as { allocations: (number | null)[]; attributes: { handle_id?: string }[] | null };
    b.allocations.forEach((idx, ord) => {
      if (idx !== null && b.attributes?.[idx]?.handle_id === handleId) addresses.push(`${key}#${ord}`);
    });
  }
  const endpoints = [...(await e.getPrefix(WEP_PREFIX))]
    .filter(([, v]) => (JSON.parse(v) as { spec?: { containerID?: string } }).spec?.containerID === cid)
    .map(([k]) => k);
  const veth = `cali${cid.slice(0, 11)}`;
  const veths = (await out(['ip', '-o', 'link'])).split('\n').filter((l) => new RegExp(`^\\d+: ${veth}[@:]`).test(l));
  return { handle, addresses, endpoints, veths };
}

/**
 * What a kill between the two transactions of a block claim leaves: a pending affinity and no block. That
 * window is a millisecond or two wide, so random kills rarely hit it; one such claim is planted (the value
 * written by the product's own encoder) so that gc's handling of it is always exercised.
 */
/**
 * Plants what a process killed between its two claim steps leaves: a pending affinity whose block was
 * never written. The subnet is one without a block (each node's claims start at a point hashed from its name).
 */
async function plantCutClaim(cid: string): Promise<string> {
  const blocks = await must(etcd).getPrefix('/calico/ipam/v2/assignment/ipv4/block/');
  const free = [...Array(256).keys()].map((i) => `10.232.${255 - i}.0-26`).find((c) => !blocks.has(`/calico/ipam/v2/assignment/ipv4/block/${c}`));
  const key = `/calico/ipam/v2/host/${nodeFor(cid)}/ipv4/block/${must(free)}`;
  await must(etcd).put(key, encodeAffinity('pending', Date.now() - 1000));
  return key;
}

async function hostPoolRoutes(): Promise<string[]> {
  return (await out(['ip', '-4', 'route', 'show'])).split('\n').filter((l) => l.startsWith(POOL_PREFIX));
}

/** Pending affinities of the given containers' nodes. */
async function pendingAffinities(cids: readonly string[]): Promise<string[]> {
  const aff = await must(etcd).getPrefix('/calico/ipam/v2/host/');
  const nodes = new Set(cids.map(nodeFor));
  return [...aff]
    .filter(([k, v]) => nodes.has(k.split('/')[5] ?? '') && (JSON.parse(v) as { state?: string }).state === 'pending')
    .map(([k]) => k);
}

/** `calico-ipam gc --node N --grace 0 [--dry-run]` for the node of each container: exit statuses and the output. */
async function gc(cids: readonly string[], dryRun: boolean): Promise<{ statuses: number[]; stdout: string; stderr: string }> {
  const runs = [];
  for (const cid of cids) {
    runs.push(
      await runPlugin('calico-ipam', {
        env: {},
        args: ['gc', '--node', nodeFor(cid), '--grace', '0', ...(dryRun ? ['--dry-run'] : []), '--etcd-endpoints', must(etcd).endpoint],
      }),
    );
  }
  return { statuses: runs.map((r) => r.status), stdout: runs.map((r) => r.stdout).join(''), stderr: runs.map((r) => r.stderr).join('') };
}

/** A point of ADD to kill at: `delayMs` after the spawn, or after the plugin logged the `after` line. */
interface KillPoint {
  after?: 'ADD start' | 'ipam done';
  delayMs: number;
}

/**
 * Starts ADD (debug log on stderr, which marks its phases) and SIGKILLs the plugin (only the plugin, as a
 * runtime's timeout does) at the given point.
 */
async function killedAdd(cid: string, ns: Netns, at: KillPoint): Promise<{ killed: boolean; ms: number }> {
  const p = spawnPlugin('calico', cniEnv({ command: 'ADD', containerId: cid, netns: ns.path }), conf(cid, { log_level: 'debug' }));
  if (at.after) await p.waitForStderr(new RegExp(`\\] calico: ${at.after}`));
  await new Promise((r) => setTimeout(r, at.delayMs));
  const killed = p.running();
  if (killed) process.kill(p.pid, 'SIGKILL');
  const res = await p.done;
  // Children it had running (an ip -batch) finish on their own; only then is the damage final.
  await waitGroupGone(p.pid);
  if (!killed) expect(res.status, `ADD ${cid} finished before the kill: ${res.stdout}${res.stderr}`).toBe(0);
  return { killed, ms: res.ms };
}

let typicalAddMs = 0;
/** A typical ADD's work after the process started and loaded (from its "ADD start" log line to the end). */
let workMs = 0;
/** Its netlink and endpoint part (from "ipam done" to the end). */
let tailMs = 0;

beforeAll(async () => {
  requireBuilt();
  etcd = await startEtcd();
  await addPool(etcd.endpoint, POOL);
  // The typical ADD (spawn to exit), after one warm-up that also fills the code cache.
  const times: number[] = [];
  const works: number[] = [];
  const tails: number[] = [];
  for (let i = 0; i < 4; i++) {
    const cid = containerId('w', i);
    const ns = await netns();
    const env = cniEnv({ command: 'ADD', containerId: cid, netns: ns.path });
    const t0 = Date.now();
    const add = await runPlugin('calico', { env, stdin: conf(cid, { log_level: 'debug' }) });
    const ms = Date.now() - t0;
    expect(add.status, add.stdout + add.stderr).toBe(0);
    if (i > 0) {
      times.push(ms);
      // The debug log stamps the phases of the verb's real work (ms since the process started).
      const at = (what: string) => Number(new RegExp(`\\] calico: ${what}.* t=([\\d.]+)`).exec(add.stderr)?.[1]);
      const phases = { start: at('ADD start'), ipam: at('ipam done'), done: at('ADD done') };
      expect(phases.start < phases.ipam && phases.ipam < phases.done, add.stderr).toBe(true);
      works.push(phases.done - phases.start);
      tails.push(phases.done - phases.ipam);
    }
    const del = await runPlugin('calico', { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: conf(cid) });
    expect(del.status, del.stdout + del.stderr).toBe(0);
    await ns.remove();
  }
  typicalAddMs = [...times].sort((a, b) => a - b)[1] ?? 300;
  workMs = Math.ceil([...works].sort((a, b) => a - b)[1] ?? 100);
  tailMs = Math.ceil([...tails].sort((a, b) => a - b)[1] ?? 30);
  console.log(`kill9: typical calico ADD ${typicalAddMs} ms (${times.join(', ')}); from "ADD start" to done ${workMs} ms, from "ipam done" ${tailMs} ms`);
}, 60_000);

afterAll(async () => {
  for (const n of namespaces) await n.remove().catch(() => undefined);
  await etcd?.stop();
});

describe('kill -9 during ADD, then the runtime DELs', () => {
  it('40 rounds at random points: DEL leaves no address, handle, endpoint, veth or host route; gc clears pending claims', async () => {
    // 25 kills at random delays stratified over [0, typical ADD). A good part of an ADD is Node starting up,
    // where a kill leaves nothing behind, and the durations vary a lot on a busy machine; so 15 more are
    // placed relative to the phases the plugin logs: after "ADD start" (the datastore work, block claim
    // included), and after "ipam done" (veth pair, routes, endpoint).
    const strat = (n: number, span: number) => Array.from({ length: n }, (_, i) => Math.floor(((i + Math.random()) / n) * span));
    const points: KillPoint[] = [
      ...strat(25, typicalAddMs).map((delayMs) => ({ delayMs })),
      // Phase-relative kills use short delays, which any ADD outlasts whatever the machine's load: the
      // calibration above may have run under a different load than these rounds.
      ...strat(7, Math.min(workMs, 20)).map((delayMs) => ({ after: 'ADD start' as const, delayMs })),
      ...strat(8, Math.min(tailMs, 8)).map((delayMs) => ({ after: 'ipam done' as const, delayMs })),
    ];
    const rounds = points.length;
    const stats = { killed: 0, leftHandle: 0, leftEndpoint: 0, leftVeth: 0, leftPending: 0 };
    const cids: string[] = [];
    for (let i = 0; i < rounds; i++) {
      const cid = containerId('d', i);
      cids.push(cid);
      const ns = await netns();
      const point = points[i] ?? { delayMs: 0 };
      const delay = `${point.delayMs} ms after ${point.after ?? 'spawn'}`;
      const { killed } = await killedAdd(cid, ns, point);
      if (killed) stats.killed++;
      const left = await leftovers(cid);
      if (left.handle) stats.leftHandle++;
      if (left.endpoints.length) stats.leftEndpoint++;
      if (left.veths.length) stats.leftVeth++;
      if ((await pendingAffinities([cid])).length) stats.leftPending++;

      const del = await runPlugin('calico', { env: cniEnv({ command: 'DEL', containerId: cid, netns: ns.path }), stdin: conf(cid) });
      expect(del.status, `round ${i} (kill ${delay}): DEL ${del.stdout}${del.stderr}`).toBe(0);
      expect(await leftovers(cid), `round ${i} (kill ${delay})`).toEqual({ handle: false, addresses: [], endpoints: [], veths: [] });
      expect(await hostPoolRoutes(), `round ${i}`).toEqual([]);
      expect((await ns.exec(['ip', '-o', 'link'])).stdout.trim().split('\n').map((l) => l.split(':')[1]?.trim())).toEqual(['lo']);
      await ns.remove();
    }
    console.log(`kill9 with DEL: ${JSON.stringify(stats)}`);
    // Enough kills must really have cut an ADD short, or this proves little (the phase-relative ones do).
    expect(stats.killed).toBeGreaterThanOrEqual(10);
    // ... and some left work behind for the DEL, or this proves little.
    expect(stats.leftHandle).toBeGreaterThan(0);

    const planted = await plantCutClaim(cids[cids.length - 1] as string);
    expect(await pendingAffinities(cids)).toContain(planted);
    const g = await gc(cids, false);
    expect(g.statuses.every((st) => st === 0), g.stdout + g.stderr).toBe(true);
    expect(await pendingAffinities(cids)).toEqual([]);
    expect(checkIpamInvariants(await must(etcd).getPrefix('/calico/ipam/'))).toEqual([]);
    expect([...(await must(etcd).getPrefix('/calico/ipam/v2/handle/')).keys()].filter((k) => k.includes(`.d`) && k.endsWith(`x${process.pid}`))).toEqual([]);
  }, 600_000);
});

describe('kill -9 during ADD, then the container vanishes (no DEL)', () => {
  it('gc --dry-run lists the work and changes nothing; gc then releases everything', async () => {
    const rounds = 10;
    const cids: string[] = [];
    let killed = 0;
    for (let i = 0; i < rounds; i++) {
      const cid = containerId('v', i);
      cids.push(cid);
      const ns = await netns();
      // Over the working part of the ADD, and a little beyond it, so some complete before the container goes.
      const point: KillPoint =
        i % 2 === 0
          ? { after: 'ADD start', delayMs: Math.floor(((i + Math.random()) / rounds) * workMs * 1.2) }
          : { after: 'ipam done', delayMs: Math.floor(((i + Math.random()) / rounds) * tailMs * 1.5) };
      if ((await killedAdd(cid, ns, point)).killed) killed++;
      await ns.remove(); // the kernel takes the veth pair (and its host route) with the namespace
    }
    // Namespace teardown is asynchronous in the kernel: wait until the host ends are gone.
    const until = Date.now() + 10_000;
    while ((await Promise.all(cids.map(leftovers))).some((l) => l.veths.length > 0) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));

    const before = await Promise.all(cids.map(leftovers));
    const planted = await plantCutClaim(cids[0] as string);
    const pendingBefore = await pendingAffinities(cids);
    expect(pendingBefore).toContain(planted);
    for (const l of before) expect(l.veths).toEqual([]);
    expect(await hostPoolRoutes()).toEqual([]);
    const work = before.filter((l) => l.handle || l.endpoints.length > 0).length;
    console.log(`kill9 without DEL: killed ${killed}/${rounds}, ${before.filter((l) => l.handle).length} handles, ${before.filter((l) => l.endpoints.length).length} endpoints, ${pendingBefore.length} pending affinities left`);
    expect(work, 'the killed ADDs left nothing for gc to do').toBeGreaterThan(0);

    // Dry run: lists exactly that work and changes nothing (same keys, same values, same revision).
    const snapshot = await must(etcd).getPrefix('/');
    const rev = await revision({ endpoints: must(etcd).endpoint });
    const dry = await gc(cids, true);
    expect(dry.statuses.every((st) => st === 0), dry.stdout + dry.stderr).toBe(true);
    expect(dry.stdout).toContain('dry run: nothing changed');
    const dryLines = dry.stdout.split('\n').filter((l) => l.startsWith('would '));
    for (const [i, l] of before.entries()) {
      const cid = cids[i] as string;
      if (l.handle) expect(dryLines.some((x) => x.startsWith(`would release-handle ${NET}.${cid}:`)), `${cid}: ${dry.stdout}`).toBe(true);
      for (const k of l.endpoints) expect(dryLines).toContainEqual(expect.stringMatching(new RegExp(`^would remove-endpoint ${escapeRe(k)}:`)));
    }
    for (const k of pendingBefore) expect(dryLines).toContainEqual(expect.stringMatching(new RegExp(`^would remove-pending-affinity ${escapeRe(k)}:`)));
    expect(await must(etcd).getPrefix('/')).toEqual(snapshot);
    expect(await revision({ endpoints: must(etcd).endpoint })).toBe(rev);

    // The real run does what the dry run said, and leaves nothing of these containers.
    const real = await gc(cids, false);
    expect(real.statuses.every((st) => st === 0), real.stdout + real.stderr).toBe(true);
    expect(real.stdout.split('\n').filter((l) => l.startsWith('did ')).map((l) => l.replace(/^did /, '')).sort()).toEqual(dryLines.map((l) => l.replace(/^would /, '')).sort());
    for (const cid of cids) expect(await leftovers(cid), cid).toEqual({ handle: false, addresses: [], endpoints: [], veths: [] });
    expect(await pendingAffinities(cids)).toEqual([]);
    const weps = [...(await must(etcd).getPrefix(WEP_PREFIX)).values()].filter((v) => (JSON.parse(v) as { spec?: { node?: string } }).spec?.node?.startsWith('k9-') === true);
    expect(weps).toEqual([]);
    expect(checkIpamInvariants(await must(etcd).getPrefix('/calico/ipam/'))).toEqual([]);
  }, 600_000);
});

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

