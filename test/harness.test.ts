/** The harness itself: other test files rely on these helpers doing exactly what they say. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePorts, startEtcd, type EtcdServer } from './helpers/etcd';
import { createNetns } from './helpers/netns';
import { cniEnv, DIST, requireBuilt, runPlugin } from './helpers/plugin';
import { ipamConf } from './helpers/conf';

describe('startEtcd', () => {
  let etcd: EtcdServer | undefined;
  beforeAll(async () => {
    etcd = await startEtcd();
  });
  afterAll(async () => {
    await etcd?.stop();
  });

  it('runs a healthy etcd on a loopback port with its own data dir', () => {
    if (!etcd) throw new Error('etcd not started');
    expect(etcd.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(fs.existsSync(etcd.dataDir)).toBe(true);
    expect(() => process.kill(etcd?.pid ?? -1, 0)).not.toThrow();
  });

  it('put/get/getPrefix/del through etcdctl, with multi-line values and keys that look like flags', async () => {
    if (!etcd) throw new Error('etcd not started');
    const multi = JSON.stringify({ a: 1, b: [1, 2] }, null, 2) + '\n\n';
    await etcd.put('/t/multi', multi);
    await etcd.put('/t/-dash', '--not-a-flag');
    await etcd.put('/t/empty', '');
    await etcd.put('/u/other', 'x');
    expect(await etcd.get('/t/multi')).toBe(multi);
    expect(await etcd.get('/t/-dash')).toBe('--not-a-flag');
    expect(await etcd.get('/t/empty')).toBe('');
    expect(await etcd.get('/t/missing')).toBeUndefined();
    const all = await etcd.getPrefix('/t/');
    expect([...all.keys()].sort()).toEqual(['/t/-dash', '/t/empty', '/t/multi']);
    expect(all.get('/t/multi')).toBe(multi);
    await etcd.del('/t/');
    expect((await etcd.getPrefix('/t/')).size).toBe(0);
    expect(await etcd.get('/u/other')).toBe('x');
  });

  it('stop() ends the process and removes the data dir', async () => {
    const e = await startEtcd();
    await e.put('/x', 'y');
    await e.stop();
    expect(() => process.kill(e.pid, 0)).toThrow();
    expect(fs.existsSync(e.dataDir)).toBe(false);
    await e.stop(); // idempotent
  });

  it('freePorts gives distinct ports', async () => {
    const ports = await freePorts(4);
    expect(new Set(ports).size).toBe(4);
  });
});

describe('createNetns', () => {
  it('creates a namespace with lo up, runs commands in it, and removes it', async () => {
    const ns = await createNetns();
    try {
      expect(ns.name).toMatch(/^cts-[0-9a-f]{6}$/);
      expect(ns.path).toBe(`/var/run/netns/${ns.name}`);
      expect(fs.existsSync(ns.path)).toBe(true);
      const link = await ns.exec(['ip', '-o', 'link', 'show', 'lo']);
      expect(link.code).toBe(0);
      expect(link.stdout).toMatch(/UP/);
      const fail = await ns.exec(['false']);
      expect(fail.code).not.toBe(0);
    } finally {
      await ns.remove();
    }
    expect(fs.existsSync(ns.path)).toBe(false);
    await ns.remove(); // already gone: fine
    const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    expect(list).not.toContain(ns.name);
  });
});

describe('runPlugin', () => {
  beforeAll(() => requireBuilt());

  it('passes only the given env plus PATH: outside CNI_* variables never leak in', async () => {
    process.env.CNI_COMMAND = 'VERSION';
    try {
      const r = await runPlugin('calico-ipam', { env: {} });
      // Had CNI_COMMAND leaked, this would be the VERSION answer.
      expect(r.status).not.toBe(0);
      expect(r.json).toMatchObject({ code: 4 });
    } finally {
      delete process.env.CNI_COMMAND;
    }
  });

  it('cniEnv fills ifname and CNI_PATH; ipamConf builds a calico-ipam netconf', () => {
    expect(cniEnv({ command: 'DEL', containerId: 'c1' })).toEqual({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0', CNI_PATH: DIST });
    const conf = JSON.parse(ipamConf({ endpoint: 'http://127.0.0.1:1', ipam: { assign_ipv6: 'true' } })) as Record<string, unknown>;
    expect(conf).toMatchObject({ type: 'calico-ipam', etcd_endpoints: 'http://127.0.0.1:1', nodename: 'node1', ipam: { type: 'calico-ipam', assign_ipv6: 'true' } });
  });
});
