import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { exampleConflist, GO_PLUGINS, netconfDir, type NetConfDir } from './helpers/cnitool';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { checkIpamInvariants } from './helpers/ipam-invariants';
import { addPool, DIST, requireBuilt, runPlugin } from './helpers/plugin';
import {
  buildBusyboxImage,
  cniConfFiles,
  createPodman,
  findBinary,
  HOST_NETCONF_DIR,
  IMAGE_REF,
  installHostCni,
  runCmd,
  snapshotHostCni,
  startContainerd,
  TEST_CONFLIST_NAME,
  type BusyboxImage,
  type Containerd,
  type ExecResult,
  type HostCniInstall,
  type LiveProcess,
  type Podman,
} from './helpers/runtimes';

/*
 * The built plugins under two real container runtimes, each as it ships in Debian 12:
 *   - podman 4.3 with its CNI backend (VERSION before ADD and DEL, CNI_ARGS with K8S_POD_NAME only,
 *     64-hex container ids, DEL while the netns still exists);
 *   - containerd 1.6 through `ctr run --cni` (no CNI_ARGS, "<namespace>-<id>" container ids, and a DEL
 *     with an empty CNI_NETNS after the task has exited).
 * The containers come from a busybox image built locally (scripts/make-busybox-image.sh), no registry.
 */

const POOL = '10.77.0.0/16';
const POOL_RE = /^10\.77\.\d{1,3}\.\d{1,3}$/;
const NET = 'k8s-pod-network';
const WEP_PREFIX = '/calico/resources/v3/projectcalico.org/workloadendpoints/';
const IPAM_PREFIX = '/calico/ipam/v2/';
const IP = findBinary('ip') ?? '/usr/sbin/ip';
const PING = findBinary('ping') ?? '/usr/bin/ping';

const PODMAN = findBinary('podman');
const CTR = findBinary('ctr');
const CONTAINERD = findBinary('containerd');

let etcd: EtcdServer | undefined;
let image: BusyboxImage;
const nodename = `rt-node-${process.pid}`;

/** Both runtimes pass their own stderr through; the plugins log there. Keep failure messages readable. */
function output(r: ExecResult | { stdout: string; stderr: string }): string {
  const cut = (s: string): string => (s.length > 6000 ? `…${s.slice(-6000)}` : s);
  return `\n--- stdout ---\n${cut(r.stdout)}\n--- stderr ---\n${cut(r.stderr)}`;
}

interface ContainerNet {
  ip: string;
  prefix: number;
  routes: string;
}

/** Parses busybox `ip -4 addr show dev eth0` followed by `ip route` output. */
function parseContainerNet(text: string): ContainerNet {
  const m = /inet (\d+\.\d+\.\d+\.\d+)\/(\d+)/.exec(text);
  return { ip: m?.[1] ?? '', prefix: Number(m?.[2] ?? -1), routes: text };
}

const escapeWepPart = (s: string): string => s.replace(/-/g, '--');

/** Upstream's name for a non-Kubernetes ("cni" orchestrator) workload endpoint. */
function wepName(containerId: string, ifname = 'eth0'): string {
  return `${escapeWepPart(nodename)}-cni-${escapeWepPart(containerId)}-${escapeWepPart(ifname)}`;
}

interface Wep {
  key: string;
  spec: Record<string, unknown>;
}

async function wepsFor(containerId: string): Promise<Wep[]> {
  const all = await etcd!.getPrefix(WEP_PREFIX);
  const out: Wep[] = [];
  for (const [key, value] of all) {
    const parsed = JSON.parse(value) as { spec?: Record<string, unknown> };
    if (parsed.spec?.containerID === containerId) out.push({ key, spec: parsed.spec });
  }
  return out;
}

/** Handle ids that own an allocated address in some block. */
function allocatedHandles(kv: Map<string, string>): Set<string> {
  const out = new Set<string>();
  for (const [key, value] of kv) {
    if (!/^\/calico\/ipam\/v2\/assignment\/ipv[46]\/block\//.test(key)) continue;
    const b = JSON.parse(value) as { allocations?: (number | null)[]; attributes?: { handle_id?: string }[] | null };
    for (const a of b.allocations ?? []) {
      if (a === null) continue;
      const h = b.attributes?.[a]?.handle_id;
      if (h !== undefined) out.add(h);
    }
  }
  return out;
}

async function linkExists(name: string): Promise<boolean> {
  return (await runCmd(IP, ['link', 'show', 'dev', name])).code === 0;
}

async function hostRoute(ip: string): Promise<string> {
  return (await runCmd(IP, ['-4', 'route', 'show', `${ip}/32`])).stdout.trim();
}

/** Where libcni (used by both podman and ctr) caches the ADD result until the DEL succeeds. */
const cniCacheFile = (containerId: string): string => path.join('/var/lib/cni/results', `${NET}-${containerId}-eth0`);

/** Lets a container that waits on stdin finish normally (so its runtime runs the DEL); kills it after `ms`. */
async function finish(l: LiveProcess, ms = 20_000): Promise<void> {
  l.write('\n');
  l.closeStdin();
  const exited = await Promise.race([l.done.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
  if (!exited) {
    l.kill();
    await l.done;
  }
}

/** Polls `check` until it returns true (runtimes may finish tearing down just after their client returns). */
async function eventually(check: () => Promise<boolean>, ms = 10_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** While the container runs: the address, routes, etcd handle + endpoint, host veth and host route. */
async function expectAttached(containerId: string, net: ContainerNet, where: string): Promise<string> {
  expect(net.ip, `no IPv4 address on eth0 ${where}`).toMatch(POOL_RE);
  expect(net.prefix, where).toBe(32);
  expect(net.routes, where).toMatch(/default via 169\.254\.1\.1 dev eth0/);

  const handle = `${NET}.${containerId}`;
  expect(await etcd!.get(`${IPAM_PREFIX}handle/${handle}`), `handle ${handle} missing`).toBeDefined();
  const ipam = await etcd!.getPrefix(IPAM_PREFIX);
  expect(allocatedHandles(ipam).has(handle), `no block allocation owned by ${handle}`).toBe(true);
  expect(checkIpamInvariants(ipam)).toEqual([]);

  const weps = await wepsFor(containerId);
  expect(weps.map((w) => w.key)).toEqual([`${WEP_PREFIX}default/${wepName(containerId)}`]);
  const veth = `cali${containerId.slice(0, 11)}`;
  expect(weps[0]?.spec).toMatchObject({
    orchestrator: 'cni',
    node: nodename,
    containerID: containerId,
    endpoint: 'eth0',
    ipNetworks: [`${net.ip}/32`],
    profiles: [NET],
    interfaceName: veth,
  });

  expect(await linkExists(veth), `host veth ${veth} missing`).toBe(true);
  expect(await hostRoute(net.ip)).toMatch(new RegExp(`^${net.ip.replace(/\./g, '\\.')} dev ${veth} scope link`));
  // The runtime took the plugin's result: libcni cached it for the DEL.
  expect(fs.existsSync(cniCacheFile(containerId)), `${cniCacheFile(containerId)} missing`).toBe(true);
  return veth;
}

/** After the runtime's DEL: no handle, no allocation, no endpoint, no veth, no host route. */
async function expectReleased(containerId: string, ip: string, veth: string): Promise<void> {
  const handle = `${NET}.${containerId}`;
  const gone = await eventually(async () => (await etcd!.get(`${IPAM_PREFIX}handle/${handle}`)) === undefined);
  expect(gone, `handle ${handle} still in etcd after the container was removed`).toBe(true);
  const ipam = await etcd!.getPrefix(IPAM_PREFIX);
  expect(allocatedHandles(ipam).has(handle), `${ip} is still allocated to ${handle}`).toBe(false);
  expect(checkIpamInvariants(ipam)).toEqual([]);
  expect(await wepsFor(containerId)).toEqual([]);
  expect(await eventually(async () => !(await linkExists(veth))), `host veth ${veth} still there`).toBe(true);
  expect(await hostRoute(ip)).toBe('');
  // libcni drops its cache only when the DEL chain succeeded.
  expect(fs.existsSync(cniCacheFile(containerId)), `${cniCacheFile(containerId)} left: the runtime's DEL did not succeed`).toBe(false);
}

beforeAll(async () => {
  requireBuilt();
  image = await buildBusyboxImage();
  etcd = await startEtcd();
  await addPool(etcd.endpoint, POOL);
});

afterAll(async () => {
  await etcd?.stop();
});

// ---------------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------------

if (!PODMAN) {
  const why = 'SKIPPED: podman is not installed (no podman binary in PATH; apt-get install podman)';
  console.warn(`runtimes.test.ts: ${why}`);
  describe('podman (CNI backend)', () => {
    it.skip(why, () => {});
  });
} else {
  describe('podman 4 (CNI backend) with calico + calico-ipam from dist/', () => {
    let podman: Podman | undefined;
    let conf: NetConfDir | undefined;
    const live: LiveProcess[] = [];

    beforeAll(async () => {
      conf = netconfDir({ '10-calico.conflist': exampleConflist('10-calico.conflist', { endpoint: etcd!.endpoint, nodename }) });
      podman = await createPodman({ netconfDir: conf.dir, pluginDirs: [DIST, GO_PLUGINS], binary: PODMAN });
      const info = await podman.run(['info', '--format', '{{.Host.NetworkBackend}} {{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}']);
      expect(info.code, output(info)).toBe(0);
      expect(info.stdout.trim()).toBe('cni runc cgroupfs');
      const imp = await podman.run(['import', '--quiet', image.rootfsTar, IMAGE_REF]);
      expect(imp.code, output(imp)).toBe(0);
    }, 120_000);

    afterAll(async () => {
      for (const l of live) await finish(l);
      const problems = podman ? await podman.cleanup() : [];
      conf?.remove();
      expect(problems).toEqual([]);
    }, 120_000);

    it('lists the conflist as network k8s-pod-network with driver calico', async () => {
      const r = await podman!.run(['network', 'ls', '--format', '{{.Name}} {{.Driver}}']);
      expect(r.code, output(r)).toBe(0);
      expect(r.stdout.split('\n')).toContain(`${NET} calico`);
    });

    it('run -d: eth0 gets a /32 from the pool and a default route via 169.254.1.1, etcd holds handle + endpoint; rm -f releases it all', async () => {
      const name = `cts-pm-${process.pid}-d`;
      const run = await podman!.run(['run', '-d', '--name', name, '--network', NET, IMAGE_REF, 'sleep', '300']);
      expect(run.code, output(run)).toBe(0);
      const cid = run.stdout.trim().split('\n').pop() ?? '';
      expect(cid).toMatch(/^[0-9a-f]{64}$/);
      try {
        const addr = await podman!.run(['exec', cid, 'ip', '-4', 'addr', 'show', 'dev', 'eth0']);
        expect(addr.code, output(addr)).toBe(0);
        const routes = await podman!.run(['exec', cid, 'ip', 'route']);
        expect(routes.code, output(routes)).toBe(0);
        const net = parseContainerNet(`${addr.stdout}\n${routes.stdout}`);
        const veth = await expectAttached(cid, net, `in podman container ${cid}${output(addr)}${output(routes)}`);

        // podman understood the plugin's 1.0.0 result.
        const inspect = await podman!.run(['inspect', '--format', 'json', cid]);
        expect(inspect.code, output(inspect)).toBe(0);
        const [info] = JSON.parse(inspect.stdout) as { NetworkSettings: { Networks: Record<string, { IPAddress: string; IPPrefixLen: number }> } }[];
        expect(info?.NetworkSettings.Networks[NET]).toMatchObject({ IPAddress: net.ip, IPPrefixLen: 32 });

        // The host reaches the container over the veth (host route + proxy ARP on the host side).
        const ping = await runCmd(PING, ['-c', '1', '-W', '2', net.ip]);
        expect(ping.code, output(ping)).toBe(0);

        const rm = await podman!.run(['rm', '--force', '--time', '0', cid]);
        expect(rm.code, output(rm)).toBe(0);
        await expectReleased(cid, net.ip, veth);
      } finally {
        await podman!.run(['rm', '--force', '--ignore', '--time', '0', cid]);
      }
    }, 120_000);

    it('run -i --rm: a second container gets its own address while it runs, released when it exits', async () => {
      const name = `cts-pm-${process.pid}-rm`;
      const l = await podman!.start([
        'run', '-i', '--rm', '--name', name, '--network', NET, IMAGE_REF,
        'sh', '-c', 'ip -4 addr show dev eth0; ip route; echo READY; read -t 60 x; echo BYE',
      ]);
      live.push(l);
      await l.waitForStdout(/READY/, 60_000);
      const inspect = await podman!.run(['inspect', '--format', '{{.Id}}', name]);
      expect(inspect.code, output(inspect)).toBe(0);
      const cid = inspect.stdout.trim();
      expect(cid).toMatch(/^[0-9a-f]{64}$/);
      const net = parseContainerNet(l.stdout());
      const veth = await expectAttached(cid, net, `in podman container ${cid}${output({ stdout: l.stdout(), stderr: l.stderr() })}`);

      await finish(l);
      const res = await l.done;
      expect(res.code, output(res)).toBe(0);
      expect(res.stdout).toContain('BYE');
      await expectReleased(cid, net.ip, veth);
      // --rm removed it.
      expect((await podman!.run(['container', 'exists', name])).code).toBe(1);
    }, 120_000);
  });
}

// ---------------------------------------------------------------------------------------------------
// containerd / ctr
// ---------------------------------------------------------------------------------------------------

if (!CTR || !CONTAINERD) {
  const missing = [CTR ? undefined : 'ctr', CONTAINERD ? undefined : 'containerd'].filter((x) => x !== undefined).join(' and ');
  const why = `SKIPPED: ${missing} not installed (no binary in PATH; apt-get install containerd)`;
  console.warn(`runtimes.test.ts: ${why}`);
  describe('containerd (ctr run --cni)', () => {
    it.skip(why, () => {});
  });
} else {
  describe('containerd 1.6 `ctr run --rm --cni` with calico + calico-ipam symlinked into /opt/cni/bin', () => {
    let containerd: Containerd | undefined;
    let install: HostCniInstall | undefined;
    const before = snapshotHostCni();
    const live: LiveProcess[] = [];
    const id = `ctsrun-${process.pid}`;
    let cid = '';

    beforeAll(async () => {
      containerd = await startContainerd({ namespace: 'cts', containerdBinary: CONTAINERD, ctrBinary: CTR });
      cid = `${containerd.namespace}-${id}`; // what ctr passes as CNI_CONTAINERID
      const imp = await containerd.ctr(['images', 'import', image.ociTar]);
      expect(imp.code, output(imp) + containerd.log()).toBe(0);
      const ls = await containerd.ctr(['images', 'list', '--quiet']);
      expect(ls.stdout.split('\n')).toContain(IMAGE_REF);
    }, 120_000);

    afterAll(async () => {
      // A container still waiting exits normally, so ctr itself runs the DEL (ctr, not containerd, does CNI).
      for (const l of live) await finish(l);
      const problems: string[] = [];
      problems.push(...(install?.restore() ?? []));
      problems.push(...((await containerd?.stop()) ?? []));
      // Only there when ctr died before its DEL: libcni's cache entry for our container.
      if (cid !== '') fs.rmSync(cniCacheFile(cid), { force: true });
      expect(problems).toEqual([]);
      expect(snapshotHostCni()).toEqual(before);
    }, 120_000);

    it('the container prints its /32 and the 169.254.1.1 default route; DEL with an empty CNI_NETNS releases it; /etc/cni/net.d and /opt/cni/bin are put back', async () => {
      const conflist = exampleConflist('10-calico.conflist', { endpoint: etcd!.endpoint, nodename });
      install = installHostCni({ conflist, plugins: { calico: path.join(DIST, 'calico'), 'calico-ipam': path.join(DIST, 'calico-ipam') } });
      expect(cniConfFiles(HOST_NETCONF_DIR)[0]).toBe(TEST_CONFLIST_NAME);

      try {
        const l = await containerd!.startCtr([
          'run', '--rm', '--cni', '--fifo-dir', containerd!.fifoDir, IMAGE_REF, id,
          'sh', '-c', 'ip -4 addr show dev eth0; ip route; echo READY; read -t 60 x; echo BYE',
        ]);
        live.push(l);
        await l.waitForStdout(/READY/, 60_000);
        const net = parseContainerNet(l.stdout());
        const veth = await expectAttached(cid, net, `in ctr container ${id}${output({ stdout: l.stdout(), stderr: l.stderr() })}`);

        // The task exits; ctr then calls DEL with CNI_NETNS="" (the netns, and with it the veth, is gone).
        await finish(l);
        const res = await l.done;
        expect(res.code, output(res) + containerd!.log().slice(-3000)).toBe(0);
        expect(res.stdout).toContain('BYE');
        await expectReleased(cid, net.ip, veth);
        const containers = await containerd!.ctr(['containers', 'list', '--quiet']);
        expect(containers.stdout.trim()).toBe('');
      } finally {
        // On failure, let the container end first: ctr's DEL still needs the plugins in /opt/cni/bin.
        for (const l of live) await finish(l);
        const problems = install.restore();
        expect(problems).toEqual([]);
      }
      expect(snapshotHostCni()).toEqual(before);
    }, 120_000);
  });
}
