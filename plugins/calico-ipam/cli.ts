import fs from 'node:fs';
import { parseNetConf, type NetConf } from '../../shared/cni/config';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { VERSION } from '../../shared/about';
import { openStore } from '../../shared/etcd/connect';
import type { Store } from '../../shared/store/store';
import { addPool, listPools, removePool, type PoolSpecInput } from '../../shared/ipam/pools';
import { IpPoolSchema } from '../../shared/calico/model';
import { parseWith } from '../../shared/cni/schema';
import { setNode, type NodeUpdate } from '../../shared/calico/nodes';
import { planRoutes, routeArgs } from '../../shared/ipam/routes';
import { ipamUsage } from '../../shared/ipam/usage';
import { ip, ipOk } from '../../shared/netlink/exec';
import { hostVethOwners } from '../../shared/netlink/link';
import { collectGarbage } from '../../shared/ipam/gc';
import { checkEndpoints, checkIpamInvariants } from '../../shared/ipam/check';
import { updateIpamConfig, type IpamConfigUpdate } from '../../shared/ipam/config';
import { Allocator } from '../../shared/ipam/allocator';
import { cidrContains, parseCidr, parseIp } from '../../shared/ipam/cidr';
import { keys } from '../../shared/calico/keys';
import { decodeBlock } from '../../shared/calico/model';

/**
 * Operator commands of calico-ipam, chosen when CNI_COMMAND is unset. The datastore comes from
 * --etcd-endpoints, or from a network config file (--config, so TLS settings are shared with the plugin),
 * or from ETCD_ENDPOINTS and friends.
 */

const HELP = `calico-ipam ${VERSION}: Calico IPAM plugin (CNI) and its operator commands

Usage:
  calico-ipam pool add <cidr> [--name N] [--block-size N] [--disabled] [--nat-outgoing] [--node-selector S]
  calico-ipam pool add --file ippool.json      (a Calico v3 IPPool resource, as calicoctl applies it)
  calico-ipam pool list [-o json]
  calico-ipam pool rm <name|cidr> [--force]
  calico-ipam node set <name> [--ipv4 ADDR/LEN] [--ipv6 ADDR/LEN] [--label k=v]...
  calico-ipam routes --node N [--apply]   the routes BIRD would program on node N from the block
                                          affinities: blackholes for N's blocks, "via <owner>" for
                                          the others (--apply: ip route replace, stale ones removed)
  calico-ipam show [-o json]              pools, blocks per node, used and free addresses
  calico-ipam show --ip A                 who holds address A
  calico-ipam release --ip A | --handle H release one address's handle, or a handle
  calico-ipam config [--strict-affinity true|false] [--auto-allocate-blocks true|false]
                     [--max-blocks-per-host N] [--ip-cooldown-seconds S]
                                          show or change the IPAM config (/calico/ipam/v2/config)
  calico-ipam check                       consistency report over etcd (exit 1 when something is wrong):
                                          allocations without handles, handles without allocations,
                                          broken blocks, affinities left pending, endpoints without
                                          addresses
  calico-ipam gc --node N [--grace S] [--dry-run]
                                          node-local GC, run on node N: releases allocations whose
                                          container has no endpoint and no host veth, stale endpoints,
                                          and claims left pending (removed, or confirmed when the block
                                          is this node's), older than the grace (default 300 s); an
                                          upstream claim (no claim time) once unchanged for 5 s
  calico-ipam --version | --help

Datastore (first that is set):
  --etcd-endpoints URL[,URL]   etcd client URLs
  --config FILE                a CNI network config (its etcd_* keys are used)
  ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE environment variables

As a CNI plugin it is run with CNI_COMMAND set (ADD, DEL, CHECK, STATUS, GC, VERSION) and the network
config on stdin.
`;

export interface Parsed {
  positional: string[];
  flags: Map<string, string | true>;
  /** --label may repeat. */
  labels: string[];
}

const VALUE_FLAGS = new Set(['--strict-affinity', '--auto-allocate-blocks', '--max-blocks-per-host', '--ip-cooldown-seconds', '--ipv4', '--ipv6', '--label', '--file', '-f', '--name', '--block-size', '--node-selector', '--etcd-endpoints', '--config', '-o', '--output', '--node', '--ip', '--handle', '--grace']);

export function parseArgv(argv: readonly string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  const labels: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a.startsWith('-')) {
      const eq = a.indexOf('=');
      if (eq > 0) flags.set(a.slice(0, eq), a.slice(eq + 1));
      else if (VALUE_FLAGS.has(a)) {
        const v = argv[++i];
        if (v === undefined) throw usage(`${a} needs a value`);
        if (a === '--label') labels.push(v);
        flags.set(a, v);
      } else flags.set(a, true);
    } else positional.push(a);
  }
  return { positional, flags, labels };
}

function usage(msg: string): CniError {
  return new CniError(ErrorCode.InvalidConfig, `${msg} (see calico-ipam --help)`);
}

function flag(p: Parsed, name: string): string | undefined {
  const v = p.flags.get(name);
  return typeof v === 'string' ? v : undefined;
}

export function datastoreConf(p: Parsed): NetConf {
  const file = flag(p, '--config');
  const conf: NetConf = file ? parseNetConf(fs.readFileSync(file, 'utf8')) : { name: 'calico-ipam-cli', type: 'calico-ipam' };
  const eps = flag(p, '--etcd-endpoints');
  if (eps) conf.etcd_endpoints = eps;
  return conf;
}

export async function withStore<T>(p: Parsed, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStore(datastoreConf(p));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** Reads an IPPool resource file (the fields calico-ipam honours; the rest of spec keeps its defaults). */
function poolInputFromFile(file: string): PoolSpecInput {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CniError(ErrorCode.DecodeFailure, `cannot read IPPool from ${file}: ${(e as Error).message}`);
  }
  const { metadata, spec } = parseWith(IpPoolSchema, raw, ErrorCode.InvalidConfig, `${file} is not an IPPool`);
  const input: PoolSpecInput = { cidr: spec.cidr, name: metadata.name };
  if (spec.blockSize !== undefined) input.blockSize = spec.blockSize;
  if (spec.disabled) input.disabled = true;
  if (spec.natOutgoing) input.natOutgoing = true;
  if (spec.nodeSelector) input.nodeSelector = spec.nodeSelector;
  return input;
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n') + '\n';
}

async function pool(p: Parsed): Promise<number> {
  const [, sub, arg] = p.positional;
  switch (sub) {
    case 'add': {
      const file = flag(p, '--file') ?? flag(p, '-f');
      if (!arg && !file) throw usage('pool add needs a CIDR or --file');
      const bs = flag(p, '--block-size');
      const input: PoolSpecInput = file ? poolInputFromFile(file) : { cidr: arg ?? '' };
      const name = flag(p, '--name');
      const sel = flag(p, '--node-selector');
      if (name) input.name = name;
      if (bs !== undefined) input.blockSize = Number(bs);
      if (sel) input.nodeSelector = sel;
      if (p.flags.has('--disabled')) input.disabled = true;
      if (p.flags.has('--nat-outgoing')) input.natOutgoing = true;
      const created = await withStore(p, (s) => addPool(s, input));
      process.stdout.write(`created pool ${created.metadata.name} ${created.spec.cidr} (block size /${created.spec.blockSize})\n`);
      return 0;
    }
    case 'list':
    case 'ls': {
      const pools = await withStore(p, listPools);
      if (flag(p, '-o') === 'json' || flag(p, '--output') === 'json') {
        process.stdout.write(JSON.stringify(pools, null, 2) + '\n');
        return 0;
      }
      const rows = [['NAME', 'CIDR', 'BLOCKSIZE', 'DISABLED', 'NODESELECTOR']];
      for (const x of pools) rows.push([x.metadata.name, x.spec.cidr, String(x.spec.blockSize), String(x.spec.disabled ?? false), x.spec.nodeSelector ?? '']);
      process.stdout.write(table(rows));
      return 0;
    }
    case 'rm':
    case 'delete': {
      if (!arg) throw usage('pool rm needs a name or CIDR');
      const removed = await withStore(p, (s) => removePool(s, arg, p.flags.has('--force')));
      process.stdout.write(`removed pool ${removed.metadata.name} ${removed.spec.cidr}\n`);
      return 0;
    }
    default:
      throw usage(`unknown pool command ${JSON.stringify(sub ?? '')}`);
  }
}

async function node(p: Parsed): Promise<number> {
  const [, sub, name] = p.positional;
  if (sub !== 'set' || !name) throw usage('usage: node set <name> [--ipv4 A/LEN] [--ipv6 A/LEN] [--label k=v]');
  const update: NodeUpdate = {};
  const v4 = flag(p, '--ipv4');
  const v6 = flag(p, '--ipv6');
  if (v4) update.ipv4Address = v4;
  if (v6) update.ipv6Address = v6;
  if (p.labels.length) {
    update.labels = Object.fromEntries(p.labels.map((l) => {
      const eq = l.indexOf('=');
      if (eq <= 0) throw usage(`invalid label ${JSON.stringify(l)}: expected key=value`);
      return [l.slice(0, eq), l.slice(eq + 1)];
    }));
  }
  const n = await withStore(p, (s) => setNode(s, name, update));
  process.stdout.write(`node ${n.metadata.name}: ${JSON.stringify(n.spec ?? {})}\n`);
  return 0;
}

async function routes(p: Parsed): Promise<number> {
  const name = flag(p, '--node');
  if (!name) throw usage('routes needs --node');
  const plan = await withStore(p, (s) => planRoutes(s, name));
  for (const u of plan.unreachable) process.stderr.write(`calico-ipam: no IPv${u.family} address for node ${u.owner}; no route to its block ${u.cidr}\n`);
  const lines = plan.routes.map(routeArgs);
  if (p.flags.has('--apply')) await applyRoutes(lines);
  process.stdout.write(lines.map((l) => `${l}\n`).join(''));
  return 0;
}

/** Programs the plan in this network namespace and removes block routes (proto bird) no longer in it. */
async function applyRoutes(lines: readonly string[]): Promise<void> {
  const want = new Set(lines.map((l) => l.replace(/ proto bird$/, '')));
  const stale: string[] = [];
  for (const fam of ['-4', '-6']) {
    const r = await ip([fam, '-j', 'route', 'show', 'proto', 'bird']);
    for (const rt of JSON.parse(r.stdout || '[]') as { dst: string; gateway?: string; type?: string }[]) {
      const desc = rt.type === 'blackhole' ? `blackhole ${rt.dst}` : `${rt.dst} via ${rt.gateway ?? ''}`;
      if (!want.has(desc)) stale.push(`route del ${desc} proto bird`);
    }
  }
  const batch = [...stale, ...lines.map((l) => `route replace ${l}`)];
  if (batch.length) await ipOk('failed to program block routes', [], { batch });
}

async function show(p: Parsed): Promise<number> {
  const usage = await withStore(p, ipamUsage);
  if (flag(p, '-o') === 'json' || flag(p, '--output') === 'json') {
    process.stdout.write(JSON.stringify(usage, null, 2) + '\n');
    return 0;
  }
  const pools = [['POOL', 'CIDR', 'BLOCKSIZE', 'BLOCKS', 'IN USE', 'SIZE', 'DISABLED']];
  for (const x of usage.pools) pools.push([x.name, x.cidr, `/${x.blockSize}`, String(x.blocks), String(x.used), x.size, String(x.disabled)]);
  const blocks = [['BLOCK', 'POOL', 'AFFINITY', 'IN USE', 'FREE']];
  for (const b of usage.blocks) blocks.push([b.cidr, b.pool ?? '(no pool)', b.affinity ?? '(none)', `${b.used}/${b.size}`, String(b.free)]);
  process.stdout.write(table(pools) + '\n' + table(blocks));
  return 0;
}

/** The handle holding an address, read from its block. */
async function holderOf(store: Store, ipText: string): Promise<{ handle: string | undefined; block: string; attrs: Record<string, string> } | undefined> {
  const ip = parseIp(ipText);
  if (!ip) throw usage(`${JSON.stringify(ipText)} is not an IP address`);
  const [blocks] = await store.read([{ prefix: keys.blockPrefix(ip.family) }]);
  for (const kv of blocks ?? []) {
    const b = decodeBlock(kv.value);
    const c = parseCidr(b.cidr);
    if (!c || !cidrContains(c, ip.family, ip.value)) continue;
    const idx = b.allocations[Number(ip.value - c.base)];
    if (idx === null || idx === undefined) return { handle: undefined, block: b.cidr, attrs: {} };
    const attr = b.attributes?.[idx];
    return { handle: attr?.handle_id ?? undefined, block: b.cidr, attrs: attr?.secondary ?? {} };
  }
  return undefined;
}

async function showIp(p: Parsed): Promise<number> {
  const ipText = flag(p, '--ip') ?? '';
  const h = await withStore(p, (s) => holderOf(s, ipText));
  if (!h) process.stdout.write(`${ipText}: not in any block\n`);
  else if (!h.handle) process.stdout.write(`${ipText}: free (block ${h.block})\n`);
  else process.stdout.write(`${ipText}: held by handle ${h.handle} (block ${h.block}) ${JSON.stringify(h.attrs)}\n`);
  return h?.handle ? 0 : 1;
}

async function release(p: Parsed): Promise<number> {
  const ipText = flag(p, '--ip');
  const handle = flag(p, '--handle');
  if (!ipText && !handle) throw usage('release needs --ip or --handle');
  return withStore(p, async (s) => {
    const target = handle ?? (await holderOf(s, ipText ?? ''))?.handle;
    if (!target) {
      process.stderr.write(`calico-ipam: ${ipText} is not allocated\n`);
      return 1;
    }
    const released = await new Allocator({ store: s, node: 'calico-ipam-cli' }).releaseHandle(target);
    process.stdout.write(`released handle ${target}: ${released.map((a) => a.ip).join(', ') || 'nothing held'}\n`);
    return 0;
  });
}

function boolFlag(p: Parsed, name: string): boolean | undefined {
  const v = flag(p, name);
  if (v === undefined) return undefined;
  if (v !== 'true' && v !== 'false') throw usage(`${name} takes true or false`);
  return v === 'true';
}

function numFlag(p: Parsed, name: string): number | undefined {
  const v = flag(p, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw usage(`${name} takes a non-negative number`);
  return n;
}

async function config(p: Parsed): Promise<number> {
  const update: IpamConfigUpdate = {};
  const strict = boolFlag(p, '--strict-affinity');
  const auto = boolFlag(p, '--auto-allocate-blocks');
  const maxBlocks = numFlag(p, '--max-blocks-per-host');
  const cooldown = numFlag(p, '--ip-cooldown-seconds');
  if (strict !== undefined) update.strict_affinity = strict;
  if (auto !== undefined) update.auto_allocate_blocks = auto;
  if (maxBlocks !== undefined) update.maxBlocksPerHost = maxBlocks;
  if (cooldown !== undefined) update.ipCooldownSeconds = cooldown;
  const stored = await withStore(p, (s) => updateIpamConfig(s, update));
  process.stdout.write(`${JSON.stringify(stored)}\n`);
  return 0;
}

async function check(p: Parsed): Promise<number> {
  const kv = await withStore(p, async (s) => {
    const [ipam, weps] = await s.read([{ prefix: '/calico/ipam/v2/' }, { prefix: keys.workloadEndpointPrefix }]);
    return new Map([...(ipam ?? []), ...(weps ?? [])].map((x) => [x.key, x.value]));
  });
  const problems = [...checkIpamInvariants(kv), ...checkEndpoints(kv)];
  for (const line of problems) process.stdout.write(`${line}\n`);
  const blocks = [...kv.keys()].filter((k) => k.includes('/assignment/')).length;
  const handles = [...kv.keys()].filter((k) => k.startsWith(keys.handlePrefix)).length;
  process.stdout.write(`checked ${blocks} block(s), ${handles} handle(s): ${problems.length === 0 ? 'consistent' : `${problems.length} problem(s)`}\n`);
  return problems.length === 0 ? 0 : 1;
}

async function gc(p: Parsed): Promise<number> {
  const node = flag(p, '--node');
  if (!node) throw usage('gc needs --node (run it on that node: it looks at the host veths)');
  const grace = Number(flag(p, '--grace') ?? '300');
  if (!Number.isFinite(grace) || grace < 0) throw usage('--grace takes seconds');
  const owners = hostVethOwners();
  const actions = await withStore(p, (s) =>
    collectGarbage(s, {
      node,
      graceMs: grace * 1000,
      dryRun: p.flags.has('--dry-run'),
      vethOwner: (ifname) => owners.get(ifname),
      liveVethContainers: new Set(owners.values()),
    }),
  );
  const verb = p.flags.has('--dry-run') ? 'would' : 'did';
  for (const a of actions) process.stdout.write(`${verb} ${a.kind} ${a.target}: ${a.detail}\n`);
  process.stdout.write(`gc on ${node}: ${actions.length} action(s)${p.flags.has('--dry-run') ? ' (dry run: nothing changed)' : ''}\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const p = parseArgv(argv);
  if (p.flags.has('--version') || p.flags.has('-v')) {
    process.stdout.write(`calico-ipam (calico-ts) ${VERSION}\n`);
    return 0;
  }
  if (p.flags.has('--help') || p.flags.has('-h') || p.positional[0] === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  switch (p.positional[0]) {
    case 'pool':
      return pool(p);
    case 'node':
      return node(p);
    case 'routes':
      return routes(p);
    case 'show':
      return flag(p, '--ip') ? showIp(p) : show(p);
    case 'release':
      return release(p);
    case 'gc':
      return gc(p);
    case 'check':
      return check(p);
    case 'config':
      return config(p);
    default:
      throw usage(`unknown command ${JSON.stringify(p.positional[0] ?? '')}`);
  }
}
