import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cnitool, cnitoolContainerId, exampleConflist, netconfDir, requireCnitool, type NetConfDir } from './helpers/cnitool';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { createNetns, type Netns } from './helpers/netns';
import { addPool, cniEnv, requireBuilt, runPlugin } from './helpers/plugin';

/*
 * The calico network plugin on real network namespaces, a real etcd and the built binaries, driven by
 * cnitool (the CNI project's reference client) and by direct execs where a runtime's exact env matters.
 */

const exec = promisify(execFile);
const POOL = '10.123.0.0/16';
const NET = 'k8s-pod-network';

async function sh(argv: string[]): Promise<string> {
  const [file, ...args] = argv as [string, ...string[]];
  return (await exec(file, args)).stdout;
}

async function linkJson(name: string, ns?: Netns): Promise<{ address?: string; operstate?: string; flags?: string[]; ifalias?: string }[]> {
  const argv = ns ? ['ip', '-n', ns.name, '-j', 'link', 'show', 'dev', name] : ['ip', '-j', 'link', 'show', 'dev', name];
  try {
    return JSON.parse(await sh(argv)) as { address?: string }[];
  } catch {
    return [];
  }
}

function hostVeth(containerId: string): string {
  return `cali${containerId.slice(0, 11)}`;
}

async function ping(from: Netns | undefined, to: string): Promise<boolean> {
  const argv = from ? ['ip', 'netns', 'exec', from.name, 'ping', '-c', '1', '-W', '2', to] : ['ping', '-c', '1', '-W', '2', to];
  try {
    await sh(argv);
    return true;
  } catch {
    return false;
  }
}

let etcd: EtcdServer;
const nodename = `node-${process.pid}`;
const created: Netns[] = [];
const dirs: NetConfDir[] = [];

async function netns(): Promise<Netns> {
  const n = await createNetns('ctsnet');
  created.push(n);
  return n;
}

function directConf(cniVersion: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    cniVersion,
    name: NET,
    type: 'calico',
    etcd_endpoints: etcd.endpoint,
    nodename,
    ipam: { type: 'calico-ipam' },
    ...extra,
  });
}

beforeAll(async () => {
  requireBuilt();
  requireCnitool();
  etcd = await startEtcd();
  await addPool(etcd.endpoint, POOL);
});

afterAll(async () => {
  for (const n of created) await n.remove();
  for (const d of dirs) d.remove();
  await etcd?.stop();
});

describe('cnitool ADD / CHECK / DEL with conf-examples/10-calico.conflist (calico + portmap)', () => {
  let conf: NetConfDir;
  let pod1: Netns;
  let pod2: Netns;
  let ip1 = '';
  let ip2 = '';

  beforeAll(async () => {
    conf = netconfDir({ '10-calico.conflist': exampleConflist('10-calico.conflist', { endpoint: etcd.endpoint, nodename }) });
    dirs.push(conf);
    pod1 = await netns();
    pod2 = await netns();
  });

  it('ADD gives the pod a /32 on eth0 with routes via 169.254.1.1, and the host a cali veth, proxy ARP, a host route and an endpoint', async () => {
    const r = await cnitool('add', NET, pod1.path, { confDir: conf.dir });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    const result = JSON.parse(r.stdout) as { ips: { address: string; interface: number }[]; interfaces: { name: string; mac?: string; sandbox?: string }[] };
    expect(result.ips).toHaveLength(1);
    const addr = result.ips[0]?.address ?? '';
    expect(addr).toMatch(/^10\.123\.\d+\.\d+\/32$/);
    ip1 = addr.split('/')[0] ?? '';
    const cid = cnitoolContainerId(pod1.path);
    const veth = hostVeth(cid);
    expect(result.interfaces[result.ips[0]?.interface ?? -1]).toMatchObject({ name: 'eth0', sandbox: pod1.path });

    // Inside the pod.
    const addrs = JSON.parse(await sh(['ip', '-n', pod1.name, '-j', 'addr', 'show', 'dev', 'eth0'])) as { addr_info: { family: string; local: string; prefixlen: number }[] }[];
    expect(addrs[0]?.addr_info.filter((a) => a.family === 'inet')).toEqual([expect.objectContaining({ local: ip1, prefixlen: 32 })]);
    const routes = await sh(['ip', '-n', pod1.name, 'route', 'show']);
    expect(routes).toContain('default via 169.254.1.1 dev eth0');
    expect(routes).toMatch(/169\.254\.1\.1 dev eth0 scope link/);

    // On the host.
    const link = await linkJson(veth);
    expect(link[0]?.address).toBe('ee:ee:ee:ee:ee:ee');
    expect(link[0]?.operstate).toBe('UP');
    expect(fs.readFileSync(`/proc/sys/net/ipv4/conf/${veth}/proxy_arp`, 'utf8').trim()).toBe('1');
    expect(fs.readFileSync(`/proc/sys/net/ipv4/conf/${veth}/forwarding`, 'utf8').trim()).toBe('1');
    expect(await sh(['ip', 'route', 'show', `${ip1}/32`])).toMatch(new RegExp(`${ip1.replace(/\./g, '\\.')} dev ${veth} scope link`));

    // In etcd: the endpoint, named by upstream's rule, and the handle.
    const weps = await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/default/');
    const wepName = `${nodename.replace(/-/g, '--')}-cni-${cid.replace(/-/g, '--')}-eth0`;
    const wep = JSON.parse(weps.get(`/calico/resources/v3/projectcalico.org/workloadendpoints/default/${wepName}`) ?? 'null') as { spec: Record<string, unknown> } | null;
    expect(wep?.spec).toMatchObject({
      orchestrator: 'cni',
      node: nodename,
      containerID: cid,
      endpoint: 'eth0',
      ipNetworks: [`${ip1}/32`],
      profiles: [NET],
      interfaceName: veth,
    });
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${cid}`)).toBeDefined();
  });

  it('the host reaches the pod, and two pods on one host reach each other', async () => {
    const r = await cnitool('add', NET, pod2.path, { confDir: conf.dir });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    ip2 = ((JSON.parse(r.stdout) as { ips: { address: string }[] }).ips[0]?.address ?? '').split('/')[0] ?? '';
    expect(ip2).not.toBe(ip1);
    expect(await ping(undefined, ip1)).toBe(true);
    expect(await ping(pod1, ip2)).toBe(true);
    expect(await ping(pod2, ip1)).toBe(true);
  });

  it('CHECK passes, then fails once someone deletes the pod route', async () => {
    const ok = await cnitool('check', NET, pod1.path, { confDir: conf.dir });
    expect(ok.status, ok.stderr + ok.stdout).toBe(0);
    await sh(['ip', '-n', pod1.name, 'route', 'del', 'default']);
    const bad = await cnitool('check', NET, pod1.path, { confDir: conf.dir });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr + bad.stdout).toMatch(/route default via 169\.254\.1\.1 missing/);
  });

  it('DEL removes the veth, the host route, the endpoint and the address; DEL again succeeds', async () => {
    const cid = cnitoolContainerId(pod1.path);
    const r = await cnitool('del', NET, pod1.path, { confDir: conf.dir });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    expect(await linkJson(hostVeth(cid))).toEqual([]);
    expect(await linkJson('eth0', pod1)).toEqual([]);
    expect(await sh(['ip', 'route', 'show', `${ip1}/32`])).toBe('');
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${cid}`)).toBeUndefined();
    const weps = await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/');
    expect([...weps.values()].some((v) => v.includes(cid))).toBe(false);
    const again = await cnitool('del', NET, pod1.path, { confDir: conf.dir });
    expect(again.status, again.stderr + again.stdout).toBe(0);
    const r2 = await cnitool('del', NET, pod2.path, { confDir: conf.dir });
    expect(r2.status, r2.stderr).toBe(0);
  });
});

describe('result shape for every CNI version (direct exec)', () => {
  for (const version of ['0.2.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']) {
    it(`cniVersion ${version}`, async () => {
      const ns = await netns();
      const cid = `ver${version.replace(/\./g, '')}x${process.pid}`;
      const env = cniEnv({ command: 'ADD', containerId: cid, netns: ns.path });
      const r = await runPlugin('calico', { env, stdin: directConf(version, { mtu: 1400 }) });
      expect(r.status, r.stderr + r.stdout).toBe(0);
      const res = r.json as Record<string, unknown>;
      expect(res.cniVersion).toBe(version);
      if (version === '0.2.0') {
        expect(res.ip4).toMatchObject({ ip: expect.stringMatching(/\/32$/) });
        expect(res.dns).toEqual({});
        expect(res.interfaces).toBeUndefined();
      } else {
        const ips = res.ips as Record<string, unknown>[];
        const ifaces = res.interfaces as Record<string, unknown>[];
        expect(ifaces[1]).toMatchObject({ name: 'eth0', sandbox: ns.path, mac: expect.stringMatching(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/) });
        expect(ifaces[0]).toMatchObject({ name: hostVeth(cid), mac: 'ee:ee:ee:ee:ee:ee' });
        expect(ips[0]).toMatchObject({ interface: 1, address: expect.stringMatching(/\/32$/) });
        if (version.startsWith('0.')) {
          expect(ips[0]?.version).toBe('4');
          expect(res.dns).toEqual({});
          expect(ifaces[1]?.mtu).toBeUndefined();
        } else {
          expect(ips[0]?.version).toBeUndefined();
          expect(res.dns).toBeUndefined();
          expect(ifaces[1]?.mtu).toBe(version === '1.1.0' ? 1400 : undefined);
        }
      }
      const mtu = JSON.parse(await sh(['ip', '-n', ns.name, '-j', 'link', 'show', 'dev', 'eth0'])) as { mtu: number }[];
      expect(mtu[0]?.mtu).toBe(1400);
      const del = await runPlugin('calico', { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: directConf(version) });
      expect(del.status, del.stderr + del.stdout).toBe(0);
    });
  }
});

describe('DEL and etcd', () => {
  /** ADD, then DEL at debug level; the etcd requests DEL made, as it logs them. */
  async function addThenDel(cid: string, withPrevResult: boolean): Promise<number> {
    const ns = await netns();
    const env = cniEnv({ command: 'ADD', containerId: cid, netns: ns.path });
    const add = await runPlugin('calico', { env, stdin: directConf('1.0.0') });
    expect(add.status, add.stderr + add.stdout).toBe(0);
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${cid}`)).toBeDefined();
    const extra = { log_level: 'debug', ...(withPrevResult ? { prevResult: add.json } : {}) };
    const del = await runPlugin('calico', { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: directConf('1.0.0', extra) });
    expect(del.status, del.stderr + del.stdout).toBe(0);
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${cid}`)).toBeUndefined();
    expect(await linkJson(hostVeth(cid))).toEqual([]);
    const m = /addresses and endpoint released t=[\d.]+ roundTrips=(\d+)\b/.exec(del.stderr);
    expect(m, del.stderr).not.toBeNull();
    return Number(m?.[1]);
  }

  it('reads the IPAM handles along with the readiness check and the endpoint: 4 requests, 3 one after another', async () => {
    // The readiness read (with the endpoint and both handle forms), the block, the release, the endpoint's delete.
    expect(await addThenDel(`delreads${process.pid}`, false)).toBe(4);
  });

  it("with prevResult (as libcni sends it), also reads the address's block along: 3 requests, 2 one after another", async () => {
    // The readiness read (with the endpoint, both handle forms and the block), then the release and the endpoint's delete.
    expect(await addThenDel(`delprev${process.pid}`, true)).toBe(3);
  });
});

describe('nothing is left behind', () => {
  it('a failure after IPAM (eth0 already taken in the netns) leaves no address, no veth and no endpoint', async () => {
    const ns = await netns();
    await sh(['ip', '-n', ns.name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0peer']);
    const cid = `taken${process.pid}`;
    const env = cniEnv({ command: 'ADD', containerId: cid, netns: ns.path });
    const before = await etcd.getPrefix('/calico/ipam/v2/handle/');
    const r = await runPlugin('calico', { env, stdin: directConf('1.0.0') });
    expect(r.status).not.toBe(0);
    const err = r.json as { code: number; msg: string };
    expect(err.code).toBe(130);
    expect(err.msg).toMatch(/eth0/);
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${cid}`)).toBeUndefined();
    expect(await etcd.getPrefix('/calico/ipam/v2/handle/')).toEqual(before);
    expect(await linkJson(hostVeth(cid))).toEqual([]);
    const weps = await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/');
    expect([...weps.values()].some((v) => v.includes(cid))).toBe(false);
    // The pre-existing interface in the pod is untouched.
    expect(await linkJson('eth0', ns)).toHaveLength(1);
    expect(await linkJson('eth0peer', ns)).toHaveLength(1);
  });

  it('a failure on the host side (the route to the pod is taken) undoes the endpoint written meanwhile, the veth and the address', async () => {
    const pool = '10.124.7.0/26';
    await addPool(etcd.endpoint, pool, ['--name', 'hostfail']);
    // Every address of the pool already has a host route, on a link of this test's own (a veth pair:
    // this kernel may have no dummy driver).
    const dummy = `ctsrt${process.pid % 100000}`;
    await sh(['ip', 'link', 'add', dummy, 'type', 'veth', 'peer', 'name', `${dummy}p`]);
    try {
      await sh(['ip', 'link', 'set', dummy, 'up']);
      await sh(['ip', 'link', 'set', `${dummy}p`, 'up']);
      const routes = [...Array(64).keys()].map((i) => `route add 10.124.7.${i}/32 dev ${dummy}`).join('\n');
      await new Promise<void>((resolve, reject) => execFile('ip', ['-batch', '-'], (e) => (e ? reject(e) : resolve())).stdin?.end(`${routes}\n`));
      expect((await sh(['ip', '-4', 'route', 'show', 'dev', dummy])).trim().split('\n')).toHaveLength(64);

      const ns = await netns();
      const cid = `hostfail${process.pid}`;
      const env = cniEnv({ command: 'ADD', containerId: cid, netns: ns.path });
      const r = await runPlugin('calico', { env, stdin: directConf('1.0.0', { ipam: { type: 'calico-ipam', ipv4_pools: [pool] } }) });
      expect(r.status, r.stdout + r.stderr).not.toBe(0);
      expect(r.json).toMatchObject({ code: 130, msg: expect.stringMatching(new RegExp(`already exists for an interface other than cali.*: ${dummy}`)) });
      expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${cid}`)).toBeUndefined();
      const weps = await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/');
      expect([...weps.values()].some((v) => v.includes(cid))).toBe(false);
      expect(await linkJson(hostVeth(cid))).toEqual([]);
      expect((await sh(['ip', '-n', ns.name, '-o', 'link'])).trim().split('\n')).toHaveLength(1);
    } finally {
      await sh(['ip', 'link', 'del', dummy]);
      await runPlugin('calico-ipam', { env: {}, args: ['pool', 'rm', 'hostfail', '--force', '--etcd-endpoints', etcd.endpoint] });
    }
  });

  it("an ADD whose veth name is another container's (same first 11 characters) takes the fallback name; each DEL removes only its own", async () => {
    const first = await netns();
    const second = await netns();
    // "collide" and exactly four digits: the same first 11 characters whatever the PID's length (a PID of
    // three digits once made the names differ).
    const tag = String(process.pid % 10_000).padStart(4, '0');
    const idA = `collide${tag}aaaa`;
    const idB = `collide${tag}bbbb`;
    const a = cniEnv({ command: 'ADD', containerId: idA, netns: first.path });
    const b = cniEnv({ command: 'ADD', containerId: idB, netns: second.path });
    expect((await runPlugin('calico', { env: a, stdin: directConf('1.0.0') })).status).toBe(0);
    const veth = hostVeth(idA);
    expect(hostVeth(idB)).toBe(veth);
    const r = await runPlugin('calico', { env: b, stdin: directConf('1.0.0') });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const fallback = `cali${createHash('sha1').update(idB).digest('hex').slice(0, 11)}`;
    const result = r.json as { interfaces: { name: string; mac?: string }[]; ips: { address: string }[] };
    expect(result.interfaces[0]?.name).toBe(fallback);
    // Both pods are networked, each through its own veth, and the endpoint names the one it got.
    expect((await linkJson(veth))[0]?.ifalias).toBe(`calico-ts:${idA}`);
    expect((await linkJson(fallback))[0]?.ifalias).toBe(`calico-ts:${idB}`);
    const addrOf = async (ns: Netns) => (await sh(['ip', '-n', ns.name, '-4', '-o', 'addr', 'show', 'dev', 'eth0'])).split(/\s+/)[3]?.split('/')[0] ?? '';
    const ipB = await addrOf(second);
    expect(result.ips[0]?.address).toBe(`${ipB}/32`);
    expect(await sh(['ip', '-4', 'route', 'show', 'exact', `${ipB}/32`])).toContain(`dev ${fallback}`);
    expect(await ping(undefined, await addrOf(first))).toBe(true);
    expect(await ping(undefined, ipB)).toBe(true);
    const weps = [...(await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/')).values()];
    expect(weps.find((v) => v.includes(idB))).toContain(`"interfaceName":"${fallback}"`);
    // CHECK finds the fallback veth of its container.
    const check = await runPlugin('calico', { env: { ...b, CNI_COMMAND: 'CHECK' }, stdin: directConf('1.0.0', { prevResult: result }) });
    expect(check.status, check.stdout + check.stderr).toBe(0);
    // Deleting the first pod leaves the second one's veth, and the other way round.
    expect((await runPlugin('calico', { env: { ...a, CNI_COMMAND: 'DEL' }, stdin: directConf('1.0.0') })).status).toBe(0);
    expect(await linkJson(veth)).toEqual([]);
    expect((await linkJson(fallback))[0]?.ifalias).toBe(`calico-ts:${idB}`);
    expect(await ping(undefined, ipB)).toBe(true);
    expect((await runPlugin('calico', { env: { ...b, CNI_COMMAND: 'DEL' }, stdin: directConf('1.0.0') })).status).toBe(0);
    expect(await linkJson(fallback)).toEqual([]);
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${idB}`)).toBeUndefined();
  });

  it('two ADDs at once whose veth names collide both succeed, each on a veth of its own, and neither touches the other', async () => {
    for (let round = 0; round < 6; round++) {
      // The same first 11 characters: the same usual host veth name.
      const prefix = `rc${String(process.pid).padStart(7, '0')}r${round}`;
      const pods = await Promise.all(['a', 'b'].map(async (x) => ({ id: `${prefix}${x}${x}${x}`, ns: await netns() })));
      expect(hostVeth(pods[0]?.id ?? '')).toBe(hostVeth(pods[1]?.id ?? ''));
      const adds = await Promise.all(pods.map((p) => runPlugin('calico', { env: cniEnv({ command: 'ADD', containerId: p.id, netns: p.ns.path }), stdin: directConf('1.0.0') })));
      for (const r of adds) expect(r.status, `round ${round}: ${r.stdout}${r.stderr}`).toBe(0);
      const names = adds.map((r) => (r.json as { interfaces: { name: string }[] }).interfaces[0]?.name ?? '');
      expect(new Set(names).size).toBe(2);
      for (const [i, name] of names.entries()) expect((await linkJson(name))[0]?.ifalias, `round ${round}`).toBe(`calico-ts:${pods[i]?.id}`);
      const dels = await Promise.all(pods.map((p) => runPlugin('calico', { env: cniEnv({ command: 'DEL', containerId: p.id, netns: p.ns.path }), stdin: directConf('1.0.0') })));
      for (const r of dels) expect(r.status, r.stdout + r.stderr).toBe(0);
      for (const name of names) expect(await linkJson(name)).toEqual([]);
    }
    // Six rounds of 2 ADDs and 2 DELs: ~4 s on an idle machine, near 60 s while CI's heaviest suites run
    // beside it (every test of this file ran ~10x slower then). A guard against a hang, not a timing.
  }, 180_000);

  it('DEL with an empty CNI_NETNS (containerd after the task exited) releases the address and the endpoint', async () => {
    const ns = await netns();
    const cid = `gone${process.pid}`;
    const env = cniEnv({ command: 'ADD', containerId: cid, netns: ns.path });
    const add = await runPlugin('calico', { env, stdin: directConf('1.0.0') });
    expect(add.status, add.stderr).toBe(0);
    await ns.remove(); // the kernel removes the veth pair with the namespace
    const del = await runPlugin('calico', { env: { ...env, CNI_COMMAND: 'DEL', CNI_NETNS: '' }, stdin: directConf('1.0.0') });
    expect(del.status, del.stderr + del.stdout).toBe(0);
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.${cid}`)).toBeUndefined();
    const weps = await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/');
    expect([...weps.values()].some((v) => v.includes(cid))).toBe(false);
  });

  it("a late DEL of a replaced StatefulSet pod leaves the newer pod's veth and endpoint alone (calico#10375)", async () => {
    const old = await netns();
    const newer = await netns();
    const args = 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0';
    const oldEnv = cniEnv({ command: 'ADD', containerId: `old${process.pid}`, netns: old.path, args });
    const newEnv = cniEnv({ command: 'ADD', containerId: `new${process.pid}`, netns: newer.path, args });
    expect((await runPlugin('calico', { env: oldEnv, stdin: directConf('1.0.0') })).status).toBe(0);
    await old.remove();
    const add = await runPlugin('calico', { env: newEnv, stdin: directConf('1.0.0') });
    expect(add.status, add.stderr).toBe(0);
    const veth = (add.json as { interfaces: { name: string }[] }).interfaces[0]?.name ?? '';
    const del = await runPlugin('calico', { env: { ...oldEnv, CNI_COMMAND: 'DEL', CNI_NETNS: '' }, stdin: directConf('1.0.0') });
    expect(del.status, del.stderr + del.stdout).toBe(0);
    expect(await linkJson(veth)).toHaveLength(1);
    const wepKey = `/calico/resources/v3/projectcalico.org/workloadendpoints/default/${nodename.replace(/-/g, '--')}-k8s-web--0-eth0`;
    expect(JSON.parse((await etcd.get(wepKey)) ?? '{}')).toMatchObject({ spec: { containerID: `new${process.pid}`, pod: 'web-0' } });
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.old${process.pid}`)).toBeUndefined();
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.new${process.pid}`)).toBeDefined();
    const del2 = await runPlugin('calico', { env: { ...newEnv, CNI_COMMAND: 'DEL' }, stdin: directConf('1.0.0') });
    expect(del2.status, del2.stderr).toBe(0);
    expect(await linkJson(veth)).toEqual([]);
  });
});

describe('delegated IPAM and chaining', () => {
  it("delegates to Debian's host-local when ipam.type is host-local", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-hostlocal-'));
    try {
      const conf = exampleConflist('40-calico-host-local.conflist', { endpoint: etcd.endpoint, nodename });
      const calico = conf.plugins[0] as { ipam: Record<string, unknown> };
      calico.ipam = { ...calico.ipam, dataDir, ranges: [[{ subnet: '10.124.0.0/24' }]] };
      const dir = netconfDir({ 'hl.conflist': conf });
      dirs.push(dir);
      const ns = await netns();
      const r = await cnitool('add', conf.name, ns.path, { confDir: dir.dir });
      expect(r.status, r.stderr + r.stdout).toBe(0);
      const address = (JSON.parse(r.stdout) as { ips: { address: string }[] }).ips[0]?.address ?? '';
      expect(address).toMatch(/^10\.124\.0\.\d+\/32$/);
      const ip = address.split('/')[0] ?? '';
      expect(fs.existsSync(path.join(dataDir, conf.name, ip))).toBe(true);
      expect(await etcd.get(`/calico/ipam/v2/handle/${conf.name}.${cnitoolContainerId(ns.path)}`)).toBeUndefined();
      const del = await cnitool('del', conf.name, ns.path, { confDir: dir.dir });
      expect(del.status, del.stderr).toBe(0);
      expect(fs.existsSync(path.join(dataDir, conf.name, ip))).toBe(false);
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('passes its result through portmap in a chain (cnitool shows calico’s interfaces)', async () => {
    const conf = exampleConflist('10-calico.conflist', { endpoint: etcd.endpoint, nodename, name: 'chain-net' });
    expect(conf.plugins.map((p) => p.type)).toEqual(['calico', 'portmap']);
    const dir = netconfDir({ 'c.conflist': conf });
    dirs.push(dir);
    const ns = await netns();
    const r = await cnitool('add', 'chain-net', ns.path, { confDir: dir.dir });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    const out = JSON.parse(r.stdout) as { interfaces: { name: string; mac?: string }[] };
    expect(out.interfaces[0]).toMatchObject({ name: hostVeth(cnitoolContainerId(ns.path)), mac: 'ee:ee:ee:ee:ee:ee' });
    expect((await cnitool('del', 'chain-net', ns.path, { confDir: dir.dir })).status).toBe(0);
  });
});

describe('STATUS and GC (CNI 1.1.0)', () => {
  it('STATUS succeeds with etcd and a pool, and says 50 when etcd is unreachable', async () => {
    const ok = await runPlugin('calico', { env: cniEnv({ command: 'STATUS' }), stdin: directConf('1.1.0') });
    expect(ok.status, ok.stdout + ok.stderr).toBe(0);
    const bad = await runPlugin('calico', { env: { ...cniEnv({ command: 'STATUS' }), CALICO_ETCD_TIMEOUT_MS: '1000' }, stdin: directConf('1.1.0', { etcd_endpoints: 'http://127.0.0.1:1' }) });
    expect(bad.status).not.toBe(0);
    expect((bad.json as { code: number }).code).toBe(50);
  });

  it('GC releases attachments the runtime no longer lists, and keeps the listed ones', async () => {
    const keep = await netns();
    const drop = await netns();
    const keepEnv = cniEnv({ command: 'ADD', containerId: `keep${process.pid}`, netns: keep.path });
    const dropEnv = cniEnv({ command: 'ADD', containerId: `drop${process.pid}`, netns: drop.path });
    expect((await runPlugin('calico', { env: keepEnv, stdin: directConf('1.1.0') })).status).toBe(0);
    expect((await runPlugin('calico', { env: dropEnv, stdin: directConf('1.1.0') })).status).toBe(0);
    const gc = await runPlugin('calico', {
      env: cniEnv({ command: 'GC' }),
      stdin: directConf('1.1.0', { 'cni.dev/valid-attachments': [{ containerID: `keep${process.pid}`, ifname: 'eth0' }] }),
    });
    expect(gc.status, gc.stdout + gc.stderr).toBe(0);
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.keep${process.pid}`)).toBeDefined();
    expect(await etcd.get(`/calico/ipam/v2/handle/${NET}.drop${process.pid}`)).toBeUndefined();
    expect(await linkJson(hostVeth(`drop${process.pid}`))).toEqual([]);
    expect(await linkJson(hostVeth(`keep${process.pid}`))).toHaveLength(1);
    const weps = [...(await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/')).values()];
    expect(weps.some((v) => v.includes(`drop${process.pid}`))).toBe(false);
    expect(weps.some((v) => v.includes(`keep${process.pid}`))).toBe(true);
    expect((await runPlugin('calico', { env: { ...keepEnv, CNI_COMMAND: 'DEL' }, stdin: directConf('1.1.0') })).status).toBe(0);
  });
});

