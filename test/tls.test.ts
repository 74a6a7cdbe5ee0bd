/**
 * etcd over TLS with client-certificate authentication: calico-ipam works with the right CA and client
 * certificate on both transports, and every wrong combination fails cleanly ("try again later", naming
 * TLS), quickly, and without touching etcd; a certificate file that does not exist is a config error
 * naming the file. Also: the plugin's log file is not world-writable and holds the log lines.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectCniError } from './helpers/cni-error';
import { getPrefix, revision, type EtcdctlTarget } from './helpers/etcdctl';
import { checkIpamInvariants } from './helpers/ipam-invariants';
import { cniEnv, requireBuilt, runPlugin } from './helpers/plugin';
import { makePki, startTlsEtcd, type Pki, type TlsEtcd } from './helpers/tls';

const NET = 'tlsnet';
const POOL = '10.231.0.0/16';
const TRANSPORTS = ['grpc', 'http'] as const;

let pki: Pki | undefined;
let etcd: TlsEtcd | undefined;
let target: EtcdctlTarget;
const tmpDirs: string[] = [];

function must<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new Error(`${what} not set up`);
  return v;
}

interface TlsFiles {
  ca?: string;
  cert?: string;
  key?: string;
}

function conf(transport: string, files: TlsFiles, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    cniVersion: '1.0.0',
    name: NET,
    type: 'calico-ipam',
    etcd_endpoints: must(etcd, 'etcd').endpoint,
    etcd_transport: transport,
    nodename: 'tls-node',
    ...(files.ca ? { etcd_ca_cert_file: files.ca } : {}),
    ...(files.cert ? { etcd_cert_file: files.cert } : {}),
    ...(files.key ? { etcd_key_file: files.key } : {}),
    ipam: { type: 'calico-ipam' },
    ...extra,
  });
}

function good(): TlsFiles {
  const p = must(pki, 'pki');
  return { ca: p.caCert, cert: p.clientCert, key: p.clientKey };
}

beforeAll(async () => {
  requireBuilt();
  pki = await makePki();
  etcd = await startTlsEtcd(pki);
  target = { endpoints: etcd.endpoint, tls: { caFile: pki.caCert, certFile: pki.clientCert, keyFile: pki.clientKey } };
  // The operator CLI takes TLS from the ETCD_* variables.
  const r = await runPlugin('calico-ipam', {
    env: { ETCD_ENDPOINTS: etcd.endpoint, ETCD_CA_CERT_FILE: pki.caCert, ETCD_CERT_FILE: pki.clientCert, ETCD_KEY_FILE: pki.clientKey },
    args: ['pool', 'add', POOL],
  });
  expect(r.status, r.stderr + r.stdout).toBe(0);
}, 60_000);

afterAll(async () => {
  await etcd?.stop();
  pki?.remove();
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('with the right CA and client certificate', () => {
  for (const transport of TRANSPORTS) {
    it(`${transport}: ADD allocates, DEL releases`, async () => {
      const cid = `tlsok${transport}`;
      const env = cniEnv({ command: 'ADD', containerId: cid, netns: `/var/run/netns/${cid}` });
      const add = await runPlugin('calico-ipam', { env, stdin: conf(transport, good()) });
      expect(add.status, add.stdout + add.stderr).toBe(0);
      const address = (add.json as { ips: { address: string }[] }).ips[0]?.address ?? '';
      expect(address).toMatch(/^10\.231\.\d+\.\d+\/26$/);
      const handle = await getPrefix(target, `/calico/ipam/v2/handle/${NET}.${cid}`);
      expect(handle.size).toBe(1);
      expect(checkIpamInvariants(await getPrefix(target, '/calico/ipam/'))).toEqual([]);

      const del = await runPlugin('calico-ipam', { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: conf(transport, good()) });
      expect(del.status, del.stdout + del.stderr).toBe(0);
      expect((await getPrefix(target, `/calico/ipam/v2/handle/${NET}.${cid}`)).size).toBe(0);
      expect(checkIpamInvariants(await getPrefix(target, '/calico/ipam/'))).toEqual([]);
    });
  }
});

describe('wrong TLS settings fail cleanly, quickly, and change nothing', () => {
  const cases: { name: string; files: () => TlsFiles }[] = [
    { name: 'a client certificate from another CA', files: () => ({ ...good(), cert: must(pki, 'pki').otherClientCert, key: must(pki, 'pki').otherClientKey }) },
    { name: 'no client certificate', files: () => ({ ca: must(pki, 'pki').caCert }) },
    { name: 'a CA that did not sign the server certificate', files: () => ({ ...good(), ca: must(pki, 'pki').otherCaCert }) },
  ];
  for (const transport of TRANSPORTS) {
    for (const c of cases) {
      for (const command of ['ADD', 'DEL'] as const) {
        it(`${transport}, ${c.name}: ${command} fails with 11 naming TLS in < 15 s`, async () => {
          const before = await getPrefix(target, '/');
          const rev = await revision(target);
          const cid = `tlsbad${transport}`;
          const t0 = Date.now();
          const r = await runPlugin('calico-ipam', {
            env: cniEnv({ command, containerId: cid, netns: `/var/run/netns/${cid}` }),
            stdin: conf(transport, c.files()),
            timeoutMs: 30_000,
          });
          const ms = Date.now() - t0;
          expectCniError(r, 11, /TLS|handshake|certificate/i);
          expect(ms).toBeLessThan(15_000);
          expect(await getPrefix(target, '/')).toEqual(before);
          expect(await revision(target)).toBe(rev);
        });
      }
    }
  }
});

describe('a certificate file that does not exist is a config error naming the file', () => {
  for (const transport of TRANSPORTS) {
    for (const which of ['ca', 'cert', 'key'] as const) {
      it(`${transport}: missing ${which} file -> 7`, async () => {
        const missing = path.join(must(pki, 'pki').dir, 'no-such-dir', `${which}.pem`);
        const before = await getPrefix(target, '/');
        const cid = `tlsmissing${transport}`;
        const r = await runPlugin('calico-ipam', {
          env: cniEnv({ command: 'ADD', containerId: cid, netns: `/var/run/netns/${cid}` }),
          stdin: conf(transport, { ...good(), [which]: missing }),
        });
        const err = expectCniError(r, 7);
        expect(err.msg).toContain(missing);
        expect(await getPrefix(target, '/')).toEqual(before);
      });
    }
  }
});

describe('log_file_path', () => {
  it('the log file (and its new directory) is not world-writable, even with umask 0, and holds the log lines', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-log-'));
    tmpDirs.push(root);
    const logFile = path.join(root, 'sub', 'calico-ipam.log');
    const cid = 'tlslogfile';
    const env = cniEnv({ command: 'ADD', containerId: cid, netns: `/var/run/netns/${cid}` });
    // The child inherits the umask: with 0 nothing masks a too-wide mode the plugin might ask for.
    const old = process.umask(0);
    let pending;
    try {
      pending = runPlugin('calico-ipam', { env, stdin: conf('http', good(), { log_file_path: logFile, log_level: 'info' }) });
    } finally {
      process.umask(old);
    }
    const add = await pending;
    expect(add.status, add.stdout + add.stderr).toBe(0);
    const st = fs.statSync(logFile);
    expect(st.isFile()).toBe(true);
    expect(st.mode & 0o002, `mode ${(st.mode & 0o777).toString(8)}`).toBe(0);
    expect(fs.statSync(path.dirname(logFile)).mode & 0o002).toBe(0);
    const text = fs.readFileSync(logFile, 'utf8');
    const lines = text.split('\n').filter((l) => l !== '');
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(l).toMatch(/^\d{4}-\d{2}-\d{2}T\S+ \[(DEBUG|INFO|WARN|ERROR)\]\[\d+\] calico-ipam: /);
    expect(text).toMatch(/\[INFO\].*assigned.*tlsnet\.tlslogfile/);

    const del = await runPlugin('calico-ipam', { env: { ...env, CNI_COMMAND: 'DEL' }, stdin: conf('http', good(), { log_file_path: logFile, log_level: 'info' }) });
    expect(del.status, del.stdout + del.stderr).toBe(0);
    expect(fs.readFileSync(logFile, 'utf8')).toMatch(/\[INFO\].*released/);
    expect(fs.statSync(logFile).mode & 0o002).toBe(0);
  });
});
