/**
 * The panel's "Fair share" section (see teamModel.ts): a table of users with their share of the
 * worker slots over the last minutes, who you are in a team pool, and a banner while the team
 * balancer does not answer. Built once with createElement; text only through textContent.
 */
import { Snapshot } from './schema';
import { teamView } from './teamModel';
import { el } from './dom';


export class TeamSection {
  constructor(section: HTMLElement) {
    const title = el('h3', 'jp-plb-section-title', 'Fair share ');
    this._window = el('span', 'jp-plb-muted jp-plb-small');
    title.appendChild(this._window);
    this._identity = el('div', 'jp-plb-team-identity jp-plb-small');
    this._unreachable = el('div', 'jp-plb-team-unreachable');
    this._rows = el('div', 'jp-plb-share-rows');
    this._empty = el('div', 'jp-plb-muted jp-plb-small', 'No user has used a worker slot lately.');
    section.classList.add('jp-plb-team');
    section.append(title, this._identity, this._unreachable, this._rows, this._empty);
  }

  /** Show a snapshot (checked with `checkSnapshot`). */
  update(snapshot: Snapshot): void {
    const view = teamView(snapshot);
    this._window.textContent = `of the slots, ${view.windowLabel}`;
    this._identity.textContent = view.identity;
    this._identity.hidden = view.identity === '';
    this._unreachable.textContent = view.unreachable;
    this._unreachable.hidden = view.unreachable === '';
    this._rows.replaceChildren(
      ...view.rows.map(row => {
        const line = el('div', 'jp-plb-share-row');
        line.classList.toggle('jp-plb-mod-you', row.isViewer);
        const head = el('div', 'jp-plb-share-head');
        const name = el('span', 'jp-plb-share-user jp-plb-ellipsis', row.user);
        name.title = row.user;
        head.appendChild(name);
        if (row.isViewer) {
          head.appendChild(el('span', 'jp-plb-share-you', 'you'));
        }
        head.appendChild(
          el(
            'span',
            'jp-plb-share-numbers',
            `${row.shareText} of slots · ${row.running} running · ${row.queued} queued`
          )
        );
        const bar = el('div', 'jp-plb-share-bar');
        const fill = el('span', 'jp-plb-share-fill');
        fill.style.width = `${Math.round(row.share * 100)}%`;
        bar.appendChild(fill);
        line.append(head, bar);
        return line;
      })
    );
    this._empty.hidden = view.rows.length > 0;
  }

  private _window: HTMLElement;
  private _identity: HTMLElement;
  private _unreachable: HTMLElement;
  private _rows: HTMLElement;
  private _empty: HTMLElement;
}
