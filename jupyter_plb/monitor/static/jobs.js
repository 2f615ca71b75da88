/* jupyter_plb monitor: the "Batch jobs" section.
 *
 * Listens to the `plb:snapshot` event monitor.js sends after each rendered snapshot and shows
 * `snapshot.launchers`: for each adapter (plb slurm --adapt, Client.adapt) its bounds, the counts
 * of pending / running / ending jobs, and one row per job with its id and its hubs' slots.
 * The section is built here and placed after the workers panel; it is hidden while no launcher
 * reports. Server strings are set as text only (strict CSP, no HTML parsing).
 *
 * Hooks for browser tests: #jobs-panel[data-launchers=N],
 *   #jobs-table tr.job-row[data-key=<launcher id>/<job id>][data-state]
 */
'use strict';

(() => {
  const arr = (x) => (Array.isArray(x) ? x : []);
  const obj = (x) => (x && typeof x === 'object' && !Array.isArray(x) ? x : {});
  const str = (x) => (x === null || x === undefined ? '' : String(x));
  const STATES = ['pending', 'running', 'ending'];

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function build() {
    const section = el('section', 'panel span-all');
    section.id = 'jobs-panel';
    section.hidden = true;
    const title = el('h2', '', 'Batch jobs ');
    const count = el('span', 'count');
    count.id = 'jobs-count';
    title.appendChild(count);
    section.appendChild(title);
    const wrap = el('div', 'table-wrap');
    const table = el('table', 'data compact');
    table.id = 'jobs-table';
    const head = el('tr');
    for (const [label, cls] of [['Launcher', ''], ['Job', ''], ['State', ''], ['Hubs', 'num'],
      ['Busy / slots', 'num']]) {
      const th = el('th', cls, label);
      th.scope = 'col';
      head.appendChild(th);
    }
    table.appendChild(el('thead')).appendChild(head);
    table.appendChild(el('tbody'));
    wrap.appendChild(table);
    section.appendChild(wrap);
    const workers = document.getElementById('workers-panel');
    if (workers) workers.after(section);
    else (document.querySelector('main') || document.body).appendChild(section);
    return section;
  }

  function launcherRow(l) {
    const tr = el('tr', 'launcher-row');
    const counts = obj(l.counts);
    const td = el('td', '', `${str(l.name)} (${str(l.kind)})`);
    td.title = str(l.id);
    tr.appendChild(td);
    const summary = STATES.map((s) => `${Number(counts[s]) || 0} ${s}`).join(', ');
    const info = el('td', 'muted', `${summary} · ${str(l.minimum)} to ${str(l.maximum)} jobs`);
    info.colSpan = 4;
    if (l.reason) info.title = str(l.reason);
    tr.appendChild(info);
    return tr;
  }

  function jobRow(l, j) {
    const state = STATES.includes(j.state) ? j.state : 'ending';
    const tr = el('tr', 'job-row');
    tr.dataset.key = `${str(l.id)}/${str(j.id)}`;
    tr.dataset.state = state;
    tr.appendChild(el('td', 'muted', ''));
    tr.appendChild(el('td', 'mono', str(j.id)));
    const cell = el('td', 'state-cell');
    cell.appendChild(el('span', `job-state job-${state}`, state));
    tr.appendChild(cell);
    tr.appendChild(el('td', 'num', str(Number(j.hubs) || 0)));
    tr.appendChild(el('td', 'num', `${Number(j.busy) || 0} / ${Number(j.slots) || 0}`));
    return tr;
  }

  let section = null;
  let drawn = null;
  function render(snap) {
    section = section || build();
    const launchers = arr(obj(snap).launchers).map(obj);
    const key = JSON.stringify(launchers.map((l) => [l.id, l.name, l.kind, l.minimum, l.maximum, l.reason, l.jobs]));
    if (key === drawn) return;  // unchanged: keep the rows
    drawn = key;
    section.hidden = launchers.length === 0;
    section.dataset.launchers = String(launchers.length);
    const body = section.querySelector('tbody');
    const rows = [];
    let total = 0;
    for (const l of launchers) {
      rows.push(launcherRow(l));
      for (const j of arr(l.jobs).map(obj)) {
        rows.push(jobRow(l, j));
        total++;
      }
    }
    body.replaceChildren(...rows);
    document.getElementById('jobs-count').textContent =
      launchers.length ? `${total} job${total === 1 ? '' : 's'}` : '';
  }

  document.addEventListener('plb:snapshot', (event) => {
    try {
      render(event.detail);
    } catch (e) {
      console.error('monitor: the jobs section failed to render', e);
    }
  });
})();
