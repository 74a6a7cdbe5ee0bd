/**
 * The CNI protocol layer of the BUILT binaries, run as a runtime runs them: env validation, config
 * decoding, version negotiation and the error object on stdout.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePorts, startEtcd, type EtcdServer } from './helpers/etcd';
import { cniEnv, DIST, requireBuilt, runPlugin, type PluginRun } from './helpers/plugin';
import { ipamConf } from './helpers/conf';

const BINARIES = ['calico', 'calico-ipam'] as const;
type Binary = (typeof BINARIES)[number];

const VERSION_ANSWER = {
  cniVersion: '1.1.0',
  supportedVersions: ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'],
};

/** A stack frame as Node prints it ("    at fn (/path/file.js:1:2)"). */
const STACK_FRAME = /^\s+at\s+\S/m;

let etcd: EtcdServer | undefined;

function endpoint(): string {
  if (!etcd) throw new Error('etcd not started');
  return etcd.endpoint;
}

/** A valid netconf for the binary, with overrides (undefined removes a key). */
function conf(binary: Binary, over: Record<string, unknown> = {}): string {
  const base = JSON.parse(ipamConf({ endpoint: endpoint(), name: 'net1', cniVersion: '1.0.0' })) as Record<string, unknown>;
  if (binary === 'calico') base.type = 'calico';
  return JSON.stringify({ ...base, ...over });
}

function addEnv(over: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { ...cniEnv({ command: 'ADD', containerId: 'ctr-proto-1', netns: '/var/run/netns/cts-proto' }), ...over };
}

interface ErrorObject {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

/** Asserts the CNI error contract and returns the error object. */
function expectCniError(r: PluginRun, code: number, mentions: (string | RegExp)[] = []): ErrorObject {
  const ctx = `stdout: ${r.stdout}\nstderr: ${r.stderr}`;
  expect(r.status, ctx).not.toBe(0);
  // Exactly one JSON object on stdout.
  expect(r.json, ctx).toBeTypeOf('object');
  expect(r.json, ctx).not.toBeNull();
  expect(Array.isArray(r.json), ctx).toBe(false);
  expect(r.stdout.trim().startsWith('{') && r.stdout.trim().endsWith('}'), ctx).toBe(true);
  const obj = r.json as Record<string, unknown>;
  const keys = Object.keys(obj);
  expect(keys.filter((k) => !['cniVersion', 'code', 'msg', 'details'].includes(k)), ctx).toEqual([]);
  expect(keys, ctx).toEqual(expect.arrayContaining(['cniVersion', 'code', 'msg']));
  expect(obj.cniVersion, ctx).toMatch(/^\d+\.\d+\.\d+$/);
  expect(typeof obj.msg, ctx).toBe('string');
  expect((obj.msg as string).length, ctx).toBeGreaterThan(0);
  if ('details' in obj) expect(typeof obj.details, ctx).toBe('string');
  expect(obj.code, ctx).toBe(code);
  for (const m of mentions) {
    if (typeof m === 'string') expect(obj.msg, ctx).toContain(m);
    else expect(obj.msg, ctx).toMatch(m);
  }
  // No stack traces anywhere.
  expect(r.stdout, ctx).not.toMatch(STACK_FRAME);
  expect(r.stdout, ctx).not.toMatch(/\bat \S+ \(/);
  expect(r.stderr, ctx).not.toMatch(STACK_FRAME);
  return obj as unknown as ErrorObject;
}

/** Like runPlugin, but stdin arrives in pieces, the first only after `delayMs` (a slow or busy runtime). */
function runWithSlowStdin(file: string, env: Record<string, string | undefined>, pieces: string[], delayMs: number): Promise<PluginRun> {
  const clean: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  for (const [k, v] of Object.entries(env)) if (v !== undefined) clean[k] = v;
  return new Promise((resolve, reject) => {
    const child = spawn(file, [], { env: clean, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.stdin.on('error', () => {});
    child.on('error', reject);
    child.on('close', (code) => {
      let json: unknown;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ status: code ?? 1, stdout, stderr, json });
    });
    const write = (i: number) => {
      if (i >= pieces.length) {
        child.stdin.end();
        return;
      }
      child.stdin.write(pieces[i] ?? '');
      setTimeout(() => write(i + 1), delayMs);
    };
    setTimeout(() => write(0), delayMs);
  });
}

beforeAll(async () => {
  requireBuilt();
  etcd = await startEtcd();
});

afterAll(async () => {
  await etcd?.stop();
});

describe.each(BINARIES)('%s: protocol', (binary) => {
  it('VERSION answers the supported versions, with empty stdin and with garbage stdin', async () => {
    for (const stdin of ['', 'garbage{{{ not json', conf(binary, { cniVersion: '0.3.1' })]) {
      const r = await runPlugin(binary, { env: { CNI_COMMAND: 'VERSION' }, stdin });
      expect(r.status, r.stderr).toBe(0);
      expect(r.json).toEqual(VERSION_ANSWER);
      expect(r.stdout.trim()).toBe(JSON.stringify(VERSION_ANSWER));
    }
  });

  it('missing CNI_COMMAND (no argv) is code 4', async () => {
    const r = await runPlugin(binary, { env: {}, stdin: conf(binary) });
    expectCniError(r, 4, ['CNI_COMMAND']);
  });

  it('an unknown verb is code 4 naming it', async () => {
    for (const verb of ['FOO', 'add']) {
      const r = await runPlugin(binary, { env: addEnv({ CNI_COMMAND: verb }), stdin: conf(binary) });
      expectCniError(r, 4, [verb]);
    }
  });

  for (const name of ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH']) {
    it(`ADD without ${name} is code 4 naming it`, async () => {
      const r = await runPlugin(binary, { env: addEnv({ [name]: undefined }), stdin: conf(binary) });
      expectCniError(r, 4, [name]);
    });
  }

  it('DEL without CNI_NETNS gets past env validation', async () => {
    const env = { ...cniEnv({ command: 'DEL', containerId: `ctr-nonetns-${binary}` }) };
    expect(env.CNI_NETNS).toBeUndefined();
    const r = await runPlugin(binary, { env, stdin: conf(binary) });
    if (binary === 'calico-ipam') {
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe('');
    } else if (r.status !== 0) {
      // Whatever the network plugin says about this DEL, it is not an env complaint.
      const obj = r.json as ErrorObject;
      expect(obj.code, r.stdout).not.toBe(4);
      expect(obj.msg).not.toContain('CNI_NETNS');
    }
  });

  it('bad container id, interface name or netns path is code 4', async () => {
    const cases: [string, string, string][] = [
      ['CNI_CONTAINERID', 'a;rm -rf /', 'CNI_CONTAINERID'],
      ['CNI_CONTAINERID', '-leadingdash', 'CNI_CONTAINERID'],
      ['CNI_IFNAME', 'abcdefghijklmnop', 'CNI_IFNAME'],
      ['CNI_IFNAME', 'eth/0', 'CNI_IFNAME'],
      ['CNI_NETNS', 'var/run/netns/x', 'CNI_NETNS'],
      ['CNI_NETNS', '/var/run/netns/../../etc/passwd', 'CNI_NETNS'],
    ];
    for (const [name, value, mention] of cases) {
      const r = await runPlugin(binary, { env: addEnv({ [name]: value }), stdin: conf(binary) });
      expectCniError(r, 4, [mention]);
    }
  });

  it('undecodable config (malformed, truncated, an array, empty) is code 6', async () => {
    const good = conf(binary);
    for (const stdin of ['{"cniVersion": "1.0.0", "name": ', good.slice(0, good.length - 5), '[]', `[${good}]`, '', 'null']) {
      const r = await runPlugin(binary, { env: addEnv(), stdin });
      expectCniError(r, 6);
    }
  });

  it('wrong types or a bad name is code 7 naming the field', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ mtu: 'big' }, 'mtu'],
      [{ name: undefined }, 'name'],
      [{ name: 'bad name!' }, 'name'],
      [{ ipam: { type: 'calico-ipam', ipv4_pools: 'not-a-list' } }, 'ipv4_pools'],
    ];
    for (const [over, field] of cases) {
      const r = await runPlugin(binary, { env: addEnv(), stdin: conf(binary, over) });
      expectCniError(r, 7, [field]);
    }
  });

  it('an unsupported cniVersion is code 1 listing the supported versions', async () => {
    const r = await runPlugin(binary, { env: addEnv(), stdin: conf(binary, { cniVersion: '9.9.9' }) });
    const e = expectCniError(r, 1, ['9.9.9']);
    for (const v of VERSION_ANSWER.supportedVersions) expect(e.msg).toContain(v);
  });

  it('CHECK with a 0.3.1 config is code 1 (CHECK needs 0.4.0)', async () => {
    const r = await runPlugin(binary, { env: addEnv({ CNI_COMMAND: 'CHECK' }), stdin: conf(binary, { cniVersion: '0.3.1' }) });
    expectCniError(r, 1, ['CHECK', '0.4.0']);
  });

  it('STATUS and GC with a 1.0.0 config are code 1 (they need 1.1.0)', async () => {
    for (const verb of ['STATUS', 'GC']) {
      const r = await runPlugin(binary, { env: { CNI_COMMAND: verb, CNI_PATH: DIST }, stdin: conf(binary, { cniVersion: '1.0.0' }) });
      expectCniError(r, 1, [verb, '1.1.0']);
    }
  });

  it('reads the whole config even when the runtime writes stdin late and in pieces', async () => {
    // A config that fails at validation (mtu), so the answer shows whether stdin was read in full: an
    // empty or cut read would be code 6 instead of 7.
    const text = conf(binary, { mtu: 'big' });
    const r = await runWithSlowStdin(path.join(DIST, binary), addEnv(), [text.slice(0, 20), text.slice(20)], 400);
    expectCniError(r, 7, ['mtu']);
  });

  it("errors carry the config's cniVersion when it could be read", async () => {
    const r = await runPlugin(binary, { env: addEnv({ CNI_CONTAINERID: undefined }), stdin: conf(binary, { cniVersion: '0.4.0' }) });
    expect(expectCniError(r, 4).cniVersion).toBe('0.4.0');
  });
});

describe('calico-ipam: datastore', () => {
  it('etcd down (closed loopback port) on ADD is code 11 with a clear message, within 15 s', async () => {
    const [port] = await freePorts(1);
    const dead = `http://127.0.0.1:${port}`;
    const started = Date.now();
    const r = await runPlugin('calico-ipam', {
      env: addEnv(),
      stdin: ipamConf({ endpoint: dead }),
      timeoutMs: 20_000,
    });
    const elapsed = Date.now() - started;
    expectCniError(r, 11, ['etcd', dead]);
    expect(elapsed).toBeLessThan(15_000);
  });

  it('an etcd without the v3 JSON gateway (HTTP 404) is code 11 naming etcd_transport "grpc"', async () => {
    // What etcd --enable-grpc-gateway=false answers on /v3/kv/txn: Go's "404 page not found".
    const server = http.createServer((_req, res) => {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('404 page not found\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const r = await runPlugin('calico-ipam', { env: addEnv(), stdin: ipamConf({ endpoint: `http://127.0.0.1:${port}` }) });
      expectCniError(r, 11, ['JSON gateway', 'etcd_transport "grpc"']);
    } finally {
      server.close();
    }
  });

  it('datastore_type "kubernetes" is code 2, as is no datastore at all (it defaults to kubernetes)', async () => {
    const k8s = await runPlugin('calico-ipam', {
      env: addEnv(),
      stdin: ipamConf({ endpoint: endpoint(), extra: { datastore_type: 'kubernetes' } }),
    });
    expectCniError(k8s, 2, ['datastore_type', 'kubernetes']);
    const none = await runPlugin('calico-ipam', {
      env: addEnv({ CNI_COMMAND: 'DEL' }),
      stdin: ipamConf({ endpoint: endpoint(), extra: { datastore_type: undefined, etcd_endpoints: undefined } }),
    });
    expectCniError(none, 2, ['datastore_type']);
  });

  it("keeps the V8 code cache of a start with node flags (the agent's --lite-mode) apart from the plain one", () => {
    const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-cache-flags-'));
    try {
      const start = (flags: string[]) =>
        spawnSync('node', [...flags, path.join(DIST, 'calico-ipam'), '--version'], { env: { PATH: process.env.PATH, CALICO_TS_CACHE_DIR: cacheDir }, encoding: 'utf8' });
      const files = () => new Map(fs.readdirSync(cacheDir).map((f) => [f, fs.statSync(path.join(cacheDir, f)).mtimeMs]));
      expect(start([]).status).toBe(0);
      const plain = files();
      expect(plain.size).toBe(1);
      expect(start(['--lite-mode']).status).toBe(0);
      expect(files().size).toBe(2);
      // V8 rejects a cache made under other flags: had both shared a file, each start would rewrite it.
      expect(start([]).status).toBe(0);
      for (const [f, mtime] of plain) expect(files().get(f)).toBe(mtime);
    } finally {
      fs.rmSync(cacheDir, { recursive: true, force: true });
    }
  });

  it('writing a new code cache (after an upgrade) removes cache files older than 30 days, and keeps younger ones', () => {
    const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-cache-prune-'));
    try {
      const old = path.join(cacheDir, 'calico-ipam-1-2-3-v0.0.0-x64.v8cache');
      const young = path.join(cacheDir, 'calico-1-2-3-v0.0.0-x64.v8cache');
      const leftover = path.join(cacheDir, 'calico-1-2-3-v0.0.0-x64.v8cache.99.tmp');
      for (const f of [old, young, leftover]) fs.writeFileSync(f, 'x');
      const daysAgo = (d: number) => new Date(Date.now() - d * 24 * 3600 * 1000);
      fs.utimesSync(old, daysAgo(40), daysAgo(40));
      fs.utimesSync(young, daysAgo(20), daysAgo(20));
      fs.utimesSync(leftover, daysAgo(1), daysAgo(1));
      const r = spawnSync('node', [path.join(DIST, 'calico-ipam'), '--version'], { env: { PATH: process.env.PATH, CALICO_TS_CACHE_DIR: cacheDir } });
      expect(r.status).toBe(0);
      const left = fs.readdirSync(cacheDir);
      expect(left).toContain(path.basename(young));
      expect(left).not.toContain(path.basename(old));
      expect(left).not.toContain(path.basename(leftover));
      expect(left.filter((f) => f.startsWith('calico-ipam-') && f !== path.basename(old))).toHaveLength(1);
    } finally {
      fs.rmSync(cacheDir, { recursive: true, force: true });
    }
  });

  it.each(['http', 'grpc'] as const)('the binary works alone in an empty directory, etcd_transport %s (grpc: the compressed chunk, embedded .proto files): pool add, ADD, DEL', async (transport) => {
    // Nothing on the module search path above a temp dir may help the copy find its dependencies.
    for (const dir of [os.tmpdir(), path.dirname(os.tmpdir())]) expect(fs.existsSync(path.join(dir, 'node_modules'))).toBe(false);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-alone-'));
    // The launcher's V8 code cache is keyed by inode: a fresh copy would leave a new file in the system
    // cache dir on every run, so it goes to a temp dir of its own.
    const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-alone-cache-'));
    const pool =
      transport === 'http'
        ? { name: 'alone-http', cidr: '10.77.0.0/24', address: /^10\.77\.0\.\d+\/26$/, handle: /^\{"block":\{"10\.77\.0\.\d+\/26":1\},"deleted":false\}$/ }
        : { name: 'alone-grpc', cidr: '10.77.1.0/24', address: /^10\.77\.1\.\d+\/26$/, handle: /^\{"block":\{"10\.77\.1\.\d+\/26":1\},"deleted":false\}$/ };
    try {
      const bin = path.join(dir, 'calico-ipam');
      fs.copyFileSync(path.join(DIST, 'calico-ipam'), bin);
      fs.chmodSync(bin, 0o755);
      expect(fs.readdirSync(dir)).toEqual(['calico-ipam']);

      const added = await runPlugin(bin, { env: { CALICO_TS_CACHE_DIR: cacheDir }, args: ['pool', 'add', pool.cidr, '--name', pool.name, '--etcd-endpoints', endpoint()] });
      expect(added.status, added.stdout + added.stderr).toBe(0);
      expect(added.stdout).toContain(pool.name);

      const stdin = ipamConf({ endpoint: endpoint(), ipam: { ipv4_pools: [pool.name] }, extra: { etcd_transport: transport } });
      const env = { ...cniEnv({ command: 'ADD', containerId: `alone-${transport}`, netns: '/var/run/netns/alone', path: dir }), CALICO_TS_CACHE_DIR: cacheDir };
      const add = await runPlugin(bin, { env, stdin });
      expect(add.status, add.stdout + add.stderr).toBe(0);
      const result = add.json as { cniVersion: string; ips: { address: string }[] };
      expect(result.cniVersion).toBe('1.0.0');
      expect(result.ips).toHaveLength(1);
      expect(result.ips[0]?.address).toMatch(pool.address);
      expect(await etcd?.get(`/calico/ipam/v2/handle/net1.alone-${transport}`)).toMatch(pool.handle);

      const del = await runPlugin(bin, { env: { ...env, CNI_COMMAND: 'DEL' }, stdin });
      expect(del.status, del.stdout + del.stderr).toBe(0);
      expect(await etcd?.get(`/calico/ipam/v2/handle/net1.alone-${transport}`)).toBeUndefined();
      expect(fs.readdirSync(dir)).toEqual(['calico-ipam']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(cacheDir, { recursive: true, force: true });
    }
  });
});
