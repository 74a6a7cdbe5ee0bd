import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../../shared/agent/server';
import { callAgent, namespacesOf, type AgentOutcome } from '../../shared/launch/agent-client';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { Context, PluginImpl, PluginSpec } from '../../shared/cni/skel';

/*
 * The node agent's server with a stand-in plugin: what a call through it runs (the caller's env and
 * stdin), what it answers, what it refuses, and the order of the calls of one attachment.
 */

// Made in beforeAll, not at import: a run whose filter skips every test here runs no afterAll to remove it.
let dir = '';
const events: string[] = [];
const seen: Context[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const impl: PluginImpl = {
  add: async (ctx) => {
    seen.push(ctx);
    events.push(`ADD ${ctx.env.containerId} start`);
    await sleep(ctx.env.containerId === 'slow' ? 150 : 1);
    events.push(`ADD ${ctx.env.containerId} end`);
    if (ctx.env.containerId === 'bad') throw new CniError(ErrorCode.InvalidConfig, 'the stand-in refuses container bad');
    return { cniVersion: ctx.version, ips: [{ address: '10.9.9.9/32' }] };
  },
  del: async (ctx) => {
    events.push(`DEL ${ctx.env.containerId}`);
  },
  check: async () => undefined,
  status: async () => {
    events.push('STATUS');
  },
  gc: async () => undefined,
};
const spec: PluginSpec = { name: 'calico', about: 'stand-in', load: async () => impl };
let agent: RunningAgent;
const log: string[] = [];

function env(command: string, containerId: string): Record<string, string> {
  return { CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', FROM_CALLER: 'yes' };
}

function request(command: string, containerId: string, build = 'build-1'): Promise<AgentOutcome> {
  const stdin = JSON.stringify({ cniVersion: '1.0.0', name: 'net1', type: 'calico', ipam: { type: 'calico-ipam' } });
  return callAgent(agent.socket, { protocol: 1, build, stdin, env: env(command, containerId), namespaces: namespacesOf(fs) }, 10_000);
}

/** Another agent of this stand-in, on a socket of its own, and a way to send it an ADD. */
async function extraAgent(
  name: string,
  maxCalls?: number,
): Promise<{ agent: RunningAgent; add: (containerId: string) => Promise<AgentOutcome>; status: () => Promise<AgentOutcome> }> {
  const extra = await startAgent({ socket: path.join(dir, `${name}.sock`), spec, build: 'build-1', ...(maxCalls ? { maxCalls } : {}), log: () => undefined });
  const stdin = JSON.stringify({ cniVersion: '1.1.0', name: 'net1', type: 'calico', ipam: { type: 'calico-ipam' } });
  const send = (vars: Record<string, string>) => callAgent(extra.socket, { protocol: 1, build: 'build-1', stdin, env: vars, namespaces: namespacesOf(fs) }, 5000);
  // A runtime's STATUS carries no container, netns or interface.
  return { agent: extra, add: (containerId) => send(env('ADD', containerId)), status: () => send({ CNI_COMMAND: 'STATUS', CNI_PATH: '/opt/cni/bin' }) };
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-agent-unit-'));
  agent = await startAgent({ socket: path.join(dir, 'agent.sock'), spec, build: 'build-1', log: (l) => log.push(l) });
});

afterAll(async () => {
  await agent.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('the node agent server', () => {
  it("runs a call with the caller's environment and stdin and answers what a plugin process would print", async () => {
    const out = await request('ADD', 'c1');
    expect(out.kind).toBe('done');
    if (out.kind !== 'done') return;
    expect(out.status).toBe(0);
    expect(JSON.parse(out.stdout)).toEqual({ cniVersion: '1.0.0', ips: [{ address: '10.9.9.9/32' }] });
    const ctx = seen.find((c) => c.env.containerId === 'c1');
    expect(ctx?.env.vars.FROM_CALLER).toBe('yes');
    expect(ctx?.conf.name).toBe('net1');
    expect(log.join('')).toMatch(/agent: ADD c1 exit 0 in [\d.]+ ms/);
  });

  it('a failing call answers exit 1 with the error object, and its log line travels back on stderr', async () => {
    const out = await request('ADD', 'bad');
    expect(out.kind).toBe('done');
    if (out.kind !== 'done') return;
    expect(out.status).toBe(1);
    expect(JSON.parse(out.stdout)).toMatchObject({ cniVersion: '1.0.0', code: ErrorCode.InvalidConfig, msg: 'the stand-in refuses container bad' });
    expect(out.stderr).toMatch(/ADD failed: the stand-in refuses container bad/);
  });

  it('refuses a caller of another build and a malformed request, and runs nothing for them', async () => {
    const before = events.length;
    const other = await request('ADD', 'c2', 'build-2');
    expect(other).toEqual({ kind: 'unavailable', why: 'the agent refused the call: this agent runs build build-1, the caller is build build-2' });
    const garbage = await new Promise<string>((resolve) => {
      const c = net.connect(agent.socket, () => c.write('{"protocol":1,"build":\n'));
      let text = '';
      c.on('data', (d: Buffer) => (text += d.toString('utf8')));
      c.on('end', () => resolve(text));
    });
    expect(JSON.parse(garbage)).toMatchObject({ refused: expect.stringMatching(/malformed request/) });
    expect(events.length).toBe(before);
  });

  it('runs the calls of one attachment in order: a DEL sent during a slow ADD waits for it; other containers do not', async () => {
    events.length = 0;
    const add = request('ADD', 'slow');
    await sleep(30);
    const del = request('DEL', 'slow');
    const other = request('DEL', 'other');
    await Promise.all([add, del, other]);
    expect(events.indexOf('DEL other')).toBeLessThan(events.indexOf('ADD slow end'));
    expect(events.indexOf('DEL slow')).toBeGreaterThan(events.indexOf('ADD slow end'));
  });

  it('refuses a caller in other mount or PID namespaces (its paths would mean other files here)', async () => {
    const stdin = JSON.stringify({ cniVersion: '1.0.0', name: 'net1', type: 'calico', ipam: { type: 'calico-ipam' } });
    const foreign = { mnt: 'mnt:[4026531841]', pid: 'pid:[4026531836]' };
    const out = await callAgent(agent.socket, { protocol: 1, build: 'build-1', stdin, env: env('ADD', 'c-foreign'), namespaces: foreign }, 5000);
    expect(out).toMatchObject({ kind: 'unavailable', why: expect.stringMatching(/other mount or PID namespaces/) });
    expect(seen.some((c) => c.env.containerId === 'c-foreign')).toBe(false);
  });

  it('does not run a queued ADD whose caller hung up before its turn', async () => {
    events.length = 0;
    const first = request('ADD', 'slow');
    await sleep(30);
    const stdin = JSON.stringify({ cniVersion: '1.0.0', name: 'net1', type: 'calico', ipam: { type: 'calico-ipam' } });
    const body = JSON.stringify({ protocol: 1, build: 'build-1', stdin, env: env('ADD', 'slow'), namespaces: namespacesOf(fs) });
    await new Promise<void>((resolve) => {
      const c = net.connect(agent.socket, () => {
        c.write(`${body}\n`);
        setTimeout(() => {
          c.destroy();
          resolve();
        }, 20);
      });
    });
    await first;
    await sleep(50);
    expect(events.filter((e) => e === 'ADD slow start')).toHaveLength(1);
    expect(log.join('')).toMatch(/the caller went away before the call started/);
  });

  it('runs at most maxCalls calls at once: the others wait for a slot and then run', async () => {
    const { agent: narrow, add: call } = await extraAgent('narrow', 1);
    events.length = 0;
    const slow = call('slow');
    await sleep(30);
    const quick = await call('quick');
    expect(quick).toMatchObject({ kind: 'done', status: 0 });
    await slow;
    // With a slot free, 'quick' (another attachment) would have finished during the slow ADD.
    expect(events).toEqual(['ADD slow start', 'ADD slow end', 'ADD quick start', 'ADD quick end']);
    await narrow.close();
  });

  it('answers STATUS at once while every slot is taken by an ADD', async () => {
    const { agent: narrow, add, status } = await extraAgent('narrow-status', 1);
    events.length = 0;
    const slow = add('slow');
    await sleep(30);
    const queued = add('queued');
    expect(await status()).toMatchObject({ kind: 'done', status: 0 });
    expect(events).toEqual(['ADD slow start', 'STATUS']);
    await Promise.all([slow, queued]);
    await narrow.close();
  });

  it('while stopping, hands a call still queued for a slot back to its caller instead of running it', async () => {
    const { agent: narrow, add: call } = await extraAgent('narrow-stop', 1);
    events.length = 0;
    const slow = call('slow');
    await sleep(30);
    const queued = call('queued');
    await sleep(30);
    const closed = narrow.close();
    expect(await queued).toEqual({ kind: 'unavailable', why: 'the agent refused the call: the agent is shutting down' });
    expect(await slow).toMatchObject({ kind: 'done', status: 0 });
    await closed;
    expect(events).toEqual(['ADD slow start', 'ADD slow end']);
  });

  it('while stopping, finishes the calls in flight and refuses new ones, so their callers run them', async () => {
    const { agent: second, add: call } = await extraAgent('stopping');
    const inFlight = call('slow');
    await sleep(30);
    const closed = second.close();
    const late = await call('c-late');
    expect(late).toEqual({ kind: 'unavailable', why: 'the agent refused the call: the agent is shutting down' });
    expect(await inFlight).toMatchObject({ kind: 'done', status: 0 });
    await closed;
    expect(fs.existsSync(second.socket)).toBe(false);
  });

  it('a second agent on a live socket refuses to start; a socket file nobody serves is replaced', async () => {
    await expect(startAgent({ socket: agent.socket, spec, build: 'build-1', log: () => undefined })).rejects.toThrow(/another agent is serving/);
    // A killed agent leaves its socket file behind: a process that listens and is killed at once.
    const stale = path.join(dir, 'stale.sock');
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect(fs.statSync(stale).isSocket()).toBe(true);
    const second = await startAgent({ socket: stale, spec, build: 'build-1', log: () => undefined });
    expect((await callAgent(stale, { protocol: 1, build: 'build-1', stdin: '{}', env: env('DEL', 'x'), namespaces: namespacesOf(fs) }, 5000)).kind).toBe('done');
    await second.close();
    expect(fs.existsSync(stale)).toBe(false);
  });
});
