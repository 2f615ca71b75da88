/* jupyter_plb monitor: the "Fair share" section (per user: running, queued, share of the worker
 * slots over the last minutes) and, for a server attached to a team balancer, who you are and
 * whether the team balancer answers. Everything it shows is computed by the balancer's snapshot
 * (`users[].share`, `share_window`, `viewer`, `team`); this file only displays it, as text.
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

  function minutes(seconds) {
    const m = Math.round(num(seconds) / 60);
    return m >= 1 ? `last ${m} min` : `last ${Math.round(num(seconds))} s`;
  }

  function clock(epoch) {
    return new Date(num(epoch) * 1000).toLocaleTimeString([], { hour12: false });
  }

  /** The rows the table shows: busiest share first, then by name. */
  function shareRows(snap) {
    return arr(snap.users)
      .map((u) => obj(u))
      .map((u) => ({ user: str(u.user), running: num(u.running), queued: num(u.queued), share: num(u.share) }))
      .filter((u) => u.running || u.queued || u.share)
      .sort((a, b) => b.share - a.share || b.running - a.running || a.user.localeCompare(b.user));
  }

  function render(snap) {
    const panel = document.getElementById('share-panel');
    if (!panel) return;
    const viewer = obj(snap.viewer);
    const team = obj(snap.team);
    document.getElementById('share-window').textContent = minutes(snap.share_window || 300);

    const who = document.getElementById('share-viewer');
    const lines = [];
    if (viewer.team) lines.push(`Team pool · you are ${str(viewer.user) || 'the balancer'}${viewer.admin ? ' (admin)' : ''}`);
    if (team.attached) lines.push(`attached to ${str(team.attached)}`);
    who.textContent = lines.join(' · ');
    who.hidden = lines.length === 0;

    const banner = document.getElementById('share-unreachable');
    const lost = team.attached && team.reachable === false && team.unreachable_since;
    banner.hidden = !lost;
    banner.textContent = lost ? `Team balancer unreachable since ${clock(team.unreachable_since)}: ${str(team.error)}` : '';

    const rows = shareRows(snap);
    const body = document.querySelector('#share-table tbody');
    body.replaceChildren(...rows.map((u) => {
      const tr = el('tr');
      if (viewer.user && u.user === viewer.user) tr.className = 'share-you';
      tr.append(el('td', 'user', u.user));
      const bar = el('div', 'bar');
      const fill = el('span', 'seg-running');
      fill.style.width = `${Math.round(Math.min(1, u.share) * 100)}%`;
      bar.append(fill);
      const barCell = el('td', 'bar-col');
      barCell.append(bar);
      tr.append(
        barCell,
        el('td', 'num', `${(u.share * 100).toFixed(0)}%`),
        el('td', 'num', String(u.running)),
        el('td', 'num', String(u.queued)),
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
