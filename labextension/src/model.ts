/**
 * Pure view-model code for the jupyter_plb sidebar.
 *
 * Nothing in this module touches the DOM or imports JupyterLab: it turns a snapshot of the
 * monitor's schema (schema.ts, computed by the balancer: counts, ages, rates, priority ranges,
 * health label and the rest) into the rows and texts the panel renders with `textContent`.
 * It derives nothing the balancer already says; it formats numbers and picks CSS modifiers from
 * fixed sets. Every string coming from the server stays a string here.
 */
import { Failure, Health, Hub, Snapshot, ThroughputPoint, Worker } from './schema';

/* ------------------------------------------------------------------ */
/* Coercion of loose values (the task detail, error bodies)             */
/* ------------------------------------------------------------------ */

type Dict = { [key: string]: unknown };

function isDict(value: unknown): value is Dict {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
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

/* ------------------------------------------------------------------ */
/* Badges                                                               */
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

function level(value: string): BadgeLevel {
  return value === 'ok' || value === 'warning' || value === 'error' ? value : 'unknown';
}

/** Balancer health → badge: the balancer's label, its messages as the tooltip. */
export function healthBadge(health: Health): IBadge {
  const lvl = level(health.status);
  return {
    level: lvl,
    label: health.label,
    className: BADGE_CLASS[lvl],
    title: health.messages.join('\n')
  };
}

const HUB_LEVEL: Record<string, BadgeLevel> = {
  ok: 'ok',
  draining: 'warning',
  lost: 'error',
  unhealthy: 'error'
};

/** Hub state ("ok", "lost", "unhealthy", "draining") → badge. */
export function hubStateBadge(state: string): IBadge {
  const lvl = HUB_LEVEL[state] ?? 'unknown';
  return { level: lvl, label: state || 'unknown', className: BADGE_CLASS[lvl], title: '' };
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
  /** e.g. "0.1s ago". */
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
  key: string;
  label: string;
  value: string;
}

function workerStateClass(state: string): IWorkerRow['stateClass'] {
  return state === 'busy' || state === 'idle' || state === 'starting'
    ? state
    : 'other';
}

/** A worker as the panel shows it (the balancer orders them by priority range). */
export function workerRow(w: Worker): IWorkerRow {
  return {
    key: w.id,
    id: w.id,
    state: w.state,
    stateClass: workerStateClass(w.state),
    range: w.priorities,
    done: formatCount(w.done),
    taskName: w.task ? w.task.name || w.task.id || '' : '',
    taskUser: w.task ? w.task.user : '',
    taskAge: w.running_for === null ? '' : formatDuration(w.running_for),
    cpu: formatPercent(w.cpu),
    memory: formatBytes(w.rss)
  };
}

/** A hub as the panel shows it (the balancer orders them: local first, then by state, name). */
export function hubRow(h: Hub): IHubRow {
  return {
    key: h.id,
    name: h.name || h.id,
    id: h.id,
    host: h.host,
    pid: String(h.pid),
    local: h.local,
    badge: hubStateBadge(h.state),
    busy: h.busy,
    idle: h.idle,
    total: h.workers.length,
    summary: `${h.busy}/${h.workers.length} busy`,
    lastSeen: `${formatDuration(h.seen_ago)} ago`,
    versions: h.versions,
    versionSkew: h.version_skew ?? '',
    workers: h.workers.map(workerRow)
  };
}

/**
 * Whether a user name can be put in a URL path segment. "." and ".." cannot:
 * browsers treat them (and %2E%2E) as dot segments and rewrite the path.
 */
export function isAddressableUser(user: string): boolean {
  return user !== '' && user !== '.' && user !== '..';
}

/**
 * Whether the viewer may cancel ``user``'s tasks: anyone on a personal balancer; in a team
 * pool only the user themself or an admin (the balancer refuses anyone else).
 */
export function mayCancelUser(snapshot: Snapshot, user: string): boolean {
  const viewer = snapshot.viewer;
  return !viewer?.team || viewer.admin || viewer.user === user;
}

/** Users, in the balancer's order (by name). */
export function userRows(snapshot: Snapshot): IUserRow[] {
  return snapshot.users.map((u, index) => ({
    key: u.user || `#${index}`,
    user: u.user || '(anonymous)',
    queued: u.queued,
    running: u.running,
    done: u.done ?? 0,
    failed: u.failed ?? 0,
    queuedText: formatCount(u.queued),
    runningText: formatCount(u.running),
    doneText: formatCount(u.done ?? 0),
    failedText: formatCount(u.failed ?? 0),
    canCancel:
      u.queued > 0 && isAddressableUser(u.user) && mayCancelUser(snapshot, u.user)
  }));
}

export function totalCells(snapshot: Snapshot): ITotalCell[] {
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
  points: ReadonlyArray<Partial<ThroughputPoint>> | null | undefined,
  width: number,
  height: number,
  key: 'done' | 'failed' | 'submitted' | 'queued' = 'done',
  pad = 1
): ISparkline {
  const values = (points ?? []).map(p => Math.max(0, asNumberOrNull(p ? p[key] : 0) ?? 0));
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
  /** The task id ('' for another user's task in a team pool): its detail is `plb/api/tasks/<id>`. */
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

function failureRow(f: Failure, index: number): IFailureRow {
  return {
    key: f.id || `#${index}`,
    id: f.id ?? '',
    name: f.name || f.id || '',
    user: f.user,
    error: f.error ?? ''
  };
}

/** A snapshot (checked with `checkSnapshot`) → everything the panel renders. */
export function viewModel(s: Snapshot, maxFailures = 5): IViewModel {
  const spark = sparklinePath(s.throughput, SPARK_WIDTH, SPARK_HEIGHT, 'done');
  const parts: string[] = [];
  if (s.balancer.id) {
    parts.push(s.balancer.id);
  }
  if (s.balancer.version) {
    parts.push(`v${s.balancer.version}`);
  }
  if (s.balancer.started) {
    parts.push(`up ${formatDuration(s.balancer.uptime)}`);
  }
  const local = s.hubs.find(h => h.local);
  return {
    badge: healthBadge(s.health),
    healthMessages: s.health.messages,
    balancerLine: parts.join(' · '),
    totals: totalCells(s),
    hubs: s.hubs.map(hubRow),
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
    failures: s.recent_failures.slice(0, maxFailures).map(failureRow),
    unschedulable: {
      count: s.unschedulable.length,
      first: s.unschedulable.length > 0 ? s.unschedulable[0].reason ?? '' : ''
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
    return { type: 'tasks', events: Array.isArray(value.events) ? value.events : [] };
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
