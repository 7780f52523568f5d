// The dashboard's main views, each a pure function of the model: the
// headline, the topology, the convergence matrix and the per-region cards.

import { el, svg, replace, fmtMs, fmtRate, fmtBytes, fmtBytesRate, clock, heat, sparkline, shortDigest } from './util.js';

const isDark = () => document.documentElement.dataset.theme === 'dark';

/** CONVERGED, CONVERGING or DIVERGED for how long, and who is furthest behind. */
export function renderHeadline(container, view) {
  const { state, worst, down, divergedForMs } = view;
  const word = { converged: 'CONVERGED', converging: 'CONVERGING', diverged: 'DIVERGED' }[state];
  const detail = [];
  if (state === 'diverged') detail.push(`for ${fmtMs(divergedForMs)}`);
  if (worst && state !== 'converged') detail.push(`${worst.replica} is ${fmtMs(worst.ms)} behind ${worst.origin}`);
  if (state === 'converging') detail.push('writes in flight');
  if (state === 'converged') detail.push('every reachable replica holds the same state');
  if (down.length) detail.push(`down: ${down.join(', ')}`);
  container.dataset.state = state;
  replace(container, el('span', { class: 'headline-word', 'data-testid': 'headline' }, word),
    el('span', { class: 'headline-detail' }, detail.join(' · ')));
}

/** Region positions around an ellipse, first at the top. */
function layout(names, width, height) {
  const cx = width / 2;
  const cy = height / 2 + 4;
  const rx = width / 2 - 90;
  const ry = height / 2 - 46;
  if (names.length === 1) return new Map([[names[0], { x: cx, y: cy }]]);
  return new Map(names.map((name, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
    return [name, { x: cx + rx * Math.cos(angle), y: cy + ry * Math.sin(angle) }];
  }));
}

/** Regions as nodes, links drawn by health and labelled with RTT and emulated delay. */
export function renderTopology(container, model, onSelectLink, selected) {
  const width = 640;
  const height = 330;
  const names = model.order;
  const positions = layout(names, width, height);
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, class: 'topology', role: 'group', 'aria-label': 'Topology: regions and links',
  });
  const labelAll = names.length <= 5;
  for (let i = 0; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const link = model.link(names[i], names[j]);
      const p = positions.get(names[i]);
      const q = positions.get(names[j]);
      const key = `${names[i]}|${names[j]}`;
      const text = link.cut ? '✂ CUT' : linkLabel(link);
      const group = svg('g', {
        class: `link link-${link.health}${selected === key ? ' selected' : ''}`,
        'data-link': key, 'data-health': link.health, tabindex: 0, role: 'button',
        'aria-label': `Link ${names[i]} to ${names[j]}: ${link.health}${text ? `, ${text}` : ''}`,
        onclick: () => onSelectLink(key),
        onkeydown: (event) => { if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); onSelectLink(key); } },
      });
      group.append(svg('line', { x1: p.x, y1: p.y, x2: q.x, y2: q.y, class: 'link-hit' }));
      group.append(svg('line', { x1: p.x, y1: p.y, x2: q.x, y2: q.y, class: 'link-line' }));
      if (text && (labelAll || link.health !== 'ok' || selected === key)) {
        const mx = (p.x + q.x) / 2;
        const my = (p.y + q.y) / 2;
        const w = text.length * 6.6 + 12;
        group.append(svg('rect', { x: mx - w / 2, y: my - 10, width: w, height: 19, rx: 4, class: 'link-label-bg' }));
        group.append(svg('text', { x: mx, y: my + 4, class: 'link-label', 'text-anchor': 'middle' }, text));
      }
      chart.append(group);
    }
  }
  for (const name of names) {
    const region = model.region(name);
    const { x, y } = positions.get(name);
    const state = region.up ? (region.readStalenessMs >= 1000 ? 'behind' : 'up') : 'down';
    const group = svg('g', { class: `region region-${state}${region.local ? ' region-local' : ''}`, 'data-region': name });
    group.append(svg('circle', { cx: x, cy: y, r: 30 }));
    group.append(svg('text', { x, y: y + 4, 'text-anchor': 'middle', class: 'region-initials' }, initials(name)));
    group.append(svg('text', { x, y: y + 47, 'text-anchor': 'middle', class: 'region-name' },
      `${name}${region.local ? ' (this node)' : ''}`));
    const sub = region.up
      ? `read staleness ${fmtMs(region.readStalenessMs)}`
      : `down · last seen ${region.lastSeen ? fmtMs(Date.now() - region.lastSeen) + ' ago' : 'never'}`;
    group.append(svg('text', { x, y: y + 62, 'text-anchor': 'middle', class: 'region-sub' }, sub));
    chart.append(group);
  }
  replace(container, chart);
}

function linkLabel(link) {
  const parts = [];
  if (link.rttMs !== null && link.health !== 'down') parts.push(`RTT ${Math.round(link.rttMs)} ms`);
  const delays = [link.delayAb, link.delayBa].filter((d) => d !== null && d > 0);
  if (delays.length) parts.push(`delay ${[...new Set(delays)].join('/')} ms`);
  if (link.health === 'down') parts.push('DOWN');
  return parts.join(' · ');
}

function initials(name) {
  return name.split(/[-_]/).map((part) => part[0] || '').join('').slice(0, 3).toUpperCase();
}

/** Rows are replicas, columns origins; each cell the staleness as a heat colour, ✓ when caught up. */
export function renderMatrix(container, view, order) {
  const dark = isDark();
  const head = el('tr', {}, el('th', { scope: 'col', class: 'corner' }, 'replica ↓ / origin →'),
    order.map((origin) => el('th', { scope: 'col' }, origin)));
  const body = view.rows.map(({ region, cells }) => el('tr', { class: region.up ? '' : 'row-down', 'data-replica': region.name },
    el('th', { scope: 'row' }, region.name,
      region.up ? (region.row && !region.row.own ? el('span', { class: 'hint', title: 'as this node last heard from it' }, ' (via gossip)') : null)
        : el('span', { class: 'hint' }, ' (down)')),
    cells.map((cell) => {
      if (cell.missing) return el('td', { class: 'cell cell-missing', 'data-origin': cell.origin }, '—');
      const title = `${region.name} has applied ${cell.origin}'s changes up to #${cell.seq}; ` +
        `staleness ${fmtMs(cell.stalenessMs)}${cell.caughtUp ? ', caught up' : ', behind'}`;
      const style = cell.self || !region.up ? '' : `background:${heat(cell.stalenessMs, dark)}`;
      return el('td', {
        class: `cell${cell.self ? ' cell-self' : ''}${cell.caughtUp ? ' caught-up' : ' behind'}`,
        style, title, 'data-origin': cell.origin, 'data-staleness-ms': cell.stalenessMs,
      },
      el('span', { class: 'cell-mark', 'aria-hidden': 'true' }, cell.caughtUp ? '✓' : '…'),
      el('span', { class: 'cell-ms' }, cell.self ? 'origin' : fmtMs(cell.stalenessMs)),
      el('span', { class: 'cell-seq' }, `#${cell.seq}`));
    })));
  replace(container, el('table', { class: 'matrix', 'data-testid': 'matrix' },
    el('caption', { class: 'visually-hidden' }, 'Convergence matrix: staleness of each replica towards each origin'),
    el('thead', {}, head), el('tbody', {}, body)));
}

/** One card per region: rates, queues, freshness, digest, clock, sparklines. */
export function renderRegions(container, model) {
  const digests = new Map();
  for (const name of model.order) {
    const status = model.status(name);
    if (status) digests.set(name, status.node.digest);
  }
  const digestCounts = new Map();
  for (const d of digests.values()) digestCounts.set(d, (digestCounts.get(d) || 0) + 1);
  const majority = [...digestCounts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  const cards = model.order.map((name) => {
    const r = model.region(name);
    const last = r.samples[r.samples.length - 1] || {};
    const series = (key) => r.samples.map((s) => s[key]);
    const offset = r.local ? 0 : r.member?.clock_offset_ms;
    const digest = r.status?.node?.digest;
    const stat = (label, value, spark) => el('div', { class: 'stat' },
      el('span', { class: 'stat-label' }, label), el('span', { class: 'stat-value' }, value), spark || null);
    const state = r.up ? (r.reachable ? 'up' : 'up, status unreachable') : 'down';
    return el('article', { class: `card${r.up ? '' : ' card-down'}`, 'data-region': name, 'aria-label': `Region ${name}` },
      el('header', {},
        el('h3', {}, name, r.local ? el('span', { class: 'hint' }, ' this node') : null),
        el('span', { class: `badge badge-${r.up ? 'up' : 'down'}` }, state)),
      r.up ? null : el('p', { class: 'last-seen' }, `last seen ${r.lastSeen ? `${fmtMs(Date.now() - r.lastSeen)} ago (${clock(r.lastSeen)})` : 'never'}`),
      el('div', { class: 'stats' },
        stat('writes', fmtRate(last.writes), sparkline(series('writes'), { label: `${name} writes per second` })),
        stat('applied', fmtRate(last.applied), sparkline(series('applied'), { label: `${name} applied per second` })),
        stat('bytes in', fmtBytesRate(last.bytesIn), sparkline(series('bytesIn'), { label: `${name} bytes in per second` })),
        stat('bytes out', fmtBytesRate(last.bytesOut), sparkline(series('bytesOut'), { label: `${name} bytes out per second` })),
        stat('read staleness', fmtMs(r.readStalenessMs), sparkline(series('staleness'), { label: `${name} read staleness` })),
        stat('queues', r.status ? `${r.status.node.received_not_applied} to apply · ${fmtBytes(last.queueBytes || 0)} to send` : '—'),
        stat('safe time', r.safeTimeMs ? clock(r.safeTimeMs) : '—'),
        stat('digest', el('code', { class: digest && majority && digest !== majority ? 'digest-odd' : '' }, shortDigest(digest))),
        stat('clock offset', offset === null || offset === undefined ? '—' : `${offset > 0 ? '+' : ''}${Math.round(offset)} ms`),
        stat('documents', r.status ? r.status.node.documents : '—')));
  });
  replace(container, cards);
}
