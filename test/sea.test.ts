/**
 * The self-contained build (`scripts/build-binaries.sh --sea`, dist/sea/): what a host without Node runs.
 * Every run here happens in a mount namespace of its own (a slave of the host's, so netns mounts made later
 * still show) where the node binary is covered by /dev/null, so a build that still needed node (a launcher
 * reaching for it, a part left outside the executable) fails.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from './helpers/agent';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { createNetns, type Netns } from './helpers/netns';
import { addPool, cniEnv, DIST, requireBuilt, runPlugin } from './helpers/plugin';

const exec = promisify(execFile);
const SEA = path.join(DIST, 'sea');
const NODE = fs.realpathSync(process.execPath);
/** Runs the command appended to it with the node binary unusable, in a mount namespace of its own. */
const WITHOUT_NODE = ['/usr/bin/unshare', '--mount', '--propagation', 'slave', '--', '/bin/sh', '-c', 'mount --bind /dev/null "$0" && exec "$@"', NODE];

function requireSeaBuilt(): void {
  requireBuilt();
  for (const b of ['calico', 'calico-ipam']) {
    const sea = path.join(SEA, b);
    if (!fs.existsSync(sea)) throw new Error(`${sea} missing: run scripts/build-binaries.sh --sea`);
    // One build makes both; a SEA older than the script build is another build's.
    if (fs.statSync(sea).mtimeMs < fs.statSync(path.join(DIST, b)).mtimeMs) throw new Error(`${sea} is older than dist/${b}: run scripts/build-binaries.sh --sea`);
  }
}

function runWithoutNode(argv: readonly string[], env: Record<string, string>, stdin?: string) {
  const [file, ...args] = [...WITHOUT_NODE, ...argv] as [string, ...string[]];
  return runPlugin(file, { env, stdin, args });
}

async function eth0Addresses(ns: Netns): Promise<string> {
  return (await exec('ip', ['-n', ns.name, '-4', 'addr', 'show', 'dev', 'eth0'])).stdout;
}

async function hasEth0(ns: Netns): Promise<boolean> {
  return (await ns.exec(['ip', 'link', 'show', 'eth0'])).code === 0;
}

describe('the self-contained build (dist/sea) on a host without node', () => {
  let etcd: EtcdServer;
  const netnses: Netns[] = [];
  let agent: Agent | undefined;
  const conf = (extra: Record<string, unknown> = {}) =>
    JSON.stringify({ cniVersion: '1.0.0', name: 'sea-net', type: 'calico', etcd_endpoints: etcd.endpoint, nodename: 'sea-node', ipam: { type: 'calico-ipam' }, ...extra });

  beforeAll(async () => {
    requireSeaBuilt();
    etcd = await startEtcd();
    await addPool(etcd.endpoint, '10.251.0.0/16');
  });
  afterAll(async () => {
    await agent?.stop();
    for (const n of netnses) await n.remove();
    await etcd?.stop();
  });

  it('really hides node: node itself cannot start there', async () => {
    const r = await runWithoutNode(['node', '-e', '0'], {});
    expect(r.status).not.toBe(0);
  });

  it('answers VERSION from both executables', async () => {
    for (const b of ['calico', 'calico-ipam']) {
      const r = await runWithoutNode([path.join(SEA, b)], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
      expect(r.status, r.stderr).toBe(0);
      expect((r.json as { supportedVersions: string[] }).supportedVersions).toContain('1.1.0');
    }
  });

  it('networks a pod and takes it down again, each call in its own process', async () => {
    const ns = await createNetns('ctssea');
    netnses.push(ns);
    const env = cniEnv({ command: 'ADD', containerId: 'seapod1', netns: ns.path, path: SEA });
    const add = await runWithoutNode([path.join(SEA, 'calico')], env, conf());
    expect(add.status, add.stderr + add.stdout).toBe(0);
    const ip = (add.json as { ips: { address: string }[] }).ips[0]?.address ?? 'none';
    expect(ip).toMatch(/^10\.251\.\d+\.\d+\/32$/);
    expect(await eth0Addresses(ns)).toContain(ip);
    expect(await etcd.get('/calico/ipam/v2/handle/sea-net.seapod1')).toBeDefined();
    const del = await runWithoutNode([path.join(SEA, 'calico')], { ...env, CNI_COMMAND: 'DEL' }, conf());
    expect(del.status, del.stderr + del.stdout).toBe(0);
    expect(await etcd.get('/calico/ipam/v2/handle/sea-net.seapod1')).toBeUndefined();
    expect(await hasEth0(ns)).toBe(false);
  });

  it('runs as the node agent, and the same executable hands its calls to it', async () => {
    agent = await startAgent({ binary: path.join(SEA, 'calico'), wrapper: WITHOUT_NODE });
    const ns = await createNetns('ctssea');
    netnses.push(ns);
    const env = cniEnv({ command: 'ADD', containerId: 'seapod2', netns: ns.path, path: SEA });
    const withAgent = conf({ agent_socket: agent.socket });
    // The agent serves callers of its own mount namespace only (paths mean the same files there): the
    // client runs in the agent's, where node is hidden too.
    const client = (vars: Record<string, string>) => runPlugin('/usr/bin/nsenter', { env: vars, stdin: withAgent, args: [`--mount=/proc/${agent?.pid}/ns/mnt`, '--', path.join(SEA, 'calico')] });
    const add = await client(env);
    expect(add.status, add.stderr + add.stdout).toBe(0);
    expect(agent.log()).toMatch(/agent: ADD seapod2 exit 0/);
    const ip = (add.json as { ips: { address: string }[] }).ips[0]?.address ?? 'none';
    expect(await eth0Addresses(ns)).toContain(ip);
    const del = await client({ ...env, CNI_COMMAND: 'DEL' });
    expect(del.status, del.stderr + del.stdout).toBe(0);
    expect(agent.log()).toMatch(/agent: DEL seapod2 exit 0/);
    expect(await etcd.get('/calico/ipam/v2/handle/sea-net.seapod2')).toBeUndefined();
    expect(await hasEth0(ns)).toBe(false);
  });
});
