/**
 * Bad input against the built binaries, with a real etcd holding a pool and a real netns: every case must
 * fail with a CNI error object on stdout (the right code), a non-zero exit, no stack trace anywhere, and
 * no change at all, neither in etcd (every key, and the revision) nor in the netns or on the host.
 * Operator commands with bad pools fail the same way (a clear message on stderr, nothing written).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STACK_LINE, expectCniError } from './helpers/cni-error';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { getPrefixAt } from './helpers/etcdctl';
import { checkIpamInvariants } from './helpers/ipam-invariants';
import { createNetns, type Netns } from './helpers/netns';
import { addPool, cniEnv, requireBuilt, runPlugin, type PluginRun } from './helpers/plugin';

const exec = promisify(execFile);
const NET = 'badnet';
const POOL = '10.233.0.0/16';
const NODE = `bad-${process.pid}`;
/**
 * Every container id this file uses starts with this, so host veths (cali + 11) and aliases are ours. Not
 * hex: Kubernetes pods' veths are cali + 11 hex digits, and other test files may create some meanwhile.
 */
const CID = 'zq';
const OK_CID = `${CID}ok${process.pid}`;

type Bin = 'calico' | 'calico-ipam';
const BOTH: readonly Bin[] = ['calico', 'calico-ipam'];

let etcd: EtcdServer | undefined;
let ns: Netns | undefined;
let baseline: Snapshot | undefined;

function must<T>(v: T | undefined): T {
  if (v === undefined) throw new Error('not set up');
  return v;
}

function confObj(bin: Bin, patch: Record<string, unknown> = {}): Record<string, unknown> {
  return { cniVersion: '1.0.0', name: NET, type: bin, etcd_endpoints: must(etcd).endpoint, nodename: NODE, ipam: { type: 'calico-ipam' }, ...patch };
}

function conf(bin: Bin, patch: Record<string, unknown> = {}): string {
  return JSON.stringify(confObj(bin, patch));
}

function baseEnv(command = 'ADD'): Record<string, string> {
  return cniEnv({ command, containerId: OK_CID, netns: must(ns).path });
}

interface Snapshot {
  etcd: Map<string, string>;
  revision: number;
  link: string;
  addr: string;
  route4: string;
  route6: string;
  hostLinks: string[];
  hostRoutes: string[];
}

async function out(argv: string[]): Promise<string> {
  const [file, ...args] = argv as [string, ...string[]];
  return (await exec(file, args, { encoding: 'utf8' })).stdout;
}

async function snapshot(): Promise<Snapshot> {
  const n = must(ns).name;
  const all = await getPrefixAt({ endpoints: must(etcd).endpoint }, '/');
  return {
    etcd: all.kv,
    revision: all.revision,
    link: await out(['ip', '-n', n, '-o', 'link']),
    addr: await out(['ip', '-n', n, '-o', 'addr']),
    route4: await out(['ip', '-n', n, 'route']),
    route6: await out(['ip', '-n', n, '-6', 'route']),
    // Other test files may run beside this one and have cali* veths of their own: only ours count.
    hostLinks: (await out(['ip', '-o', 'link'])).split('\n').filter((l) => /^\d+: cali/.test(l) && (l.includes(`: cali${CID}`) || l.includes(`calico-ts:${CID}`))),
    hostRoutes: (await out(['ip', '-4', 'route'])).split('\n').filter((l) => l.startsWith('10.233.')),
  };
}

/** The state every case of a table is compared with, taken when the table starts. */
async function rebaseline(): Promise<void> {
  baseline = await snapshot();
}

async function expectUnchanged(what: string): Promise<void> {
  const now = await snapshot();
  expect(now, `${what} changed something`).toEqual(must(baseline));
}

/** A clean failure: error object with exactly the spec's keys, the code, non-zero exit, no stack trace. */
function expectCleanFailure(r: PluginRun, code: number, msg?: RegExp): void {
  expectCniError(r, code, msg);
  const keys = Object.keys(r.json as object);
  expect(keys.filter((k) => !['cniVersion', 'code', 'msg', 'details'].includes(k)), r.stdout).toEqual([]);
}

beforeAll(async () => {
  requireBuilt();
  etcd = await startEtcd();
  ns = await createNetns('ctsbad');
  await addPool(etcd.endpoint, POOL);
  // Control: the base config and env work for both binaries (so each case fails for its own defect), and
  // leave the node with its block, Node and profile, as a node that has run pods before.
  for (const bin of BOTH) {
    const add = await runPlugin(bin, { env: baseEnv(), stdin: conf(bin) });
    expect(add.status, `${bin} control ADD: ${add.stdout}${add.stderr}`).toBe(0);
    const del = await runPlugin(bin, { env: baseEnv('DEL'), stdin: conf(bin) });
    expect(del.status, `${bin} control DEL: ${del.stdout}${del.stderr}`).toBe(0);
  }
  baseline = await snapshot();
  expect(checkIpamInvariants(baseline.etcd)).toEqual([]);
}, 60_000);

afterAll(async () => {
  await ns?.remove();
  await etcd?.stop();
});

interface CniCase {
  name: string;
  bins?: readonly Bin[];
  /** Replaces variables of the base env; undefined removes one. */
  env?: Record<string, string | undefined>;
  command?: string;
  stdin?: (bin: Bin) => string;
  code: number;
  msg?: RegExp;
}

const HUGE = 'x'.repeat(5 * 1024 * 1024);

const cases: CniCase[] = [
  // ---- stdin that is not a network configuration ----
  { name: 'malformed JSON', stdin: () => '{"cniVersion": "1.0.0", "name": ', code: 6, msg: /failed to parse network configuration/ },
  { name: 'truncated JSON', stdin: (b) => conf(b).slice(0, 60), code: 6, msg: /failed to parse/ },
  { name: 'a JSON array', stdin: (b) => `[${conf(b)}]`, code: 6, msg: /expected a JSON object/ },
  { name: 'null', stdin: () => 'null', code: 6, msg: /expected a JSON object/ },
  { name: 'a JSON string', stdin: () => '"calico"', code: 6, msg: /expected a JSON object/ },
  { name: 'empty stdin', stdin: () => '', code: 6, msg: /no network configuration/ },
  { name: 'binary garbage', stdin: () => '\u0000\u00ff\u0001{', code: 6 },
  // ---- wrong types and values ----
  { name: 'mtu "x"', stdin: (b) => conf(b, { mtu: 'x' }), code: 7, msg: /mtu/ },
  { name: 'mtu 70000', stdin: (b) => conf(b, { mtu: 70000 }), code: 7, msg: /mtu/ },
  { name: 'ipam.ipv4_pools "notalist"', stdin: (b) => conf(b, { ipam: { type: 'calico-ipam', ipv4_pools: 'notalist' } }), code: 7, msg: /ipam\.ipv4_pools/ },
  { name: 'name 5', stdin: (b) => conf(b, { name: 5 }), code: 7, msg: /name/ },
  { name: 'name "a/b"', stdin: (b) => conf(b, { name: 'a/b' }), code: 7, msg: /name/ },
  { name: 'name "$(reboot)"', stdin: (b) => conf(b, { name: '$(reboot)' }), code: 7, msg: /name/ },
  { name: '5 MB unknown key with name 5', stdin: (b) => conf(b, { huge: HUGE, name: 5 }), code: 7, msg: /name/ },
  { name: 'cniVersion 9.9.9', stdin: (b) => conf(b, { cniVersion: '9.9.9' }), code: 1, msg: /incompatible CNI versions/ },
  { name: 'cniVersion "latest"', stdin: (b) => conf(b, { cniVersion: 'latest' }), code: 6, msg: /invalid version/ },
  { name: 'cniVersion 1 (a number)', stdin: (b) => conf(b, { cniVersion: 1 }), code: 7, msg: /cniVersion/ },
  { name: 'datastore_type kubernetes', stdin: (b) => conf(b, { datastore_type: 'kubernetes' }), code: 2, msg: /only "etcdv3"/ },
  { name: 'etcd_transport "udp"', stdin: (b) => conf(b, { etcd_transport: 'udp' }), code: 7, msg: /etcd_transport/ },
  { name: 'etcd_endpoints file:///etc/passwd', stdin: (b) => conf(b, { etcd_endpoints: 'file:///etc/passwd' }), code: 7, msg: /scheme must be/ },
  { name: 'etcd_endpoints "not a url"', stdin: (b) => conf(b, { etcd_endpoints: 'not a url' }), code: 7, msg: /invalid etcd endpoint/ },
  { name: 'nodename "../x"', stdin: (b) => conf(b, { nodename: '../x' }), code: 7, msg: /invalid node name/ },
  { name: 'nodename "$(reboot)"', stdin: (b) => conf(b, { nodename: '$(reboot)' }), code: 7, msg: /invalid node name/ },
  { name: 'assign_ipv4 "false" and no IPv6', stdin: (b) => conf(b, { ipam: { type: 'calico-ipam', assign_ipv4: 'false' } }), code: 7, msg: /nothing to assign/ },
  // ---- pools ----
  { name: 'ipv4_pools ["nope"]', stdin: (b) => conf(b, { ipam: { type: 'calico-ipam', ipv4_pools: ['nope'] } }), code: 7, msg: /does not exist/ },
  { name: 'ipv4_pools: a CIDR that is no pool', stdin: (b) => conf(b, { ipam: { type: 'calico-ipam', ipv4_pools: ['10.99.0.0/16'] } }), code: 7, msg: /does not exist/ },
  { name: 'ipv4_pools: an IPv6 CIDR', stdin: (b) => conf(b, { ipam: { type: 'calico-ipam', ipv4_pools: ['fd00::/64'] } }), code: 7, msg: /not an IPv4 pool/ },
  { name: 'IP= outside any pool', env: { CNI_ARGS: 'IP=192.0.2.5' }, code: 112, msg: /not in any enabled IP pool/ },
  { name: 'IP= not an address', env: { CNI_ARGS: 'IP=10.233.0.300' }, code: 7, msg: /not an IP address/ },
  { name: 'IP=$(reboot)', env: { CNI_ARGS: 'IP=$(reboot)' }, code: 7, msg: /not an IP address/ },
  { name: 'runtimeConfig.ips outside any pool', stdin: (b) => conf(b, { runtimeConfig: { ips: ['192.0.2.9/32'] } }), code: 112 },
  { name: 'CNI_ARGS without "="', env: { CNI_ARGS: 'IP' }, code: 4, msg: /invalid CNI_ARGS/ },
  // ---- delegation (calico only) ----
  { name: 'no ipam section', bins: ['calico'], stdin: () => JSON.stringify({ ...confObj('calico'), ipam: undefined }), code: 7, msg: /ipam\.type/ },
  { name: 'ipam.type "../../bin/sh"', bins: ['calico'], stdin: () => conf('calico', { ipam: { type: '../../bin/sh' } }), code: 7, msg: /invalid plugin name/ },
  { name: 'ipam.type not in CNI_PATH', bins: ['calico'], stdin: () => conf('calico', { ipam: { type: 'sh' } }), code: 7, msg: /failed to find plugin "sh"/ },
  // ---- the environment ----
  { name: 'unknown CNI_COMMAND', env: { CNI_COMMAND: 'FOO' }, code: 4, msg: /unknown CNI_COMMAND/ },
  { name: 'lower-case CNI_COMMAND', env: { CNI_COMMAND: 'add' }, code: 4, msg: /unknown CNI_COMMAND/ },
  { name: 'no CNI_COMMAND', env: { CNI_COMMAND: undefined }, code: 4, msg: /CNI_COMMAND/ },
  ...(['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'] as const).map((v) => ({ name: `ADD without ${v}`, env: { [v]: undefined }, code: 4, msg: new RegExp(v) })),
  ...(['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'] as const).map((v) => ({ name: `DEL without ${v}`, command: 'DEL', env: { [v]: undefined }, code: 4, msg: new RegExp(v) })),
  ...['$(reboot)', 'a;reboot', 'a`id`', 'a b', 'a\nb', '-rf', '../x', 'a/b', 'a$IFS'].flatMap((id) =>
    ['ADD', 'DEL'].map((command) => ({ name: `${command} container id ${JSON.stringify(id)}`, command, env: { CNI_CONTAINERID: id }, code: 4, msg: /invalid CNI_CONTAINERID/ })),
  ),
  // Interface names Linux refuses (whitespace, "/", ":", "." and "..", more than 15 bytes). Names with
  // shell metacharacters that Linux allows are used literally: see "legal interface names" below.
  ...['e th0', 'eth\n0', 'eth0\t', 'a/b', '..', '.', 'x'.repeat(16), 'eth0:1'].flatMap((ifname) =>
    ['ADD', 'DEL'].map((command) => ({ name: `${command} interface ${JSON.stringify(ifname)}`, command, env: { CNI_IFNAME: ifname }, code: 4, msg: /invalid CNI_IFNAME/ })),
  ),
  // Legal for Linux, but ip -batch would read the quote or "#" itself and act on another name.
  ...['"eth1"', "'eth2'", 'ab#cd', 'x"y'].map((ifname) => ({
    name: `interface ${JSON.stringify(ifname)}`,
    bins: ['calico'] as const,
    env: { CNI_IFNAME: ifname },
    code: 4,
    msg: /invalid CNI_IFNAME.*quote or "#"/,
  })),
  ...['/var/run/netns/../../etc', 'var/run/netns/x', '../../etc/passwd', '/var/run/netns//x', '/var/run/netns/./x', 'x'].flatMap((netns) =>
    ['ADD', 'DEL'].map((command) => ({ name: `${command} netns ${JSON.stringify(netns)}`, command, env: { CNI_NETNS: netns }, code: 4, msg: /invalid CNI_NETNS/ })),
  ),
  // Kubernetes names end up in etcd keys (endpoint name, namespace): only what Kubernetes allows.
  { name: 'K8S_POD_NAME "$(reboot)"', env: { CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=$(reboot)' }, code: 4, msg: /K8S_POD_NAME/ },
  { name: 'K8S_POD_NAME "a/b"', env: { CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=a/b' }, code: 4, msg: /K8S_POD_NAME/ },
  { name: 'K8S_POD_NAMESPACE "../x"', env: { CNI_ARGS: 'K8S_POD_NAMESPACE=../x;K8S_POD_NAME=web-0' }, code: 4, msg: /K8S_POD_NAMESPACE/ },
  { name: 'CNI_TEST_NAMESPACE "a/b"', env: { CNI_ARGS: 'CNI_TEST_NAMESPACE=a/b' }, code: 4, msg: /CNI_TEST_NAMESPACE/ },
];

describe('CNI calls with bad input: clean error, nothing changed', () => {
  beforeAll(rebaseline);
  for (const c of cases) {
    for (const bin of c.bins ?? BOTH) {
      it(`${bin}: ${c.name} -> ${c.code}`, async () => {
        const env: Record<string, string | undefined> = { ...baseEnv(c.command ?? 'ADD'), ...(c.env ?? {}) };
        const stdin = c.stdin ? c.stdin(bin) : conf(bin);
        const r = await runPlugin(bin, { env, stdin, timeoutMs: 30_000 });
        try {
          expectCleanFailure(r, c.code, c.msg);
          await expectUnchanged(`${bin} ${c.name}`);
        } finally {
          // An ADD that wrongly succeeded is undone, so one failure does not cascade into the next cases.
          if (r.status === 0 && (c.command ?? 'ADD') === 'ADD') {
            await runPlugin(bin, { env: { ...env, CNI_COMMAND: 'DEL' }, stdin });
            await rebaseline();
          }
        }
      });
    }
  }
});

describe('legal interface names with shell metacharacters are used literally, never by a shell', () => {
  // A shell running any of these would create the canary file (in the plugin's working directory).
  const canary = path.join(process.cwd(), 'ZQ');
  const names = ['$(reboot)', 'eth0;x', 'e`id`', 'a$IFS', 'e|x&y>z', '`touch${IFS}ZQ`', ';touch${IFS}ZQ', 'e\\x'];
  beforeAll(() => {
    expect(fs.existsSync(canary)).toBe(false);
  });
  afterAll(() => {
    // Only ever there if a shell ran: remove it so the tree stays clean, after the assertions below saw it.
    fs.rmSync(canary, { force: true });
  });
  for (const ifname of names) {
    for (const bin of BOTH) {
      it(`${bin}: ADD and DEL with interface ${JSON.stringify(ifname)}`, async () => {
        const cid = `${CID}lit${bin.length}${names.indexOf(ifname)}`;
        const env = cniEnv({ command: 'ADD', containerId: cid, netns: must(ns).path, ifname });
        const add = await runPlugin(bin, { env, stdin: conf(bin) });
        try {
          expect(add.status, add.stdout + add.stderr).toBe(0);
          if (bin === 'calico') {
            const res = add.json as { interfaces: { name: string; sandbox?: string }[] };
            expect(res.interfaces[1]).toMatchObject({ name: ifname, sandbox: must(ns).path });
            const links = JSON.parse(await out(['ip', '-n', must(ns).name, '-j', 'link', 'show'])) as { ifname: string }[];
            expect(links.map((l) => l.ifname).sort()).toEqual([ifname, 'lo'].sort());
          }
        } finally {
          const del = await runPlugin(bin, { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: conf(bin) });
          expect(del.status, del.stdout + del.stderr).toBe(0);
        }
        expect(fs.existsSync(canary), 'a shell ran the interface name').toBe(false);
        const now = await snapshot();
        expect([...now.etcd.keys()].filter((k) => k.includes(cid))).toEqual([]);
        expect([...now.etcd.values()].filter((v) => v.includes(cid))).toEqual([]);
        expect(now.link).toEqual(must(baseline).link);
        expect(now.hostLinks).toEqual([]);
        expect(now.hostRoutes).toEqual([]);
      });
    }
  }
});

describe('huge and deep input does not crash', () => {
  const inputs: { name: string; stdin: (b: Bin) => string }[] = [
    { name: '5 MB of JSON (a huge unknown key)', stdin: (b) => conf(b, { huge: HUGE }) },
    { name: 'an unknown key nested 100000 deep', stdin: (b) => conf(b).replace(/}$/, `,"deep":${'['.repeat(100_000)}${']'.repeat(100_000)}}`) },
  ];
  for (const input of inputs) {
    for (const bin of BOTH) {
      it(`${bin}: ${input.name} works (ADD, then DEL leaves nothing)`, async () => {
        const cid = `${CID}huge${bin.length}${input.name.length}`;
        const env = cniEnv({ command: 'ADD', containerId: cid, netns: must(ns).path });
        const add = await runPlugin(bin, { env, stdin: input.stdin(bin), timeoutMs: 30_000 });
        expect(STACK_LINE.test(add.stdout) || STACK_LINE.test(add.stderr), add.stderr).toBe(false);
        expect(add.status, add.stdout.slice(0, 1000) + add.stderr.slice(0, 1000)).toBe(0);
        expect((add.json as { ips?: unknown[] }).ips).toHaveLength(1);
        const del = await runPlugin(bin, { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: input.stdin(bin), timeoutMs: 30_000 });
        expect(del.status, del.stdout + del.stderr).toBe(0);
        const now = await snapshot();
        expect([...now.etcd.keys()].filter((k) => k.includes(cid))).toEqual([]);
        expect([...now.etcd.values()].filter((v) => v.includes(cid))).toEqual([]);
        expect(now.hostLinks).toEqual([]);
        expect(now.link).toEqual(must(baseline).link);
        expect(now.hostRoutes).toEqual([]);
        expect(checkIpamInvariants(now.etcd)).toEqual([]);
      });
    }
  }
});

describe('failures after IPAM are rolled back (calico)', () => {
  const rolledBack: { name: string; netns: string; code: number; msg: RegExp }[] = [
    { name: 'a netns path that does not exist', netns: '/var/run/netns/cts-no-such-netns', code: 3, msg: /cts-no-such-netns/ },
    { name: 'a netns path that is no network namespace (/etc/hostname)', netns: '/etc/hostname', code: 130, msg: /\/etc\/hostname/ },
  ];
  for (const c of rolledBack) {
    it(`${c.name}: ${c.code}, and no address, endpoint, veth or route is left`, async () => {
      const cid = `${CID}rb${c.code}`;
      const r = await runPlugin('calico', { env: cniEnv({ command: 'ADD', containerId: cid, netns: c.netns }), stdin: conf('calico') });
      expectCleanFailure(r, c.code, c.msg);
      const now = await snapshot();
      expect([...now.etcd.keys()].filter((k) => k.includes(cid))).toEqual([]);
      expect([...now.etcd.values()].filter((v) => v.includes(cid))).toEqual([]);
      expect(now.hostLinks).toEqual([]);
      expect(now.hostRoutes).toEqual([]);
      expect(now.link).toEqual(must(baseline).link);
      expect(checkIpamInvariants(now.etcd)).toEqual([]);
    });
  }
});

describe('operator commands with bad pools: non-zero exit, clear message, nothing written', () => {
  beforeAll(rebaseline);
  const cli: { name: string; args: string[]; msg: RegExp }[] = [
    { name: 'prefix /33', args: ['pool', 'add', '10.0.0.0/33'], msg: /invalid pool CIDR "10\.0\.0\.0\/33"/ },
    { name: 'address 999.1.1.1', args: ['pool', 'add', '999.1.1.1/8'], msg: /invalid pool CIDR "999\.1\.1\.1\/8"/ },
    { name: 'IPv6 prefix /129', args: ['pool', 'add', 'fd00::/129'], msg: /invalid pool CIDR/ },
    { name: 'no prefix', args: ['pool', 'add', '10.240.0.0'], msg: /invalid pool CIDR/ },
    { name: '"$(reboot)" as CIDR', args: ['pool', 'add', '$(reboot)'], msg: /invalid pool CIDR/ },
    { name: 'overlapping an existing pool', args: ['pool', 'add', '10.233.128.0/17'], msg: /overlaps existing pool/ },
    { name: 'containing an existing pool', args: ['pool', 'add', '10.0.0.0/8'], msg: /overlaps existing pool/ },
    { name: 'the same CIDR again', args: ['pool', 'add', POOL], msg: /already exists|overlaps/ },
    { name: 'block size 19', args: ['pool', 'add', '10.240.0.0/16', '--block-size', '19'], msg: /invalid block size 19/ },
    { name: 'block size 33', args: ['pool', 'add', '10.240.0.0/16', '--block-size', '33'], msg: /invalid block size 33/ },
    { name: 'block size "abc"', args: ['pool', 'add', '10.240.0.0/16', '--block-size', 'abc'], msg: /invalid block size/ },
    { name: 'block size larger than the pool', args: ['pool', 'add', '10.240.0.0/24', '--block-size', '20'], msg: /larger than the pool/ },
    { name: 'IPv6 block size 100', args: ['pool', 'add', 'fd00:1::/48', '--block-size', '100'], msg: /invalid block size 100/ },
    { name: 'bad pool name', args: ['pool', 'add', '10.240.0.0/16', '--name', 'Bad_Name'], msg: /invalid pool name/ },
    { name: 'no CIDR', args: ['pool', 'add'], msg: /needs a CIDR/ },
    { name: 'removing a pool that does not exist', args: ['pool', 'rm', 'nope'], msg: /no pool named "nope"/ },
  ];
  for (const c of cli) {
    it(`calico-ipam ${c.args.join(' ')} (${c.name})`, async () => {
      const r = await runPlugin('calico-ipam', { env: {}, args: [...c.args, '--etcd-endpoints', must(etcd).endpoint] });
      expect(r.status, r.stdout + r.stderr).not.toBe(0);
      expect(r.stderr).toMatch(c.msg);
      expect(STACK_LINE.test(r.stdout) || STACK_LINE.test(r.stderr), r.stderr).toBe(false);
      await expectUnchanged(c.args.join(' '));
    });
  }
});
