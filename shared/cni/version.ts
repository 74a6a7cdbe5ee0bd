import { CniError, ErrorCode } from './errors';

/** Every spec version both binaries speak; the result is always printed in the config's version. */
export const SUPPORTED_VERSIONS = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];
/** The spec version this implementation follows; VERSION answers with it, as libcni's skel does. */
export const CURRENT_VERSION: CniVersion = '1.1.0';

/** Best effort: the version to stamp on an error printed before the config was validated. */
export function sniffVersion(stdin: string): string {
  try {
    const v: unknown = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    return typeof v === 'string' && /^\d+\.\d+\.\d+$/.test(v) ? v : CURRENT_VERSION;
  } catch {
    return CURRENT_VERSION;
  }
}

const SEMVER = /^(\d+)\.(\d+)\.(\d+)$/;

export function parseVersion(v: string): [number, number, number] {
  const m = SEMVER.exec(v);
  if (!m) throw new CniError(ErrorCode.DecodeFailure, `invalid version ${JSON.stringify(v)}: expected MAJOR.MINOR.PATCH`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

export function compareVersions(a: string, b: string): number {
  const pa = parseVersion(a);
  const pb = parseVersion(b);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  return 0;
}

export function isSupported(v: string): v is CniVersion {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** An empty cniVersion means 0.1.0, as libcni reads it. */
export function effectiveVersion(v: string | undefined): string {
  return v === undefined || v === '' ? '0.1.0' : v;
}

export function requireSupported(v: string): CniVersion {
  parseVersion(v);
  if (!isSupported(v)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `incompatible CNI versions: config is ${JSON.stringify(v)}, plugin supports [${SUPPORTED_VERSIONS.join(' ')}]`,
    );
  }
  return v;
}

/** CHECK needs 0.4.0; STATUS and GC need 1.1.0. */
export function requireVerbAllowed(verb: 'CHECK' | 'STATUS' | 'GC', v: string): void {
  const min = verb === 'CHECK' ? '0.4.0' : '1.1.0';
  if (compareVersions(v, min) < 0) {
    throw new CniError(ErrorCode.IncompatibleVersion, `config version ${JSON.stringify(v)} does not allow ${verb} (needs ${min} or later)`);
  }
}
