// Prints a bundle so that it can sit inside a /* block comment */ (shared/launch/launcher.ts undoes it):
// U+0001 becomes U+0001 U+0003, then every "*/" becomes "*" U+0001 "/". Only an escaped "*/" leaves a
// U+0001 directly before "/", so the reverse is exact.
import fs from 'node:fs';

const text = fs.readFileSync(process.argv[2], 'utf8');
process.stdout.write(text.replaceAll('\u0001', '\u0001\u0003').replaceAll('*/', '*\u0001/'));
