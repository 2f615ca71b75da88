/**
 * The monitor's schema, as the balancer sends it: a mirror of `jupyter_plb/core/snapshot.py`
 * (documented field by field in docs/monitor-api.md). tests/test_snapshot.py checks that every
 * TypedDict there has an interface here with the same fields, and the same SCHEMA_VERSION.
 *
 * The derived fields (rates, shares, health label, ages, counts, priority ranges, …) are computed
 * by the balancer; the panel only formats and draws them. Strings stay text: render them with
 * `textContent`.
 */

/** The version this panel understands; a snapshot of another one is not drawn. */
export const SCHEMA_VERSION = 1;

export type HealthStatus = 'ok' | 'warning' | 'error' | 'unknown';
export type HubState = 'ok' | 'lost' | 'unhealthy' | 'draining';
export type WorkerState = 'idle' | 'busy' | 'starting';
export type TaskState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';
export type JobState = 'pending' | 'running' | 'ending';

export interface Ports {
  clients: number;
  workers: number;
  health: number;
}

export interface BalancerInfo {
  id: string | null;
  version: string | null;
  started: number;
  uptime: number;
  address: string | null;
  ports: Ports | Record<string, number>;
  host: string | null;
  pid: number | null;
  python?: string;
  cloudpickle?: string;
}

export interface Health {
  status: HealthStatus;
  /** healthy, warning, error, unknown */
  label: string;
  messages: string[];
  checked: number | null;
}

export interface Totals {
  queued: number;
  running: number;
  done: number;
  failed: number;
  cancelled: number;
  submitted: number;
  bad_messages: number;
}

export interface Rates {
  done_per_s: number;
  submitted_per_s: number;
  failed_per_s: number;
  window: number;
}

export interface ThroughputPoint {
  t: number;
  done: number;
  failed: number;
  submitted: number;
  queued: number;
}

export interface User {
  user: string;
  queued: number;
  running: number;
  done?: number;
  failed?: number;
  cancelled?: number;
  share: number;
  share_percent: number;
}

export interface ShareRow {
  user: string;
  share: number;
  share_percent: number;
  running: number;
  queued: number;
}

export interface FairShare {
  window: number;
  window_label: string;
  users: ShareRow[];
}

export interface WorkerTask {
  id?: string;
  name: string;
  user: string;
  started: number | null;
}

export interface Worker {
  id: string;
  state: WorkerState;
  pid: number;
  min_p: number;
  max_p: number;
  /** "any", "5" or "0–9" */
  priorities: string;
  process_p: number;
  done: number;
  cpu: number | null;
  rss: number | null;
  task: WorkerTask | null;
  running_for: number | null;
}

export interface Hub {
  id: string;
  name: string;
  host: string;
  pid: number;
  state: HubState;
  last_seen: number;
  seen_ago: number;
  tasks: string[];
  local: boolean;
  python: string;
  cloudpickle: string;
  /** "Python 3.11.7 · cloudpickle 3.1.3" or '' */
  versions: string;
  version_skew: string | null;
  job: string | null;
  busy: number;
  idle: number;
  workers: Worker[];
}

export interface WorkerCounts {
  hubs: number;
  total: number;
  busy: number;
  idle: number;
}

export interface LauncherJob {
  id: string;
  state: JobState;
  hubs: number;
  slots: number;
  busy: number;
}

export interface JobCounts {
  pending: number;
  running: number;
  ending: number;
}

export interface Launcher {
  id: string;
  name: string;
  kind: string;
  minimum: number;
  maximum: number;
  slots_per_job: number;
  reason: string;
  jobs: LauncherJob[];
  updated: number;
  counts: JobCounts;
}

export interface Queue {
  name: string;
  queued: number;
  max_wait: number;
}

export interface NameStats {
  name: string;
  count: number;
  failed: number;
  mean_run: number;
  min_run: number;
  max_run: number;
  mean_wait: number;
  max_wait: number;
}

export interface Unschedulable {
  id?: string;
  name: string;
  user: string;
  priority: number;
  reason?: string | null;
}

export interface Failure {
  id?: string;
  name: string;
  user: string;
  time: number;
  error?: string;
}

export interface TimelineEntry {
  worker: string | null;
  hub: string | null;
  id?: string;
  name: string;
  user: string;
  start: number;
  end: number;
  state: TaskState;
}

export interface Viewer {
  user: string | null;
  admin: boolean;
  team: boolean;
}

export interface Team {
  attached: string;
  reachable: boolean;
  unreachable_since: number | null;
  error: string | null;
  identity: string;
  message: string;
}

export interface Snapshot {
  schema: number;
  time: number;
  balancer: BalancerInfo;
  health: Health;
  totals: Totals;
  rejected: Record<string, number>;
  rates: Rates;
  throughput: ThroughputPoint[];
  users: User[];
  share_window: number;
  fair_share: FairShare;
  workers: WorkerCounts;
  hubs: Hub[];
  launchers: Launcher[];
  queues: Queue[];
  stats: NameStats[];
  unschedulable: Unschedulable[];
  /** Newest first. */
  recent_failures: Failure[];
  timeline: TimelineEntry[];
  viewer?: Viewer;
  team?: Team;
}

export interface TaskRow {
  id: string;
  name: string;
  user: string;
  priority: number;
  state: TaskState;
  progress: number | null;
  submitted: number;
  started: number | null;
  ended: number | null;
  worker: string | null;
  hub: string | null;
  attempts: number;
  error: string | null;
  reason: string | null;
  wait_time: number | null;
  run_time: number | null;
}

export interface TaskDetail extends TaskRow {
  retries: number;
  args: string | null;
  traceback: string | null;
  stdout: string | null;
  stderr: string | null;
}

export interface TaskList {
  schema: number;
  total: number;
  tasks: TaskRow[];
}

export interface HealthReport {
  balancer: string;
  hubs: number;
  workers: number;
  queued: number;
  running: number;
  silent_hubs: string[];
  unhealthy_hubs: string[];
  overdue: string[];
  unschedulable: number;
}

export interface SnapshotMessage {
  type: 'snapshot';
  schema: number;
  data: Snapshot;
}

export interface TasksMessage {
  type: 'tasks';
  schema: number;
  events: TaskRow[];
  dropped?: number;
}

/** The result of looking at a `plb/api/status` answer or a websocket `snapshot`. */
export type SnapshotCheck =
  | { ok: true; snapshot: Snapshot }
  | { ok: false; problem: string };

/**
 * A snapshot of this schema, or the sentence to show instead: the server speaks another
 * version (jupyter_plb and this extension come from different releases) or sent no snapshot.
 */
export function checkSnapshot(raw: unknown): SnapshotCheck {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    return { ok: false, problem: 'The server sent no snapshot.' };
  }
  const found = (raw as { schema?: unknown }).schema;
  if (found === SCHEMA_VERSION) {
    return { ok: true, snapshot: raw as Snapshot };
  }
  const said =
    found === undefined || found === null
      ? 'no schema version'
      : `snapshot schema ${String(found)}`;
  return {
    ok: false,
    problem:
      `The balancer speaks ${said}, this panel understands schema ${SCHEMA_VERSION}: ` +
      'install the same jupyter_plb version in the Jupyter server and in JupyterLab, then reload.'
  };
}
