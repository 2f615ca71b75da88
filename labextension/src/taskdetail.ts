/**
 * A task's detail (`GET plb/api/tasks/<id>`, docs/monitor-api.md) as the panel shows it.
 *
 * Pure view-model code: no DOM, no JupyterLab imports (unit-tested with jest). Every value
 * coming from the server is coerced to text here and rendered with `textContent`.
 */
import { asNumberOrNull, asText, formatDuration } from './model';

/** States the panel has a style for; anything else is "other". */
export const TASK_STATES = ['queued', 'running', 'done', 'failed', 'cancelled'];

/** States in which a task still changes (the dialog refreshes them). */
export const LIVE_TASK_STATES = ['queued', 'running'];

export interface ITaskField {
  key: string;
  label: string;
  value: string;
}

export interface ITaskBlock {
  key: 'args' | 'error' | 'traceback' | 'stdout' | 'stderr';
  label: string;
  text: string;
}

export interface ITaskDetail {
  id: string;
  name: string;
  state: string;
  /** A modifier from a fixed set: `jp-plb-mod-<state>` or `jp-plb-mod-other`. */
  stateClass: string;
  live: boolean;
  fields: ITaskField[];
  /** Only the blocks that have text, in a fixed order. */
  blocks: ITaskBlock[];
}

/** Epoch seconds → "2026-12-03 11:52:12 UTC", or "–". */
export function formatTime(value: unknown): string {
  const t = asNumberOrNull(value);
  if (t === null) {
    return '–';
  }
  return new Date(t * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

/** The path segments of a task's detail route, the id escaped as one segment. */
export function taskDetailPath(id: string): string[] {
  return ['plb', 'api', 'tasks', encodeURIComponent(id)];
}

/** Raw JSON of `GET plb/api/tasks/<id>` → what the detail dialog renders. */
export function taskDetailModel(raw: unknown): ITaskDetail {
  const d =
    typeof raw === 'object' && raw !== null && !Array.isArray(raw)
      ? (raw as { [key: string]: unknown })
      : {};
  const state = asText(d.state);
  const known = TASK_STATES.includes(state);
  const attempts = asNumberOrNull(d.attempts) ?? 0;
  const retries = asNumberOrNull(d.retries) ?? 0;
  // Read in pairs (two columns): submitted → waited, started → ran.
  const fields: ITaskField[] = [
    { key: 'user', label: 'User', value: asText(d.user) },
    { key: 'priority', label: 'Priority', value: asText(d.priority) },
    { key: 'worker', label: 'Worker', value: asText(d.worker) || '–' },
    { key: 'hub', label: 'Hub', value: asText(d.hub) || '–' },
    { key: 'submitted', label: 'Submitted', value: formatTime(d.submitted) },
    { key: 'wait_time', label: 'Waited', value: formatDuration(asNumberOrNull(d.wait_time)) },
    { key: 'started', label: 'Started', value: formatTime(d.started) },
    { key: 'run_time', label: 'Ran', value: formatDuration(asNumberOrNull(d.run_time)) },
    { key: 'ended', label: 'Ended', value: formatTime(d.ended) },
    { key: 'attempts', label: 'Attempts / retries', value: `${attempts} / ${retries}` }
  ];
  const reason = asText(d.reason);
  if (reason) {
    fields.push({ key: 'reason', label: 'Waiting because', value: reason });
  }
  const blocks: ITaskBlock[] = (
    [
      ['args', 'Arguments'],
      ['error', 'Error'],
      ['traceback', 'Traceback'],
      ['stdout', 'stdout'],
      ['stderr', 'stderr']
    ] as [ITaskBlock['key'], string][]
  )
    .map(([key, label]) => ({ key, label, text: asText(d[key]) }))
    .filter(block => block.text !== '');
  return {
    id: asText(d.id),
    name: asText(d.name),
    state: state || '?',
    stateClass: `jp-plb-mod-${known ? state : 'other'}`,
    live: LIVE_TASK_STATES.includes(state),
    fields,
    blocks
  };
}
