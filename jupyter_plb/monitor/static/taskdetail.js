/* jupyter_plb monitor: the task detail view.
 *
 * Opens on the #task=<id> fragment (the task links of the tasks and failures tables set it, and
 * a link to the page with it opens the task at once), shows GET api/tasks/<id> in the
 * <dialog id="task-detail">, refreshes it while the task is queued or running, and drops the
 * fragment when the dialog closes. Under the page's strict CSP: no inline code, every server
 * string rendered as text.
 *
 * Hooks for browser tests: #task-detail[open][data-task-id][data-state], #task-detail-traceback,
 * #task-detail-stdout, #task-detail-stderr, #task-detail-args, #task-detail-fields dd[data-field].
 */
'use strict';

(() => {
  const LIVE_REFRESH_MS = 2000;
  const LIVE_STATES = ['queued', 'running'];
  const KNOWN_STATES = ['queued', 'running', 'done', 'failed', 'cancelled'];
  const FRAGMENT = /^#task=(.+)$/;

  const $ = (id) => document.getElementById(id);
  const str = (x) => (x === null || x === undefined ? '' : String(x));
  const num = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : null);

  const fmtDur = (x) => {
    const s = num(x);
    if (s === null) return '–';
    if (s < 1e-3) return `${Math.round(Math.max(0, s) * 1e6)} µs`;
    if (s < 1) return `${+(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
    if (s < 120) return `${s.toFixed(2)} s`;
    if (s < 7200) return `${Math.floor(s / 60)}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  };
  const fmtTime = (t) => {
    const n = num(t);
    return n === null ? '–' : new Date(n * 1000).toISOString().replace('T', ' ').replace(/Z$/, ' UTC');
  };

  let current = null;     // id shown
  let timer = null;
  let generation = 0;     // answers for a task no longer shown are dropped

  function taskIdFromHash() {
    const m = FRAGMENT.exec(window.location.hash);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (_) {
      return null;
    }
  }

  async function fetchTask(id) {
    const resp = await fetch(new URL(`api/tasks/${encodeURIComponent(id)}`, window.location.href), {
      headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store',
    });
    let body = null;
    try {
      body = await resp.json();
    } catch (_) { /* not JSON */ }
    if (!resp.ok) {
      const why = body && (body.message || body.reason);
      throw new Error(resp.status === 404 ? `no such task: ${str(why) || 'unknown id'}` : `HTTP ${resp.status} ${str(why)}`);
    }
    return body && typeof body === 'object' ? body : {};
  }

  function setBlock(field, text) {
    const value = str(text);
    $(`task-detail-${field}`).textContent = value;
    document.querySelector(`#task-detail .td-block[data-field="${field}"]`).hidden = value === '';
  }

  function render(t) {
    const dialog = $('task-detail');
    const stateName = str(t.state);
    dialog.dataset.taskId = str(t.id);
    dialog.dataset.state = stateName;
    $('task-detail-id').textContent = str(t.id);
    const pill = $('task-detail-state');
    pill.className = `pill st-${KNOWN_STATES.includes(stateName) ? stateName : 'other'}`;
    pill.textContent = stateName || '?';
    const rows = [  // read in pairs (two columns): submitted → waited, started → ran
      ['name', 'Name', str(t.name)],
      ['user', 'User', str(t.user)],
      ['worker', 'Worker', str(t.worker) || '–'],
      ['hub', 'Hub', str(t.hub) || '–'],
      ['priority', 'Priority', str(t.priority)],
      ['attempts', 'Attempts / retries', `${str(t.attempts ?? 0)} / ${str(t.retries ?? 0)}`],
      ['submitted', 'Submitted', fmtTime(t.submitted)],
      ['wait_time', 'Waited', fmtDur(t.wait_time)],
      ['started', 'Started', fmtTime(t.started)],
      ['run_time', 'Ran', fmtDur(t.run_time)],
      ['ended', 'Ended', fmtTime(t.ended)],
    ];
    if (t.reason) rows.push(['reason', 'Waiting because', str(t.reason)]);
    if (num(t.progress) !== null && LIVE_STATES.includes(stateName)) rows.push(['progress', 'Progress', `${t.progress} %`]);
    const dl = $('task-detail-fields');
    dl.replaceChildren();
    for (const [key, label, value] of rows) {
      const dt = document.createElement('dt');
      dt.textContent = label;
      const dd = document.createElement('dd');
      dd.dataset.field = key;
      dd.textContent = value;
      dl.append(dt, dd);
    }
    setBlock('args', t.args);
    setBlock('error', t.error);
    setBlock('traceback', t.traceback);
    setBlock('stdout', t.stdout);
    setBlock('stderr', t.stderr);
  }

  function setStatus(text, level) {
    const s = $('task-detail-status');
    s.textContent = text;
    s.dataset.level = level || '';
    s.hidden = !text;
  }

  async function load(id) {
    const mine = ++generation;
    clearTimeout(timer);
    try {
      const t = await fetchTask(id);
      if (mine !== generation) return;
      render(t);
      setStatus(LIVE_STATES.includes(str(t.state)) ? 'live: refreshed every 2 s' : '');
      if (LIVE_STATES.includes(str(t.state))) timer = setTimeout(() => load(id), LIVE_REFRESH_MS);
    } catch (e) {
      if (mine !== generation) return;
      setStatus(`cannot load task ${id}: ${e.message}`, 'error');
    }
  }

  function open(id) {
    const dialog = $('task-detail');
    if (current !== id) {
      current = id;
      dialog.dataset.taskId = id;
      dialog.dataset.state = '';
      $('task-detail-id').textContent = id;
      $('task-detail-fields').replaceChildren();
      for (const field of ['args', 'error', 'traceback', 'stdout', 'stderr']) setBlock(field, '');
      setStatus('loading…');
    }
    if (!dialog.open) dialog.showModal();
    load(id);
  }

  function onClosed() {
    current = null;
    generation++;
    clearTimeout(timer);
    if (taskIdFromHash() !== null) {
      window.history.replaceState(null, '', window.location.pathname + window.location.search);
    }
  }

  function follow() {
    const id = taskIdFromHash();
    if (id !== null) open(id);
    else if ($('task-detail').open) $('task-detail').close();
  }

  function init() {
    const dialog = $('task-detail');
    $('task-detail-close').addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', onClosed);
    dialog.addEventListener('click', (ev) => {
      if (ev.target === dialog) dialog.close();  // a click on the backdrop
    });
    window.addEventListener('hashchange', follow);
    follow();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
