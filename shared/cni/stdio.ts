/**
 * Synchronous stdin and stdout for the launcher and the skeleton: the network configuration is read from
 * stdin (by the launcher first, when it may pass the call to the node agent), and the launcher's answers
 * are written straight to the file descriptors, without creating process.stdin/stdout streams (which costs
 * every call a few ms). Free of other project modules: the launcher bundles it.
 */
import fs from 'node:fs';

/**
 * Reads stdin to EOF, as Go's skel does. A terminal on stdin means "no input"; it is told by fstat, not
 * by node:tty (whose loading costs ~4.5 ms, most of VERSION's margin over `node -e 0`) nor by process.stdin
 * (whose creation switches fd 0 to non-blocking). The other character device a caller may give is
 * /dev/null, which is empty anyway. A non-blocking pipe the runtime has not written yet (EAGAIN) is waited
 * for, not taken as an empty config. Other read errors are thrown as they are.
 */
export function readStdinSync(): string {
  if (stdinIsCharacterDevice()) return '';
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(64 * 1024);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(pause, 0, 0, 2);
        continue;
      }
      if (code === 'EOF') break;
      throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Writes all of `text` to `fd`, waiting out a non-blocking pipe that is full (EAGAIN). */
export function writeAllSync(fd: number, text: string): void {
  const data = Buffer.from(text, 'utf8');
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let off = 0; off < data.length; ) {
    try {
      off += fs.writeSync(fd, data, off, data.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(pause, 0, 0, 2);
    }
  }
}

function stdinIsCharacterDevice(): boolean {
  try {
    return fs.fstatSync(0).isCharacterDevice();
  } catch {
    return false; // no fd 0 at all: the read below reports it
  }
}
