// Small helpers shared by the dashboard's modules: DOM and SVG builders,
// number formatting, time parsing and the staleness heat scale.

const SVG_NS = 'http://www.w3.org/2000/svg';

// ---- The token the user entered (admin, or one with read scope) ----------
// Kept for the browser session only. When the node requires tokens every
// read sends it too: as a header where fetch can set one, and as the
// access_token query parameter for EventSource, which cannot.

export const TOKEN_KEY = 'meridian.adminToken';
export const TOKEN_SCOPE_KEY = 'meridian.tokenScope';

/** The token entered on this page, whatever its scope, or null. */
export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Headers for a read: the token, if one was entered. */
export function authHeaders() {
  const token = storedToken();
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** A stream URL carrying the token, if one was entered (EventSource cannot set headers). */
export function withToken(url) {
  const token = storedToken();
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(token)}`;
}

/** Creates an HTML element: el('div', {class: 'x'}, child, 'text'). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

/** Creates an SVG element, same shape as el(). */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces a container's children. */
export function replace(container, ...children) {
  container.replaceChildren();
  append(container, children);
}

/** Milliseconds as a short human duration: 35 ms, 1.2 s, 3 min. */
export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

/** A rate with a unit, e.g. 1.2 k/s. */
export function fmtRate(value, unit = '/s') {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)} M${unit}`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)} k${unit}`;
  return `${value < 10 && value % 1 ? value.toFixed(1) : Math.round(value)}${unit}`;
}

/** Bytes per second as B/s, kB/s, MB/s. */
export function fmtBytesRate(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)} MB/s`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)} kB/s`;
  return `${Math.round(value)} B/s`;
}

/** Bytes as B, kB, MB. */
export function fmtBytes(value) {
  if (value === null || value === undefined) return '—';
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)} MB`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)} kB`;
  return `${value} B`;
}

/** Milliseconds since the epoch from an HLC string like 2026-11-22T03:38:21.958013786Z_0. */
export function hlcMs(text) {
  if (typeof text !== 'string') return null;
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z/.exec(text);
  if (!match) return null;
  const whole = Date.parse(`${match[1]}Z`);
  const fraction = match[2] ? Number(`0.${match[2]}`) * 1000 : 0;
  return whole + fraction;
}

/** Time of day with milliseconds, in local time. */
export function clock(ms) {
  if (ms === null || ms === undefined) return '—';
  const date = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/**
 * The heat colour of a staleness: green when fresh, through amber, to red
 * beyond two seconds. Lightness follows the theme so text stays readable.
 */
export function heat(ms, dark) {
  const clamped = Math.max(0, Math.min(1, Math.log10(Math.max(ms, 50) / 50) / Math.log10(4000 / 50)));
  const hue = 130 - 130 * clamped;
  return dark ? `hsl(${hue} 65% ${28 + clamped * 6}%)` : `hsl(${hue} 75% ${86 - clamped * 14}%)`;
}

/** A small line chart of the last values, scaled to its own maximum. */
export function sparkline(values, { width = 120, height = 28, label = '' } = {}) {
  const chart = svg('svg', {
    class: 'spark', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': label,
  });
  const points = values.filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
  if (points.length < 2) return chart;
  const max = Math.max(...points, 1e-9);
  const step = width / Math.max(values.length - 1, 1);
  let path = '';
  values.forEach((value, i) => {
    if (value === null || value === undefined || Number.isNaN(value)) return;
    const x = (i * step).toFixed(1);
    const y = (height - 2 - (value / max) * (height - 4)).toFixed(1);
    path += `${path ? 'L' : 'M'}${x},${y}`;
  });
  chart.append(svg('path', { d: path, class: 'spark-line' }));
  return chart;
}

/** Short digest for display. */
export function shortDigest(digest) {
  return typeof digest === 'string' ? digest.slice(0, 8) : '—';
}
