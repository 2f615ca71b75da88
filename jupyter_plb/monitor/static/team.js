/* jupyter_plb monitor: the "Fair share" section (per user: running, queued, share of the worker
 * slots over the last minutes) and, for a server attached to a team balancer, who you are and
 * whether the team balancer answers. Everything it shows is computed by the balancer's snapshot
 * (`fair_share`: ranked, in percent; `team.identity`, `team.message`); this file only displays
 * it, as text.
 * monitor.js hands it each snapshot with a `plb-snapshot` event on the document.
 */
(() => {
  'use strict';

  const obj = (v) => (v && typeof v === 'object' && !Array.isArray(v) ? v : {});
  const arr = (v) => (Array.isArray(v) ? v : []);
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  const str = (v) => (v === null || v === undefined ? '' : String(v));

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function render(snap) {
    const panel = document.getElementById('share-panel');
    if (!panel) return;
    const viewer = obj(snap.viewer);
    const team = obj(snap.team);
    const share = obj(snap.fair_share);
    document.getElementById('share-window').textContent = str(share.window_label);

    const who = document.getElementById('share-viewer');
    const lines = [];
    if (team.identity) lines.push(str(team.identity));
    if (team.attached) lines.push(`attached to ${str(team.attached)}`);
    who.textContent = lines.join(' · ');
    who.hidden = lines.length === 0;

    const banner = document.getElementById('share-unreachable');
    banner.hidden = !team.message;
    banner.textContent = str(team.message);

    const rows = arr(share.users).map(obj);  // ranked by the balancer: the biggest share first
    const body = document.querySelector('#share-table tbody');
    body.replaceChildren(...rows.map((u) => {
      const tr = el('tr');
      if (viewer.user && u.user === viewer.user) tr.className = 'share-you';
      tr.append(el('td', 'user', str(u.user)));
      const bar = el('div', 'bar');
      const fill = el('span', 'seg-running');
      fill.style.width = `${num(u.share_percent)}%`;
      bar.append(fill);
      const barCell = el('td', 'bar-col');
      barCell.append(bar);
      tr.append(
        barCell,
        el('td', 'num', `${num(u.share_percent)}%`),
        el('td', 'num', String(num(u.running))),
        el('td', 'num', String(num(u.queued))),
      );
      return tr;
    }));
    document.getElementById('share-table').hidden = rows.length === 0;
    document.getElementById('share-empty').hidden = rows.length > 0;
  }

  document.addEventListener('plb-snapshot', (event) => {
    try {
      render(obj(event.detail));
    } catch (e) {
      console.error('monitor: the fair share section failed', e);
    }
  });
})();
