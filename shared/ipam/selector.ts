import { CniError, ErrorCode } from '../cni/errors';

/**
 * Calico's label selector language, the subset pools use: all(), has(k), k == 'v', k != 'v',
 * k in {'a','b'}, k not in {...}, !, &&, || and parentheses. An empty selector matches everything.
 */
export type Labels = Readonly<Record<string, string>>;
type Expr = (l: Labels) => boolean;

const TOKEN = /\s*(all\(\)|has\(\s*[A-Za-z0-9_./-]+\s*\)|&&|\|\||==|!=|!|\(|\)|\{|\}|,|'[^']*'|"[^"]*"|not\s+in\b|in\b|[A-Za-z0-9_./-]+)/y;

function tokenize(sel: string): string[] {
  const out: string[] = [];
  TOKEN.lastIndex = 0;
  let pos = 0;
  while (pos < sel.length) {
    if (/^\s*$/.test(sel.slice(pos))) break;
    TOKEN.lastIndex = pos;
    const m = TOKEN.exec(sel);
    if (!m || m[1] === undefined) throw bad(sel, `unexpected text at ${pos}`);
    out.push(m[1].replace(/^not\s+in$/, 'not in'));
    pos = TOKEN.lastIndex;
  }
  return out;
}

function bad(sel: string, why: string): CniError {
  return new CniError(ErrorCode.InvalidConfig, `invalid selector ${JSON.stringify(sel)}: ${why}`);
}

export function parseSelector(sel: string): Expr {
  const toks = tokenize(sel);
  let i = 0;
  const peek = () => toks[i];
  const next = () => {
    const t = toks[i++];
    if (t === undefined) throw bad(sel, 'unexpected end');
    return t;
  };
  const str = (t: string) => {
    if (!/^(['"]).*\1$/.test(t)) throw bad(sel, `expected a quoted value, got ${t}`);
    return t.slice(1, -1);
  };
  const or = (): Expr => {
    let left = and();
    while (peek() === '||') {
      i++;
      const l = left;
      const r = and();
      left = (x) => l(x) || r(x);
    }
    return left;
  };
  const and = (): Expr => {
    let left = unary();
    while (peek() === '&&') {
      i++;
      const l = left;
      const r = unary();
      left = (x) => l(x) && r(x);
    }
    return left;
  };
  const unary = (): Expr => {
    if (peek() === '!') {
      i++;
      const e = unary();
      return (x) => !e(x);
    }
    return primary();
  };
  const primary = (): Expr => {
    const t = next();
    if (t === '(') {
      const e = or();
      if (next() !== ')') throw bad(sel, 'expected )');
      return e;
    }
    if (t === 'all()') return () => true;
    if (t.startsWith('has(')) {
      const k = t.slice(4, -1).trim();
      return (x) => Object.hasOwn(x, k);
    }
    const op = next();
    if (op === '==' || op === '!=') {
      const v = str(next());
      return op === '==' ? (x) => x[t] === v : (x) => x[t] !== v;
    }
    if (op === 'in' || op === 'not in') {
      if (next() !== '{') throw bad(sel, 'expected {');
      const set = new Set<string>();
      while (peek() !== '}') {
        set.add(str(next()));
        if (peek() === ',') i++;
      }
      i++;
      return op === 'in' ? (x) => x[t] !== undefined && set.has(x[t] ?? '') : (x) => x[t] === undefined || !set.has(x[t] ?? '');
    }
    throw bad(sel, `unexpected ${op}`);
  };
  if (toks.length === 0) return () => true;
  const e = or();
  if (i !== toks.length) throw bad(sel, `unexpected ${toks[i]}`);
  return e;
}

export function selectorMatches(sel: string | undefined, labels: Labels): boolean {
  return parseSelector(sel ?? '')(labels);
}
