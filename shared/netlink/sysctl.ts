import fs from 'node:fs';
import { CniError, ErrorCode } from '../cni/errors';

/** Writes a sysctl of the namespace this process is in, through /proc/sys (no exec). */
export function writeSysctl(name: string, value: string): void {
  const file = `/proc/sys/${name.replace(/\./g, '/')}`;
  try {
    fs.writeFileSync(file, value);
  } catch (e) {
    throw new CniError(ErrorCode.Netlink, `failed to set ${name}=${value}: ${(e as Error).message}`);
  }
}

export function readSysctl(name: string): string | undefined {
  try {
    return fs.readFileSync(`/proc/sys/${name.replace(/\./g, '/')}`, 'utf8').trim();
  } catch {
    return undefined;
  }
}
