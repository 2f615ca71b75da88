/* jupyter_plb live monitor.
 *
 * Vanilla ES2020, no dependency. Works under a strict CSP (no inline script/style, no eval):
 * styles are only set through CSS classes or the CSSOM (element.style.x = …).
 * Every string that comes from the server is rendered as text (textContent / text nodes),
 * never parsed as HTML.
 *
 * Data flow: websocket `api/events` ({type: "snapshot"} / {type: "tasks"}) with reconnect and
 * exponential backoff; while it is down, `api/status` is polled every 2 s. Each snapshot is
 * rendered at most once (coalesced on requestAnimationFrame). Histories are bounded.
 *
 * What it shows is the monitor's schema (jupyter_plb/core/snapshot.py, docs/monitor-api.md): the
 * balancer computes the counts, ages, run and wait times, priority ranges, health label and
 * shares; this page formats and draws them, and refuses a snapshot of another SCHEMA_VERSION.
 *
 * Hooks for browser tests:
 *   <html data-snapshots="N" data-snapshot-time="…">  number / server time of rendered snapshots
 *   <body data-conn="live|polling|disconnected|connecting">, #conn-state (same text)
 *   <html data-scheme="light|dark">  the colour scheme forced by ?theme= or the embedding Lab
 *   #worker-table tbody[data-key=<hub id>] tr.worker-row[data-key=<worker id>][data-state]
 *   #queue-chart[data-series], #wait-chart[data-bars], #throughput-chart[data-points],
 *   #task-stream[data-rects], #tasks-table tbody tr[data-key=<task id>][data-state]
 *   button[data-action="cancel"] in the tasks table; a.task-link[href="#task=<id>"] (taskdetail.js
 *   opens that task's detail).
 */
'use strict';

(() => {
  // ------------------------------------------------------------------ constants
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const SCHEMA_VERSION = 1;         // of jupyter_plb/core/snapshot.py (tests/test_snapshot.py checks it)
  const HISTORY_SECONDS = 120;      // rolling client-side queue history
  const HISTORY_MAX_POINTS = 1200;  // hard bound (2 Hz × 120 s = 240 normally)
  const STREAM_WINDOW = 60;         // task-stream window, seconds
  const POLL_MS = 2000;             // api/status polling while the websocket is down
  const TASKS_REFRESH_MS = 3000;    // api/tasks refresh period
  const TASKS_MIN_GAP_MS = 1000;    // minimum gap between two api/tasks fetches
  const TASKS_LIMIT = 50;
  const WS_BACKOFF_MAX_MS = 30000;
  const MAX_QUEUE_SERIES = 8;
  const MAX_WAIT_BARS = 10;
  const MAX_LEGEND = 14;
  const GAP_SECONDS = 10;           // break chart lines over gaps longer than this

  // ------------------------------------------------------------------ small utils
  const $ = (id) => document.getElementById(id);
  const arr = (x) => (Array.isArray(x) ? x : []);
  const obj = (x) => (x && typeof x === 'object' && !Array.isArray(x) ? x : {});
  const str = (x) => (x === null || x === undefined ? '' : String(x));
  const num = (x) => {
    if (x === null || x === undefined || x === '') return null;
    const n = Number(x);
    return Number.isFinite(n) ? n : null;
  };
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const trunc = (s, n) => (s.length > n ? `${s.slice(0, Math.max(1, n - 1))}…` : s);
  const pick = (value, allowed, fallback) => (allowed.includes(value) ? value : fallback);

  const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const fmtInt = (x) => {
    const n = num(x);
    return n === null ? '–' : intFmt.format(n);
  };
  const fmtPercent = (x) => {
    const n = num(x);
    return n === null ? '–' : `${Math.round(n)} %`;
  };
  const fmtBytes = (x) => {
    const n = num(x);
    if (n === null) return '–';
    if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
    return `${Math.round(n / (1 << 20))} MiB`;
  };
  const fmtRate = (x) => {
    const n = num(x);
    if (n === null) return '–';
    if (n === 0) return '0';
    if (Math.abs(n) < 10) return n.toFixed(2);
    if (Math.abs(n) < 100) return n.toFixed(1);
    return intFmt.format(Math.round(n));
  };
  const fmtAxis = (n) => {
    const a = Math.abs(n);
    if (a >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${+(n / 1e3).toFixed(1)}k`;
    if (a >= 100 || Number.isInteger(n)) return intFmt.format(n);
    return String(+n.toFixed(2));
  };
  /** Duration in seconds → short human text. */
  const fmtDur = (x) => {
    let s = num(x);
    if (s === null) return '–';
    if (s < 0) s = 0;
    if (s === 0) return '0 s';
    if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
    if (s < 1) return `${+(s * 1e3).toFixed(s < 0.01 ? 2 : (s < 0.1 ? 1 : 0))} ms`;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    if (s < 3600) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
    const h = Math.floor(s / 3600);
    if (s < 86400) return `${h}h ${String(m % 60).padStart(2, '0')}m`;
    return `${Math.floor(s / 86400)}d ${h % 24}h`;
  };
  /** Coarse age: "7 s ago", "3m 05s ago". */
  const fmtAgo = (s) => (s < 60 ? `${Math.max(0, Math.round(s))} s ago` : `${fmtDur(s)} ago`);
  const fmtUptime = (x) => {
    const s = num(x);
    if (s === null) return '–';
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = Math.floor(s % 60);
    if (d) return `${d}d ${h}h ${String(m).padStart(2, '0')}m`;
    if (h) return `${h}h ${String(m).padStart(2, '0')}m ${String(sec).padStart(2, '0')}s`;
    if (m) return `${m}m ${String(sec).padStart(2, '0')}s`;
    return `${sec}s`;
  };
  const fmtClock = (t) => {
    const n = num(t);
    if (n === null) return '–';
    const d = new Date(n * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((v) => String(v).padStart(2, '0')).join(':');
  };
  const fmtDateTime = (t) => {
    const n = num(t);
    return n === null ? '' : new Date(n * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  };

  // ------------------------------------------------------------------ colours
  const colorCache = new Map();
  /** Stable colour for a task name (FNV-1a hash → HSL). Hues near red are avoided: red = failed. */
  function colorFor(name) {
    const key = str(name);
    let c = colorCache.get(key);
    if (c) return c;
    let h = 0x811c9dc5;
    for (let i = 0; i < key.length; i++) {
      h ^= key.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    const hue = 35 + (h % 290);                 // 35°…324°: never pure red
    const sat = 55 + ((h >>> 12) % 3) * 12;     // 55 / 67 / 79 %
    const light = 42 + ((h >>> 20) % 3) * 7;    // 42 / 49 / 56 %
    c = `hsl(${hue} ${sat}% ${light}%)`;
    if (colorCache.size > 2000) colorCache.clear();
    colorCache.set(key, c);
    return c;
  }

  // ------------------------------------------------------------------ colour scheme
  // Alone, the page follows the OS (prefers-color-scheme). In a JupyterLab tab it follows Lab's
  // theme instead: the lab extension opens it with ?theme=light|dark and posts
  // {type: 'jupyter-plb:theme', scheme} on theme changes. The forced palette is the stylesheet's
  // own: the custom properties of its plain `:root` rule (light) or of the `:root` rule inside
  // `@media (prefers-color-scheme: dark)` (dark), set on <html> where they beat the media query.
  const SCHEMES = ['light', 'dark'];
  let forcedProps = [];
  function paletteRule(scheme) {
    for (const sheet of Array.from(document.styleSheets)) {
      let rules;
      try {
        rules = sheet.cssRules;
      } catch {
        continue; // not ours (cross-origin)
      }
      for (const rule of Array.from(rules)) {
        const dark = rule instanceof CSSMediaRule && /prefers-color-scheme:\s*dark/.test(rule.media.mediaText);
        const inner = dark ? rule.cssRules : null;
        if (scheme === 'light' && rule.selectorText === ':root') return rule.style;
        if (scheme === 'dark' && inner) {
          const root = Array.from(inner).find((r) => r.selectorText === ':root');
          if (root) return root.style;
        }
      }
    }
    return null;
  }
  function applyScheme(scheme) {
    const root = document.documentElement;
    for (const prop of forcedProps) root.style.removeProperty(prop);
    forcedProps = [];
    if (!SCHEMES.includes(scheme)) {
      root.style.removeProperty('color-scheme');
      delete root.dataset.scheme;
      return;
    }
    const palette = paletteRule(scheme);
    if (palette) {
      for (const prop of Array.from(palette)) {
        if (!prop.startsWith('--')) continue;
        root.style.setProperty(prop, palette.getPropertyValue(prop));
        forcedProps.push(prop);
      }
    }
    root.style.setProperty('color-scheme', scheme);
    root.dataset.scheme = scheme;
  }
  function followEmbedderScheme() {
    applyScheme(new URLSearchParams(location.search).get('theme'));
    window.addEventListener('message', (ev) => {
      if (ev.source !== window.parent || ev.origin !== location.origin) return;
      const msg = obj(ev.data);
      if (msg.type === 'jupyter-plb:theme') applyScheme(str(msg.scheme));
    });
  }

  // ------------------------------------------------------------------ DOM helpers
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setText(node, value) {
    const v = str(value);
    if (node.textContent !== v) node.textContent = v;
  }
  function setAttr(node, name, value) {
    const v = str(value);
    if (node.getAttribute(name) !== v) node.setAttribute(name, v);
  }
  function setTitle(node, value) {
    const v = str(value);
    if (node.title !== v) node.title = v;
  }
  function svg(tag, attrs, parent) {
    const e = document.createElementNS(SVG_NS, tag);
    if (attrs) for (const k of Object.keys(attrs)) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function svgText(parent, x, y, text, attrs) {
    const t = svg('text', Object.assign({ x, y }, attrs || {}), parent);
    t.textContent = str(text);
    return t;
  }
  function svgTitle(parent, text) {
    const t = svg('title', null, parent);
    t.textContent = str(text);
    return t;
  }
  /** Status pill: its class comes from a whitelist, its text is server data (as text). */
  const KNOWN_STATES = ['ok', 'lost', 'unhealthy', 'draining', 'idle', 'busy', 'starting',
    'queued', 'running', 'done', 'failed', 'cancelled'];
  function setPill(pill, state) {
    const s = str(state);
    const cls = `pill st-${pick(s, KNOWN_STATES, 'other')}`;
    if (pill.className !== cls) pill.className = cls;
    setText(pill, s || '?');
  }

  /**
   * Keyed reconciliation of `parent`'s children (from index `start`) with `items`:
   * rows are reused by key, created when new, removed when gone; order follows `items`.
   */
  function reconcile(parent, items, keyOf, create, update, start = 0) {
    const existing = new Map();
    const kids = parent.children;
    for (let i = start; i < kids.length; i++) existing.set(kids[i].dataset.key, kids[i]);
    let idx = start;
    const seen = new Set();
    for (const item of items) {
      let key = str(keyOf(item));
      if (seen.has(key)) key = `${key}\u0000${idx}`;  // duplicate keys: keep both rows
      seen.add(key);
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      const at = parent.children[idx] || null;
      if (at !== node) parent.insertBefore(node, at);
      idx++;
    }
    for (const node of existing.values()) node.remove();
  }

  /** A table body made of simple rows; `cols` = [{cls, text(item)|render(td, item), init(td)}]. */
  function makeRows(cols) {
    return {
      create() {
        const tr = document.createElement('tr');
        for (const c of cols) {
          const td = el('td', c.cls);
          if (c.init) c.init(td);
          else if (c.clip) td.appendChild(el('span', 'ct'));  // ellipsis box
          tr.appendChild(td);
        }
        return tr;
      },
      update(tr, item) {
        cols.forEach((c, i) => {
          const td = tr.children[i];
          if (c.render) c.render(td, item);
          else setText(c.clip ? td.firstChild : td, c.text(item));
          if (c.title) setTitle(td, c.title(item));
        });
      },
    };
  }
  /** A task id that opens its detail (taskdetail.js follows the #task= fragment). */
  function taskLinkInit(td) {
    td.appendChild(el('a', 'task-link'));
  }
  function taskLinkRender(td, id) {
    const a = td.firstChild;
    setText(a, id);
    setAttr(a, 'href', `#task=${encodeURIComponent(str(id))}`);
    setTitle(a, `details of task ${str(id)}`);
  }
  function nameCellInit(td) {
    td.appendChild(el('span', 'swatch'));
    td.appendChild(document.createTextNode(' '));
    td.appendChild(el('span', 'name'));
  }
  function nameCellRender(td, name) {
    const n = str(name);
    const sw = td.firstChild;
    const c = colorFor(n);
    if (sw.dataset.color !== c) {
      sw.dataset.color = c;
      sw.style.background = c;
    }
    setText(td.lastChild, n);
    setTitle(td, n);
  }

  // ------------------------------------------------------------------ HTTP
  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  /** Jupyter's xsrf cookie, read raw (as JupyterLab does). */
  function getCookie(name) {
    for (const part of document.cookie.split(';')) {
      const i = part.indexOf('=');
      if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
    }
    return null;
  }
  const apiUrl = (path) => new URL(path, window.location.href);

  async function api(path, { method = 'GET', body, timeoutMs = 8000 } = {}) {
    const headers = { Accept: 'application/json' };
    // Jupyter's xsrf token; required for DELETE/POST, harmless on GET (JupyterHub ≥ 4.1 may want it there too)
    const xsrf = getCookie('_xsrf');
    if (xsrf) headers['X-XSRFToken'] = xsrf;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs);
    try {
      const resp = await fetch(apiUrl(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'same-origin',
        cache: 'no-store',
        signal: ctl.signal,
      });
      if (!resp.ok) {
        let msg = '';
        try {
          const j = await resp.json();
          msg = str(j && (j.message || j.reason || j.error));
        } catch (_) { /* not JSON */ }
        throw new HttpError(resp.status, `HTTP ${resp.status}${msg ? `: ${msg}` : (resp.statusText ? ` ${resp.statusText}` : '')}`);
      }
      return await resp.json();
    } catch (e) {
      if (e && e.name === 'AbortError') throw new Error('request timed out');
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  // ------------------------------------------------------------------ state
  const state = {
    snap: null,
    snapCount: 0,
    renderedCount: 0,
    lastSnapAt: 0,           // Date.now() of the last received snapshot
    history: [],             // [{t, q: Map(name → queued)}], bounded
    conn: null,
    ws: null,
    wsRetry: 0,
    wsTimer: null,
    wsNextAt: 0,
    pollTimer: null,
    pollInFlight: false,
    renderPending: false,
    widths: new Map(),       // chart key → px width (ResizeObserver)
    tasks: new Map(),        // id → task (rows of the tasks table)
    tasksTotal: null,
    tasksOffset: 0,
    tasksInFlight: false,
    tasksLastFetch: 0,
    tasksTimer: null,
    pendingCancels: new Set(),
  };

  // ------------------------------------------------------------------ connection indicator
  function setConn(conn, detail) {
    if (state.conn !== conn) {
      state.conn = conn;
      document.body.dataset.conn = conn;
      const ind = $('conn-state');
      ind.dataset.state = conn;
      setText(ind, conn);
    }
    const banner = $('conn-detail');
    if (conn === 'live' || !detail) {
      banner.hidden = true;
      setText(banner, '');
    } else {
      banner.hidden = false;
      banner.dataset.level = conn === 'polling' ? 'warning' : 'error';
      setText(banner, detail);
    }
  }
  function wsRetryText() {
    if (!state.wsTimer) return 'websocket down';
    const s = Math.max(0, Math.round((state.wsNextAt - Date.now()) / 1000));
    return `websocket down, reconnecting in ${s} s`;
  }

  // ------------------------------------------------------------------ websocket
  function wsUrl() {
    const u = new URL('api/events', window.location.href);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    u.hash = '';
    return u.href;
  }
  function connectWs() {
    if (state.wsTimer) {
      clearTimeout(state.wsTimer);
      state.wsTimer = null;
    }
    if (state.ws) return;
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      onWsDown();
      return;
    }
    state.ws = ws;
    ws.onopen = () => {
      if (state.ws !== ws) return;
      stopPolling();
      setConn('live');
    };
    ws.onmessage = (ev) => {
      if (state.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (!msg || typeof msg !== 'object') return;
      state.wsRetry = 0;  // only a working socket resets the backoff
      if (msg.type === 'snapshot') onSnapshot(msg.data);
      else if (msg.type === 'tasks') onTaskEvents(arr(msg.events));
      if (state.conn !== 'live') setConn('live');
    };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      onWsDown();
    };
  }
  function onWsDown() {
    const delay = Math.min(WS_BACKOFF_MAX_MS, 1000 * 2 ** state.wsRetry) * (0.8 + 0.4 * Math.random());
    state.wsRetry = Math.min(state.wsRetry + 1, 10);
    state.wsNextAt = Date.now() + delay;
    state.wsTimer = setTimeout(() => {
      state.wsTimer = null;
      connectWs();
    }, delay);
    if (state.conn === 'live' || state.conn === 'connecting' || state.conn === null) {
      setConn('polling', wsRetryText());
    }
    startPolling();
  }
  function wsIsOpen() {
    return state.ws !== null && state.ws.readyState === WebSocket.OPEN;
  }
  /** Reconnect now (network back / tab visible again) instead of waiting for the backoff. */
  function reconnectSoon() {
    if (state.ws) return;
    state.wsRetry = 0;
    connectWs();
  }

  // ------------------------------------------------------------------ polling fallback
  function startPolling() {
    if (state.pollTimer) return;
    state.pollTimer = setInterval(pollOnce, POLL_MS);
    pollOnce();
  }
  function stopPolling() {
    if (state.pollTimer) clearInterval(state.pollTimer);
    state.pollTimer = null;
  }
  async function pollOnce() {
    if (state.pollInFlight) return;
    state.pollInFlight = true;
    try {
      const snap = await api('api/status', { timeoutMs: 5000 });
      onSnapshot(snap);
      if (!wsIsOpen() && state.pollTimer) setConn('polling', wsRetryText());
    } catch (e) {
      if (!wsIsOpen() && (state.pollTimer || state.conn === 'connecting')) {
        const auth = e instanceof HttpError && (e.status === 401 || e.status === 403);
        setConn('disconnected', `cannot reach the balancer (${e.message})${auth ? ' — log in again and reload' : ''}; ${wsRetryText()}`);
      }
    } finally {
      state.pollInFlight = false;
    }
  }

  // ------------------------------------------------------------------ snapshots
  /** A snapshot of another schema version is not drawn: the banner says why. */
  function schemaProblem(snap) {
    if (snap.schema === SCHEMA_VERSION) return '';
    const said = snap.schema === undefined || snap.schema === null ? 'no schema version' : `snapshot schema ${str(snap.schema)}`;
    return `The balancer speaks ${said}, this page understands schema ${SCHEMA_VERSION}: reload the page, ` +
      'or install the same jupyter_plb version on both sides.';
  }
  function onSnapshot(snap) {
    if (!snap || typeof snap !== 'object') return;
    const problem = schemaProblem(snap);
    const banner = $('schema-problem');
    setText(banner, problem);
    banner.hidden = !problem;
    if (problem) return;
    state.snap = snap;
    state.snapCount++;
    state.lastSnapAt = Date.now();
    recordHistory(snap);
    scheduleRender();
    document.dispatchEvent(new CustomEvent('plb-snapshot', { detail: snap }));  // team.js
  }
  function recordHistory(snap) {
    const t = num(snap.time);
    if (t === null) return;
    const h = state.history;
    if (h.length) {
      const last = h[h.length - 1].t;
      if (t <= last) {
        if (t < last - 5) h.length = 0;  // server restarted / clock jumped back: start over
        else return;                      // same snapshot (socket + poll overlap)
      }
    }
    const q = new Map();
    for (const e of arr(snap.queues)) {
      const o = obj(e);
      q.set(str(o.name), num(o.queued) || 0);
    }
    h.push({ t, q });
    const cutoff = t - HISTORY_SECONDS;
    let drop = 0;
    while (drop < h.length && h[drop].t < cutoff) drop++;
    if (h.length - drop > HISTORY_MAX_POINTS) drop = h.length - HISTORY_MAX_POINTS;
    if (drop) h.splice(0, drop);
  }
  function scheduleRender() {
    if (state.renderPending) return;
    state.renderPending = true;
    requestAnimationFrame(() => {
      state.renderPending = false;
      render();
    });
  }

  // ------------------------------------------------------------------ render: everything
  function render() {
    const snap = state.snap;
    const parts = [renderCharts];
    if (snap && state.renderedCount !== state.snapCount) {
      parts.unshift(renderHeader, renderTotals, renderWorkers, renderUsers, renderStats,
        renderUnschedulable, renderFailures);
    }
    for (const part of parts) {
      try {
        part(snap || {});
      } catch (e) {
        console.error('monitor: render failed in', part.name, e);
      }
    }
    if (snap) {
      state.renderedCount = state.snapCount;
      const root = document.documentElement;
      root.dataset.snapshots = String(state.snapCount);
      root.dataset.snapshotTime = str(snap.time);
      document.dispatchEvent(new CustomEvent('plb:snapshot', { detail: snap }));  // extra sections
    }
    tickLastUpdate();
  }
  function renderCharts(snap) {
    renderQueueChart(snap);
    renderWaitChart(snap);
    renderThroughput(snap);
    renderTaskStream(snap);
  }

  function renderHeader(snap) {
    const lb = obj(snap.balancer);
    setText($('lb-id'), lb.id || '–');
    setTitle($('lb-id'), lb.id);
    setText($('lb-version'), lb.version || '–');
    setText($('lb-uptime'), fmtUptime(lb.uptime));
    setTitle($('lb-uptime'), lb.started ? `started ${fmtDateTime(lb.started)}` : '');
    const ports = obj(lb.ports);
    setText($('lb-address'), lb.address || '–');
    setTitle($('lb-address'), `${str(lb.address)}  clients :${str(ports.clients)}  workers :${str(ports.workers)}  health :${str(ports.health)}`);

    const health = obj(snap.health);
    const status = pick(str(health.status), ['ok', 'warning', 'error'], 'unknown');
    const badge = $('health-badge');
    badge.dataset.status = status;
    setText(badge, str(health.label).toUpperCase());
    setTitle(badge, health.checked ? `health checked at ${fmtClock(health.checked)}` : '');
    const msgs = arr(health.messages).map(str);
    const list = $('health-messages');
    list.hidden = msgs.length === 0;
    list.dataset.status = status;
    reconcile(list, msgs.map((m, i) => ({ m, i })), (x) => `${x.i}`, () => document.createElement('li'),
      (li, x) => setText(li, x.m));
  }

  function renderTotals(snap) {
    const t = obj(snap.totals);
    const r = obj(snap.rates);
    setText($('total-queued'), fmtInt(t.queued));
    setText($('total-running'), fmtInt(t.running));
    setText($('total-done'), fmtInt(t.done));
    setText($('total-failed'), fmtInt(t.failed));
    setText($('total-cancelled'), fmtInt(t.cancelled));
    setText($('total-submitted'), fmtInt(t.submitted));
    setText($('rate-done'), fmtRate(r.done_per_s));
    setText($('rate-submitted'), fmtRate(r.submitted_per_s));
    const bad = num(t.bad_messages);
    setTitle($('total-submitted').parentNode, bad ? `${bad} malformed message(s) rejected` : '');
  }

  // ------------------------------------------------------------------ workers
  const HUB_STATES = ['ok', 'lost', 'unhealthy', 'draining'];
  function createHubBody() {
    const tbody = document.createElement('tbody');
    const tr = el('tr', 'hub-row');
    const th = el('th');
    th.colSpan = 10;
    th.scope = 'rowgroup';
    th.appendChild(el('span', 'hub-name'));
    th.appendChild(el('span', 'pill'));
    const local = el('span', 'pill local', 'local');
    local.hidden = true;
    th.appendChild(local);
    th.appendChild(document.createTextNode(' '));
    const meta = el('span', 'hub-meta');
    meta.appendChild(document.createTextNode('host '));
    meta.appendChild(el('code', 'hub-host'));
    meta.appendChild(el('span', 'hub-pid'));
    th.appendChild(meta);
    th.appendChild(el('span', 'hub-meta hub-seen'));
    th.appendChild(el('span', 'hub-meta hub-tasks'));
    th.appendChild(el('span', 'hub-meta hub-id mono'));
    th.appendChild(el('span', 'hub-meta hub-versions'));
    const skew = el('div', 'hub-skew');
    skew.hidden = true;
    th.appendChild(skew);
    tr.appendChild(th);
    tbody.appendChild(tr);
    return tbody;
  }
  function updateHubBody(tbody, { hub }) {
    const th = tbody.firstChild.firstChild;
    const hubState = str(hub.state);
    tbody.dataset.state = pick(hubState, HUB_STATES, 'other');
    setText(th.querySelector('.hub-name'), hub.name || hub.id || '(unnamed hub)');
    setPill(th.querySelector('.pill'), hubState);
    th.querySelector('.local').hidden = !hub.local;
    setText(th.querySelector('.hub-host'), hub.host || '?');
    setText(th.querySelector('.hub-pid'), hub.pid !== undefined && hub.pid !== null ? ` pid ${str(hub.pid)}` : '');
    setText(th.querySelector('.hub-seen'), `seen ${fmtDur(hub.seen_ago)} ago`);
    const tasks = arr(hub.tasks).map(str);
    const tasksText = tasks.length ? `tasks: ${tasks.join(', ')}` : 'tasks: any';
    setText(th.querySelector('.hub-tasks'), trunc(tasksText, 90));
    setTitle(th.querySelector('.hub-tasks'), tasksText);
    setText(th.querySelector('.hub-id'), hub.id || '');
    setText(th.querySelector('.hub-versions'), hub.versions);
    const skew = th.querySelector('.hub-skew');
    setText(skew, hub.version_skew ? `⚠ ${str(hub.version_skew)}` : '');
    skew.hidden = !hub.version_skew;
    const workers = arr(hub.workers).map((w) => ({ w: obj(w) }));
    reconcile(tbody, workers, (x) => x.w.id, createWorkerRow, updateWorkerRow, 1);
  }
  const workerRows = makeRows([
    { cls: 'id', text: (x) => x.w.id },
    { cls: 'state-cell', init: (td) => td.appendChild(el('span', 'pill')), render: (td, x) => setPill(td.firstChild, x.w.state) },
    { text: (x) => x.w.priorities },
    { cls: 'num', text: (x) => str(x.w.process_p ?? '') },
    {
      init: nameCellInit,
      render: (td, x) => {
        const task = x.w.task && typeof x.w.task === 'object' ? x.w.task : null;
        td.firstChild.hidden = !task;
        if (task) nameCellRender(td, task.name);
        else {
          setText(td.lastChild, '—');
          setTitle(td, '');
        }
      },
    },
    { clip: true, text: (x) => (x.w.task ? str(obj(x.w.task).user) : ''), title: (x) => (x.w.task ? str(obj(x.w.task).user) : '') },
    { cls: 'num', text: (x) => (x.w.running_for === null ? '' : fmtDur(x.w.running_for)) },
    { cls: 'num', text: (x) => fmtPercent(x.w.cpu) },
    { cls: 'num', text: (x) => fmtBytes(x.w.rss) },
    { cls: 'num', text: (x) => fmtInt(x.w.done) },
  ]);
  function createWorkerRow() {
    const tr = workerRows.create();
    tr.className = 'worker-row';
    return tr;
  }
  function updateWorkerRow(tr, x) {
    workerRows.update(tr, x);
    const s = str(x.w.state);
    if (tr.dataset.state !== s) tr.dataset.state = s;
    if (tr.dataset.workerId !== str(x.w.id)) tr.dataset.workerId = str(x.w.id);
    const task = x.w.task ? obj(x.w.task) : null;
    setTitle(tr.children[0], task ? `task ${str(task.id)}` : '');
  }
  function renderWorkers(snap) {
    const hubs = arr(snap.hubs).map((h) => obj(h));
    reconcile($('worker-table'), hubs.map((hub) => ({ hub })), (x) => x.hub.id || x.hub.name,
      createHubBody, updateHubBody, 1 /* thead */);
    const c = obj(snap.workers);
    setText($('workers-count'), c.hubs ? `${c.busy} busy / ${c.total} workers on ${c.hubs} hub${c.hubs > 1 ? 's' : ''}` : '');
    $('workers-empty').hidden = hubs.length > 0;
  }

  // ------------------------------------------------------------------ users
  let userBarMax = 1;
  const userRows = makeRows([
    { clip: true, text: (u) => u.user, title: (u) => u.user },
    {
      init: (td) => {
        const bar = el('div', 'bar');
        bar.appendChild(el('span', 'seg-running'));
        bar.appendChild(el('span', 'seg-queued'));
        td.appendChild(bar);
      },
      render: (td, u) => {
        const bar = td.firstChild;
        const running = num(u.running) || 0;
        const queued = num(u.queued) || 0;
        const wr = `${((100 * running) / userBarMax).toFixed(2)}%`;
        const wq = `${((100 * queued) / userBarMax).toFixed(2)}%`;
        if (bar.firstChild.style.width !== wr) bar.firstChild.style.width = wr;
        if (bar.lastChild.style.width !== wq) bar.lastChild.style.width = wq;
        setTitle(bar, `${running} running, ${queued} queued`);
      },
    },
    { cls: 'num', text: (u) => fmtInt(u.queued) },
    { cls: 'num', text: (u) => fmtInt(u.running) },
    { cls: 'num', text: (u) => fmtInt(u.done) },
    { cls: 'num', text: (u) => fmtInt(u.failed) },
    { cls: 'num', text: (u) => fmtInt(u.cancelled) },
    {
      init: (td) => {
        const b = el('button', 'danger', 'Cancel');
        b.type = 'button';
        b.dataset.action = 'cancel-user';
        td.appendChild(b);
      },
      render: (td, u) => {
        const b = td.firstChild;
        const allowed = mayCancelUser(str(u.user));
        const dis = !allowed || !(num(u.queued) > 0) || state.pendingCancels.has(`user:${str(u.user)}`);
        if (b.disabled !== dis) b.disabled = dis;
        if (b.hidden !== !allowed) b.hidden = !allowed;
        setTitle(b, `cancel the queued tasks of ${str(u.user)}`);
      },
    },
  ]);
  // In a team pool only a user themself or an admin may cancel a user's tasks (the balancer
  // refuses anyone else), so other users' rows have no Cancel button.
  function mayCancelUser(user) {
    const viewer = obj(state.snap && state.snap.viewer);
    return viewer.team !== true || viewer.admin === true || str(viewer.user) === user;
  }

  function renderUsers(snap) {
    const users = arr(snap.users).map(obj);
    userBarMax = Math.max(1, ...users.map((u) => (num(u.queued) || 0) + (num(u.running) || 0)));
    const tbody = $('users-table').tBodies[0];
    reconcile(tbody, users, (u) => u.user, userRows.create, userRows.update);
    $('users-empty').hidden = users.length > 0;
  }

  // ------------------------------------------------------------------ statistics, problems
  const statRows = makeRows([
    { init: nameCellInit, render: (td, s) => nameCellRender(td, s.name) },
    { cls: 'num', text: (s) => fmtInt(s.count) },
    { cls: 'num', text: (s) => fmtInt(s.failed) },
    { cls: 'num', text: (s) => fmtDur(s.mean_run) },
    { cls: 'num', text: (s) => fmtDur(s.min_run) },
    { cls: 'num', text: (s) => fmtDur(s.max_run) },
    { cls: 'num', text: (s) => fmtDur(s.mean_wait) },
    { cls: 'num', text: (s) => fmtDur(s.max_wait) },
  ]);
  function renderStats(snap) {
    const stats = arr(snap.stats).map(obj);
    reconcile($('stats-table').tBodies[0], stats, (s) => s.name, statRows.create, statRows.update);
    $('stats-empty').hidden = stats.length > 0;
  }

  const unschedRows = makeRows([
    { cls: 'id', text: (u) => u.id },
    { init: nameCellInit, render: (td, u) => nameCellRender(td, u.name) },
    { clip: true, text: (u) => u.user, title: (u) => u.user },
    { cls: 'num', text: (u) => str(u.priority ?? '') },
    { cls: 'wrap', text: (u) => u.reason },
  ]);
  function renderUnschedulable(snap) {
    const items = arr(snap.unschedulable).map(obj);
    reconcile($('unschedulable-table').tBodies[0], items, (u) => u.id, unschedRows.create, unschedRows.update);
    $('unschedulable-empty').hidden = items.length > 0;
    setText($('unschedulable-count'), items.length ? `(${items.length})` : '');
  }

  let failuresNow = null;
  const failureRows = makeRows([
    {
      text: (f) => `${fmtClock(f.time)}${failuresNow !== null && num(f.time) !== null ? ` (${fmtAgo(failuresNow - num(f.time))})` : ''}`,
      title: (f) => fmtDateTime(f.time),
    },
    { cls: 'id', init: taskLinkInit, render: (td, f) => taskLinkRender(td, f.id) },
    { init: nameCellInit, render: (td, f) => nameCellRender(td, f.name) },
    { clip: true, text: (f) => f.user, title: (f) => f.user },
    { cls: 'wrap err', text: (f) => trunc(str(f.error), 400), title: (f) => f.error },
  ]);
  function renderFailures(snap) {
    failuresNow = num(snap.time);
    const items = arr(snap.recent_failures).map(obj);  // newest first
    reconcile($('failures-table').tBodies[0], items, (f) => f.id, failureRows.create, failureRows.update);
    $('failures-empty').hidden = items.length > 0;
    setText($('failures-count'), items.length ? `(${items.length})` : '');
  }

  // ------------------------------------------------------------------ chart helpers
  function chartWidth(svgEl) {
    const key = svgEl.id;
    let w = state.widths.get(key);
    if (!w) {
      w = svgEl.parentNode.getBoundingClientRect().width;
      if (w) state.widths.set(key, w);
    }
    return Math.max(240, Math.round(w || 600));
  }
  /** Prepare an SVG canvas of width × height px; returns a fragment to draw into. */
  function canvas(svgEl, height) {
    const width = chartWidth(svgEl);
    const h = `${height}px`;
    if (svgEl.style.height !== h) svgEl.style.height = h;
    setAttr(svgEl, 'viewBox', `0 0 ${width} ${height}`);
    return { width, height, frag: document.createDocumentFragment() };
  }
  function niceStep(x) {
    if (!(x > 0)) return 1;
    const e = 10 ** Math.floor(Math.log10(x));
    const f = x / e;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
  }
  /** Y scale 0…top with about `n` ticks; integer steps when `integer`. */
  function yScale(max, n, integer) {
    let step = niceStep((max > 0 ? max : 1) / n);
    if (integer) step = Math.max(1, Math.round(step));
    const top = Math.max(step, Math.ceil((max > 0 ? max : 1) / step - 1e-9) * step);
    const ticks = [];
    for (let v = 0; v <= top + step / 2; v += step) ticks.push(+v.toFixed(10));
    return { top, ticks };
  }
  /** Horizontal grid + left (or right) tick labels. */
  function drawYAxis(g, scale, box, side, title) {
    const { x0, x1, y0, y1 } = box;
    for (const v of scale.ticks) {
      const y = y1 - ((v / scale.top) * (y1 - y0));
      if (side === 'left') svg('line', { x1: x0, x2: x1, y1: y, y2: y, class: 'grid-line' }, g);
      svgText(g, side === 'left' ? x0 - 6 : x1 + 6, y + 3.5, fmtAxis(v), { 'text-anchor': side === 'left' ? 'end' : 'start' });
    }
    if (title) {
      const x = side === 'left' ? 12 : x1 + 40;
      svgText(g, x, (y0 + y1) / 2, title, {
        class: 'axis-title',
        'text-anchor': 'middle',
        transform: `rotate(-90 ${x} ${(y0 + y1) / 2})`,
      });
    }
  }
  /** Time axis: ticks every `step` s back from `now`, labelled "-90 s" … "now". */
  function drawTimeAxis(g, box, now, windowS, step) {
    const { x0, x1, y1 } = box;
    svg('line', { x1: x0, x2: x1, y1, y2: y1, class: 'axis-line' }, g);
    for (let k = 0; k * step <= windowS + 1e-9; k++) {
      const x = x1 - ((k * step) / windowS) * (x1 - x0);
      svg('line', { x1: x, x2: x, y1, y2: y1 + 4, class: 'axis-line' }, g);
      svgText(g, x, y1 + 16, k === 0 ? 'now' : `-${k * step} s`, { 'text-anchor': k === 0 ? 'end' : 'middle' });
    }
  }
  function noData(g, width, height, text) {
    svgText(g, width / 2, height / 2, text, { class: 'no-data', 'text-anchor': 'middle' });
  }
  function renderLegend(ul, names) {
    reconcile(ul, names, (n) => n, () => {
      const li = document.createElement('li');
      li.appendChild(el('span', 'swatch'));
      li.appendChild(el('span', 'name'));
      return li;
    }, (li, n) => {
      const sw = li.firstChild;
      const c = colorFor(n);
      if (sw.dataset.color !== c) {
        sw.dataset.color = c;
        sw.style.background = c;
      }
      setText(li.lastChild, n);
      setTitle(li, n);
    });
  }
  /** Split sorted points into runs without gaps longer than `gap` seconds. */
  function runs(points, gap) {
    const out = [];
    let cur = [];
    let prev = null;
    for (const p of points) {
      if (prev !== null && p.t - prev > gap) {
        out.push(cur);
        cur = [];
      }
      cur.push(p);
      prev = p.t;
    }
    if (cur.length) out.push(cur);
    return out;
  }
  const f1 = (v) => (Math.round(v * 10) / 10).toString();

  // ------------------------------------------------------------------ queue chart
  function renderQueueChart(snap) {
    const svgEl = $('queue-chart');
    const { width, height, frag } = canvas(svgEl, 230);
    const g = svg('g', null, frag);
    const box = { x0: 50, x1: width - 14, y0: 10, y1: height - 26 };
    const hist = state.history;
    const now = num(snap.time) ?? (hist.length ? hist[hist.length - 1].t : null);
    // series: names that had a non-empty queue within the window, biggest first
    const peak = new Map();
    for (const p of hist) {
      for (const [name, v] of p.q) {
        if (v > (peak.get(name) || 0)) peak.set(name, v);
      }
    }
    const names = [...peak.keys()].sort((a, b) => peak.get(b) - peak.get(a) || (a < b ? -1 : 1))
      .slice(0, MAX_QUEUE_SERIES);
    const max = names.length ? peak.get(names[0]) : 0;
    const scale = yScale(max, 4, true);
    drawYAxis(g, scale, box, 'left', 'queued tasks');
    if (now !== null) drawTimeAxis(g, box, now, HISTORY_SECONDS, 30);
    else svg('line', { x1: box.x0, x2: box.x1, y1: box.y1, y2: box.y1, class: 'axis-line' }, g);
    const sx = (t) => box.x1 - ((now - t) / HISTORY_SECONDS) * (box.x1 - box.x0);
    const sy = (v) => box.y1 - (v / scale.top) * (box.y1 - box.y0);
    for (const name of names.slice().reverse()) {
      let d = '';
      for (const run of runs(hist, GAP_SECONDS)) {
        run.forEach((p, i) => {
          d += `${i ? 'L' : 'M'}${f1(sx(p.t))} ${f1(sy(p.q.get(name) || 0))}`;
        });
      }
      const path = svg('path', { d, class: 'series' }, g);
      path.setAttribute('stroke', colorFor(name));
      svgTitle(path, `${name}: ${hist.length ? (hist[hist.length - 1].q.get(name) || 0) : 0} queued (peak ${peak.get(name)})`);
    }
    if (!hist.length) noData(g, width, height - 20, 'waiting for data…');
    else if (!names.length) noData(g, (box.x0 + box.x1) / 2, box.y1 - 10, 'no task queued in the last 2 minutes');
    svgEl.replaceChildren(frag);
    svgEl.dataset.series = String(names.length);
    svgEl.dataset.points = String(hist.length);
    renderLegend($('queue-legend'), names);
  }

  function renderWaitChart(snap) {
    const svgEl = $('wait-chart');
    const queues = arr(snap.queues).map(obj)
      .filter((q) => (num(q.max_wait) || 0) > 0 || (num(q.queued) || 0) > 0)
      .sort((a, b) => (num(b.max_wait) || 0) - (num(a.max_wait) || 0))
      .slice(0, MAX_WAIT_BARS);
    const rowH = 22;
    const height = queues.length ? queues.length * rowH + 30 : 44;
    const { width, frag } = canvas(svgEl, height);
    const g = svg('g', null, frag);
    const labelW = Math.min(200, Math.round(width * 0.3));
    const box = { x0: labelW + 8, x1: width - 120, y0: 4, y1: height - 22 };
    const max = Math.max(0, ...queues.map((q) => num(q.max_wait) || 0));
    const step = niceStep((max > 0 ? max : 1) / 4);
    const top = Math.max(step, Math.ceil((max > 0 ? max : 1) / step - 1e-9) * step);
    if (queues.length) {
      for (let v = 0; v <= top + step / 2; v += step) {
        const x = box.x0 + (v / top) * (box.x1 - box.x0);
        svg('line', { x1: x, x2: x, y1: box.y0, y2: box.y1, class: 'grid-line' }, g);
        svgText(g, x, box.y1 + 15, fmtDur(v), { 'text-anchor': 'middle' });
      }
      queues.forEach((q, i) => {
        const name = str(q.name);
        const y = box.y0 + i * rowH;
        const wait = num(q.max_wait) || 0;
        const label = svgText(g, box.x0 - 8, y + rowH / 2 + 4, trunc(name, Math.max(8, Math.floor(labelW / 7))), { 'text-anchor': 'end', class: 'bar-label' });
        svgTitle(label, name);
        const w = Math.max(1, (wait / top) * (box.x1 - box.x0));
        const rect = svg('rect', { x: box.x0, y: y + 3, width: f1(w), height: rowH - 6, rx: 2 }, g);
        rect.setAttribute('fill', colorFor(name));
        svgTitle(rect, `${name}: max wait ${fmtDur(wait)}, ${num(q.queued) || 0} queued`);
        svgText(g, box.x0 + w + 6, y + rowH / 2 + 4, `${fmtDur(wait)} · ${fmtInt(q.queued)} queued`, { class: 'bar-value' });
      });
    } else {
      svgText(g, 4, 26, snap.time === undefined ? 'waiting for data…' : 'nothing is waiting', { class: 'no-data' });
    }
    svgEl.replaceChildren(frag);
    svgEl.dataset.bars = String(queues.length);
  }

  // ------------------------------------------------------------------ throughput
  function renderThroughput(snap) {
    const svgEl = $('throughput-chart');
    const { width, height, frag } = canvas(svgEl, 230);
    const g = svg('g', null, frag);
    const box = { x0: 50, x1: width - 56, y0: 10, y1: height - 26 };
    const pts = arr(snap.throughput).map(obj)
      .map((p) => ({
        t: num(p.t), done: num(p.done) || 0, failed: num(p.failed) || 0,
        submitted: num(p.submitted) || 0, queued: num(p.queued),
      }))
      .filter((p) => p.t !== null)
      .sort((a, b) => a.t - b.t);
    const now = num(snap.time) ?? (pts.length ? pts[pts.length - 1].t : null);
    const inWin = now === null ? [] : pts.filter((p) => p.t >= now - HISTORY_SECONDS - 1);
    const rateMax = Math.max(0, ...inWin.map((p) => Math.max(p.done, p.failed, p.submitted)));
    const qMax = Math.max(0, ...inWin.map((p) => p.queued || 0));
    const ls = yScale(rateMax, 4, rateMax < 8);
    const rs = yScale(qMax, 4, true);
    drawYAxis(g, ls, box, 'left', 'tasks / s');
    drawYAxis(g, rs, box, 'right', 'queued');
    svg('line', { x1: box.x1, x2: box.x1, y1: box.y0, y2: box.y1, class: 'axis-line' }, g);
    if (now !== null) drawTimeAxis(g, box, now, HISTORY_SECONDS, 30);
    const sx = (t) => clamp(box.x1 - ((now - t) / HISTORY_SECONDS) * (box.x1 - box.x0), box.x0, box.x1);
    const syl = (v) => box.y1 - (v / ls.top) * (box.y1 - box.y0);
    const syr = (v) => box.y1 - (v / rs.top) * (box.y1 - box.y0);
    const line = (run, f, s) => run.map((p, i) => `${i ? 'L' : 'M'}${f1(sx(p.t))} ${f1(s(f(p)))}`).join('');
    for (const run of runs(inWin, 5)) {
      const area = `${line(run, (p) => p.done, syl)}L${f1(sx(run[run.length - 1].t))} ${box.y1}L${f1(sx(run[0].t))} ${box.y1}Z`;
      svg('path', { d: area, class: 'area-done' }, g);
      svg('path', { d: line(run, (p) => p.submitted, syl), class: 'series line-submitted' }, g);
      svg('path', { d: line(run, (p) => p.done, syl), class: 'series line-done' }, g);
      svg('path', { d: line(run, (p) => p.failed, syl), class: 'series line-failed' }, g);
      const qRun = run.filter((p) => p.queued !== null);
      if (qRun.length) svg('path', { d: line(qRun, (p) => p.queued, syr), class: 'series line-queued' }, g);
    }
    if (inWin.length) {
      const last = inWin[inWin.length - 1];
      const hit = svg('rect', { x: box.x0, y: box.y0, width: box.x1 - box.x0, height: box.y1 - box.y0, fill: 'transparent' }, g);
      svgTitle(hit, `last second: ${last.done} done, ${last.failed} failed, ${last.submitted} submitted, ${last.queued ?? '?'} queued`);
    } else {
      noData(g, width / 2, height / 2, snap.time === undefined ? 'waiting for data…' : 'no throughput data');
    }
    svgEl.replaceChildren(frag);
    svgEl.dataset.points = String(inWin.length);
  }

  // ------------------------------------------------------------------ task stream
  function renderTaskStream(snap) {
    const svgEl = $('task-stream');
    const now = num(snap.time);
    // rows: the workers of each hub in order, then workers only seen in the timeline
    const rows = [];
    const rowOf = new Map();
    const hubNames = new Map();
    for (const hubRaw of arr(snap.hubs)) {
      const hub = obj(hubRaw);
      hubNames.set(str(hub.id), str(hub.name || hub.id));
      arr(hub.workers).forEach((wRaw, i) => {
        const w = obj(wRaw);
        const id = str(w.id);
        if (rowOf.has(id)) return;
        rowOf.set(id, rows.length);
        rows.push({ id, hub: str(hub.name || hub.id), first: i === 0, worker: w });
      });
    }
    const items = [];
    if (now !== null) {
      const t0 = now - STREAM_WINDOW;
      for (const raw of arr(snap.timeline)) {
        const it = obj(raw);
        const start = num(it.start);
        const end = num(it.end) ?? now;
        if (start === null || end < t0 || start > now) continue;
        const wid = str(it.worker);
        if (!rowOf.has(wid)) {
          const hub = hubNames.get(str(it.hub)) || str(it.hub);
          rowOf.set(wid, rows.length);
          rows.push({ id: wid, hub, first: !rows.length || rows[rows.length - 1].hub !== hub, gone: true });
        }
        items.push({ row: rowOf.get(wid), start, end, it, state: str(it.state) });
      }
      for (const r of rows) {  // tasks running right now
        const task = r.worker && r.worker.task ? obj(r.worker.task) : null;
        const started = task ? num(task.started) : null;
        if (task && started !== null) {
          items.push({ row: rowOf.get(r.id), start: Math.max(started, t0 - 1), end: now, it: task, state: 'running', runFor: num(r.worker.running_for) });
        }
      }
    }
    const rowH = rows.length > 24 ? 12 : rows.length > 12 ? 16 : 22;
    const height = Math.max(90, rows.length * rowH + 34);
    const { width, frag } = canvas(svgEl, height);
    const g = svg('g', null, frag);
    const hubW = Math.min(110, Math.round(width * 0.1));
    const box = { x0: hubW + 130, x1: width - 14, y0: 6, y1: 6 + rows.length * rowH };
    rows.forEach((r, i) => {
      const y = box.y0 + i * rowH;
      if (i % 2 === 0) svg('rect', { x: box.x0, y, width: box.x1 - box.x0, height: rowH, class: 'row-band' }, g);
      if (r.first) {
        if (i > 0) svg('line', { x1: 0, x2: box.x1, y1: y, y2: y, class: 'hub-sep' }, g);
        const ht = svgText(g, 2, y + rowH / 2 + 4, trunc(r.hub, Math.max(6, Math.floor(hubW / 7))), { class: 'axis-title' });
        svgTitle(ht, `hub ${r.hub}`);
      }
      const wt = svgText(g, box.x0 - 6, y + rowH / 2 + 4, trunc(r.id, 18) + (r.gone ? ' †' : ''), { 'text-anchor': 'end' });
      svgTitle(wt, `${r.id}${r.gone ? ' (no longer connected)' : ''} on ${r.hub}`);
    });
    if (!rows.length) {
      noData(g, width / 2, 40, snap.time === undefined ? 'waiting for data…' : 'no worker');
    }
    const plotBox = { x0: box.x0, x1: box.x1, y0: box.y0, y1: Math.max(box.y1, box.y0 + 40) };
    if (now !== null) drawTimeAxis(g, plotBox, now, STREAM_WINDOW, 10);
    const sx = (t) => clamp(box.x1 - ((now - t) / STREAM_WINDOW) * (box.x1 - box.x0), box.x0, box.x1);
    const legendCount = new Map();
    let nRects = 0;
    for (const item of items) {
      const x = sx(item.start);
      const w = Math.max(1, sx(item.end) - x);
      const y = box.y0 + item.row * rowH + 2;
      const name = str(item.it.name);
      const st = pick(item.state, ['done', 'failed', 'cancelled', 'running'], 'done');
      const rect = svg('rect', { x: f1(x), y, width: f1(w), height: rowH - 4, class: `task-rect ${st}` }, g);
      if (st !== 'failed') rect.setAttribute('fill', colorFor(name));
      const runTime = item.state === 'running' ? item.runFor : item.end - item.start;
      svgTitle(rect, `${name} · ${str(item.it.user)} · ${str(item.it.id)}\n${item.state} · ${item.state === 'running' ? 'running for ' : ''}${fmtDur(runTime)}`);
      legendCount.set(name, (legendCount.get(name) || 0) + 1);
      nRects++;
    }
    if (now !== null && rows.length) {
      svg('line', { x1: box.x1, x2: box.x1, y1: box.y0, y2: plotBox.y1, class: 'now-line' }, g);
    }
    svgEl.replaceChildren(frag);
    svgEl.dataset.rects = String(nRects);
    svgEl.dataset.rows = String(rows.length);
    const names = [...legendCount.keys()].sort((a, b) => legendCount.get(b) - legendCount.get(a) || (a < b ? -1 : 1))
      .slice(0, MAX_LEGEND);
    renderLegend($('stream-legend'), names);
  }

  // ------------------------------------------------------------------ tasks table
  const CANCELLABLE = ['queued', 'running'];
  const taskRows = makeRows([
    { cls: 'id', init: taskLinkInit, render: (td, t) => taskLinkRender(td, t.id) },
    { init: nameCellInit, render: (td, t) => nameCellRender(td, t.name) },
    { clip: true, text: (t) => t.user, title: (t) => t.user },
    { cls: 'num', text: (t) => str(t.priority ?? '') },
    {
      init: (td) => td.appendChild(el('span', 'pill')),
      render: (td, t) => {
        setPill(td.firstChild, t.state);
        setTitle(td.firstChild, num(t.progress) ? `progress ${str(t.progress)}` : '');
      },
    },
    { cls: 'num', text: (t) => fmtClock(t.submitted), title: (t) => fmtDateTime(t.submitted) },
    { cls: 'num', text: (t) => (num(t.wait_time) === null ? '' : fmtDur(t.wait_time)) },
    { cls: 'num', text: (t) => (num(t.run_time) === null ? '' : fmtDur(t.run_time)) },
    { cls: 'id', text: (t) => t.worker || '', title: (t) => (t.hub ? `hub ${str(t.hub)}` : '') },
    {
      cls: 'wrap',
      render: (td, t) => {
        const text = str(t.error || t.reason || '');
        setText(td, trunc(text, 300));
        setTitle(td, text);
        const c = t.error ? 'wrap err' : 'wrap';
        if (td.className !== c) td.className = c;
      },
    },
    {
      init: (td) => {
        const b = el('button', 'danger', 'Cancel');
        b.type = 'button';
        b.dataset.action = 'cancel';
        td.appendChild(b);
      },
      render: (td, t) => {
        const b = td.firstChild;
        const can = CANCELLABLE.includes(str(t.state));
        if (b.hidden === can) b.hidden = !can;
        const dis = state.pendingCancels.has(str(t.id));
        if (b.disabled !== dis) b.disabled = dis;
      },
    },
  ]);
  function updateTaskRow(tr, t) {
    taskRows.update(tr, t);
    const s = str(t.state);
    if (tr.dataset.state !== s) tr.dataset.state = s;
  }
  function renderTasksTable() {
    const tasks = [...state.tasks.values()];
    reconcile($('tasks-table').tBodies[0], tasks, (t) => t.id, taskRows.create, updateTaskRow);
    $('tasks-empty').hidden = tasks.length > 0;
    const first = state.tasksOffset + 1;
    setText($('tasks-count'), state.tasksTotal === null ? ''
      : (tasks.length ? `(${fmtInt(first)}–${fmtInt(first + tasks.length - 1)} of ${fmtInt(state.tasksTotal)})` : `(0 of ${fmtInt(state.tasksTotal)})`));
    $('tasks-newer').disabled = state.tasksOffset === 0;
    $('tasks-older').disabled = state.tasksTotal === null || state.tasksOffset + tasks.length >= state.tasksTotal;
  }
  function taskQuery() {
    const p = new URLSearchParams();
    p.set('limit', String(TASKS_LIMIT));
    if (state.tasksOffset) p.set('offset', String(state.tasksOffset));
    const states = [...document.querySelectorAll('#filter-states input[name="state"]:checked')].map((c) => c.value);
    const q = $('filter-q').value.trim();
    if (states.length) p.set('state', states.join(','));
    if (q) p.set('q', q);
    return `api/tasks?${p.toString()}`;
  }
  async function refreshTasks() {
    if (state.tasksInFlight) {
      scheduleTasksRefresh(TASKS_MIN_GAP_MS);
      return;
    }
    state.tasksInFlight = true;
    state.tasksLastFetch = Date.now();
    try {
      const res = obj(await api(taskQuery()));
      const map = new Map();
      for (const raw of arr(res.tasks)) {
        const t = obj(raw);
        if (t.id !== undefined) map.set(str(t.id), t);
      }
      state.tasks = map;
      state.tasksTotal = num(res.total);
      renderTasksTable();
    } catch (e) {
      setStatus(`cannot load tasks: ${e.message}`, 'error');
    } finally {
      state.tasksInFlight = false;
    }
  }
  /** Throttled refresh: at most one api/tasks fetch per TASKS_MIN_GAP_MS. */
  function scheduleTasksRefresh(delay) {
    if (state.tasksTimer) return;
    const since = Date.now() - state.tasksLastFetch;
    const wait = Math.max(delay || 0, TASKS_MIN_GAP_MS - since, 0);
    state.tasksTimer = setTimeout(() => {
      state.tasksTimer = null;
      if (!document.hidden) refreshTasks();
    }, wait);
  }
  function onTaskEvents(events) {
    if (!events.length) return;
    let touched = false;
    for (const raw of events) {
      const ev = obj(raw);
      const id = str(ev.id);
      const t = state.tasks.get(id);
      if (t) {
        Object.assign(t, ev);
        touched = true;
      }
    }
    if (touched) renderTasksTable();
    scheduleTasksRefresh(500);
  }
  let statusTimer = null;
  function setStatus(text, level) {
    const s = $('action-status');
    setText(s, text);
    s.dataset.level = level || '';
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => {
      setText(s, '');
      s.dataset.level = '';
    }, 8000);
  }
  async function cancelTask(id) {
    state.pendingCancels.add(id);
    renderTasksTable();
    setStatus(`cancelling ${id}…`);
    try {
      const res = obj(await api(`api/tasks/${encodeURIComponent(id)}`, { method: 'DELETE' }));
      if (res.cancelled) setStatus(`cancelled ${id}`, 'ok');
      else setStatus(`${id} was not cancelled (state: ${str(res.state) || '?'})`, 'error');
      const t = state.tasks.get(id);
      if (t && res.state) t.state = res.state;
    } catch (e) {
      setStatus(`cancelling ${id} failed: ${e.message}`, 'error');
    } finally {
      state.pendingCancels.delete(id);
      renderTasksTable();
      scheduleTasksRefresh(0);
    }
  }
  async function cancelUser(user, queued) {
    if (!window.confirm(`Cancel the ${queued} queued task(s) of user "${user}"?`)) return;
    const key = `user:${user}`;
    state.pendingCancels.add(key);
    setStatus(`cancelling the queued tasks of ${user}…`);
    try {
      const res = obj(await api(`api/users/${encodeURIComponent(user)}/cancel`, { method: 'POST' }));
      setStatus(`cancelled ${fmtInt(res.cancelled)} queued task(s) of ${user}`, 'ok');
    } catch (e) {
      setStatus(`cancelling the tasks of ${user} failed: ${e.message}`, 'error');
    } finally {
      state.pendingCancels.delete(key);
      scheduleTasksRefresh(0);
    }
  }

  // ------------------------------------------------------------------ misc
  function tickLastUpdate() {
    const n = $('last-update');
    if (!state.lastSnapAt) return;
    const age = Math.round((Date.now() - state.lastSnapAt) / 1000);
    setText(n, age <= 1 ? 'updated just now' : `updated ${fmtDur(age)} ago`);
    const stale = age > 10 ? 'true' : 'false';
    if (n.dataset.stale !== stale) n.dataset.stale = stale;
  }
  async function loadConnectionInfo() {
    try {
      const info = obj(await api('api/connection'));
      if (!info.command && !info.address) return;
      setText($('connection-command'), info.command || '');
      setText($('connection-address'), info.address || '');
      setText($('connection-file'), info.connection_file || '');
      $('connection-panel').hidden = false;
    } catch (_) { /* optional */ }
  }

  function init() {
    setConn('connecting');
    // charts follow their container's width
    if ('ResizeObserver' in window) {
      const ro = new ResizeObserver((entries) => {
        let changed = false;
        for (const e of entries) {
          const svgEl = e.target.querySelector('svg');
          const w = Math.round(e.contentRect.width);
          if (svgEl && w && state.widths.get(svgEl.id) !== w) {
            state.widths.set(svgEl.id, w);
            changed = true;
          }
        }
        if (changed) scheduleRender();
      });
      document.querySelectorAll('.chart').forEach((c) => ro.observe(c));
    } else {
      window.addEventListener('resize', () => {
        state.widths.clear();
        scheduleRender();
      });
    }
    // tasks table: delegated cancel buttons, filters
    $('tasks-table').tBodies[0].addEventListener('click', (ev) => {
      const b = ev.target instanceof Element ? ev.target.closest('button[data-action="cancel"]') : null;
      if (!b || b.disabled) return;
      const tr = b.closest('tr');
      const t = tr ? state.tasks.get(tr.dataset.key) : null;
      if (t) cancelTask(str(t.id));
    });
    $('users-table').tBodies[0].addEventListener('click', (ev) => {
      const b = ev.target instanceof Element ? ev.target.closest('button[data-action="cancel-user"]') : null;
      if (!b || b.disabled) return;
      const tr = b.closest('tr');
      const u = tr && state.snap ? arr(state.snap.users).map(obj).find((x) => str(x.user) === tr.dataset.key) : null;
      if (u) cancelUser(str(u.user), num(u.queued) || 0);
    });
    const newSearch = () => {
      state.tasksOffset = 0;
      refreshTasks();
    };
    $('tasks-filter').addEventListener('submit', (ev) => {
      ev.preventDefault();
      newSearch();
    });
    $('filter-states').addEventListener('change', newSearch);
    $('tasks-newer').addEventListener('click', () => {
      state.tasksOffset = Math.max(0, state.tasksOffset - TASKS_LIMIT);
      refreshTasks();
    });
    $('tasks-older').addEventListener('click', () => {
      state.tasksOffset += TASKS_LIMIT;
      refreshTasks();
    });

    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) {
        reconnectSoon();
        scheduleTasksRefresh(0);
        scheduleRender();
      }
    });
    window.addEventListener('online', reconnectSoon);
    setInterval(() => {
      tickLastUpdate();
      if (state.conn === 'polling' && !wsIsOpen()) setConn('polling', wsRetryText());
    }, 1000);
    setInterval(() => {
      if (!document.hidden) refreshTasks();
    }, TASKS_REFRESH_MS);

    followEmbedderScheme();
    render();          // empty axes right away
    pollOnce();        // first paint without waiting for the socket
    connectWs();
    refreshTasks();
    loadConnectionInfo();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
