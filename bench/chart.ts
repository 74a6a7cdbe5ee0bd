/** A dependency-free SVG of the latency distributions, calico-ts beside the Go reference plugins. */

interface Series {
  label: string;
  samples: number[];
  color: string;
}

interface Results {
  date: string;
  cnitool: Record<'ours' | 'oursGrpc' | 'oursAgent' | 'go', { add: { samples: number[] }; del: { samples: number[] } }>;
  version: Record<string, { samples: number[] }>;
  burst: Record<'ours' | 'oursGrpc' | 'oursAgent' | 'go', Record<string, unknown>> & { seaAgent?: Record<string, unknown> };
  seaBuildWithAgent?: { add?: { samples: number[] }; del?: { samples: number[] } } | string;
  floor?: { add: { samples: number[] }; del: { samples: number[] }; burst: Record<string, unknown> };
}

const OURS = '#e4572e';
const GO = '#2e86ab';
const GRPC = '#f2a541';
const AGENT = '#6a994e';
const SEA_AGENT = '#386641';
const FLOOR = '#bbbbbb';

function quantile(s: number[], p: number): number {
  const x = [...s].sort((a, b) => a - b);
  return x[Math.min(x.length - 1, Math.floor(p * (x.length - 1) + 0.5))] ?? 0;
}

function esc(t: string): string {
  return t.replace(/&/g, '&amp;').replace(/</g, '&lt;');
}

export function renderChart(r: Results): string {
  const burstSamples = (b: Record<string, unknown>, k: 'add' | 'del') => ((b[k] as { samples?: number[] } | undefined)?.samples ?? []);
  type Key = 'ours' | 'oursGrpc' | 'oursAgent' | 'go';
  const who: { key: Key; label: string; color: string }[] = [
    { key: 'ours', label: 'calico-ts (default, http)', color: OURS },
    { key: 'oursGrpc', label: 'calico-ts (grpc)', color: GRPC },
    { key: 'oursAgent', label: 'calico-ts + node agent', color: AGENT },
    { key: 'go', label: 'ptp+host-local', color: GO },
  ];
  const seaAgent = typeof r.seaBuildWithAgent === 'object' ? r.seaBuildWithAgent : undefined;
  // After ours and before Go: the SEA build with the agent, and the floor no per-call Node design goes below.
  const extra = (add: boolean): Series[] => [
    ...(seaAgent ? [{ label: 'SEA build + node agent', color: SEA_AGENT, samples: (add ? seaAgent.add?.samples : seaAgent.del?.samples) ?? [] }] : []),
    ...(r.floor ? [{ label: 'floor: Node client, no-op agent', color: FLOOR, samples: (add ? r.floor.add : r.floor.del).samples }] : []),
  ];
  const each = (pick: (k: Key) => number[], more: Series[] = []) => {
    const mine = who.filter((w) => w.key !== 'go').map((w) => ({ label: w.label, color: w.color, samples: pick(w.key) }));
    const go = who.filter((w) => w.key === 'go').map((w) => ({ label: w.label, color: w.color, samples: pick(w.key) }));
    return [...mine, ...more, ...go];
  };
  const burstExtra = (k: 'add' | 'del'): Series[] => [
    ...(r.burst.seaAgent ? [{ label: 'SEA build + node agent', color: SEA_AGENT, samples: burstSamples(r.burst.seaAgent, k) }] : []),
    ...(r.floor ? [{ label: 'floor: Node client, no-op agent', color: FLOOR, samples: burstSamples(r.floor.burst, k) }] : []),
  ];
  const groups: { title: string; series: Series[] }[] = [
    { title: 'cnitool ADD', series: each((k) => r.cnitool[k]?.add.samples ?? [], extra(true)) },
    { title: 'cnitool DEL', series: each((k) => r.cnitool[k]?.del.samples ?? [], extra(false)) },
    {
      title: 'VERSION (direct exec)',
      series: [
        { label: 'calico', samples: r.version.calico?.samples ?? [], color: OURS },
        { label: 'ptp', samples: r.version.ptp?.samples ?? [], color: GO },
        { label: 'node -e 0', samples: r.version.nodeNoop?.samples ?? [], color: '#888' },
      ],
    },
    { title: 'burst ADD (per op)', series: each((k) => (r.burst[k] ? burstSamples(r.burst[k], 'add') : []), burstExtra('add')) },
    { title: 'burst DEL (per op)', series: each((k) => (r.burst[k] ? burstSamples(r.burst[k], 'del') : []), burstExtra('del')) },
  ];
  const W = 900;
  const left = 230;
  const right = 40;
  const rowH = 26;
  const groupGap = 34;
  let y = 50;
  const parts: string[] = [];
  for (const g of groups) {
    const max = Math.max(1, ...g.series.flatMap((s) => s.samples));
    const scale = (v: number) => left + (v / max) * (W - left - right);
    parts.push(`<text x="10" y="${y}" font-weight="bold">${esc(g.title)}</text>`);
    parts.push(`<text x="${W - right}" y="${y}" text-anchor="end" fill="#666">0 … ${max.toFixed(0)} ms</text>`);
    y += 10;
    for (const s of g.series) {
      y += rowH;
      parts.push(`<text x="20" y="${y + 4}">${esc(s.label)}</text>`);
      parts.push(`<line x1="${left}" x2="${W - right}" y1="${y}" y2="${y}" stroke="#eee"/>`);
      for (const v of s.samples) parts.push(`<circle cx="${scale(v).toFixed(1)}" cy="${y}" r="3" fill="${s.color}" fill-opacity="0.35"/>`);
      if (s.samples.length) {
        const p50 = quantile(s.samples, 0.5);
        const p90 = quantile(s.samples, 0.9);
        parts.push(`<line x1="${scale(p50).toFixed(1)}" x2="${scale(p50).toFixed(1)}" y1="${y - 9}" y2="${y + 9}" stroke="${s.color}" stroke-width="3"/>`);
        parts.push(`<line x1="${scale(p90).toFixed(1)}" x2="${scale(p90).toFixed(1)}" y1="${y - 6}" y2="${y + 6}" stroke="${s.color}" stroke-width="1.5" stroke-dasharray="2,2"/>`);
        parts.push(`<text x="${(scale(p50) + 6).toFixed(1)}" y="${y - 8}" font-size="11" fill="${s.color}">p50 ${p50.toFixed(1)} / p90 ${p90.toFixed(1)} ms</text>`);
      }
    }
    y += groupGap;
  }
  const H = y;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="16" font-weight="bold">calico-ts vs Go reference plugins (same run, ${esc(r.date.slice(0, 10))}): latency, ms</text>
<text x="10" y="38" font-size="11" fill="#666">dots: samples; thick bar: p50; dashed bar: p90. Each group has its own scale.</text>
${parts.join('\n')}
</svg>
`;
}
