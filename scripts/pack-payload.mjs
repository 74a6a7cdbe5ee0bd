// Prints an ncc output directory as the parts that ride behind the launcher (shared/launch/launcher.ts),
// one block comment a part, each on a line of its own:
//   /*CALICO-TS-PART:<build id>:main:raw-<hex code>:<index.js, each "*" "/" stored as "*" <code> "/">*/
//     where <code> is a control character the bundle does not hold
//   /*CALICO-TS-PART:<build id>:<chunk>:br64:<base64 of the brotli-compressed <chunk>.index.js>*/
// main stays plain, so an ADD neither decodes nor decompresses; the chunks (the etcd3/gRPC client) are
// compressed, since only etcd_transport "grpc" loads them, and every start reads and scans the file.
//
// Usage: node scripts/pack-payload.mjs <ncc output dir> <build id>
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

const [dir, id] = process.argv.slice(2);
const out = [];
// ASCII only, as esbuild and terser's ascii_only print: one non-ASCII character would make node and the
// launcher hold the whole file as a two-byte string. \uXXXX means the same in strings, templates, regular
// expressions and identifiers (and a bundle reading String.raw of a non-ASCII template would show it).
const main = fs
  .readFileSync(path.join(dir, 'index.js'), 'utf8')
  .replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
const code = [...Array(31).keys()].map((i) => i + 1).find((c) => c !== 10 && c !== 13 && !main.includes(String.fromCharCode(c)));
if (code === undefined) throw new Error(`${dir}/index.js holds every control character; no escape is left for "*/"`);
const esc = String.fromCharCode(code);
out.push(`\n/*CALICO-TS-PART:${id}:main:raw-${code.toString(16)}:${main.replaceAll('*/', `*${esc}/`)}*/`);
for (const f of fs.readdirSync(dir).filter((n) => /^[^.]+\.index\.js$/.test(n)).sort()) {
  const packed = zlib.brotliCompressSync(fs.readFileSync(path.join(dir, f)), {
    params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 11, [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT },
  });
  out.push(`\n/*CALICO-TS-PART:${id}:${f.replace(/\.index\.js$/, '')}:br64:${packed.toString('base64')}*/`);
}
const text = out.join('') + '\n';
if (/[^\x00-\x7f]/.test(text)) throw new Error('the parts must be ASCII');
process.stdout.write(text);
