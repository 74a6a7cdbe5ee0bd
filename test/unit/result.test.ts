import { describe, expect, it } from 'vitest';
import { formatResult, parseAnyResult, type Result } from '../../shared/cni/result';
import { CniError, ErrorCode } from '../../shared/cni/errors';

/** A result using every 1.1.0 field, as the calico plugin could build it. */
const full: Result = {
  cniVersion: '1.1.0',
  interfaces: [
    { name: 'cali12345678901', mac: 'ee:ee:ee:ee:ee:ee', mtu: 1450 },
    { name: 'eth0', mac: '02:42:ac:11:00:02', mtu: 1450, sandbox: '/var/run/netns/x', socketPath: '/run/vhost.sock', pciID: '0000:00:1f.6' },
  ],
  ips: [
    { interface: 1, address: '10.0.0.5/32', gateway: '169.254.1.1' },
    { interface: 1, address: '10.0.0.6/32' },
    { interface: 1, address: 'fd80:24e2:f998:72d6::5/128', gateway: 'fe80::ecee:eeff:feee:eeee' },
  ],
  routes: [
    { dst: '0.0.0.0/0', gw: '169.254.1.1', mtu: 1400, advmss: 1360, priority: 10, table: 100, scope: 0 },
    { dst: '169.254.1.1/32', scope: 253 },
    { dst: '::/0', gw: 'fe80::ecee:eeff:feee:eeee', mtu: 1400 },
  ],
};

/** What calico-ipam returns: no interfaces, no gateway, no DNS. */
const ipamOnly: Result = {
  cniVersion: '1.1.0',
  ips: [{ address: '10.0.0.0/26' }, { address: 'fd00::/122' }],
};

const dns = { nameservers: ['10.96.0.10'], domain: 'cluster.local', search: ['svc.cluster.local'], options: ['ndots:5'] };

describe('formatResult', () => {
  for (const v of ['0.1.0', '0.2.0'] as const) {
    it(`${v}: ip4/ip6 with the first address of each family, routes folded per family, dns {}`, () => {
      expect(formatResult(full, v)).toEqual({
        cniVersion: v,
        ip4: {
          ip: '10.0.0.5/32',
          gateway: '169.254.1.1',
          routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, { dst: '169.254.1.1/32' }],
        },
        ip6: {
          ip: 'fd80:24e2:f998:72d6::5/128',
          gateway: 'fe80::ecee:eeff:feee:eeee',
          routes: [{ dst: '::/0', gw: 'fe80::ecee:eeff:feee:eeee' }],
        },
        dns: {},
      });
    });

    it(`${v}: an IPAM result (no routes) prints ip4/ip6 without routes; dns carried when set`, () => {
      expect(formatResult(ipamOnly, v)).toEqual({ cniVersion: v, ip4: { ip: '10.0.0.0/26' }, ip6: { ip: 'fd00::/122' }, dns: {} });
      expect(formatResult({ ...ipamOnly, ips: [{ address: '10.0.0.0/26' }], dns }, v)).toEqual({ cniVersion: v, ip4: { ip: '10.0.0.0/26' }, dns });
    });

    it(`${v}: a result without any address cannot be expressed (code 1)`, () => {
      let err: unknown;
      try {
        formatResult({ cniVersion: '1.1.0', interfaces: [{ name: 'eth0' }] }, v);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(CniError);
      expect((err as CniError).code).toBe(ErrorCode.IncompatibleVersion);
    });
  }

  for (const v of ['0.3.0', '0.3.1', '0.4.0'] as const) {
    it(`${v}: ips[].version added, interface mtu and 1.1-only route fields dropped, dns always present`, () => {
      const out = formatResult(full, v);
      expect(out).toEqual({
        cniVersion: v,
        interfaces: [
          { name: 'cali12345678901', mac: 'ee:ee:ee:ee:ee:ee' },
          { name: 'eth0', mac: '02:42:ac:11:00:02', sandbox: '/var/run/netns/x' },
        ],
        ips: [
          { version: '4', interface: 1, address: '10.0.0.5/32', gateway: '169.254.1.1' },
          { version: '4', interface: 1, address: '10.0.0.6/32' },
          { version: '6', interface: 1, address: 'fd80:24e2:f998:72d6::5/128', gateway: 'fe80::ecee:eeff:feee:eeee' },
        ],
        routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, { dst: '169.254.1.1/32' }, { dst: '::/0', gw: 'fe80::ecee:eeff:feee:eeee' }],
        dns: {},
      });
      expect(Object.keys(out)[0]).toBe('cniVersion');
    });

    it(`${v}: IPAM result has no interfaces key, and dns is carried when set`, () => {
      expect(formatResult(ipamOnly, v)).toEqual({
        cniVersion: v,
        ips: [
          { version: '4', address: '10.0.0.0/26' },
          { version: '6', address: 'fd00::/122' },
        ],
        dns: {},
      });
      expect(formatResult({ ...ipamOnly, dns }, v).dns).toEqual(dns);
    });
  }

  it('1.0.0: no ips[].version, interface mtu/socketPath/pciID and route mtu/advmss/priority/table/scope dropped, empty dns omitted', () => {
    const out = formatResult(full, '1.0.0');
    expect(out).toEqual({
      cniVersion: '1.0.0',
      interfaces: [
        { name: 'cali12345678901', mac: 'ee:ee:ee:ee:ee:ee' },
        { name: 'eth0', mac: '02:42:ac:11:00:02', sandbox: '/var/run/netns/x' },
      ],
      ips: [
        { interface: 1, address: '10.0.0.5/32', gateway: '169.254.1.1' },
        { interface: 1, address: '10.0.0.6/32' },
        { interface: 1, address: 'fd80:24e2:f998:72d6::5/128', gateway: 'fe80::ecee:eeff:feee:eeee' },
      ],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, { dst: '169.254.1.1/32' }, { dst: '::/0', gw: 'fe80::ecee:eeff:feee:eeee' }],
    });
    expect('dns' in out).toBe(false);
    expect(formatResult({ ...full, dns }, '1.0.0').dns).toEqual(dns);
    // An empty-but-present dns object is still "empty".
    expect('dns' in formatResult({ ...ipamOnly, dns: { nameservers: [] } }, '1.0.0')).toBe(false);
  });

  it('1.1.0: keeps interface mtu/socketPath/pciID and every route field', () => {
    const out = formatResult(full, '1.1.0');
    expect(out).toEqual({
      cniVersion: '1.1.0',
      interfaces: full.interfaces,
      ips: full.ips,
      routes: full.routes,
    });
    expect('dns' in out).toBe(false);
  });

  it('empty lists are omitted in 0.3.0+ output', () => {
    expect(formatResult({ cniVersion: '1.1.0', interfaces: [], ips: [], routes: [] }, '1.0.0')).toEqual({ cniVersion: '1.0.0' });
  });
});

describe('parseAnyResult', () => {
  it('reads a legacy 0.2.0 result into ips/routes/dns', () => {
    const r = parseAnyResult(
      {
        cniVersion: '0.2.0',
        ip4: { ip: '10.1.0.2/24', gateway: '10.1.0.1', routes: [{ dst: '0.0.0.0/0', gw: '10.1.0.1' }, { dst: '10.2.0.0/16' }] },
        ip6: { ip: 'fd00::2/64', routes: [{ dst: '::/0' }] },
        dns: { nameservers: ['8.8.8.8'] },
      },
      '1.0.0',
    );
    expect(r).toEqual({
      cniVersion: '0.2.0',
      ips: [{ address: '10.1.0.2/24', gateway: '10.1.0.1' }, { address: 'fd00::2/64' }],
      routes: [{ dst: '0.0.0.0/0', gw: '10.1.0.1' }, { dst: '10.2.0.0/16' }, { dst: '::/0' }],
      dns: { nameservers: ['8.8.8.8'] },
    });
  });

  it('reads a legacy result with an empty dns as no dns, and one without cniVersion as the fallback version', () => {
    expect(parseAnyResult({ cniVersion: '0.1.0', ip4: { ip: '10.1.0.2/24' }, dns: {} }, '1.0.0')).toEqual({
      cniVersion: '0.1.0',
      ips: [{ address: '10.1.0.2/24' }],
      routes: [],
    });
    expect(parseAnyResult({ ip4: { ip: '10.1.0.2/24' } }, '0.2.0').ips).toEqual([{ address: '10.1.0.2/24' }]);
  });

  it('reads a 0.4.0 result, dropping ips[].version and keeping interface indexes', () => {
    const r = parseAnyResult(
      {
        cniVersion: '0.4.0',
        interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }],
        ips: [
          { version: '4', interface: 0, address: '10.0.0.5/32', gateway: '169.254.1.1' },
          { version: '6', address: 'fd00::5/128' },
        ],
        routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
        dns: {},
      },
      '1.0.0',
    );
    expect(r.cniVersion).toBe('0.4.0');
    expect(r.interfaces).toEqual([{ name: 'eth0', sandbox: '/var/run/netns/x' }]);
    expect(r.ips).toEqual([
      { interface: 0, address: '10.0.0.5/32', gateway: '169.254.1.1' },
      { address: 'fd00::5/128' },
    ]);
    expect(r.routes).toEqual([{ dst: '0.0.0.0/0', gw: '169.254.1.1' }]);
  });

  it('round-trips what formatResult prints for every 0.3.0+ version', () => {
    for (const v of ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']) {
      const back = parseAnyResult(JSON.parse(JSON.stringify(formatResult(ipamOnly, v))), '1.1.0');
      expect(back.ips).toEqual(ipamOnly.ips);
      expect(back.cniVersion).toBe(v);
    }
    expect(parseAnyResult(formatResult(full, '1.1.0'), '1.1.0')).toEqual(full);
  });

  it('a malformed result is a decode failure (code 6)', () => {
    for (const bad of [{ cniVersion: '1.0.0', ips: 'nope' }, { cniVersion: '0.2.0', ip4: { gateway: '1.2.3.4' } }, { cniVersion: '1.0.0', ips: [{ gateway: 'x' }] }]) {
      let err: unknown;
      try {
        parseAnyResult(bad, '1.0.0');
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(bad)).toBeInstanceOf(CniError);
      expect((err as CniError).code).toBe(ErrorCode.DecodeFailure);
    }
  });
});
