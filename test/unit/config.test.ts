import { describe, expect, it } from 'vitest';
import { parseNetConf, validAttachments } from '../../shared/cni/config';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { effectiveVersion, requireSupported, requireVerbAllowed, compareVersions, SUPPORTED_VERSIONS } from '../../shared/cni/version';
import { resolveEtcdConfig } from '../../shared/etcd/config';
import { determineNodename, validateNodename } from '../../shared/calico/nodename';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function failure(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error('expected a CniError, nothing was thrown');
}

const base = { cniVersion: '1.0.0', name: 'net1', type: 'calico', etcd_endpoints: 'http://127.0.0.1:2379', ipam: { type: 'calico-ipam' } };
const conf = (over: Record<string, unknown>) => JSON.stringify({ ...base, ...over });

describe('parseNetConf', () => {
  it('parses a typical Calico netconf and keeps unknown keys', () => {
    const c = parseNetConf(conf({ mtu: 1450, nodename: 'node1', log_level: 'debug', somethingNew: { a: 1 }, ipam: { type: 'calico-ipam', ipv4_pools: ['p1'], extra: true } }));
    expect(c.name).toBe('net1');
    expect(c.mtu).toBe(1450);
    expect(c.ipam?.ipv4_pools).toEqual(['p1']);
    expect((c as Record<string, unknown>).somethingNew).toEqual({ a: 1 });
    expect((c.ipam as Record<string, unknown>).extra).toBe(true);
  });

  it('undecodable input is code 6', () => {
    for (const text of ['{"cniVersion":', conf({}).slice(0, 30), 'not json', '[]', '[{"name":"x"}]', 'null', '42', '"str"']) {
      const e = failure(() => parseNetConf(text));
      expect(e.code, text).toBe(ErrorCode.DecodeFailure);
    }
  });

  it('wrong shapes are code 7 naming the field', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ mtu: 'big' }, 'mtu'],
      [{ mtu: 70000 }, 'mtu'],
      [{ mtu: 1.5 }, 'mtu'],
      [{ name: undefined }, 'name'],
      [{ name: '' }, 'name'],
      [{ name: 'bad name!' }, 'name'],
      [{ name: '-net' }, 'name'],
      [{ name: 5 }, 'name'],
      [{ type: '' }, 'type'],
      [{ ipam: { ipv4_pools: ['x'] } }, 'ipam.type'],
      [{ ipam: { type: 'calico-ipam', ipv4_pools: 'x' } }, 'ipam.ipv4_pools'],
      [{ ipam: { type: 'calico-ipam', ipv6_pools: [''] } }, 'ipam.ipv6_pools'],
      [{ etcd_endpoints: 5 }, 'etcd_endpoints'],
      [{ nodename_file_optional: 'yes' }, 'nodename_file_optional'],
      [{ 'cni.dev/valid-attachments': [{ containerID: 1 }] }, 'cni.dev/valid-attachments'],
    ];
    for (const [over, field] of cases) {
      const e = failure(() => parseNetConf(conf(over)));
      expect(e.code, JSON.stringify(over)).toBe(ErrorCode.InvalidConfig);
      expect(e.message, JSON.stringify(over)).toContain(field);
    }
  });

  it('assign_ipv4/assign_ipv6 accept strings and booleans and read lower-case', () => {
    const c = parseNetConf(conf({ ipam: { type: 'calico-ipam', assign_ipv4: 'FALSE', assign_ipv6: true } }));
    expect(c.ipam?.assign_ipv4).toBe('false');
    expect(c.ipam?.assign_ipv6).toBe('true');
  });

  it('validAttachments prefers cni.dev/valid-attachments, falls back to cni.dev/attachments, else []', () => {
    const a = [{ containerID: 'a', ifname: 'eth0' }];
    const b = [{ containerID: 'b', ifname: 'eth0' }];
    expect(validAttachments(parseNetConf(conf({ 'cni.dev/valid-attachments': a, 'cni.dev/attachments': b })))).toEqual(a);
    expect(validAttachments(parseNetConf(conf({ 'cni.dev/attachments': b })))).toEqual(b);
    expect(validAttachments(parseNetConf(conf({})))).toEqual([]);
  });
});

describe('versions', () => {
  it('supports 0.1.0 … 1.1.0 and nothing else; an empty cniVersion means 0.1.0', () => {
    expect([...SUPPORTED_VERSIONS]).toEqual(['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
    for (const v of SUPPORTED_VERSIONS) expect(requireSupported(v)).toBe(v);
    expect(effectiveVersion(undefined)).toBe('0.1.0');
    expect(effectiveVersion('')).toBe('0.1.0');
    const e = failure(() => requireSupported('9.9.9'));
    expect(e.code).toBe(ErrorCode.IncompatibleVersion);
    for (const v of SUPPORTED_VERSIONS) expect(e.message).toContain(v);
    expect(failure(() => requireSupported('1.0')).code).toBe(ErrorCode.DecodeFailure);
    expect(failure(() => requireSupported('0.5.0')).code).toBe(ErrorCode.IncompatibleVersion);
  });

  it('CHECK needs 0.4.0, STATUS and GC need 1.1.0', () => {
    expect(failure(() => requireVerbAllowed('CHECK', '0.3.1')).code).toBe(1);
    expect(() => requireVerbAllowed('CHECK', '0.4.0')).not.toThrow();
    for (const verb of ['STATUS', 'GC'] as const) {
      expect(failure(() => requireVerbAllowed(verb, '1.0.0')).code).toBe(1);
      expect(() => requireVerbAllowed(verb, '1.1.0')).not.toThrow();
    }
  });

  it('compares numerically, not as text', () => {
    expect(compareVersions('0.10.0', '0.4.0')).toBe(1);
    expect(compareVersions('1.0.0', '1.0.0')).toBe(0);
    expect(compareVersions('0.3.1', '0.4.0')).toBe(-1);
  });
});

describe('etcd settings (resolveEtcdConfig)', () => {
  it('netconf keys win over ETCD_* variables', () => {
    const c = resolveEtcdConfig({ etcd_endpoints: 'http://a:1,http://b:2' }, { ETCD_ENDPOINTS: 'http://c:3' });
    expect(c.endpoints).toEqual(['http://a:1', 'http://b:2']);
    expect(resolveEtcdConfig({}, { ETCD_ENDPOINTS: 'http://c:3' }).endpoints).toEqual(['http://c:3']);
  });
  it('the kubernetes datastore (explicit, or implied by no endpoints) is code 2', () => {
    expect(failure(() => resolveEtcdConfig({ datastore_type: 'kubernetes', etcd_endpoints: 'http://a:1' }, {})).code).toBe(ErrorCode.UnsupportedField);
    expect(failure(() => resolveEtcdConfig({}, {})).code).toBe(ErrorCode.UnsupportedField);
  });
  it('bad endpoints and half a client certificate are code 7', () => {
    expect(failure(() => resolveEtcdConfig({ etcd_endpoints: 'ftp://a:1' }, {})).code).toBe(ErrorCode.InvalidConfig);
    expect(failure(() => resolveEtcdConfig({ etcd_endpoints: 'not a url' }, {})).code).toBe(ErrorCode.InvalidConfig);
    expect(failure(() => resolveEtcdConfig({ etcd_endpoints: 'https://a:1', etcd_cert_file: '/c' }, {})).code).toBe(ErrorCode.InvalidConfig);
  });
});

describe('nodename', () => {
  it('conf nodename, then the nodename file (trimmed), then hostname, then the OS hostname', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-nodename-'));
    try {
      const file = path.join(dir, 'nodename');
      fs.writeFileSync(file, 'from-file\n');
      expect(determineNodename({ nodename: 'explicit', nodename_file: file })).toBe('explicit');
      expect(determineNodename({ nodename_file: file, hostname: 'h' })).toBe('from-file');
      expect(determineNodename({ nodename_file: path.join(dir, 'missing'), hostname: 'h' })).toBe('h');
      expect(determineNodename({ nodename_file: path.join(dir, 'missing') })).toBe(os.hostname().trim().toLowerCase());
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  it('refuses names that would break etcd keys', () => {
    for (const bad of ['a/b', '', '-a', 'a b', 'x'.repeat(300)]) expect(failure(() => validateNodename(bad)).code).toBe(ErrorCode.InvalidConfig);
    expect(validateNodename('node-1.example_com')).toBe('node-1.example_com');
  });
});
