import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { closeIpSession, currentLinkDeleter, keepIpSession } from '../shared/netlink/ip-session';
import { deleteHostLink } from '../shared/netlink/link-delete';

/*
 * Deleting a host link, against the real iproute2 and kernel, with veth pairs named after this process
 * (removed again whatever happens). The kernel unlists a deleted link within a few ms, then holds the
 * deleting `ip` ~20 ms in an RCU barrier. To prove who waits for what without timing anything, a stand-in
 * `ip` first in PATH deletes 0.3 s late (an answer before the link is gone finds it still there) and then
 * stays on for a while, as that barrier does; every other use of it is the real ip.
 */

const names = [0, 1, 2].map((i) => `ctsdel${i}${process.pid % 100000}`);
const exists = (name: string) => fs.existsSync(`/sys/class/net/${name}`);
/**
 * The link as ip sees it (netlink). The kernel unlists a deleted pair first and removes their sysfs entries
 * after, one link after the other, so the peer's may outlive the host end's by a moment.
 */
const listed = (name: string) => spawnSync('ip', ['link', 'show', 'dev', name], { stdio: 'ignore' }).status === 0;
const removeAll = () => names.filter(exists).forEach((n) => spawnSync('ip', ['link', 'del', n], { stdio: 'ignore' }));
process.on('exit', removeAll);

const realIp = spawnSync('sh', ['-c', 'command -v ip'], { encoding: 'utf8' }).stdout.trim();
// Made in beforeAll, not at import: a run whose filter skips every test here runs no afterAll to remove it.
let bin = '';
const originalPath = process.env.PATH;

/** A veth pair: `name` here, `${name}p` its peer. */
function pair(name: string): void {
  const r = spawnSync('ip', ['link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}p`], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
}

/** Live processes of this test running the stand-in's `ip link del NAME`. */
function lingering(name: string): number[] {
  return fs.readdirSync('/proc').filter((e) => {
    if (!/^\d+$/.test(e)) return false;
    try {
      return fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').join(' ').includes(`${bin}/ip link del ${name}`);
    } catch {
      return false;
    }
  }).map(Number);
}

async function gone(pids: number[]): Promise<boolean> {
  for (let i = 0; i < 100 && pids.some((p) => fs.existsSync(`/proc/${p}`)); i++) await new Promise((r) => setTimeout(r, 50));
  return !pids.some((p) => fs.existsSync(`/proc/${p}`));
}

beforeAll(() => {
  bin = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-link-delete-'));
  fs.writeFileSync(
    path.join(bin, 'ip'),
    [
      '#!/bin/sh',
      `if [ "$1" = link ] && [ "$2" = del ]; then sleep 0.3; ${realIp} "$@"; s=$?; sleep "\${CTS_IP_LINGER:-3}"; exit $s; fi`,
      // A batch: a `link del` reaches ip 0.3 s late, and the line after it only after the linger.
      `if [ "$1" = -force ] && [ "$2" = -batch ]; then`,
      `  while IFS= read -r line; do case "$line" in "link del "*) sleep 0.3;; esac; printf '%s\\n' "$line"; case "$line" in "link del "*) sleep "\${CTS_IP_LINGER:-3}";; esac; done | ${realIp} "$@"`,
      '  exit',
      'fi',
      `exec ${realIp} "$@"`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
});

afterEach(async () => {
  process.env.PATH = originalPath;
  delete process.env.CTS_IP_LINGER;
  await closeIpSession();
  removeAll();
});
afterAll(() => {
  removeAll();
  if (bin) fs.rmSync(bin, { recursive: true, force: true });
});

describe('deleting a host link', () => {
  it('in a plugin process, waits for ip to finish, and both ends of the veth are gone', async () => {
    const [a] = names as [string];
    pair(a);
    process.env.PATH = `${bin}:${originalPath}`;
    process.env.CTS_IP_LINGER = '1';
    const r = await deleteHostLink(a);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(lingering(a)).toEqual([]);
    expect(listed(a) || listed(`${a}p`)).toBe(false);
  });

  it('in the agent, answers once the link and its peer are gone, while the ip that deleted it still lingers; that ip is reaped after', async () => {
    const [a, b] = names as [string, string];
    pair(a);
    pair(b);
    process.env.PATH = `${bin}:${originalPath}`;
    keepIpSession();
    // The first goes to the agent's deleting ip; the second finds it busy and is an exec of its own.
    const [ra, rb] = await Promise.all([deleteHostLink(a), deleteHostLink(b)]);
    expect([ra.exitCode, rb.exitCode]).toEqual([0, 0]);
    expect([a, `${a}p`, b, `${b}p`].filter(listed)).toEqual([]);
    // Neither waited for its ip: the deleting ip has not answered its request, the exec has not exited.
    expect(currentLinkDeleter()?.busy).toBe(true);
    const stillRunning = lingering(b);
    expect(stillRunning).toHaveLength(1);
    expect(await gone(stillRunning)).toBe(true);
    for (let i = 0; i < 100 && currentLinkDeleter()?.busy; i++) await new Promise((r) => setTimeout(r, 50));
    expect(currentLinkDeleter()?.busy).toBe(false);
  });

  it('in the agent, waits for ip again once 16 deletes answered early have an ip still running', async () => {
    const many = Array.from({ length: 17 }, (_, i) => `ctsdel${i + 3}${process.pid % 100000}`);
    names.push(...many);
    many.forEach(pair);
    process.env.PATH = `${bin}:${originalPath}`;
    keepIpSession();
    const early = await Promise.all(many.slice(0, 16).map((n) => deleteHostLink(n)));
    expect(early.map((r) => r.exitCode)).toEqual(Array(16).fill(0));
    const last = many[16]!;
    process.env.CTS_IP_LINGER = '1';
    expect((await deleteHostLink(last)).exitCode).toBe(0);
    expect(lingering(last)).toEqual([]);
    expect(many.filter(listed)).toEqual([]);
    const rest = many.slice(1, 16).flatMap(lingering);
    expect(await gone(rest)).toBe(true);
    for (let i = 0; i < 100 && currentLinkDeleter()?.busy; i++) await new Promise((r) => setTimeout(r, 50));
  });

  it('in the agent, deletes through one long-lived ip when that is idle', async () => {
    const [a, b] = names as [string, string];
    pair(a);
    pair(b);
    keepIpSession();
    expect((await deleteHostLink(a)).exitCode).toBe(0);
    const deleter = currentLinkDeleter()?.pid;
    expect(deleter).toBeGreaterThan(0);
    expect((await deleteHostLink(b)).exitCode).toBe(0);
    expect(currentLinkDeleter()?.pid).toBe(deleter);
    expect([a, `${a}p`, b, `${b}p`].filter(listed)).toEqual([]);
    await closeIpSession();
    expect(await gone([deleter!])).toBe(true);
  });

  it('reports a link the kernel will not delete, in the agent as in a plugin process', async () => {
    const plain = await deleteHostLink('lo');
    keepIpSession();
    const kept = await deleteHostLink('lo');
    for (const r of [plain, kept]) {
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(/not supported/i);
    }
    expect(exists('lo')).toBe(true);
  });

  it('takes a link that is already gone as deleted, running nothing', async () => {
    keepIpSession();
    expect(await deleteHostLink(names[2]!)).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(currentLinkDeleter()?.pid).toBeUndefined();
  });
});
