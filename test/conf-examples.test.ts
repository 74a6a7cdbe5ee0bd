import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseNetConf } from '../shared/cni/config';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { createNetns, type Netns } from './helpers/netns';
import { cniEnv, DIST, requireBuilt, runPlugin } from './helpers/plugin';
import { AGENT_NODE_FLAGS, startAgent } from './helpers/agent';

/** Every file in conf-examples/ is parsed and used, so none can go stale; scripts/install.sh too. */

const exec = promisify(execFile);
const DIR = path.resolve(__dirname, '../conf-examples');
const files = fs.readdirSync(DIR).filter((f) => /\.(conf|conflist)$/.test(f));

function calicoConfs(file: string): Record<string, unknown>[] {
  return calicoConfsOf(path.join(DIR, file));
}

function calicoConfsOf(file: string): Record<string, unknown>[] {
  const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown> & { plugins?: Record<string, unknown>[] };
  const plugins = raw.plugins ?? [raw];
  return plugins.filter((p) => p.type === 'calico').map((p) => ({ cniVersion: raw.cniVersion, name: raw.name, ...p }));
}

describe('every network config example parses as a valid calico netconf', () => {
  for (const file of files) {
    it(file, () => {
      const confs = calicoConfs(file);
      expect(confs.length).toBe(1);
      const conf = parseNetConf(JSON.stringify(confs[0]));
      expect(conf.type).toBe('calico');
      expect(conf.ipam?.type).toBeTruthy();
    });
  }
  it('the TLS example names all three certificate files and https endpoints', () => {
    const conf = parseNetConf(JSON.stringify(calicoConfs('30-calico-etcd-tls.conflist')[0]));
    expect(conf.etcd_endpoints?.split(',').every((e) => e.startsWith('https://'))).toBe(true);
    expect([conf.etcd_ca_cert_file, conf.etcd_cert_file, conf.etcd_key_file].every(Boolean)).toBe(true);
  });
});

describe('examples against a real etcd and the built plugins', () => {
  let etcd: EtcdServer;
  const netnses: Netns[] = [];
  beforeAll(async () => {
    requireBuilt();
    etcd = await startEtcd();
  });
  afterAll(async () => {
    for (const n of netnses) await n.remove();
    await etcd?.stop();
  });

  it('ippool-v4.json and ippool-v6.json load with `calico-ipam pool add --file` as Calico v3 IPPools', async () => {
    for (const f of ['ippool-v4.json', 'ippool-v6.json']) {
      const r = await runPlugin('calico-ipam', { env: {}, args: ['pool', 'add', '--file', path.join(DIR, f), '--etcd-endpoints', etcd.endpoint] });
      expect(r.status, r.stderr).toBe(0);
      const want = JSON.parse(fs.readFileSync(path.join(DIR, f), 'utf8')) as { metadata: { name: string }; spec: { cidr: string; blockSize: number } };
      const stored = JSON.parse((await etcd.get(`/calico/resources/v3/projectcalico.org/ippools/${want.metadata.name}`)) ?? '{}') as Record<string, unknown>;
      expect(stored).toMatchObject({ kind: 'IPPool', apiVersion: 'projectcalico.org/v3', metadata: { name: want.metadata.name }, spec: { cidr: want.spec.cidr, blockSize: want.spec.blockSize } });
    }
  });

  it('20-calico-dualstack.conflist gives a pod one IPv4 and one IPv6 address from the named pools', async () => {
    const ns = await createNetns('ctsconf');
    netnses.push(ns);
    const conf = { ...calicoConfs('20-calico-dualstack.conflist')[0], etcd_endpoints: etcd.endpoint, nodename: 'conf-node' };
    const env = cniEnv({ command: 'ADD', containerId: 'dualstack1', netns: ns.path });
    const r = await runPlugin('calico', { env, stdin: JSON.stringify(conf) });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    const ips = (r.json as { ips: { address: string }[] }).ips.map((i) => i.address);
    expect(ips).toEqual([expect.stringMatching(/^10\.244\.\d+\.\d+\/32$/), expect.stringMatching(/^fd00:10:244::[0-9a-f:]*\/128$/)]);
    const routes6 = (await exec('ip', ['-n', ns.name, '-6', 'route', 'show'])).stdout;
    expect(routes6).toContain('default via fe80::ecee:eeff:feee:eeee dev eth0');
    const addrs = (await exec('ip', ['-n', ns.name, 'addr', 'show', 'dev', 'eth0'])).stdout;
    expect(addrs).toContain(ips[1]?.split('/')[0] ?? 'missing');
    expect(addrs).not.toMatch(/tentative.*\n.*fd00|fd00[^\n]*tentative/);
    const del = await runPlugin('calico', { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: JSON.stringify(conf) });
    expect(del.status, del.stderr).toBe(0);
    expect(await etcd.get('/calico/ipam/v2/handle/dualstack-net.dualstack1')).toBeUndefined();
  });

  it('10-calico.conf (single plugin) networks a pod', async () => {
    const ns = await createNetns('ctsconf');
    netnses.push(ns);
    const raw = JSON.parse(fs.readFileSync(path.join(DIR, '10-calico.conf'), 'utf8')) as Record<string, unknown>;
    const conf = { ...raw, etcd_endpoints: etcd.endpoint, nodename: 'conf-node' };
    const env = cniEnv({ command: 'ADD', containerId: 'singleconf1', netns: ns.path });
    const r = await runPlugin('calico', { env, stdin: JSON.stringify(conf) });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    expect((r.json as { ips: { address: string }[] }).ips[0]?.address).toMatch(/\/32$/);
    expect((await runPlugin('calico', { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: JSON.stringify(conf) })).status).toBe(0);
  });
});

describe('the node agent example', () => {
  it('calico-agent.service serves the socket 50-calico-agent.conflist names, from the installed calico binary', () => {
    const unit = fs.readFileSync(path.join(DIR, 'calico-agent.service'), 'utf8');
    const execStart = /^ExecStart=(.+)$/m.exec(unit)?.[1]?.trim().split(/\s+/) ?? [];
    const binary = execStart.indexOf('/opt/cni/bin/calico');
    expect(execStart.slice(0, 2)).toEqual(['/usr/bin/env', 'node']);
    expect(execStart.slice(binary, binary + 3)).toEqual(['/opt/cni/bin/calico', 'agent', '--socket']);
    // The same flags the tests and the benchmark start their agents with.
    expect(execStart.slice(2, binary)).toEqual(AGENT_NODE_FLAGS);
    const conf = parseNetConf(JSON.stringify(calicoConfs('50-calico-agent.conflist')[0]));
    expect(conf.agent_socket).toBe(execStart[binary + 3]);
    expect(unit).toMatch(/^Restart=always$/m);
  });
});

describe('scripts/install.sh', () => {
  it('installs both binaries and the config under --prefix, and --dry-run changes nothing', async () => {
    const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-install-'));
    try {
      await exec('bash', [path.resolve(__dirname, '../scripts/install.sh'), '--prefix', prefix, '--etcd-endpoints', 'http://127.0.0.1:2379']);
      for (const b of ['calico', 'calico-ipam']) {
        const st = fs.statSync(path.join(prefix, 'opt/cni/bin', b));
        expect(st.mode & 0o777).toBe(0o755);
      }
      const conf = JSON.parse(fs.readFileSync(path.join(prefix, 'etc/cni/net.d/10-calico.conflist'), 'utf8')) as { plugins: { etcd_endpoints?: string }[] };
      expect(conf.plugins[0]?.etcd_endpoints).toBe('http://127.0.0.1:2379');
      const dry = path.join(prefix, 'dry');
      const out = await exec('bash', [path.resolve(__dirname, '../scripts/install.sh'), '--prefix', dry, '--dry-run']);
      expect(out.stdout).toContain('would: install -m 0755 dist/calico');
      expect(fs.existsSync(dry)).toBe(false);
    } finally {
      fs.rmSync(prefix, { recursive: true, force: true });
    }
  });

  for (const sea of [false, true]) {
    const what = sea ? 'the self-contained build (--sea)' : 'the script build';
    it(`--agent installs ${what}, a config that hands calls to the agent, and a unit whose ExecStart starts that agent`, async () => {
      const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-install-'));
      try {
        await exec('bash', [path.resolve(__dirname, '../scripts/install.sh'), '--prefix', prefix, '--agent', ...(sea ? ['--sea'] : [])]);
        const installed = path.join(prefix, 'opt/cni/bin/calico');
        expect(fs.readFileSync(installed).equals(fs.readFileSync(path.join(DIST, sea ? 'sea/calico' : 'calico')))).toBe(true);
        const conf = parseNetConf(JSON.stringify(calicoConfsOf(path.join(prefix, 'etc/cni/net.d/50-calico-agent.conflist'))[0]));
        const unit = fs.readFileSync(path.join(prefix, 'etc/systemd/system/calico-agent.service'), 'utf8');
        const execStart = /^ExecStart=(.+)$/m.exec(unit)?.[1]?.trim().split(/\s+/) ?? [];
        expect(execStart.slice(0, 2)).toEqual(sea ? ['/opt/cni/bin/calico', 'agent'] : ['/usr/bin/env', 'node']);
        expect(execStart.at(-1)).toBe(conf.agent_socket);
        // The unit's command line as systemd would run it, with the prefix's binary and a socket of its own.
        const socket = path.join(prefix, 'agent.sock');
        const argv = [...execStart.slice(0, -1).map((a) => (a === '/opt/cni/bin/calico' ? installed : a)), socket];
        // startAgent fails unless the command says it serves calico calls on that socket.
        await expect(startAgent({ socket, command: argv }).then((a) => a.stop())).resolves.toBeUndefined();
      } finally {
        fs.rmSync(prefix, { recursive: true, force: true });
      }
    });
  }
});

describe('scripts/install.sh, switching builds', () => {
  it('fits an installed agent unit to the build it installs, keeping the rest of the unit as it was edited', async () => {
    const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-install-'));
    const install = (...args: string[]) => exec('bash', [path.resolve(__dirname, '../scripts/install.sh'), '--prefix', prefix, ...args]);
    const unitFile = path.join(prefix, 'etc/systemd/system/calico-agent.service');
    const execStart = () => /^ExecStart=(.+)$/m.exec(fs.readFileSync(unitFile, 'utf8'))?.[1];
    try {
      await install('--agent');
      fs.writeFileSync(unitFile, fs.readFileSync(unitFile, 'utf8').replaceAll('/run/calico-ts/agent.sock', '/run/edited.sock'));
      await install('--sea');
      expect(execStart()).toBe('/opt/cni/bin/calico agent --socket /run/edited.sock');
      const back = await install();
      expect(execStart()).toBe(`/usr/bin/env node ${AGENT_NODE_FLAGS.join(' ')} /opt/cni/bin/calico agent --socket /run/edited.sock`);
      // 10-calico.conflist now sits beside 50-calico-agent.conflist, and sorts first: said.
      expect(back.stderr).toContain('also holds 50-calico-agent.conflist');
    } finally {
      fs.rmSync(prefix, { recursive: true, force: true });
    }
  });
});
