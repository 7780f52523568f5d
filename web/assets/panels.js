// The interactive panels: write propagation (from the event feed and write
// receipts), the document inspector, and the admin controls.

import { el, replace, fmtMs, clock, hlcMs, TOKEN_KEY, TOKEN_SCOPE_KEY, authHeaders, withToken } from './util.js';

/** Writes shown in the propagation panel. */
const PROPAGATION_ROWS = 8;
/** A write is tracked this long at most, then regions that never reported show a dash. */
const PROPAGATION_WAIT_MS = 15_000;
/** Longest delay the propagation bars scale to. */
const PROPAGATION_SCALE_MS = 300;

// ---- Propagation --------------------------------------------------------

/**
 * Follows this node's feed of applied writes, samples a few (not every one:
 * under load that would be a blur), and asks each region's own receipt when
 * it applied the write, so the delays are measured where they happened.
 */
export class Propagation {
  constructor(container, model, render) {
    this.container = container;
    this.model = model;
    this.render = render;
    this.writes = [];
    this.lastTracked = 0;
    const feed = new EventSource(withToken('/v1/events'));
    feed.addEventListener('change', (event) => this.onChange(JSON.parse(event.data)));
    setInterval(() => this.poll(), 300);
  }

  onChange(change) {
    const now = Date.now();
    if (now - this.lastTracked < 700) return;
    this.lastTracked = now;
    this.writes.unshift({ ...change, hlcMs: hlcMs(change.hlc), seen: now, applied: new Map() });
    this.writes.length = Math.min(this.writes.length, PROPAGATION_ROWS);
    this.render();
  }

  async poll() {
    const now = Date.now();
    const pending = this.writes.filter((w) => now - w.seen < PROPAGATION_WAIT_MS
      && this.model.order.some((r) => !w.applied.has(r)));
    await Promise.all(pending.map((write) => this.pollWrite(write)));
    if (pending.length) this.render();
  }

  async pollWrite(write) {
    const missing = this.model.order.filter((r) => !write.applied.has(r));
    // A region's own receipt says when it applied the write; this node's says when it heard.
    const asked = new Map();
    for (const region of missing) {
      const source = this.model.sources.get(region);
      const url = source && this.model.status(region) ? source.url : '';
      if (!asked.has(url)) asked.set(url, fetchReceipt(url, write.token));
    }
    for (const region of missing) {
      const source = this.model.sources.get(region);
      const url = source && this.model.status(region) ? source.url : '';
      const receipt = await asked.get(url);
      const row = receipt?.writes?.[0]?.regions?.find((r) => r.region === region);
      if (row && row.applied) {
        const at = hlcMs(row.learned_at) ?? (region === write.region ? write.hlcMs : null);
        write.applied.set(region, at);
      }
    }
  }

  draw() {
    const order = this.model.order;
    if (!this.writes.length) {
      replace(this.container, el('p', { class: 'empty' },
        'No writes yet. Write a document (or start the demo load) and watch it reach every region.'));
      return;
    }
    const head = el('tr', {}, el('th', { scope: 'col' }, 'write'), el('th', { scope: 'col' }, 'at'),
      order.map((r) => el('th', { scope: 'col' }, r)));
    const rows = this.writes.map((w) => el('tr', {},
      el('th', { scope: 'row' }, el('code', {}, w.doc), el('span', { class: 'hint' }, ` from ${w.region}`)),
      el('td', { class: 'num' }, clock(w.hlcMs)),
      order.map((region) => {
        if (!w.applied.has(region)) {
          const late = Date.now() - w.seen > PROPAGATION_WAIT_MS;
          return el('td', { class: 'prop pending' }, late ? '—' : '…');
        }
        const at = w.applied.get(region);
        const delay = at === null ? null : Math.max(0, at - w.hlcMs);
        if (region === w.region) return el('td', { class: 'prop origin' }, 'origin');
        const width = Math.min(100, ((delay ?? 0) / PROPAGATION_SCALE_MS) * 100);
        return el('td', { class: 'prop', title: at ? `applied at ${clock(at)}` : 'applied' },
          el('span', { class: 'bar', style: `width:${width}%` }),
          el('span', { class: 'prop-ms' }, delay === null ? '✓' : `+${fmtMs(delay)}`));
      })));
    replace(this.container, el('table', { class: 'propagation' },
      el('caption', { class: 'visually-hidden' }, 'Latest writes and when each region applied them'),
      el('thead', {}, head), el('tbody', {}, rows)));
  }
}

async function fetchReceipt(url, token) {
  try {
    const reply = await fetch(`${url}/v1/writes/${encodeURIComponent(token)}`, { cache: 'no-store', headers: authHeaders() });
    return reply.ok ? await reply.json() : null;
  } catch {
    return null;
  }
}

// ---- Document inspector -------------------------------------------------

/** Flattens JSON into path -> value text, for a line-by-line comparison. */
function flatten(value, path = '', out = new Map()) {
  if (value !== null && typeof value === 'object' && Object.keys(value).length && out.size < 500) {
    for (const [key, child] of Object.entries(value)) flatten(child, `${path}/${key}`, out);
  } else {
    out.set(path || '/', JSON.stringify(value));
  }
  return out;
}

export async function inspect(container, model, id) {
  id = id.trim().replace(/^\/+/, '');
  if (!id) return;
  replace(container, el('p', { class: 'empty' }, `Reading ${id} at every region …`));
  const docPath = `/v1/docs/${id.split('/').map(encodeURIComponent).join('/')}`;
  const regions = model.order.filter((r) => model.sources.has(r));
  const reads = await Promise.all(regions.map(async (region) => {
    const url = model.sources.get(region).url;
    try {
      const reply = await fetch(`${url}${docPath}`, { cache: 'no-store', headers: authHeaders() });
      const body = await reply.json().catch(() => null);
      return { region, status: reply.status, body, staleness: reply.headers.get('meridian-staleness-ms'), etag: reply.headers.get('etag') };
    } catch (err) {
      return { region, status: 0, body: null, error: 'unreachable' };
    }
  }));
  const flats = reads.map((r) => (r.status === 200 ? flatten(r.body) : new Map()));
  const paths = [...new Set(flats.flatMap((f) => [...f.keys()]))].sort();
  const differs = new Set(paths.filter((p) => new Set(flats.map((f) => f.get(p))).size > 1));
  const columns = reads.map((read, i) => el('section', { class: 'doc-column', 'data-region': read.region },
    el('h4', {}, read.region),
    el('p', { class: 'hint' }, read.status === 200 ? `ETag ${read.etag} · staleness ${fmtMs(Number(read.staleness))}`
      : read.status === 404 ? 'not found here' : read.error || `HTTP ${read.status}: ${read.body?.detail || ''}`),
    read.status === 200 ? el('dl', { class: 'doc-lines' }, paths.map((p) => el('div', { class: differs.has(p) ? 'diff' : '' },
      el('dt', {}, p), el('dd', {}, flats[i].has(p) ? flats[i].get(p) : '(missing)')))) : null));
  const [conflicts, history] = await Promise.all(['conflicts', 'history'].map((sub) =>
    fetch(`${docPath}/${sub}`, { headers: authHeaders() }).then((r) => (r.ok ? r.json() : null)).catch(() => null)));
  const summary = differs.size
    ? el('p', { class: 'doc-summary differs' }, `${differs.size} path${differs.size === 1 ? '' : 's'} differ between regions (highlighted)`)
    : el('p', { class: 'doc-summary' }, 'Identical at every region that answered');
  const historyText = history ? JSON.stringify(history, null, 1) : 'unknown here';
  replace(container, summary, el('div', { class: 'doc-columns' }, columns),
    el('details', {}, el('summary', {}, 'Conflicts (this node)'), el('pre', {}, conflicts ? JSON.stringify(conflicts, null, 1) : 'unknown here')),
    el('details', {}, el('summary', {}, 'History (this node)'),
      el('pre', {}, historyText.length > 20_000 ? `${historyText.slice(0, 20_000)}\n… (truncated)` : historyText)));
}

// ---- Admin controls -----------------------------------------------------

/** The entered token if it has the admin scope (the controls need it), else null. */
export function adminToken() {
  return sessionStorage.getItem(TOKEN_SCOPE_KEY) === 'read' ? null : sessionStorage.getItem(TOKEN_KEY);
}

/** Remembers a token for this session; `admin` says whether it opens the controls. */
export function setAdminToken(token, admin = true) {
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(TOKEN_SCOPE_KEY, admin ? 'admin' : 'read');
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(TOKEN_SCOPE_KEY);
  }
}

/**
 * Checks a token: {admin: true} if this node's admin API takes it, {admin:
 * false} if it only reads (a read or write token), or {problem} if refused.
 */
export async function checkToken(token) {
  const headers = { authorization: `Bearer ${token}` };
  const reply = await fetch('/v1/admin/faults', { headers });
  if (reply.ok) return { admin: true };
  const read = await fetch('/v1/cluster', { headers, cache: 'no-store' });
  if (read.ok) return { admin: false };
  const body = await read.json().catch(() => ({}));
  return { problem: body.detail || `HTTP ${read.status}` };
}

async function admin(url, method, path, body) {
  const headers = { authorization: `Bearer ${adminToken()}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const reply = await fetch(`${url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const payload = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new Error(payload.detail || `HTTP ${reply.status}`);
  return payload;
}

/**
 * Changes the link between two regions at both ends that can be reached,
 * keeping each end's other settings (the demo's WAN delay stays when a link
 * is cut and healed). One end suffices: a cut there drops both directions.
 */
export async function changeLink(model, a, b, change) {
  const ends = [[a, b], [b, a]].filter(([from]) => model.sources.has(from) && model.status(from));
  if (!ends.length) throw new Error(`neither ${a} nor ${b} answers`);
  for (const [from, to] of ends) {
    const url = model.sources.get(from).url;
    const current = (await admin(url, 'GET', '/v1/admin/faults')).faults.find((f) => f.peer_region === to) || {};
    const spec = { peer_region: to, delay_ms: current.delay_ms || 0, jitter_ms: current.jitter_ms || 0, loss: current.loss || 0, cut: !!current.cut };
    Object.assign(spec, change(spec));
    await admin(url, 'POST', '/v1/admin/faults', spec);
  }
}

/** Heals every cut everywhere reachable, keeping delays. */
export async function healAll(model) {
  for (const [region, source] of model.sources) {
    if (!model.status(region)) continue;
    const faults = (await admin(source.url, 'GET', '/v1/admin/faults')).faults;
    for (const fault of faults.filter((f) => f.cut)) {
      await admin(source.url, 'POST', '/v1/admin/faults', { ...fault, cut: false, direction: undefined });
    }
  }
}

/** A command to the `meridian demo` supervisor. */
export async function demoCommand(model, path) {
  const reply = await fetch(`${model.demo.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${adminToken()}` } });
  const text = await reply.text();
  if (!reply.ok) throw new Error(text || `HTTP ${reply.status}`);
  return text;
}
