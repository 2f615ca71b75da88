/**
 * Pure view-model code for the jupyter_plb sidebar.
 *
 * Nothing in this module touches the DOM or imports JupyterLab: it turns the
 * (untrusted) JSON snapshot served by `plb/api/status` and pushed on
 * `plb/api/events` into plain rows the panel renders with `textContent`.
 * Every string coming from the server stays a string here; nothing is ever
 * interpreted as markup.
 */

/* ------------------------------------------------------------------ */
/* Snapshot types (docs/monitor-api.md), after normalisation           */
/* ------------------------------------------------------------------ */

export type HealthStatus = 'ok' | 'warning' | 'error' | 'unknown';

export interface ITaskRef {
  id: string;
  name: string;
  user: string;
  started: number | null;
}

export interface IWorker {
  id: string;
  state: string;
  min_p: number | null;
  max_p: number | null;
  pid: number | null;
  done: number;
  /** CPU percent since the hub's last heartbeat (100 = one core), null until measured. */
  cpu: number | null;
  /** Resident memory in bytes, null until measured. */
  rss: number | null;
  task: ITaskRef | null;
}

export interface IHub {
  id: string;
  name: string;
  host: string;
  pid: number | null;
  state: string;
  last_seen: number | null;
  local: boolean;
  tasks: string[];
  python: string;
  cloudpickle: string;
  /** What differs between its Python/cloudpickle versions and the balancer's, or ''. */
  version_skew: string;
  workers: IWorker[];
}

export interface IUser {
  user: string;
  queued: number;
  running: number;
  done: number;
  failed: number;
  cancelled: number;
}

export interface IThroughputPoint {
  t: number;
  done: number;
  failed: number;
  submitted: number;
  queued: number;
}

export interface IFailure {
  id: string;
  name: string;
  user: string;
  error: string;
  time: number | null;
}

export interface IUnschedulable {
  id: string;
  name: string;
  user: string;
  priority: number | null;
  reason: string;
}

export interface ITotals {
  queued: number;
  running: number;
  done: number;
  failed: number;
  cancelled: number;
  submitted: number;
  bad_messages: number;
}

export interface ISnapshot {
  time: number | null;
  balancer: {
    id: string;
    version: string;
    uptime: number | null;
    address: string;
  };
  health: { status: HealthStatus; messages: string[]; checked: number | null };
  totals: ITotals;
  rates: { done_per_s: number; submitted_per_s: number };
  throughput: IThroughputPoint[];
  users: IUser[];
  hubs: IHub[];
  unschedulable: IUnschedulable[];
  recent_failures: IFailure[];
}

/* ------------------------------------------------------------------ */
/* Defensive coercion helpers                                           */
/* ------------------------------------------------------------------ */

type Dict = { [key: string]: unknown };

function isDict(value: unknown): value is Dict {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function asDict(value: unknown): Dict {
  return isDict(value) ? value : {};
}

function asList(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** Any scalar becomes a string; objects/arrays/null/undefined become ''. */
export function asText(value: unknown): string {
  if (typeof value === 'string') {
    return value;
  }
  if (typeof value === 'number' || typeof value === 'boolean') {
    return String(value);
  }
  return '';
}

/** A finite number, or null. Numeric strings are accepted. */
export function asNumberOrNull(value: unknown): number | null {
  if (typeof value === 'number') {
    return Number.isFinite(value) ? value : null;
  }
  if (typeof value === 'string' && value.trim() !== '') {
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  }
  return null;
}

function asCount(value: unknown): number {
  const n = asNumberOrNull(value);
  return n === null || n < 0 ? 0 : n;
}

function normaliseHealthStatus(value: unknown): HealthStatus {
  const s = asText(value).toLowerCase();
  return s === 'ok' || s === 'warning' || s === 'error' ? s : 'unknown';
}

/**
 * Turn whatever the server sent into a fully populated snapshot.
 *
 * Missing fields get neutral defaults, wrong types are coerced or dropped;
 * this never throws on any JSON value.
 */
export function normaliseSnapshot(raw: unknown): ISnapshot {
  const d = asDict(raw);
  const balancer = asDict(d.balancer);
  const health = asDict(d.health);
  const totals = asDict(d.totals);
  const rates = asDict(d.rates);

  return {
    time: asNumberOrNull(d.time),
    balancer: {
      id: asText(balancer.id),
      version: asText(balancer.version),
      uptime: asNumberOrNull(balancer.uptime),
      address: asText(balancer.address)
    },
    health: {
      status: normaliseHealthStatus(health.status),
      messages: asList(health.messages).map(asText).filter(m => m !== ''),
      checked: asNumberOrNull(health.checked)
    },
    totals: {
      queued: asCount(totals.queued),
      running: asCount(totals.running),
      done: asCount(totals.done),
      failed: asCount(totals.failed),
      cancelled: asCount(totals.cancelled),
      submitted: asCount(totals.submitted),
      bad_messages: asCount(totals.bad_messages)
    },
    rates: {
      done_per_s: asCount(rates.done_per_s),
      submitted_per_s: asCount(rates.submitted_per_s)
    },
    throughput: asList(d.throughput)
      .filter(isDict)
      .map(p => ({
        t: asNumberOrNull(p.t) ?? 0,
        done: asCount(p.done),
        failed: asCount(p.failed),
        submitted: asCount(p.submitted),
        queued: asCount(p.queued)
      })),
    users: asList(d.users)
      .filter(isDict)
      .map(u => ({
        user: asText(u.user),
        queued: asCount(u.queued),
        running: asCount(u.running),
        done: asCount(u.done),
        failed: asCount(u.failed),
        cancelled: asCount(u.cancelled)
      })),
    hubs: asList(d.hubs)
      .filter(isDict)
      .map(h => ({
        id: asText(h.id),
        name: asText(h.name),
        host: asText(h.host),
        pid: asNumberOrNull(h.pid),
        state: asText(h.state) || 'unknown',
        last_seen: asNumberOrNull(h.last_seen),
        local: h.local === true,
        tasks: asList(h.tasks).map(asText),
        python: asText(h.python),
        cloudpickle: asText(h.cloudpickle),
        version_skew: asText(h.version_skew),
        workers: asList(h.workers)
          .filter(isDict)
          .map(w => {
            const task = isDict(w.task) ? w.task : null;
            return {
              id: asText(w.id),
              state: asText(w.state) || 'unknown',
              min_p: asNumberOrNull(w.min_p),
              max_p: asNumberOrNull(w.max_p),
              pid: asNumberOrNull(w.pid),
              done: asCount(w.done),
              cpu: asNumberOrNull(w.cpu),
              rss: asNumberOrNull(w.rss),
              task: task
                ? {
                    id: asText(task.id),
                    name: asText(task.name),
                    user: asText(task.user),
                    started: asNumberOrNull(task.started)
                  }
                : null
            };
          })
      })),
    unschedulable: asList(d.unschedulable)
      .filter(isDict)
      .map(u => ({
        id: asText(u.id),
        name: asText(u.name),
        user: asText(u.user),
        priority: asNumberOrNull(u.priority),
        reason: asText(u.reason)
      })),
    recent_failures: asList(d.recent_failures)
      .filter(isDict)
      .map(f => ({
        id: asText(f.id),
        name: asText(f.name),
        user: asText(f.user),
        error: asText(f.error),
        time: asNumberOrNull(f.time)
      }))
  };
}

/* ------------------------------------------------------------------ */
/* Formatting                                                           */
/* ------------------------------------------------------------------ */

/** 0 → "0", 950 → "950", 1500 → "1.5k", 2_300_000 → "2.3M". */
export function formatCount(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return '–';
  }
  const sign = value < 0 ? '-' : '';
  const v = Math.abs(value);
  if (v < 1000) {
    return sign + String(Math.round(v));
  }
  const units: [number, string][] = [
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k']
  ];
  for (const [size, suffix] of units) {
    if (v >= size) {
      const scaled = v / size;
      const text = scaled >= 100 ? scaled.toFixed(0) : scaled.toFixed(1);
      return sign + text.replace(/\.0$/, '') + suffix;
    }
  }
  return sign + String(v);
}

/** CPU percent: 12.4 → "12%", null → "–". */
export function formatPercent(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return '–';
  }
  return `${Math.round(value)}%`;
}

/** Bytes in binary units: 25_000_000 → "24 MiB", 3 << 30 → "3.0 GiB", null → "–". */
export function formatBytes(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value) || value < 0) {
    return '–';
  }
  if (value >= 2 ** 30) {
    return `${(value / 2 ** 30).toFixed(1)} GiB`;
  }
  return `${Math.round(value / 2 ** 20)} MiB`;
}

/** Tasks per second: 0 → "0/s", 0.25 → "0.25/s", 812.5 → "812/s", 1500 → "1.5k/s". */
export function formatRate(perSecond: number | null | undefined): string {
  if (
    perSecond === null ||
    perSecond === undefined ||
    !Number.isFinite(perSecond)
  ) {
    return '–';
  }
  const v = Math.max(0, perSecond);
  if (v === 0) {
    return '0/s';
  }
  if (v < 1) {
    return `${v.toFixed(2).replace(/0$/, '')}/s`;
  }
  if (v < 10) {
    return `${v.toFixed(1).replace(/\.0$/, '')}/s`;
  }
  if (v < 1000) {
    return `${Math.round(v)}/s`;
  }
  return `${formatCount(v)}/s`;
}

/**
 * A duration in seconds for humans:
 * 0.0012 → "1.2ms", 0.85 → "850ms", 12.34 → "12.3s", 185 → "3m 05s",
 * 3725 → "1h 02m", 200000 → "2d 07h".
 */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return '–';
  }
  const s = Math.max(0, seconds);
  if (s < 0.01) {
    const ms = s * 1000;
    return `${ms.toFixed(ms < 1 ? 2 : 1).replace(/\.?0+$/, '')}ms`;
  }
  if (s < 1) {
    return `${Math.round(s * 1000)}ms`;
  }
  if (s < 60) {
    return `${s < 10 ? s.toFixed(1).replace(/\.0$/, '') : Math.floor(s)}s`;
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  const total = Math.floor(s);
  if (total < 3600) {
    return `${Math.floor(total / 60)}m ${pad(total % 60)}s`;
  }
  if (total < 86400) {
    return `${Math.floor(total / 3600)}h ${pad(Math.floor((total % 3600) / 60))}m`;
  }
  return `${Math.floor(total / 86400)}d ${pad(Math.floor((total % 86400) / 3600))}h`;
}

/**
 * Bounds at or beyond these mean "no limit": hubs started with `--workers N`
 * accept any priority and report -1e9..1e9 (`ANY_PRIORITY` in hub.py).
 */
export const ANY_PRIORITY_MIN = -1e9;
export const ANY_PRIORITY_MAX = 1e9;

/** "0–9"; open ends shown as "?"; a single value "5"; -1e9..1e9 (or wider) "any". */
export function formatPriorityRange(
  minP: number | null,
  maxP: number | null
): string {
  if (minP === null && maxP === null) {
    return '–';
  }
  if (
    minP !== null &&
    maxP !== null &&
    minP <= ANY_PRIORITY_MIN &&
    maxP >= ANY_PRIORITY_MAX
  ) {
    return 'any';
  }
  if (minP !== null && maxP !== null && minP === maxP) {
    return String(minP);
  }
  return `${minP === null ? '?' : minP}–${maxP === null ? '?' : maxP}`;
}

/* ------------------------------------------------------------------ */
/* Health badge                                                         */
/* ------------------------------------------------------------------ */

export type BadgeLevel = 'ok' | 'warning' | 'error' | 'unknown';

export interface IBadge {
  level: BadgeLevel;
  /** Short text shown in the badge. */
  label: string;
  /** CSS modifier class, one of a fixed set (never built from data). */
  className: string;
  /** Tooltip: the health messages, one per line. */
  title: string;
}

const BADGE_CLASS: Record<BadgeLevel, string> = {
  ok: 'jp-plb-mod-ok',
  warning: 'jp-plb-mod-warning',
  error: 'jp-plb-mod-error',
  unknown: 'jp-plb-mod-unknown'
};

function badge(level: BadgeLevel, label: string, title = ''): IBadge {
  return { level, label, className: BADGE_CLASS[level], title };
}

/** Balancer health (status + messages) → badge. */
export function healthBadge(
  health: { status?: unknown; messages?: unknown } | null | undefined
): IBadge {
  if (!health) {
    return badge('unknown', 'no data');
  }
  const status = normaliseHealthStatus(health.status);
  const messages = asList(health.messages).map(asText).filter(m => m !== '');
  const title = messages.join('\n');
  switch (status) {
    case 'ok':
      return badge('ok', 'healthy', title);
    case 'warning':
      return badge('warning', 'warning', title);
    case 'error':
      return badge('error', 'error', title);
    default:
      return badge('unknown', 'unknown', title);
  }
}

/** Hub state → badge ("ok", "lost", "unhealthy", "draining"). */
export function hubStateBadge(state: string): IBadge {
  switch (state) {
    case 'ok':
      return badge('ok', 'ok');
    case 'draining':
      return badge('warning', 'draining');
    case 'lost':
      return badge('error', 'lost');
    case 'unhealthy':
      return badge('error', 'unhealthy');
    default:
      return badge('unknown', state || 'unknown');
  }
}

/* ------------------------------------------------------------------ */
/* Rows                                                                 */
/* ------------------------------------------------------------------ */

export interface IWorkerRow {
  key: string;
  id: string;
  state: string;
  /** Fixed set: 'busy' | 'idle' | 'starting' | 'other' (safe for a CSS class). */
  stateClass: 'busy' | 'idle' | 'starting' | 'other';
  range: string;
  done: string;
  /** e.g. "HELLO" or '' when idle. */
  taskName: string;
  /** e.g. "alice" or ''. */
  taskUser: string;
  /** Time the current task has been running, e.g. "1.2s", or ''. */
  taskAge: string;
  /** "12%" */
  cpu: string;
  /** Resident memory, "24 MiB" */
  memory: string;
}

export interface IHubRow {
  key: string;
  /** Display name: the hub's name, else its id. */
  name: string;
  id: string;
  host: string;
  pid: string;
  local: boolean;
  badge: IBadge;
  busy: number;
  idle: number;
  total: number;
  /** "3/4 busy" */
  summary: string;
  /** e.g. "0.1s ago" or '' when unknown. */
  lastSeen: string;
  /** "Python 3.11.7 · cloudpickle 3.1.3", or '' when the hub did not say. */
  versions: string;
  /** The version-skew warning, or ''. */
  versionSkew: string;
  workers: IWorkerRow[];
}

export interface IUserRow {
  key: string;
  user: string;
  queued: number;
  running: number;
  done: number;
  failed: number;
  queuedText: string;
  runningText: string;
  doneText: string;
  failedText: string;
  /** Cancel button only makes sense with something queued. */
  canCancel: boolean;
}

export interface ITotalCell {
  key: keyof ITotals | 'done_per_s' | 'submitted_per_s';
  label: string;
  value: string;
}

function workerStateClass(state: string): IWorkerRow['stateClass'] {
  return state === 'busy' || state === 'idle' || state === 'starting'
    ? state
    : 'other';
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Workers: by priority range (min_p, then max_p), then id. */
export function workerRows(
  hub: IHub,
  now: number | null = null
): IWorkerRow[] {
  const sorted = [...hub.workers].sort((a, b) => {
    const am = a.min_p ?? Number.POSITIVE_INFINITY;
    const bm = b.min_p ?? Number.POSITIVE_INFINITY;
    if (am !== bm) {
      return am - bm;
    }
    const ax = a.max_p ?? Number.POSITIVE_INFINITY;
    const bx = b.max_p ?? Number.POSITIVE_INFINITY;
    if (ax !== bx) {
      return ax - bx;
    }
    return compareText(a.id, b.id);
  });
  return sorted.map((w, index) => {
    const stateClass = workerStateClass(w.state);
    const task = stateClass === 'busy' || w.task ? w.task : null;
    const age =
      task && task.started !== null && now !== null
        ? formatDuration(now - task.started)
        : '';
    return {
      key: w.id || `#${index}`,
      id: w.id || '(no id)',
      state: w.state,
      stateClass,
      range: formatPriorityRange(w.min_p, w.max_p),
      done: formatCount(w.done),
      taskName: task ? task.name || task.id : '',
      taskUser: task ? task.user : '',
      taskAge: age,
      cpu: formatPercent(w.cpu),
      memory: formatBytes(w.rss)
    };
  });
}

/** Hubs: local first, then healthy before unhealthy, then by name. */
export function hubRows(snapshot: ISnapshot): IHubRow[] {
  const now = snapshot.time;
  const stateRank = (s: string) =>
    s === 'ok' ? 0 : s === 'draining' ? 1 : s === 'unhealthy' ? 2 : 3;
  const hubs = [...snapshot.hubs].sort((a, b) => {
    if (a.local !== b.local) {
      return a.local ? -1 : 1;
    }
    const r = stateRank(a.state) - stateRank(b.state);
    if (r !== 0) {
      return r;
    }
    return compareText(a.name || a.id, b.name || b.id) || compareText(a.id, b.id);
  });
  return hubs.map((h, index) => {
    const workers = workerRows(h, now);
    const busy = workers.filter(w => w.stateClass === 'busy').length;
    const idle = workers.filter(w => w.stateClass === 'idle').length;
    return {
      key: h.id || `#${index}`,
      name: h.name || h.id || '(unnamed hub)',
      id: h.id,
      host: h.host,
      pid: h.pid === null ? '' : String(h.pid),
      local: h.local,
      badge: hubStateBadge(h.state),
      busy,
      idle,
      total: workers.length,
      summary: `${busy}/${workers.length} busy`,
      lastSeen:
        h.last_seen !== null && now !== null
          ? `${formatDuration(now - h.last_seen)} ago`
          : '',
      versions: [
        h.python ? `Python ${h.python}` : '',
        h.cloudpickle ? `cloudpickle ${h.cloudpickle}` : ''
      ]
        .filter(v => v)
        .join(' · '),
      versionSkew: h.version_skew,
      workers
    };
  });
}

/**
 * Whether a user name can be put in a URL path segment. "." and ".." cannot:
 * browsers treat them (and %2E%2E) as dot segments and rewrite the path.
 */
export function isAddressableUser(user: string): boolean {
  return user !== '' && user !== '.' && user !== '..';
}

/** Users: most queued+running first, then by name; users with nothing pending last. */
export function userRows(snapshot: ISnapshot): IUserRow[] {
  const users = [...snapshot.users].sort((a, b) => {
    const pa = a.queued + a.running;
    const pb = b.queued + b.running;
    if (pa !== pb) {
      return pb - pa;
    }
    return compareText(a.user, b.user);
  });
  return users.map((u, index) => ({
    key: u.user || `#${index}`,
    user: u.user || '(anonymous)',
    queued: u.queued,
    running: u.running,
    done: u.done,
    failed: u.failed,
    queuedText: formatCount(u.queued),
    runningText: formatCount(u.running),
    doneText: formatCount(u.done),
    failedText: formatCount(u.failed),
    canCancel: u.queued > 0 && isAddressableUser(u.user)
  }));
}

export function totalCells(snapshot: ISnapshot): ITotalCell[] {
  const t = snapshot.totals;
  return [
    { key: 'queued', label: 'queued', value: formatCount(t.queued) },
    { key: 'running', label: 'running', value: formatCount(t.running) },
    { key: 'done', label: 'done', value: formatCount(t.done) },
    { key: 'failed', label: 'failed', value: formatCount(t.failed) },
    { key: 'cancelled', label: 'cancelled', value: formatCount(t.cancelled) },
    { key: 'submitted', label: 'submitted', value: formatCount(t.submitted) },
    {
      key: 'done_per_s',
      label: 'done rate',
      value: formatRate(snapshot.rates.done_per_s)
    },
    {
      key: 'submitted_per_s',
      label: 'submit rate',
      value: formatRate(snapshot.rates.submitted_per_s)
    }
  ];
}

/* ------------------------------------------------------------------ */
/* Sparkline                                                            */
/* ------------------------------------------------------------------ */

export interface ISparkline {
  /** SVG path `d` for the line; '' when there is nothing to draw. */
  line: string;
  /** SVG path `d` for the filled area under the line; '' when empty. */
  area: string;
  /** Largest value plotted (the top of the chart). */
  max: number;
  /** Last value plotted. */
  last: number;
  /** Number of points plotted. */
  count: number;
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}

/**
 * Build a sparkline from throughput points: x spread evenly over `width`
 * (oldest on the left), y scaled so the largest value touches the top
 * (`pad` pixels kept free top and bottom). Only numbers go into the path.
 */
export function sparklinePath(
  points: ReadonlyArray<Partial<IThroughputPoint>> | null | undefined,
  width: number,
  height: number,
  key: 'done' | 'failed' | 'submitted' | 'queued' = 'done',
  pad = 1
): ISparkline {
  const values = (points ?? []).map(p => asCount(p ? p[key] : 0));
  const empty: ISparkline = { line: '', area: '', max: 0, last: 0, count: 0 };
  if (values.length === 0 || !(width > 0) || !(height > 0)) {
    return empty;
  }
  const max = Math.max(...values);
  const usable = Math.max(0, height - 2 * pad);
  const bottom = height - pad;
  const y = (v: number) => round2(max > 0 ? bottom - (v / max) * usable : bottom);
  const n = values.length;
  const x = (i: number) => round2(n === 1 ? width : (i / (n - 1)) * width);
  const coords =
    n === 1
      ? [
          [0, y(values[0])],
          [round2(width), y(values[0])]
        ]
      : values.map((v, i) => [x(i), y(v)]);
  const line = coords
    .map(([cx, cy], i) => `${i === 0 ? 'M' : 'L'}${cx},${cy}`)
    .join(' ');
  const first = coords[0];
  const lastPt = coords[coords.length - 1];
  const area = `${line} L${lastPt[0]},${round2(height)} L${first[0]},${round2(height)} Z`;
  return { line, area, max, last: values[n - 1], count: n };
}

/* ------------------------------------------------------------------ */
/* Error / connection state                                             */
/* ------------------------------------------------------------------ */

export type ErrorKind =
  | 'not-loaded'
  | 'unreachable'
  | 'forbidden'
  | 'server-error'
  | 'bad-data';

export interface IErrorState {
  kind: ErrorKind;
  title: string;
  detail: string;
}

/**
 * Map a failed request to what the panel shows.
 *
 * `status` is the HTTP status (undefined/0 when the request never got an
 * answer); `message` any text from the error (shown as text).
 */
export function errorState(
  status: number | null | undefined,
  message = ''
): IErrorState {
  const detail = asText(message);
  if (status === 404) {
    return {
      kind: 'not-loaded',
      title: 'Server extension not loaded',
      detail:
        'The Jupyter server does not serve plb/api. Install jupyter_plb in the ' +
        "server's environment and enable it: jupyter server extension enable jupyter_plb, " +
        'then restart the server.'
    };
  }
  if (status === 401 || status === 403) {
    return {
      kind: 'forbidden',
      title: 'Not allowed',
      detail: detail || 'The server refused access to the load balancer API.'
    };
  }
  if (typeof status === 'number' && status >= 500) {
    return {
      kind: 'server-error',
      title: 'Balancer unreachable',
      detail: detail || `The server answered ${status}.`
    };
  }
  if (typeof status === 'number' && status > 0) {
    return {
      kind: 'server-error',
      title: 'Unexpected answer',
      detail: detail || `The server answered ${status}.`
    };
  }
  return {
    kind: 'unreachable',
    title: 'Balancer unreachable',
    detail: detail || 'No answer from the Jupyter server.'
  };
}

/* ------------------------------------------------------------------ */
/* Whole view model                                                     */
/* ------------------------------------------------------------------ */

export interface IFailureRow {
  key: string;
  /** The task id ('' when the server sent none): its detail is `plb/api/tasks/<id>`. */
  id: string;
  name: string;
  user: string;
  error: string;
}

export interface IViewModel {
  badge: IBadge;
  healthMessages: string[];
  balancerLine: string;
  totals: ITotalCell[];
  hubs: IHubRow[];
  users: IUserRow[];
  sparkline: ISparkline;
  sparklineCaption: string;
  localHub: { present: boolean; running: boolean };
  failures: IFailureRow[];
  unschedulable: { count: number; first: string };
}

export const SPARK_WIDTH = 240;
export const SPARK_HEIGHT = 36;

/** Snapshot (raw JSON or normalised) → everything the panel renders. */
export function viewModel(raw: unknown, maxFailures = 5): IViewModel {
  const s = normaliseSnapshot(raw);
  const hubs = hubRows(s);
  const spark = sparklinePath(s.throughput, SPARK_WIDTH, SPARK_HEIGHT, 'done');
  const parts: string[] = [];
  if (s.balancer.id) {
    parts.push(s.balancer.id);
  }
  if (s.balancer.version) {
    parts.push(`v${s.balancer.version}`);
  }
  if (s.balancer.uptime !== null) {
    parts.push(`up ${formatDuration(s.balancer.uptime)}`);
  }
  const local = s.hubs.find(h => h.local);
  const failures = s.recent_failures
    .slice()
    .sort((a, b) => (b.time ?? 0) - (a.time ?? 0))
    .slice(0, maxFailures)
    .map((f, i) => ({
      key: f.id || `#${i}`,
      id: f.id,
      name: f.name || f.id,
      user: f.user,
      error: f.error
    }));
  return {
    badge: healthBadge(s.health),
    healthMessages: s.health.messages,
    balancerLine: parts.join(' · '),
    totals: totalCells(s),
    hubs,
    users: userRows(s),
    sparkline: spark,
    sparklineCaption:
      spark.count > 0
        ? `done/s, last ${spark.count}s (peak ${formatCount(spark.max)}, now ${formatCount(spark.last)})`
        : 'no throughput data yet',
    localHub: {
      present: local !== undefined,
      running: local !== undefined && local.state !== 'lost'
    },
    failures,
    unschedulable: {
      count: s.unschedulable.length,
      first: s.unschedulable.length > 0 ? s.unschedulable[0].reason : ''
    }
  };
}

/* ------------------------------------------------------------------ */
/* Websocket messages and URLs                                          */
/* ------------------------------------------------------------------ */

export type EventMessage =
  | { type: 'snapshot'; data: unknown }
  | { type: 'tasks'; events: unknown[] }
  | { type: 'unknown' };

/** Parse one websocket frame; never throws. */
export function parseEventMessage(text: unknown): EventMessage {
  if (typeof text !== 'string') {
    return { type: 'unknown' };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { type: 'unknown' };
  }
  if (!isDict(value)) {
    return { type: 'unknown' };
  }
  if (value.type === 'snapshot' && isDict(value.data)) {
    return { type: 'snapshot', data: value.data };
  }
  if (value.type === 'tasks') {
    return { type: 'tasks', events: asList(value.events) };
  }
  return { type: 'unknown' };
}

/** Path segment for a user name: percent-encoded so `/`, `?`, `#`, `..` stay inside it. */
export function userCancelPath(user: string): string[] {
  return ['plb', 'api', 'users', encodeURIComponent(user), 'cancel'];
}

/** Append `?token=` only when asked to (non-browser or cross-origin settings). */
export function withToken(
  url: string,
  token: string,
  appendToken: boolean
): string {
  if (!appendToken || !token) {
    return url;
  }
  const sep = url.includes('?') ? '&' : '?';
  return `${url}${sep}token=${encodeURIComponent(token)}`;
}
