import { describe, expect, it } from 'vitest';
import { parseSelector, selectorMatches } from '../../shared/ipam/selector';
import { CniError, ErrorCode } from '../../shared/cni/errors';

const node = { 'kubernetes.io/hostname': 'node1', zone: 'a', rack: 'r1', 'projectcalico.org/name': 'node1' };

describe('selectorMatches', () => {
  it('empty and all() match everything', () => {
    expect(selectorMatches(undefined, {})).toBe(true);
    expect(selectorMatches('', node)).toBe(true);
    expect(selectorMatches('   ', node)).toBe(true);
    expect(selectorMatches('all()', {})).toBe(true);
  });

  it('has(), ==, !=', () => {
    expect(selectorMatches('has(zone)', node)).toBe(true);
    expect(selectorMatches('has( zone )', node)).toBe(true);
    expect(selectorMatches('has(gpu)', node)).toBe(false);
    expect(selectorMatches("zone == 'a'", node)).toBe(true);
    expect(selectorMatches('zone == "a"', node)).toBe(true);
    expect(selectorMatches("zone == 'b'", node)).toBe(false);
    expect(selectorMatches("zone != 'b'", node)).toBe(true);
    expect(selectorMatches("zone != 'a'", node)).toBe(false);
    // A missing label is "not equal".
    expect(selectorMatches("gpu != 'yes'", node)).toBe(true);
    expect(selectorMatches("gpu == 'yes'", node)).toBe(false);
    expect(selectorMatches("kubernetes.io/hostname == 'node1'", node)).toBe(true);
  });

  it('in and not in', () => {
    expect(selectorMatches("zone in {'a','b'}", node)).toBe(true);
    expect(selectorMatches("zone in { 'b' , 'c' }", node)).toBe(false);
    expect(selectorMatches("zone not in {'b','c'}", node)).toBe(true);
    expect(selectorMatches("zone not in {'a'}", node)).toBe(false);
    expect(selectorMatches("gpu in {'x'}", node)).toBe(false);
    expect(selectorMatches("gpu not in {'x'}", node)).toBe(true);
    expect(selectorMatches('zone in {}', node)).toBe(false);
  });

  it('!, && binds tighter than ||, parentheses', () => {
    expect(selectorMatches('!has(gpu)', node)).toBe(true);
    expect(selectorMatches('!!has(zone)', node)).toBe(true);
    expect(selectorMatches("zone == 'a' && rack == 'r1'", node)).toBe(true);
    expect(selectorMatches("zone == 'a' && rack == 'r2'", node)).toBe(false);
    expect(selectorMatches("zone == 'x' || rack == 'r1'", node)).toBe(true);
    // (false && false) || true, not false && (false || true)
    expect(selectorMatches("zone == 'x' && rack == 'x' || has(zone)", node)).toBe(true);
    expect(selectorMatches("zone == 'x' && (rack == 'x' || has(zone))", node)).toBe(false);
    expect(selectorMatches("!(zone == 'a' && has(rack))", node)).toBe(false);
  });

  it('has() only sees the labels themselves, not inherited object properties', () => {
    expect(selectorMatches('has(toString)', {})).toBe(false);
    expect(selectorMatches('has(constructor)', node)).toBe(false);
    expect(selectorMatches("constructor == 'x'", {})).toBe(false);
    expect(selectorMatches("constructor in {'x'}", {})).toBe(false);
  });

  it('invalid selectors are code 7 naming the selector', () => {
    for (const bad of ["zone == 'a", "zone == a", "zone = 'a'", "(zone == 'a'", "zone == 'a')", "zone in {'a'", 'zone', '&& has(a)', "zone == 'a' &&", "zone in 'a'", '#']) {
      let err: unknown;
      try {
        parseSelector(bad);
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(CniError);
      expect((err as CniError).code, bad).toBe(ErrorCode.InvalidConfig);
      expect((err as CniError).message).toContain(JSON.stringify(bad));
    }
  });
});
