/**
 * TLS material made with openssl in a temp dir, and a single-member etcd that serves clients over https
 * and demands a client certificate signed by the test CA. Every process is stopped by PID and every
 * directory removed, also when the test process exits early.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { ETCD_BIN, freePorts } from './etcd';

export interface Pki {
  dir: string;
  /** The CA that signed the server and the good client. */
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** An unrelated CA and a client certificate it signed. */
  otherCaCert: string;
  otherClientCert: string;
  otherClientKey: string;
  remove(): void;
}

const dirs = new Set<string>();
const procs = new Set<ChildProcess>();
let hooked = false;

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of procs) {
      try {
        if (c.pid) process.kill(c.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
}

function openssl(args: readonly string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { cwd, encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } }, (err, _out, stderr) => {
      if (err) reject(new Error(`openssl ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve();
    });
  });
}

async function selfSignedCa(dir: string, name: string): Promise<void> {
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`], dir);
}

async function signed(dir: string, ca: string, name: string, ext: string): Promise<void> {
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], dir);
  await openssl(
    ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`],
    dir,
  );
}

/** CA, server certificate for IP 127.0.0.1, client certificate; and a second CA with its own client. */
export async function makePki(): Promise<Pki> {
  hook();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-pki-'));
  dirs.add(dir);
  const remove = () => {
    fs.rmSync(dir, { recursive: true, force: true });
    dirs.delete(dir);
  };
  try {
    await selfSignedCa(dir, 'ca');
    await selfSignedCa(dir, 'other-ca');
    // etcd's JSON gateway dials etcd's own gRPC port presenting the server certificate, which
    // --client-cert-auth then checks: the server certificate must allow client auth too.
    await signed(dir, 'ca', 'server', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
    await signed(dir, 'ca', 'client', 'extendedKeyUsage=clientAuth\n');
    await signed(dir, 'other-ca', 'other-client', 'extendedKeyUsage=clientAuth\n');
  } catch (e) {
    remove();
    throw e;
  }
  const f = (n: string) => path.join(dir, n);
  return {
    dir,
    caCert: f('ca.crt'),
    serverCert: f('server.crt'),
    serverKey: f('server.key'),
    clientCert: f('client.crt'),
    clientKey: f('client.key'),
    otherCaCert: f('other-ca.crt'),
    otherClientCert: f('other-client.crt'),
    otherClientKey: f('other-client.key'),
    remove,
  };
}

export interface TlsEtcd {
  /** https://127.0.0.1:<port> */
  endpoint: string;
  pid: number;
  stop(): Promise<void>;
}

function healthy(endpoint: string, pki: Pki): Promise<boolean> {
  return new Promise((resolve) => {
    const req = https.get(
      `${endpoint}/health`,
      { ca: fs.readFileSync(pki.caCert), cert: fs.readFileSync(pki.clientCert), key: fs.readFileSync(pki.clientKey), timeout: 1000 },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(body.includes('"health":"true"')));
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

function exited(c: ChildProcess, ms: number): Promise<boolean> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    c.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** etcd with --client-cert-auth on https loopback (peers stay on plain http loopback). */
export async function startTlsEtcd(pki: Pki): Promise<TlsEtcd> {
  hook();
  const [clientPort, peerPort] = (await freePorts(2)) as [number, number];
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-etcd-tls-'));
  dirs.add(dataDir);
  const endpoint = `https://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const child = spawn(
    ETCD_BIN,
    [
      '--name', 'tls',
      '--data-dir', dataDir,
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `tls=${peer}`,
      '--initial-cluster-state', 'new',
      '--cert-file', pki.serverCert,
      '--key-file', pki.serverKey,
      '--client-cert-auth',
      '--trusted-ca-file', pki.caCert,
      '--heartbeat-interval', '10',
      '--election-timeout', '100',
      '--log-level', 'error',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
  );
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (c: string) => {
    if (stderr.length < 16_384) stderr += c;
  });
  procs.add(child);
  child.on('exit', () => procs.delete(child));
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (child.pid && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGTERM');
        } catch {
          // gone
        }
        if (!(await exited(child, 3000))) {
          try {
            process.kill(child.pid, 'SIGKILL');
          } catch {
            // gone
          }
          await exited(child, 3000);
        }
      }
      procs.delete(child);
      fs.rmSync(dataDir, { recursive: true, force: true });
      dirs.delete(dataDir);
    })();
    return stopped;
  };
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    if (await healthy(endpoint, pki)) return { endpoint, pid: child.pid ?? -1, stop };
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`TLS etcd at ${endpoint} did not become healthy: ${stderr.trim().slice(0, 2000)}`);
}
