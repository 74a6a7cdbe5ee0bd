// Prints a bundle so that it can sit inside a /* block comment */: every "*/" becomes "*\u0001/"
// (shared/launch/launcher.ts undoes it). A bundle that already holds \u0001 could not be told apart.
import fs from 'node:fs';

const text = fs.readFileSync(process.argv[2], 'utf8');
if (text.includes('\u0001')) {
  console.error(`escape-payload: ${process.argv[2]} contains U+0001; cannot embed it`);
  process.exit(1);
}
process.stdout.write(text.replaceAll('*/', '*\u0001/'));
