import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from './helpers/agent';
import { cnitool, cnitoolContainerId, netconfDir, requireCnitool, type NetConfDir } from './helpers/cnitool';
import { startEtcd, type EtcdServer } from './helpers/etcd';
import { createNetns, type Netns } from './helpers/netns';
import { addPool, cniEnv, requireBuilt, runPlugin } from './helpers/plugin';

/*
 * The node agent (`calico agent`): calls whose config names its socket run in that one long-lived process.
 * Real etcd, real namespaces, the built binaries run as a runtime runs them. What is proved: a call through
 * the agent has the same outcome as in a process of its own (the address in the netns, the keys in etcd,
 * the error object), the caller's environment is the one used, and a missing, foreign or failing agent
 * never takes an address or leaves an interface behind.
 */

const exec = promisify(execFile);
const POOL = '10.124.0.0/16';
const NET = 'agent-net';

let etcd: EtcdServer;
let agent: Agent;
const nodename = `agent-node-${process.pid}`;
const namespaces: Netns[] = [];
const dirs: NetConfDir[] = [];
const servers: net.Server[] = [];
// Made in beforeAll, not at import: a run whose filter skips every test here runs no afterAll to remove it.
let tmp = '';

async function netns(): Promise<Netns> {
  const n = await createNetns('ctsagt');
  namespaces.push(n);
  return n;
}

function conf(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { cniVersion: '1.0.0', name: NET, type: 'calico', etcd_endpoints: etcd.endpoint, nodename, agent_socket: agent.socket, ipam: { type: 'calico-ipam' }, ...extra };
}

async function call(command: string, containerId: string, ns: Netns | undefined, stdin: Record<string, unknown>, env: Record<string, string> = {}) {
  return runPlugin('calico', { env: { ...cniEnv({ command, containerId, ...(ns ? { netns: ns.path } : {}) }), ...env }, stdin: JSON.stringify(stdin) });
}

/** The calls the agent logged as run, e.g. "ADD <container id> exit 0". */
function served(containerId: string): string[] {
  return [...agent.log().matchAll(new RegExp(`agent: (\\w+) ${containerId} exit (\\d+)`, 'g'))].map((m) => `${m[1]} exit ${m[2]}`);
}

async function ipamKeys(): Promise<string[]> {
  return [...(await etcd.getPrefix('/calico/ipam/v2/handle/')).keys()];
}

async function linkExists(name: string): Promise<boolean> {
  try {
    await exec('ip', ['link', 'show', 'dev', name]);
    return true;
  } catch {
    return false;
  }
}

/** PIDs of the `ip` processes whose parent is `pid`, read from /proc. */
function ipChildren(pid: number): number[] {
  const out: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (comm === 'ip' && ppid === pid) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** A unix socket server standing in for an agent: `reply` decides what it does with each request. */
async function fakeAgent(reply: (conn: net.Socket, request: string) => void): Promise<{ socket: string; requests: string[] }> {
  const socket = path.join(tmp, `fake-${servers.length}.sock`);
  const requests: string[] = [];
  const server = net.createServer((conn) => {
    let text = '';
    conn.on('data', (d: Buffer) => {
      text += d.toString('utf8');
      if (text.endsWith('\n')) {
        requests.push(text);
        reply(conn, text);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  servers.push(server);
  return { socket, requests };
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-agent-test-'));
  requireBuilt();
  requireCnitool();
  etcd = await startEtcd();
  await addPool(etcd.endpoint, POOL);
  agent = await startAgent();
});

afterAll(async () => {
  await agent?.stop();
  for (const s of servers) await new Promise<void>((resolve) => s.close(() => resolve()));
  for (const n of namespaces) await n.remove();
  for (const d of dirs) d.remove();
  await etcd?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('calico agent', () => {
  it('serves on a socket only root can use, and a second agent on the same socket refuses to start', async () => {
    expect(fs.statSync(agent.socket).mode & 0o777).toBe(0o600);
    await expect(startAgent({ socket: agent.socket })).rejects.toThrow(/another agent is serving/);
    expect(fs.existsSync(agent.socket)).toBe(true);
  });

  it('cnitool ADD, CHECK and DEL run in the agent: the pod gets its /32 and routes, etcd its endpoint, and DEL removes them', async () => {
    const dir = netconfDir({ '10-agent.conflist': { cniVersion: '1.0.0', name: NET, plugins: [conf()] } });
    dirs.push(dir);
    const pod = await netns();
    const cid = cnitoolContainerId(pod.path);
    const add = await cnitool('add', NET, pod.path, { confDir: dir.dir });
    expect(add.status, add.stderr + add.stdout).toBe(0);
    const address = (JSON.parse(add.stdout) as { ips: { address: string }[] }).ips[0]?.address ?? '';
    expect(address).toMatch(/^10\.124\.\d+\.\d+\/32$/);
    const ip = address.split('/')[0] ?? '';
    const { stdout: addrs } = await exec('ip', ['-n', pod.name, '-o', 'addr', 'show', 'dev', 'eth0']);
    expect(addrs).toContain(`inet ${ip}/32`);
    const { stdout: routes } = await exec('ip', ['-n', pod.name, 'route', 'show']);
    expect(routes).toContain('default via 169.254.1.1 dev eth0');
    const veth = `cali${cid.slice(0, 11)}`;
    const { stdout: hostRoute } = await exec('ip', ['route', 'show', `${ip}/32`]);
    expect(hostRoute).toContain(`dev ${veth} scope link`);
    const weps = await etcd.getPrefix('/calico/resources/v3/projectcalico.org/workloadendpoints/default/');
    expect([...weps.values()].some((v) => v.includes(cid) && v.includes(`${ip}/32`))).toBe(true);

    const check = await cnitool('check', NET, pod.path, { confDir: dir.dir });
    expect(check.status, check.stderr + check.stdout).toBe(0);
    const del = await cnitool('del', NET, pod.path, { confDir: dir.dir });
    expect(del.status, del.stderr + del.stdout).toBe(0);
    expect(await linkExists(veth)).toBe(false);
    expect(await ipamKeys()).not.toContain(`/calico/ipam/v2/handle/${NET}.${cid}`);
    expect(served(cid)).toEqual(['ADD exit 0', 'CHECK exit 0', 'DEL exit 0']);
  });

  it("uses the caller's environment, not the agent's: ETCD_ENDPOINTS given only to the plugin process finds etcd", async () => {
    const pod = await netns();
    const stdin = conf({ etcd_endpoints: undefined });
    const add = await call('ADD', 'agent-env-1', pod, stdin, { ETCD_ENDPOINTS: etcd.endpoint });
    expect(add.status, add.stdout + add.stderr).toBe(0);
    expect(await ipamKeys()).toContain(`/calico/ipam/v2/handle/${NET}.agent-env-1`);
    const del = await call('DEL', 'agent-env-1', pod, stdin, { ETCD_ENDPOINTS: etcd.endpoint });
    expect(del.status, del.stdout + del.stderr).toBe(0);
    expect(served('agent-env-1')).toEqual(['ADD exit 0', 'DEL exit 0']);
  });

  it('bad input gets the same error object from the agent as from a process of its own, and takes nothing', async () => {
    const pod = await netns();
    const bad = { ipam: { type: 'calico-ipam', ipv4_pools: ['no-such-pool'] } };
    const viaAgent = await call('ADD', 'agent-bad-1', pod, conf(bad));
    const inProcess = await call('ADD', 'agent-bad-1', pod, conf({ ...bad, agent_socket: undefined }));
    expect(viaAgent.status).toBe(1);
    expect(viaAgent.json).toEqual(inProcess.json);
    expect(viaAgent.json).toMatchObject({ code: 7, msg: expect.stringMatching(/no-such-pool/) });
    expect(viaAgent.stderr).toMatch(/no-such-pool/);
    expect(viaAgent.stderr).not.toMatch(/^\s+at\s/m);
    expect(served('agent-bad-1')).toEqual(['ADD exit 1']);
    expect(await ipamKeys()).not.toContain(`/calico/ipam/v2/handle/${NET}.agent-bad-1`);
    expect(await linkExists('caliagent-bad-1')).toBe(false);
    const { stdout } = await exec('ip', ['-n', pod.name, '-o', 'link', 'show']);
    expect(stdout).not.toContain('eth0');
  });

  it('twenty parallel ADDs through the agent all succeed with distinct addresses, and their DELs leave nothing', async () => {
    // Ids that differ in their first 11 characters, as real container ids do: those name the host veths.
    const id = (i: number) => `${String(i).padStart(2, '0')}-agent-burst`;
    const pods = await Promise.all(Array.from({ length: 20 }, () => netns()));
    const adds = await Promise.all(pods.map((p, i) => call('ADD', id(i), p, conf())));
    for (const a of adds) expect(a.status, a.stdout + a.stderr).toBe(0);
    const ips = adds.map((a) => (a.json as { ips: { address: string }[] }).ips[0]?.address);
    expect(new Set(ips).size).toBe(20);
    const dels = await Promise.all(pods.map((p, i) => call('DEL', id(i), p, conf())));
    for (const d of dels) expect(d.status, d.stdout + d.stderr).toBe(0);
    expect((await ipamKeys()).filter((k) => k.includes('-agent-burst'))).toEqual([]);
    for (let i = 0; i < 20; i++) expect(served(id(i))).toEqual(['ADD exit 0', 'DEL exit 0']);
  });

  it('keeps its connections to etcd between calls: the next calls reuse them instead of connecting again', async () => {
    const port = new URL(etcd.endpoint).port;
    const agentPorts = async () => {
      const { stdout } = await exec('ss', ['-Htnp', 'state', 'established', 'dst', `127.0.0.1:${port}`]);
      return stdout
        .split('\n')
        .filter((l) => l.includes(`pid=${agent.pid},`))
        .map((l) => l.trim().split(/\s+/)[2] ?? '')
        .sort();
    };
    const pod = await netns();
    const addDel = async (cid: string) => {
      for (const command of ['ADD', 'DEL']) {
        const r = await call(command, cid, pod, conf());
        expect(r.status, r.stdout + r.stderr).toBe(0);
      }
    };
    await addDel('agent-keep-1');
    const kept = await agentPorts();
    expect(kept.length).toBeGreaterThan(0);
    await addDel('agent-keep-2');
    expect(await agentPorts()).toEqual(kept);
  });

  it('makes its host-side changes through one long-lived ip and deletes links through a second, both ending with the agent', async () => {
    const pod = await netns();
    const add = await call('ADD', 'agent-ipsession-1', pod, conf());
    expect(add.status, add.stdout + add.stderr).toBe(0);
    // Its ip for changes, and its ip for deletions once an earlier DEL has started it.
    const before = ipChildren(agent.pid);
    expect(before.length === 1 || before.length === 2, `ip children ${before.join(' ')}`).toBe(true);
    // The host end was made through it: up, with its alias and the route to the pod.
    const veth = `cali${'agent-ipsession-1'.slice(0, 11)}`;
    expect(fs.readFileSync(`/sys/class/net/${veth}/ifalias`, 'utf8').trim()).toBe('calico-ts:agent-ipsession-1');
    const ip = ((add.json as { ips: { address: string }[] }).ips[0]?.address ?? '').split('/')[0] ?? '';
    expect((await exec('ip', ['route', 'show', `${ip}/32`])).stdout).toContain(`dev ${veth} scope link`);
    const del = await call('DEL', 'agent-ipsession-1', pod, conf());
    expect(del.status, del.stdout + del.stderr).toBe(0);
    // Answered once both ends of the pair were gone: the pod's, through the host's.
    expect(await linkExists(veth)).toBe(false);
    await expect(exec('ip', ['-n', pod.name, 'link', 'show', 'dev', 'eth0'])).rejects.toThrow(/does not exist/);
    const after = ipChildren(agent.pid);
    expect(after).toHaveLength(2);
    expect(after).toEqual(expect.arrayContaining(before));

    const second = await startAgent({ socket: path.join(tmp, 'ipsession.sock') });
    const other = await netns();
    const r = await call('ADD', 'agent-ipsession-2', other, conf({ agent_socket: second.socket }));
    expect(r.status, r.stdout + r.stderr).toBe(0);
    // A fresh agent: its ip for changes only, until a DEL deletes the pair through its host end.
    expect(ipChildren(second.pid)).toHaveLength(1);
    await call('DEL', 'agent-ipsession-2', other, conf({ agent_socket: second.socket }));
    const its = ipChildren(second.pid);
    expect(its).toHaveLength(2);
    await second.stop();
    expect(its.filter((pid) => fs.existsSync(`/proc/${pid}`))).toEqual([]);
  });

  it("a pod's new sandbox takes over the veth name its old sandbox still holds, and a late DEL of the old one leaves it alone", async () => {
    const old = await netns();
    const newer = await netns();
    const args = 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=agent-sts-0';
    const oldCid = `agent-sts-old-${process.pid}`;
    const newCid = `agent-sts-new-${process.pid}`;
    const first = await call('ADD', oldCid, old, conf(), { CNI_ARGS: args });
    expect(first.status, first.stdout + first.stderr).toBe(0);
    const veth = (first.json as { interfaces: { name: string }[] }).interfaces[0]?.name ?? '';
    // The old sandbox's veth is still up: the new ADD deletes it (through the agent's deleting ip, answered
    // once the name is free) and makes its own pair under the same name at once.
    const second = await call('ADD', newCid, newer, conf(), { CNI_ARGS: args });
    expect(second.status, second.stdout + second.stderr).toBe(0);
    expect((second.json as { interfaces: { name: string }[] }).interfaces[0]?.name).toBe(veth);
    expect(fs.readFileSync(`/sys/class/net/${veth}/ifalias`, 'utf8').trim()).toBe(`calico-ts:${newCid}`);
    await expect(exec('ip', ['-n', old.name, 'link', 'show', 'dev', 'eth0'])).rejects.toThrow(/does not exist/);
    const ip = ((second.json as { ips: { address: string }[] }).ips[0]?.address ?? '').split('/')[0] ?? '';
    expect((await exec('ip', ['-n', newer.name, '-o', 'addr', 'show', 'dev', 'eth0'])).stdout).toContain(`inet ${ip}/32`);
    expect((await exec('ip', ['route', 'show', `${ip}/32`])).stdout).toContain(`dev ${veth} scope link`);

    const late = await call('DEL', oldCid, old, conf(), { CNI_ARGS: args });
    expect(late.status, late.stdout + late.stderr).toBe(0);
    expect(await linkExists(veth)).toBe(true);
    expect(fs.readFileSync(`/sys/class/net/${veth}/ifalias`, 'utf8').trim()).toBe(`calico-ts:${newCid}`);
    const del = await call('DEL', newCid, newer, conf(), { CNI_ARGS: args });
    expect(del.status, del.stdout + del.stderr).toBe(0);
    expect(await linkExists(veth)).toBe(false);
    expect(served(oldCid)).toEqual(['ADD exit 0', 'DEL exit 0']);
  });

  it('with no agent on the socket the call runs in its own process, and says so on stderr', async () => {
    const pod = await netns();
    const stdin = conf({ agent_socket: path.join(tmp, 'nobody.sock') });
    const add = await call('ADD', 'agent-none-1', pod, stdin);
    expect(add.status, add.stdout + add.stderr).toBe(0);
    expect(add.stderr).toMatch(/node agent at .*nobody\.sock not used .*running the call in this process/);
    expect(await ipamKeys()).toContain(`/calico/ipam/v2/handle/${NET}.agent-none-1`);
    const del = await call('DEL', 'agent-none-1', pod, stdin);
    expect(del.status, del.stdout + del.stderr).toBe(0);
    expect(await ipamKeys()).not.toContain(`/calico/ipam/v2/handle/${NET}.agent-none-1`);
    expect(served('agent-none-1')).toEqual([]);
  });

  it('an agent that refuses (another build) gets the request, and the call runs in its own process', async () => {
    const fake = await fakeAgent((conn) => conn.end(JSON.stringify({ refused: 'this agent runs build other-build' }) + '\n'));
    const pod = await netns();
    const stdin = conf({ agent_socket: fake.socket });
    const add = await call('ADD', 'agent-foreign-1', pod, stdin);
    expect(add.status, add.stdout + add.stderr).toBe(0);
    expect(add.stderr).toMatch(/refused the call: this agent runs build other-build/);
    const request = JSON.parse(fake.requests[0] ?? '{}') as { protocol?: number; build?: string; stdin?: string; env?: Record<string, string> };
    expect(request.protocol).toBe(1);
    expect(request.build).toMatch(/^calico-/);
    expect(JSON.parse(request.stdin ?? '{}')).toEqual(stdin);
    expect(request.env).toMatchObject({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'agent-foreign-1', CNI_NETNS: pod.path });
    const del = await call('DEL', 'agent-foreign-1', pod, stdin);
    expect(del.status, del.stdout + del.stderr).toBe(0);
    expect(await ipamKeys()).not.toContain(`/calico/ipam/v2/handle/${NET}.agent-foreign-1`);
  });

  it('an agent that drops the call without answering is code 11 (try again), and the caller does not run it itself', async () => {
    const fake = await fakeAgent((conn) => conn.destroy());
    const pod = await netns();
    const add = await call('ADD', 'agent-lost-1', pod, conf({ agent_socket: fake.socket, cniVersion: '0.4.0' }));
    expect(add.status).toBe(1);
    expect(add.json).toMatchObject({ cniVersion: '0.4.0', code: 11, msg: expect.stringMatching(/did not answer.*try again/) });
    expect(add.stderr).not.toMatch(/^\s+at\s/m);
    expect(fake.requests).toHaveLength(1);
    expect(await ipamKeys()).not.toContain(`/calico/ipam/v2/handle/${NET}.agent-lost-1`);
    const { stdout } = await exec('ip', ['-n', pod.name, '-o', 'link', 'show']);
    expect(stdout).not.toContain('eth0');
  });

  it('SIGTERM stops the agent and removes its socket', async () => {
    const second = await startAgent({ socket: path.join(tmp, 'second.sock') });
    expect(fs.existsSync(second.socket)).toBe(true);
    await second.stop();
    expect(fs.existsSync(second.socket)).toBe(false);
  });
});
