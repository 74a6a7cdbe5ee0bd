/**
 * 32-bit FNV-1 (not 1a) of a string's UTF-8 bytes. Free of other modules, so the launcher can use it too:
 * it seeds each host's block search (hosts spread over a pool) and tags code cache files by node flags.
 */
export function fnv1(s: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(s)) {
    h = Math.imul(h, 0x01000193) >>> 0;
    h = (h ^ b) >>> 0;
  }
  return h;
}
