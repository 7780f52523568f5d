// The dashboard's data: one live stream per region whose address is known
// (this node's own, plus the others' public status where reachable), the
// demo supervisor's status when run under `meridian demo`, and what is
// derived from them: the region list, the convergence matrix, link health
// and per-region rates with a few minutes of history.

import { hlcMs, withToken, authHeaders } from './util.js';

/** A region's status older than this counts as unreachable. */
export const FRESH_MS = 3000;
/** Samples kept per region for sparklines (one a second: three minutes). */
export const HISTORY_SAMPLES = 180;
/** Staleness beyond which a replica counts as behind rather than in flight. */
export const BEHIND_MS = 1000;

/** A region's live status stream. */
class Source {
  constructor(name, url, onUpdate) {
    this.name = name;
    this.url = url; // '' for this node (same origin)
    this.cluster = null;
    this.at = 0; // Date.now() of the last snapshot
    this.onUpdate = onUpdate;
    this.connect();
  }

  connect() {
    // EventSource reconnects by itself after an error; `at` tells us how old our data is meanwhile.
    this.stream = new EventSource(withToken(`${this.url}/v1/cluster/stream?interval_ms=500`));
    this.stream.addEventListener('cluster', (event) => {
      try {
        this.cluster = JSON.parse(event.data);
        this.at = Date.now();
        this.onUpdate(this);
      } catch (err) {
        console.warn('bad cluster event from', this.name, err);
      }
    });
  }

  fresh(now = Date.now()) {
    return this.cluster !== null && now - this.at < FRESH_MS;
  }
}

export class Model {
  constructor(onChange) {
    this.onChange = onChange;
    this.local = null; // this node's region name
    this.sources = new Map(); // region -> Source
    this.order = []; // regions in display order
    this.demo = null; // {url, status, at}
    this.history = new Map(); // region -> {samples: [], last: {t, totals}}
    this.divergedSince = null;
    this.lastConverged = null;
  }

  async start() {
    const config = await fetch('/v1/dashboard').then((r) => r.json());
    // A node with client authentication on answers reads only with a token: say so rather than stay blank.
    const probe = await fetch('/v1/cluster', { headers: authHeaders(), cache: 'no-store' }).catch(() => null);
    this.needsToken = probe?.status === 401;
    this.local = config.region;
    this.addSource(config.region, '');
    for (const { region, url } of config.regions) this.addSource(region, url);
    // Extra regions from the address bar: ?regions=eu-west=http://host:port,...
    const extra = new URLSearchParams(location.search).get('regions') || '';
    for (const entry of extra.split(',').filter(Boolean)) {
      const [region, url] = entry.split('=');
      if (region && /^https?:\/\//.test(url || '')) this.addSource(region, url.replace(/\/$/, ''));
    }
    if (config.demo_control) {
      this.demo = { url: config.demo_control, status: null, at: 0 };
      this.pollDemo();
      setInterval(() => this.pollDemo(), 1000);
    }
  }

  addSource(region, url) {
    if (!region || this.sources.has(region) || this.sources.size >= 9) return;
    if (region !== this.local && url === location.origin) url = '';
    this.sources.set(region, new Source(region, url, (source) => this.updated(source)));
    if (!this.order.includes(region)) this.order.push(region);
  }

  async pollDemo() {
    try {
      const reply = await fetch(`${this.demo.url}/status`, { cache: 'no-store' });
      this.demo.status = await reply.json();
      this.demo.at = Date.now();
      for (const { region, url } of this.demo.status.regions) this.addSource(region, url);
    } catch {
      this.demo.status = null;
    }
    this.onChange();
  }

  updated(source) {
    const cluster = source.cluster;
    if (source.name === this.local) {
      // Regions this node knows of but whose address nobody gave us still appear, from its view.
      for (const member of cluster.members || []) {
        if (!this.order.includes(member.region) && this.order.length < 9) this.order.push(member.region);
      }
    }
    this.sample(source.name, source.cluster);
    this.onChange();
  }

  /** The freshest snapshot of a region's own status, or null. */
  status(region, now = Date.now()) {
    const source = this.sources.get(region);
    return source && source.fresh(now) ? source.cluster : null;
  }

  /** This node's view of another region's member entry. */
  memberView(from, region) {
    const status = this.status(from);
    return status ? (status.members || []).find((m) => m.region === region) || null : null;
  }

  /** A replica's row of the convergence matrix: its own when reachable, else this node's view of it. */
  row(region) {
    const own = this.status(region);
    if (own && own.convergence && own.convergence[0]) return { ...own.convergence[0], own: true };
    const local = this.status(this.local) || this.sources.get(this.local)?.cluster;
    const row = local && (local.convergence || []).find((r) => r.replica === region);
    return row ? { ...row, own: false } : null;
  }

  /** Everything the views show about one region. */
  region(name, now = Date.now()) {
    const status = this.status(name, now);
    const source = this.sources.get(name);
    const member = name === this.local ? null : this.memberView(this.local, name);
    const demoEntry = this.demo?.status?.regions.find((r) => r.region === name);
    const demoDown = demoEntry ? !demoEntry.running : false;
    let up = status !== null || (member !== null && member.state === 'alive');
    if (demoDown) up = false;
    let lastSeen = source && source.at ? source.at : null;
    if (member && member.last_heartbeat_ms_ago !== null && member.last_heartbeat_ms_ago !== undefined) {
      lastSeen = Math.max(lastSeen || 0, now - member.last_heartbeat_ms_ago);
    }
    const row = this.row(name);
    const cells = row ? Object.entries(row.origins).filter(([origin]) => origin !== name) : [];
    const readStalenessMs = cells.length ? Math.max(...cells.map(([, c]) => c.staleness_ms)) : 0;
    const history = this.history.get(name);
    return {
      name,
      local: name === this.local,
      status,
      reachable: status !== null,
      url: source ? source.url : null,
      member,
      up,
      demoDown,
      lastSeen,
      row,
      readStalenessMs: row ? readStalenessMs : null,
      safeTimeMs: row ? (status ? hlcMs(status.node.hlc) ?? now : now) - readStalenessMs : null,
      samples: history ? history.samples : [],
    };
  }

  /** Health of the link between two regions, from both ends' views where known. */
  link(a, b) {
    const views = [];
    const ab = this.memberView(a, b);
    const ba = this.memberView(b, a);
    if (ab) views.push(ab);
    if (ba) views.push(ba);
    const cut = views.some((m) => m.link_fault && m.link_fault.cut);
    const rank = { alive: 0, suspect: 1, unknown: 2, down: 3 };
    const worst = views.reduce((acc, m) => Math.max(acc, rank[m.state] ?? 2), -1);
    let health = ['ok', 'degraded', 'down', 'down'][worst] || 'unknown';
    // A link to a region that is down is down, whatever the other end has not noticed yet.
    if (views.length && (!this.region(a).up || !this.region(b).up)) health = 'down';
    if (cut) health = 'cut';
    const rtts = views.map((m) => m.rtt_ms).filter((v) => typeof v === 'number');
    return {
      a, b, health, cut,
      rttMs: rtts.length ? rtts.reduce((x, y) => x + y, 0) / rtts.length : null,
      delayAb: ab?.link_fault?.delay_ms ?? null,
      delayBa: ba?.link_fault?.delay_ms ?? null,
      known: views.length > 0,
    };
  }

  /** The convergence matrix and the headline. */
  convergence(now = Date.now()) {
    const regions = this.order.map((name) => this.region(name, now));
    const maxSeq = {};
    for (const r of regions) {
      for (const [origin, cell] of Object.entries(r.row?.origins || {})) {
        maxSeq[origin] = Math.max(maxSeq[origin] || 0, cell.seq);
      }
    }
    let worst = null;
    const rows = regions.map((r) => {
      const cells = this.order.map((origin) => {
        const cell = r.row?.origins?.[origin];
        if (!cell) return { origin, missing: true };
        const caughtUp = cell.seq >= (maxSeq[origin] || 0);
        if (r.up && origin !== r.name && (!worst || cell.staleness_ms > worst.ms)) {
          worst = { replica: r.name, origin, ms: cell.staleness_ms };
        }
        return { origin, seq: cell.seq, stalenessMs: cell.staleness_ms, caughtUp, self: origin === r.name };
      });
      return { region: r, cells };
    });
    // Converged as every reachable region judges it (each compares vectors and digests with its peers).
    const verdicts = regions.filter((r) => r.up && r.status).map((r) => r.status.converged === true);
    const down = regions.filter((r) => !r.up).map((r) => r.name);
    // Each node leaves peers it thinks are down out of its verdict, so a region
    // cut off from the others would call itself converged: a replica more than
    // BEHIND_MS stale towards any origin is never shown as converged.
    const converged = verdicts.length > 0 && verdicts.every(Boolean);
    const behind = worst !== null && worst.ms >= BEHIND_MS;
    let state = 'converged';
    if (behind) state = 'diverged';
    else if (!converged) state = 'converging';
    if (state === 'diverged') {
      this.divergedSince ??= this.lastConverged ?? now;
    } else {
      this.divergedSince = null;
      this.lastConverged = now;
    }
    return { rows, state, worst, down, divergedForMs: this.divergedSince ? now - this.divergedSince : 0 };
  }

  /** Records one sample a second per region, for rates and sparklines. */
  sample(name, cluster) {
    const now = Date.now();
    let entry = this.history.get(name);
    if (!entry) {
      entry = { samples: [], last: null };
      this.history.set(name, entry);
    }
    if (entry.last && now - entry.last.t < 1000) return;
    const row = (cluster.convergence || [])[0];
    const members = cluster.members || [];
    const totals = {
      writes: row?.origins?.[name]?.seq ?? 0,
      applied: Object.values(row?.origins || {}).reduce((sum, c) => sum + c.seq, 0),
      bytesIn: members.reduce((sum, m) => sum + (m.bytes_received || 0), 0),
      bytesOut: members.reduce((sum, m) => sum + (m.bytes_sent || 0), 0),
    };
    const cells = Object.entries(row?.origins || {}).filter(([o]) => o !== name);
    const gauges = {
      queue: (cluster.node?.received_not_applied || 0),
      queueBytes: members.reduce((sum, m) => sum + (m.queue_bytes || 0), 0),
      staleness: cells.length ? Math.max(...cells.map(([, c]) => c.staleness_ms)) : 0,
    };
    if (entry.last) {
      const seconds = (now - entry.last.t) / 1000;
      const rate = (key) => Math.max(0, (totals[key] - entry.last.totals[key]) / seconds);
      entry.samples.push({
        t: now, writes: rate('writes'), applied: rate('applied'), bytesIn: rate('bytesIn'), bytesOut: rate('bytesOut'),
        ...gauges,
      });
      if (entry.samples.length > HISTORY_SAMPLES) entry.samples.shift();
    }
    entry.last = { t: now, totals };
  }
}
