/**
 * The panel's "Batch jobs" section: what each adapter (`plb slurm --adapt`,
 * `Client.adapt`) reports in `snapshot.launchers` — its bounds, how many jobs
 * are pending / running / ending, and each job's id and hubs.
 *
 * `jobRows` is pure (tested without a DOM); `JobsSection` draws it, with text
 * only (no HTML from the server). The section hides itself while no launcher
 * reports.
 */
import { el } from './dom';

export type JobState = 'pending' | 'running' | 'ending';

const STATES: JobState[] = ['pending', 'running', 'ending'];

export interface IJobRow {
  key: string;
  id: string;
  state: JobState;
  hubs: number;
  busy: number;
  slots: number;
}

export interface ILauncherRow {
  key: string;
  title: string;
  summary: string;
  reason: string;
  jobs: IJobRow[];
}

function record(x: unknown): Record<string, unknown> {
  return x && typeof x === 'object' && !Array.isArray(x)
    ? (x as Record<string, unknown>)
    : {};
}

function list(x: unknown): unknown[] {
  return Array.isArray(x) ? x : [];
}

function count(x: unknown): number {
  const n = Number(x);
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}

function text(x: unknown): string {
  return x === null || x === undefined ? '' : String(x);
}

/** The launchers of a snapshot, ready to draw (bad fields become blanks or 0). */
export function jobRows(snapshot: unknown): ILauncherRow[] {
  return list(record(snapshot).launchers).map(raw => {
    const l = record(raw);
    const jobs = list(l.jobs).map(rawJob => {
      const j = record(rawJob);
      const state = STATES.includes(j.state as JobState)
        ? (j.state as JobState)
        : 'ending';
      return {
        key: text(j.id),
        id: text(j.id),
        state,
        hubs: count(j.hubs),
        busy: count(j.busy),
        slots: count(j.slots)
      };
    });
    const counts = STATES.map(
      s => `${jobs.filter(j => j.state === s).length} ${s}`
    );
    return {
      key: text(l.id),
      title: `${text(l.name)} (${text(l.kind)})`,
      summary: `${counts.join(', ')} · ${count(l.minimum)}–${count(l.maximum)} jobs`,
      reason: text(l.reason),
      jobs
    };
  });
}


/** The section's DOM inside `parent`; call `update` with each snapshot. */
export class JobsSection {
  constructor(readonly parent: HTMLElement) {
    this._title = el('h3', 'jp-plb-section-title', 'Batch jobs');
    this._list = el('div', 'jp-plb-jobs');
    parent.append(this._title, this._list);
    parent.hidden = true;
  }

  update(snapshot: unknown): void {
    const launchers = jobRows(snapshot);
    const drawn = JSON.stringify(launchers);
    if (drawn === this._drawn) {
      return; // unchanged: keep the nodes (no churn twice a second)
    }
    this._drawn = drawn;
    this.parent.hidden = launchers.length === 0;
    const total = launchers.reduce((n, l) => n + l.jobs.length, 0);
    this._title.textContent = `Batch jobs (${total})`;
    this._list.replaceChildren(...launchers.map(l => this._launcher(l)));
  }

  private _launcher(l: ILauncherRow): HTMLElement {
    const node = el('div', 'jp-plb-launcher');
    node.dataset.key = l.key;
    const head = el('div', 'jp-plb-launcher-head');
    head.append(
      el('span', 'jp-plb-launcher-name', l.title),
      el('span', 'jp-plb-muted jp-plb-small', l.summary)
    );
    head.title = l.reason;
    node.appendChild(head);
    for (const j of l.jobs) {
      const row = el('div', 'jp-plb-job-row');
      row.dataset.key = j.key;
      row.dataset.state = j.state;
      row.append(
        el('span', 'jp-plb-job-id', j.id),
        el('span', `jp-plb-job-state jp-plb-job-${j.state}`, j.state),
        el(
          'span',
          'jp-plb-muted jp-plb-small',
          j.hubs ? `${j.hubs} hub · ${j.busy}/${j.slots} busy` : 'no hub yet'
        )
      );
      node.appendChild(row);
    }
    return node;
  }

  private _title: HTMLElement;
  private _list: HTMLElement;
  private _drawn = '';
}
