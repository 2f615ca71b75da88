/**
 * The panel's "Batch jobs" section: what each adapter (`plb slurm --adapt`,
 * `Client.adapt`) reports in `snapshot.launchers` — its bounds, how many jobs
 * are pending / running / ending, and each job's id and hubs.
 *
 * `jobRows` is pure (tested without a DOM); `JobsSection` draws it, with text
 * only (no HTML from the server). The section hides itself while no launcher
 * reports. The counts are the balancer's (`launchers[].counts`).
 */
import { el } from './dom';
import { JobState, Snapshot } from './schema';

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

const STATES: JobState[] = ['pending', 'running', 'ending'];

/** The launchers of a snapshot, ready to draw (the balancer counted the jobs by state). */
export function jobRows(snapshot: Snapshot): ILauncherRow[] {
  return snapshot.launchers.map(l => ({
    key: l.id,
    title: `${l.name} (${l.kind})`,
    summary: `${STATES.map(s => `${l.counts[s]} ${s}`).join(', ')} · ${l.minimum}–${l.maximum} jobs`,
    reason: l.reason,
    // the state names a CSS modifier: only from the fixed set
    jobs: l.jobs.map(j => ({ key: j.id, ...j, state: STATES.includes(j.state) ? j.state : 'ending' }))
  }));
}


/** The section's DOM inside `parent`; call `update` with each snapshot. */
export class JobsSection {
  constructor(readonly parent: HTMLElement) {
    this._title = el('h3', 'jp-plb-section-title', 'Batch jobs');
    this._list = el('div', 'jp-plb-jobs');
    parent.append(this._title, this._list);
    parent.hidden = true;
  }

  update(snapshot: Snapshot): void {
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
