import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DIST } from './plugin';

/** cnitool as built by scripts/install-cnitool.sh (CNITOOL overrides). */
export const CNITOOL = process.env.CNITOOL ?? path.resolve(__dirname, '../../build/tools/cnitool');
export const GO_PLUGINS = '/usr/lib/cni';

export function requireCnitool(): void {
  if (!fs.existsSync(CNITOOL)) throw new Error(`cnitool not found at ${CNITOOL}: run scripts/install-cnitool.sh`);
}

/** cnitool's container id for a netns path: "cnitool-" + the first 10 bytes of SHA-512(path) in hex. */
export function cnitoolContainerId(netnsPath: string): string {
  return `cnitool-${createHash('sha512').update(netnsPath).digest('hex').slice(0, 20)}`;
}

export interface CnitoolRun {
  status: number;
  stdout: string;
  stderr: string;
}

export interface NetConfDir {
  dir: string;
  remove(): void;
}

/** Writes conflists into a fresh NETCONFPATH directory. */
export function netconfDir(files: Record<string, unknown>): NetConfDir {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-netconf-'));
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Runs `cnitool <verb> <network> <netns>` exactly as an operator would, with a runtime-like clean env. */
export function cnitool(verb: 'add' | 'del' | 'check' | 'status' | 'gc', network: string, netnsPath: string, o: { confDir: string; cniPath?: string; args?: string; capArgs?: string; ifname?: string }): Promise<CnitoolRun> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    NETCONFPATH: o.confDir,
    CNI_PATH: o.cniPath ?? `${DIST}:${GO_PLUGINS}`,
  };
  if (o.args) env.CNI_ARGS = o.args;
  if (o.capArgs) env.CAP_ARGS = o.capArgs;
  if (o.ifname) env.CNI_IFNAME = o.ifname;
  const argv = [verb, network, netnsPath];
  return new Promise((resolve) => {
    execFile(CNITOOL, argv, { env, timeout: 60_000 }, (err, stdout, stderr) => {
      const status = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ status, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Loads a conf example and points it at the test's etcd and node name. */
export function exampleConflist(file: string, patch: { endpoint: string; nodename: string; name?: string }): Record<string, unknown> & { name: string; plugins: Record<string, unknown>[] } {
  const conf = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../conf-examples', file), 'utf8')) as { name: string; plugins: Record<string, unknown>[] };
  if (patch.name) conf.name = patch.name;
  for (const p of conf.plugins) {
    if (p.type === 'calico') {
      p.etcd_endpoints = patch.endpoint;
      p.nodename = patch.nodename;
      delete p.log_file_path;
    }
  }
  return conf;
}
