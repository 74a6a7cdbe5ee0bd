import { describe, expect, it } from 'vitest';
import { parseCniArgs, parseCommand, readCniEnv } from '../../shared/cni/env';
import { CniError, ErrorCode } from '../../shared/cni/errors';

function codeOf(fn: () => unknown): { code: number; msg: string } {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return { code: e.code, msg: e.message };
    throw e;
  }
  throw new Error('expected a CniError, nothing was thrown');
}

const full = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'abc123',
  CNI_NETNS: '/var/run/netns/test',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
};

describe('parseCommand', () => {
  it('accepts every verb', () => {
    for (const v of ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION']) expect(parseCommand(v)).toBe(v);
  });
  it('missing or empty CNI_COMMAND is code 4 naming it', () => {
    for (const raw of [undefined, '']) {
      const e = codeOf(() => parseCommand(raw));
      expect(e.code).toBe(ErrorCode.InvalidEnv);
      expect(e.msg).toContain('CNI_COMMAND');
    }
  });
  it('an unknown or lower-case verb is code 4 naming it', () => {
    for (const raw of ['FOO', 'add']) {
      const e = codeOf(() => parseCommand(raw));
      expect(e.code).toBe(4);
      expect(e.msg).toContain(raw);
    }
  });
});

describe('readCniEnv: required variables per verb', () => {
  const cases: [string, string[]][] = [
    ['ADD', ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH']],
    ['CHECK', ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH']],
    ['DEL', ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH']],
    ['GC', ['CNI_PATH']],
    ['STATUS', ['CNI_PATH']],
    ['VERSION', []],
  ];
  for (const [verb, required] of cases) {
    it(`${verb} needs exactly [${required.join(', ')}]`, () => {
      // Everything present: fine.
      expect(readCniEnv({ ...full, CNI_COMMAND: verb }).command).toBe(verb);
      for (const name of ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH']) {
        for (const absent of [undefined, '']) {
          const env = { ...full, CNI_COMMAND: verb, [name]: absent };
          if (required.includes(name)) {
            const e = codeOf(() => readCniEnv(env));
            expect(e.code).toBe(ErrorCode.InvalidEnv);
            expect(e.msg).toContain(name);
          } else {
            expect(() => readCniEnv(env)).not.toThrow();
          }
        }
      }
    });
  }

  it('names every missing variable at once', () => {
    const e = codeOf(() => readCniEnv({ CNI_COMMAND: 'ADD' }));
    expect(e.code).toBe(4);
    for (const n of ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH']) expect(e.msg).toContain(n);
  });

  it('DEL without CNI_NETNS reads an empty netns', () => {
    const env = readCniEnv({ ...full, CNI_COMMAND: 'DEL', CNI_NETNS: undefined });
    expect(env.netns).toBe('');
    expect(env.containerId).toBe('abc123');
  });

  it('splits CNI_PATH on ":" and drops empty entries', () => {
    expect(readCniEnv({ ...full, CNI_PATH: '/a::/b/c:' }).path).toEqual(['/a', '/b/c']);
  });

  it('STATUS and GC do not judge placeholder container ids or interface names', () => {
    for (const verb of ['STATUS', 'GC']) {
      expect(() => readCniEnv({ CNI_COMMAND: verb, CNI_PATH: '/x', CNI_CONTAINERID: 'dummy;x', CNI_IFNAME: 'dummy/x' })).not.toThrow();
    }
  });
});

describe('readCniEnv: value validation', () => {
  it('rejects bad container ids (code 4, naming CNI_CONTAINERID)', () => {
    for (const id of ['a;rm -rf /', '-abc', '.abc', '_abc', 'a b', 'a/b', 'ä']) {
      const e = codeOf(() => readCniEnv({ ...full, CNI_CONTAINERID: id }));
      expect(e.code, id).toBe(4);
      expect(e.msg).toContain('CNI_CONTAINERID');
    }
  });
  it('accepts container ids with letters, digits, "_", "." and "-" after the first character', () => {
    for (const id of ['a', '0', 'abc_def.ghi-jkl', 'cnitool-77383ca0a0715733ca6f', 'A'.repeat(64)]) {
      expect(readCniEnv({ ...full, CNI_CONTAINERID: id }).containerId).toBe(id);
    }
  });
  it('rejects bad interface names (code 4, naming CNI_IFNAME)', () => {
    for (const name of ['abcdefghijklmnop', 'eth/0', 'eth:0', 'eth 0', 'eth\t0', '.', '..', 'ethé']) {
      const e = codeOf(() => readCniEnv({ ...full, CNI_IFNAME: name }));
      expect(e.code, name).toBe(4);
      expect(e.msg).toContain('CNI_IFNAME');
    }
  });
  it('accepts a 15-character interface name', () => {
    expect(readCniEnv({ ...full, CNI_IFNAME: 'abcdefghijklmno' }).ifname).toBe('abcdefghijklmno');
  });
  it('rejects relative, ".." and non-normal netns paths (code 4, naming CNI_NETNS), also on DEL', () => {
    for (const verb of ['ADD', 'DEL', 'CHECK']) {
      for (const p of ['var/run/netns/x', 'x', '/var/run/netns/../../etc/passwd', '/var/run/netns/./x', '/var//run/netns/x', '/var/run/netns/x\0']) {
        const e = codeOf(() => readCniEnv({ ...full, CNI_COMMAND: verb, CNI_NETNS: p }));
        expect(e.code, `${verb} ${p}`).toBe(4);
        expect(e.msg).toContain('CNI_NETNS');
      }
    }
  });
  it('accepts /proc/<pid>/ns/net style paths', () => {
    expect(readCniEnv({ ...full, CNI_NETNS: '/proc/1234/ns/net' }).netns).toBe('/proc/1234/ns/net');
  });
});

describe('parseCniArgs', () => {
  it('reads the Kubernetes keys and IP', () => {
    const a = parseCniArgs('IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx-abc;K8S_POD_INFRA_CONTAINER_ID=c0ffee;IP=10.0.0.5');
    expect(a.ignoreUnknown).toBe(true);
    expect(a.k8sPodNamespace).toBe('default');
    expect(a.k8sPodName).toBe('nginx-abc');
    expect(a.k8sPodInfraContainerId).toBe('c0ffee');
    expect(a.ip).toBe('10.0.0.5');
    expect([...a.pairs.keys()]).toEqual(['IgnoreUnknown', 'K8S_POD_NAMESPACE', 'K8S_POD_NAME', 'K8S_POD_INFRA_CONTAINER_ID', 'IP']);
  });

  it('IgnoreUnknown is true only for 1 or true (any case)', () => {
    for (const [v, want] of [['1', true], ['true', true], ['TRUE', true], ['True', true], ['0', false], ['false', false], ['yes', false], ['', false]] as const) {
      expect(parseCniArgs(`IgnoreUnknown=${v}`).ignoreUnknown, v).toBe(want);
    }
    expect(parseCniArgs('A=b').ignoreUnknown).toBe(false);
  });

  it('keeps unknown keys (Calico always passes IgnoreUnknown=1 itself)', () => {
    const a = parseCniArgs('FOO=bar;IgnoreUnknown=0');
    expect(a.pairs.get('FOO')).toBe('bar');
  });

  it('a value may contain "="; empty items and an absent string are fine', () => {
    expect(parseCniArgs('A=b=c').pairs.get('A')).toBe('b=c');
    expect(parseCniArgs('A=1;;B=2;').pairs.size).toBe(2);
    expect(parseCniArgs(undefined).pairs.size).toBe(0);
    expect(parseCniArgs('').pairs.size).toBe(0);
    expect(parseCniArgs('A=').pairs.get('A')).toBe('');
  });

  it('empty values of the known keys are treated as absent', () => {
    const a = parseCniArgs('IP=;K8S_POD_NAME=');
    expect(a.ip).toBeUndefined();
    expect(a.k8sPodName).toBeUndefined();
  });

  it('malformed pairs are code 4 naming the pair', () => {
    for (const raw of ['FOO', 'A=1;FOO', '=bar', 'A=1;=2']) {
      const e = codeOf(() => parseCniArgs(raw));
      expect(e.code, raw).toBe(ErrorCode.InvalidEnv);
      expect(e.msg).toMatch(/CNI_ARGS/);
    }
  });

  it('readCniEnv parses CNI_ARGS and reports malformed ones as code 4', () => {
    expect(readCniEnv({ ...full, CNI_ARGS: 'IP=10.1.2.3' }).args.ip).toBe('10.1.2.3');
    expect(codeOf(() => readCniEnv({ ...full, CNI_ARGS: 'garbage' })).code).toBe(4);
  });
});

describe('workload names from CNI_ARGS', () => {
  const base = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' };
  it("accepts podman's K8S_POD_NAME alone, even with characters Kubernetes would not allow", () => {
    expect(readCniEnv({ ...base, CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=hopeful_Darwin' }).args.k8sPodName).toBe('hopeful_Darwin');
  });
  it('refuses a Kubernetes namespace or pod name that would reshape etcd keys (code 4)', () => {
    for (const args of ['K8S_POD_NAMESPACE=../x;K8S_POD_NAME=web-0', 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=a/b']) {
      expect(() => readCniEnv({ ...base, CNI_ARGS: args })).toThrowError(expect.objectContaining({ code: 4 }));
    }
  });
});
