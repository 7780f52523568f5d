// The dashboard's entry point: wires the model to the views, redraws a few
// times a second (never more often than data arrives), and owns the page's
// controls: theme, admin token, link and region buttons, the inspector form.

import { el, replace, fmtMs } from './util.js';
import { Model } from './model.js';
import { renderHeadline, renderTopology, renderMatrix, renderRegions } from './views.js';
import { Propagation, inspect, adminToken, setAdminToken, checkToken, changeLink, healAll, demoCommand } from './panels.js';

const $ = (id) => document.getElementById(id);
const THEME_KEY = 'meridian.theme';

// ---- Theme: the address bar (?theme=dark), then the last choice, then the system's.
function initialTheme() {
  const asked = new URLSearchParams(location.search).get('theme');
  if (asked === 'dark' || asked === 'light') return asked;
  const saved = localStorage.getItem(THEME_KEY);
  if (saved === 'dark' || saved === 'light') return saved;
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  $('theme').textContent = theme === 'dark' ? '☀ Light' : '☾ Dark';
  $('theme').setAttribute('aria-label', `Switch to ${theme === 'dark' ? 'light' : 'dark'} theme`);
}
applyTheme(initialTheme());
$('theme').addEventListener('click', () => {
  const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
  scheduleRender();
});

let selectedLink = null;
let dirty = true;
const model = new Model(() => { dirty = true; });
const propagation = new Propagation($('propagation'), model, () => { dirty = true; });

function scheduleRender() { dirty = true; }

function say(message, isError = false) {
  const status = $('control-status');
  status.textContent = message;
  status.classList.toggle('error', isError);
}

function selectLink(key) {
  selectedLink = selectedLink === key ? null : key;
  dirty = true;
  const row = document.querySelector(`#link-controls [data-link="${CSS.escape(key)}"]`);
  if (row && selectedLink) row.querySelector('button')?.focus({ preventScroll: false });
}

/** Runs a control action with feedback, disabling buttons meanwhile. */
async function act(label, action) {
  say(`${label} …`);
  document.body.classList.add('busy');
  try {
    const result = await action();
    say(`${label}: done${typeof result === 'string' ? ` (${result})` : ''}`);
  } catch (err) {
    say(`${label}: ${err.message}`, true);
  } finally {
    document.body.classList.remove('busy');
    dirty = true;
  }
}

function renderControls() {
  const token = adminToken();
  $('admin-form').hidden = !!token;
  $('controls').hidden = !token;
  $('admin-signout').hidden = !token;
  if (!token) return;
  const names = model.order;
  // Only rebuild when the shape changes, so focus and typed values survive live updates.
  const shape = JSON.stringify([names, selectedLink, model.demo?.status?.regions, !!model.demo?.status?.load,
    names.flatMap((a, i) => names.slice(i + 1).map((b) => model.link(a, b).cut))]);
  if ($('controls').dataset.shape === shape) return;
  $('controls').dataset.shape = shape;
  const links = [];
  for (let i = 0; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const [a, b] = [names[i], names[j]];
      const link = model.link(a, b);
      const key = `${a}|${b}`;
      const delayInput = el('input', { type: 'number', min: 0, max: 10000, value: link.delayAb ?? 0, 'aria-label': `Delay ${a} to ${b} in ms`, class: 'delay' });
      links.push(el('tr', { 'data-link': key, class: selectedLink === key ? 'selected' : '' },
        el('th', { scope: 'row' }, `${a} ↔ ${b}`),
        el('td', {}, el('span', { class: `pill pill-${link.health}` }, link.cut ? 'cut' : link.health)),
        el('td', {},
          el('button', { type: 'button', 'data-action': 'cut', disabled: link.cut, onclick: () => act(`Cut ${a} ↔ ${b}`, () => changeLink(model, a, b, () => ({ cut: true }))) }, '✂ Cut'),
          el('button', { type: 'button', 'data-action': 'heal', disabled: !link.cut, onclick: () => act(`Heal ${a} ↔ ${b}`, () => changeLink(model, a, b, () => ({ cut: false }))) }, 'Heal')),
        el('td', {}, delayInput, ' ms ',
          el('button', { type: 'button', 'data-action': 'delay', onclick: () => {
            const ms = Math.max(0, Math.min(10000, Math.round(Number(delayInput.value) || 0)));
            act(`Delay ${a} ↔ ${b} ${ms} ms`, () => changeLink(model, a, b, () => ({ delay_ms: ms, jitter_ms: ms ? Math.max(1, Math.round(ms / 20)) : 0 })));
          } }, 'Set delay'))));
    }
  }
  const parts = [
    el('h3', {}, 'Links'),
    names.length > 1 ? el('table', { class: 'link-controls', id: 'link-controls' }, el('tbody', {}, links)) : el('p', { class: 'hint' }, 'One region: no links.'),
    el('button', { type: 'button', onclick: () => act('Heal every link', () => healAll(model)) }, 'Heal every link'),
  ];
  const demo = model.demo?.status;
  if (demo) {
    parts.push(el('h3', {}, 'Regions (meridian demo)'));
    parts.push(el('div', { class: 'region-controls' }, demo.regions.map((r) => el('div', { class: 'region-control', 'data-region': r.region },
      el('span', {}, r.region, ' ', el('span', { class: `pill pill-${r.running ? 'ok' : 'down'}` }, r.running ? 'running' : 'stopped')),
      el('button', { type: 'button', 'data-action': 'kill', disabled: !r.running, onclick: () => act(`Kill ${r.region}`, () => demoCommand(model, `/kill/${r.region}`)) }, 'Kill'),
      el('button', { type: 'button', 'data-action': 'restart', onclick: () => act(`Restart ${r.region}`, () => demoCommand(model, `/restart/${r.region}`)) }, r.running ? 'Restart' : 'Start')))));
    const rate = el('input', { type: 'number', min: 1, max: 5000, value: demo.load?.rate ?? 100, 'aria-label': 'Load in writes per second', class: 'delay' });
    parts.push(el('h3', {}, 'Demo load'));
    parts.push(el('div', { class: 'load-controls' }, rate, ' writes/s ',
      el('button', { type: 'button', 'data-action': 'load-start', onclick: () => act('Start load', () => demoCommand(model, `/load/start?rate=${Math.round(Number(rate.value) || 100)}`)) }, demo.load ? 'Change rate' : 'Start load'),
      el('button', { type: 'button', 'data-action': 'load-stop', disabled: !demo.load, onclick: () => act('Stop load', () => demoCommand(model, '/load/stop')) }, 'Stop load'),
      demo.load ? el('span', { class: 'hint' }, ` running: ${demo.load.writes_per_second} writes/s, ${demo.load.errors} errors`) : null));
  } else {
    parts.push(el('p', { class: 'hint' }, 'Kill, restart and load controls appear when the nodes run under `meridian demo`.'));
  }
  replace($('controls-body'), parts);
}

$('admin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = $('admin-token').value.trim();
  if (!token) return;
  const checked = await checkToken(token).catch((err) => ({ problem: err.message }));
  if (checked.problem) {
    say(`Token refused: ${checked.problem}`, true);
    return;
  }
  setAdminToken(token, checked.admin);
  $('admin-token').value = '';
  // Streams opened without a token were refused for good: start over with it.
  if (model.needsToken) {
    location.reload();
    return;
  }
  say(checked.admin ? 'Admin controls on for this browser session.'
    : 'Token accepted for reads; the controls need a token with the admin scope.');
  $('controls').dataset.shape = '';
  dirty = true;
});
$('admin-signout').addEventListener('click', () => {
  setAdminToken(null);
  say('Admin controls off.');
  dirty = true;
});
$('inspect-form').addEventListener('submit', (event) => {
  event.preventDefault();
  inspect($('inspector'), model, $('doc-id').value);
});

function render() {
  const now = Date.now();
  const view = model.convergence(now);
  renderHeadline($('headline'), view);
  renderTopology($('topology'), model, selectLink, selectedLink);
  renderMatrix($('matrix'), view, model.order);
  renderRegions($('regions'), model);
  propagation.draw();
  renderControls();
  const local = model.sources.get(model.local);
  $('node-name').textContent = model.local ? `at ${model.local}` : '';
  $('updated').textContent = local?.at ? `updated ${fmtMs(now - local.at)} ago` : 'connecting …';
  $('updated').classList.toggle('stale', !local?.at || now - local.at > 3000);
}

// Redraw at most four times a second, and at least once a second so ages and "for how long" tick.
let lastRender = 0;
setInterval(() => {
  const now = Date.now();
  if (dirty || now - lastRender > 1000) {
    dirty = false;
    lastRender = now;
    try {
      render();
    } catch (err) {
      console.error(err);
    }
  }
}, 250);

model.start()
  .then(() => {
    if (model.needsToken) say('This node needs a token to read: enter one above (the read scope is enough to watch).', true);
  })
  .catch((err) => say(`Cannot reach this node: ${err.message}`, true));
