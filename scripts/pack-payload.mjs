// Prints a bundle as base64 of its brotli compression, to ride inside the launcher's /* comment */
// (base64 never contains "*/"). A quarter of the bytes for node to read and scan on every start, and
// ~2.5 ms to unpack on the calls that run the plugin (shared/launch/launcher.ts).
import fs from 'node:fs';
import zlib from 'node:zlib';

const packed = zlib.brotliCompressSync(fs.readFileSync(process.argv[2]), {
  params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 11, [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT },
});
process.stdout.write(packed.toString('base64'));
