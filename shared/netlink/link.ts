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

/** The link's index, unique for the life of its namespace (a link made again under its name gets another). */
export function linkIndex(name: string): number | undefined {
  try {
    const index = Number(fs.readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8'));
    return Number.isInteger(index) && index > 0 ? index : undefined;
  } catch {
    return undefined;
  }
}

export function netnsExists(path: string): boolean {
  return fs.existsSync(path);
}

/** Host veths that name their container in the alias calico-ts gives them: ifname -> container id. */
export function hostVethOwners(prefix = 'calico-ts:'): Map<string, string> {
  const out = new Map<string, string>();
  let names: string[] = [];
  try {
    names = fs.readdirSync('/sys/class/net');
  } catch {
    return out;
  }
  for (const name of names) {
    const alias = linkAlias(name);
    if (alias?.startsWith(prefix)) out.set(name, alias.slice(prefix.length));
  }
  return out;
}
