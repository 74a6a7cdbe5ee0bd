import fs from 'node:fs';

/** Host-side link facts read from sysfs, without exec. */
export function linkExists(name: string): boolean {
  return fs.existsSync(`/sys/class/net/${name}`);
}

export function linkAlias(name: string): string | undefined {
  try {
    return fs.readFileSync(`/sys/class/net/${name}/ifalias`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export function linkMac(name: string): string | undefined {
  try {
    return fs.readFileSync(`/sys/class/net/${name}/address`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export function netnsExists(path: string): boolean {
  return fs.existsSync(path);
}
