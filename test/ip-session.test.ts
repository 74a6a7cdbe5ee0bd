import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { failedBatchLine, ipHostChanges } from '../shared/netlink/exec';
import { closeIpSession, currentIpSession, IpSession, keepIpSession } from '../shared/netlink/ip-session';

/*
 * The node agent's long-lived `ip -force -batch -`, against the real iproute2 in the host namespace. The
 * only links made are veth pairs named after this process (this kernel may lack dummy links), removed again
 * whatever happens.
 */

const names = [0, 1, 2, 3].map((i) => `ctsveth${i}${process.pid % 100000}`);
/** A veth pair whose second end is named after the first. */
const pair = (name: string | undefined) => `link add ${name} type veth peer name ${name}p`;
const exists = (name: string) => fs.existsSync(`/sys/class/net/${name}`);
const alias = (name: string | undefined) => fs.readFileSync(`/sys/class/net/${name}/ifalias`, 'utf8').trim();
const alive = (pid: number | undefined) => pid !== undefined && fs.existsSync(`/proc/${pid}`);
const removeAll = () => names.filter(exists).forEach((n) => spawnSync('ip', ['link', 'del', n], { stdio: 'ignore' }));
process.on('exit', removeAll);

const sessions: IpSession[] = [];
function session(opts: ConstructorParameters<typeof IpSession>[0] = {}): IpSession {
  const s = new IpSession(opts);
  sessions.push(s);
  return s;
}

afterEach(async () => {
  for (const s of sessions.splice(0)) await s.close();
  await closeIpSession();
  removeAll();
});
afterAll(removeAll);

describe('ip session', () => {
  it('makes the changes of a request and reports success once they are made', async () => {
    const s = session();
    const [a] = names;
    const r = await s.run([pair(a), `link set ${a} up`, `link set ${a} alias calico-ts:abc`], [a!]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe('');
    expect(exists(a!)).toBe(true);
    expect(fs.readFileSync(`/sys/class/net/${a}/ifalias`, 'utf8').trim()).toBe('calico-ts:abc');
    expect((await s.run([`link del ${a}`], [a!])).exitCode).toBe(0);
    expect(exists(a!)).toBe(false);
  });

  it('reports a failed line numbered within its request, as an exec of its own would, and runs the lines after it', async () => {
    const s = session();
    const [a, b] = names;
    await s.run(['link set lo up', 'link set lo up'], ['lo']); // later requests' lines are numbered from their own start
    const r = await s.run([pair(a), 'link set ctsnosuchdev up', pair(b)], [a!, 'ctsnosuchdev', b!]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/Cannot find device "ctsnosuchdev"/);
    expect(failedBatchLine(r.stderr)).toBe(2);
    expect(r.stderr).not.toMatch(/calico-ts-sync/);
    expect(exists(a!) && exists(b!)).toBe(true);
    // The failure is that request's alone.
    expect(await s.run([`link del ${a}`, `link del ${b}`], [a!, b!])).toEqual({ stdout: '', stderr: '', exitCode: 0 });
  });

  it('keeps requests sent at once apart: each gets its own outcome, in one ip', async () => {
    const s = session();
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => s.run(i % 3 === 0 ? ['link set lo up', `link set ctsmissing${i} up`] : ['link set lo up'], ['lo'])),
    );
    results.forEach((r, i) => {
      if (i % 3 === 0) {
        expect(r.exitCode).toBe(1);
        expect(r.stderr).toContain(`ctsmissing${i}`);
        expect(failedBatchLine(r.stderr)).toBe(2);
      } else {
        expect(r).toEqual({ stdout: '', stderr: '', exitCode: 0 });
      }
    });
  });

  it('fails the calls in flight when its ip is killed, and starts a new ip for the next call', async () => {
    const s = session();
    await s.run(['link set lo up'], ['lo']);
    const first = s.pid;
    expect(first).toBeGreaterThan(0);
    // Stopped, so the request is surely in flight when ip dies: it fails, and does not hang.
    process.kill(first!, 'SIGSTOP');
    const inFlight = s.run(['link set lo up'], ['lo']);
    process.kill(first!, 'SIGKILL');
    const r = await inFlight;
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/ip -batch exited \(SIGKILL\)/);
    const [a] = names;
    expect((await s.run([pair(a)], [a!])).exitCode).toBe(0);
    expect(s.pid).not.toBe(first);
    expect(exists(a!)).toBe(true);
  });

  it('aims at a link made again under the same name, which the ip that resolved the old one would miss', async () => {
    const s = session();
    const [a] = names;
    const hostEnd = [`link set ${a} up`, `route add 10.254.77.1/32 dev ${a} scope link`];
    spawnSync('ip', pair(a).split(' '));
    expect(await s.run(hostEnd, [a!])).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    const first = s.pid;
    // Deleted and made again by another process (as the pod's side of an ADD makes it), with a new index.
    spawnSync('ip', ['link', 'del', a!]);
    spawnSync('ip', pair(a).split(' '));
    expect(await s.run(hostEnd, [a!])).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(s.pid).not.toBe(first);
    expect(spawnSync('ip', ['route', 'show', '10.254.77.1/32'], { encoding: 'utf8' }).stdout).toContain(`dev ${a} scope link`);
    // The same link again: the same ip.
    const second = s.pid;
    expect((await s.run([`link set ${a} down`], [a!])).exitCode).toBe(0);
    expect(s.pid).toBe(second);
  });

  it('a line that makes ip exit fails its own request alone: the requests sent behind it run on a new ip', async () => {
    const s = session();
    const [a] = names;
    await s.run([pair(a)], [a!]);
    const first = s.pid;
    // An invalid prefix is not a failed line for ip 6.1 but the end of it (exit), whatever -force says.
    const [before, bad, after] = await Promise.all([
      s.run([`link set ${a} alias before`], [a!]),
      s.run(['route add 10.254.77.2/33 dev lo'], ['lo']),
      s.run([`link set ${a} alias after`], [a!]),
    ]);
    expect(before).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toMatch(/10\.254\.77\.2\/33/);
    expect(after).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(alias(a)).toBe('after');
    expect(s.pid).not.toBe(first);
  });

  it('times a request from when ip starts on it; the one timed out fails once its ip is gone, and those behind it run', async () => {
    const s = session({ timeoutMs: 400 });
    const [a] = names;
    await s.run([pair(a)], [a!]);
    const stuck = s.pid;
    process.kill(stuck!, 'SIGSTOP');
    const timedOut = s.run(['link set lo up'], ['lo']).then((r) => ({ r, aliveWhenTold: alive(stuck) }));
    // Queued behind it for the whole 400 ms: its own time has not started.
    const behind = s.run([`link set ${a} alias behind`], [a!]);
    const { r, aliveWhenTold } = await timedOut;
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/timed out after 400 ms/);
    expect(aliveWhenTold).toBe(false);
    expect(await behind).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(alias(a)).toBe('behind');
  });

  it('a request that needs a new ip waits for the requests before it: none overtakes another', async () => {
    const s = session();
    const [a, b] = names;
    await s.run([pair(a), pair(b), `route add 10.254.77.3/32 dev ${a} scope link`], [a!, b!]);
    const old = s.pid;
    process.kill(old!, 'SIGSTOP');
    const first = s.run([`link set ${b} alias first`], [b!]);
    // a made again (a new index): the next request that names it needs a new ip, but must not run before `first`.
    spawnSync('ip', ['link', 'del', a!]);
    spawnSync('ip', pair(a).split(' '));
    const second = s.run([`link set ${b} alias second`, `link set ${a} up`], [a!, b!]);
    await new Promise((r) => setTimeout(r, 200));
    expect(alias(b)).toBe('');
    process.kill(old!, 'SIGCONT');
    expect(await first).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(await second).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(alias(b)).toBe('second');
    expect(s.pid).not.toBe(old);
  });

  it('moves to a new ip after its share of requests, and the old one exits', async () => {
    const s = session({ requestsPerProcess: 2 });
    await s.run(['link set lo up'], ['lo']);
    const first = s.pid;
    await s.run(['link set lo up'], ['lo']);
    expect(s.pid).toBe(first);
    expect((await s.run(['link set lo up'], ['lo'])).exitCode).toBe(0);
    expect(s.pid).not.toBe(first);
    for (let i = 0; i < 100 && alive(first); i++) await new Promise((r) => setTimeout(r, 20));
    expect(alive(first)).toBe(false);
  });

  it('closing answers the requests in flight, then waits for ip to exit; later calls are refused', async () => {
    const s = session();
    const [a] = names;
    const inFlight = s.run([pair(a)], [a!]);
    const pid = s.pid;
    await s.close();
    expect(await inFlight).toEqual({ stdout: '', stderr: '', exitCode: 0 });
    expect(exists(a!)).toBe(true);
    expect(alive(pid)).toBe(false);
    await expect(s.run(['link set lo up'], ['lo'])).rejects.toThrow(/closed/);
  });

  it('refuses a line ip would count as two, rather than lose count of the lines', async () => {
    const s = session();
    await expect(s.run(['link set lo up\nlink set lo down'], ['lo'])).rejects.toThrow(/newline/);
    await expect(s.run(['link set lo up \\'], ['lo'])).rejects.toThrow(/backslash/);
    expect(s.pid).toBeUndefined();
  });

  it("serves ipHostChanges once the process keeps a session, with no ip exec of its own", async () => {
    expect(currentIpSession()).toBeUndefined();
    const [a] = names;
    // Without a session: an exec, numbered the same way.
    const plain = await ipHostChanges(['link set lo up', 'link set ctsnosuchdev up'], ['lo']);
    expect(failedBatchLine(plain.stderr)).toBe(2);
    const kept = keepIpSession();
    expect((await ipHostChanges([pair(a)], [a!])).exitCode).toBe(0);
    const pid = kept.pid;
    expect(pid).toBeGreaterThan(0);
    const del = await ipHostChanges([`link del ${a}`, `link del ${a}`], [a!]);
    expect(failedBatchLine(del.stderr)).toBe(2);
    expect(kept.pid).toBe(pid);
    expect(exists(a!)).toBe(false);
    // Closing waits until that ip is gone (and reaped: no zombie left for init).
    await closeIpSession();
    expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    expect(currentIpSession()).toBeUndefined();
  });
});
