/**
 * Unit tests for the pure view-model module (no DOM, no JupyterLab).
 */
import {
  asNumberOrNull,
  asText,
  errorState,
  formatCount,
  formatDuration,
  formatPriorityRange,
  formatRate,
  healthBadge,
  hubRows,
  hubStateBadge,
  isAddressableUser,
  normaliseSnapshot,
  parseEventMessage,
  sparklinePath,
  SPARK_HEIGHT,
  SPARK_WIDTH,
  totalCells,
  userCancelPath,
  userRows,
  viewModel,
  withToken,
  workerRows
} from '../src/model';

/** The sample snapshot of docs/monitor-api.md. */
function sample(): any {
  return {
    time: 1764424800.25,
    balancer: {
      id: 'lb_3f2a9c1e',
      version: '0.1.0',
      started: 1764424700.0,
      uptime: 100.25,
      address: 'tcp://127.0.0.1',
      ports: { clients: 5799, workers: 5699, health: 5999 }
    },
    health: { status: 'ok', messages: [], checked: 1764424800.0 },
    totals: {
      queued: 12,
      running: 4,
      done: 1500,
      failed: 2,
      cancelled: 1,
      submitted: 1519,
      bad_messages: 0
    },
    rates: { done_per_s: 812.5, submitted_per_s: 900.0 },
    throughput: [
      { t: 1764424799.0, done: 800, failed: 0, submitted: 850, queued: 10 }
    ],
    users: [
      { user: 'alice', queued: 10, running: 2, done: 700, failed: 1, cancelled: 0 }
    ],
    hubs: [
      {
        id: 'hub_9c1e3f2a',
        name: 'local',
        host: 'myhost',
        pid: 4242,
        state: 'ok',
        last_seen: 1764424800.1,
        tasks: ['HELLO'],
        local: true,
        workers: [
          {
            id: 'worker_c0b28c1f',
            state: 'busy',
            min_p: 0,
            max_p: 9,
            process_p: 10,
            pid: 4250,
            done: 740,
            task: {
              id: 't_1',
              name: 'HELLO',
              user: 'alice',
              started: 1764424800.0
            }
          }
        ]
      }
    ],
    queues: [{ name: 'HELLO', queued: 10, max_wait: 1.5 }],
    stats: [],
    unschedulable: [
      {
        id: 't_2',
        name: 'HELLO',
        user: 'bob',
        priority: 5000,
        reason: 'no connected worker accepts priority 5000 (ranges 0–9, 10–99)'
      }
    ],
    recent_failures: [
      {
        id: 't_3',
        name: 'f',
        user: 'alice',
        error: 'ZeroDivisionError: division by zero',
        time: 1764424790.0
      }
    ],
    timeline: []
  };
}

const XSS = '<img src=x onerror=alert(1)>';
const XSS2 = '"><script>alert("x")</script>';

describe('normaliseSnapshot', () => {
  it('keeps the documented sample intact', () => {
    const s = normaliseSnapshot(sample());
    expect(s.time).toBe(1764424800.25);
    expect(s.balancer.id).toBe('lb_3f2a9c1e');
    expect(s.health.status).toBe('ok');
    expect(s.totals.done).toBe(1500);
    expect(s.rates.done_per_s).toBe(812.5);
    expect(s.hubs).toHaveLength(1);
    expect(s.hubs[0].workers[0].task?.name).toBe('HELLO');
    expect(s.hubs[0].local).toBe(true);
    expect(s.users[0].user).toBe('alice');
  });

  it.each([undefined, null, 42, 'text', [], true])(
    'never throws on a non-object (%p) and gives neutral defaults',
    raw => {
      const s = normaliseSnapshot(raw);
      expect(s.time).toBeNull();
      expect(s.health.status).toBe('unknown');
      expect(s.health.messages).toEqual([]);
      expect(s.totals.queued).toBe(0);
      expect(s.hubs).toEqual([]);
      expect(s.users).toEqual([]);
      expect(s.throughput).toEqual([]);
    }
  );

  it('fills missing and wrongly typed fields', () => {
    const s = normaliseSnapshot({
      health: { status: 'PANIC', messages: ['a', 3, null, { x: 1 }, ''] },
      totals: { queued: '7', running: -3, done: 'lots', failed: NaN },
      hubs: [
        null,
        'hub',
        { workers: [{}, null, { state: 'busy', task: 'not-an-object' }] }
      ],
      users: [{ user: 12345, queued: '2' }],
      throughput: [{ done: '5' }, 7, { t: 1 }]
    });
    expect(s.health.status).toBe('unknown');
    expect(s.health.messages).toEqual(['a', '3']);
    expect(s.totals).toMatchObject({ queued: 7, running: 0, done: 0, failed: 0 });
    expect(s.hubs).toHaveLength(1);
    expect(s.hubs[0]).toMatchObject({ id: '', name: '', state: 'unknown', local: false });
    expect(s.hubs[0].workers).toHaveLength(2);
    expect(s.hubs[0].workers[0]).toMatchObject({ id: '', state: 'unknown', min_p: null, task: null });
    expect(s.hubs[0].workers[1].task).toBeNull();
    expect(s.users[0]).toMatchObject({ user: '12345', queued: 2, running: 0 });
    expect(s.throughput).toEqual([
      { t: 0, done: 5, failed: 0, submitted: 0, queued: 0 },
      { t: 1, done: 0, failed: 0, submitted: 0, queued: 0 }
    ]);
  });

  it('does not treat `local: "yes"` as a local hub', () => {
    const s = normaliseSnapshot({ hubs: [{ id: 'h', local: 'yes' }] });
    expect(s.hubs[0].local).toBe(false);
  });
});

describe('hostile strings stay strings', () => {
  const hostile = (): any => {
    const s = sample();
    s.hubs[0].name = XSS;
    s.hubs[0].host = XSS2;
    s.hubs[0].workers[0].id = XSS;
    s.hubs[0].workers[0].task.name = XSS2;
    s.hubs[0].workers[0].task.user = XSS;
    s.users[0].user = XSS;
    s.health = { status: 'warning', messages: [XSS] };
    s.recent_failures[0].error = XSS2;
    s.balancer.id = XSS;
    return s;
  };

  it('passes the exact text through to the rows', () => {
    const vm = viewModel(hostile());
    expect(vm.hubs[0].name).toBe(XSS);
    expect(vm.hubs[0].host).toBe(XSS2);
    expect(vm.hubs[0].workers[0].id).toBe(XSS);
    expect(vm.hubs[0].workers[0].taskName).toBe(XSS2);
    expect(vm.hubs[0].workers[0].taskUser).toBe(XSS);
    expect(vm.users[0].user).toBe(XSS);
    expect(vm.healthMessages).toEqual([XSS]);
    expect(vm.badge.title).toBe(XSS);
    expect(vm.failures[0].error).toBe(XSS2);
    expect(vm.balancerLine.startsWith(XSS)).toBe(true);
  });

  it('never lets data choose a CSS class', () => {
    const s = hostile();
    s.hubs[0].state = 'ok" onmouseover="x';
    s.hubs[0].workers[0].state = 'busy jp-evil';
    s.health.status = 'ok jp-evil';
    const vm = viewModel(s);
    const allowed = ['jp-plb-mod-ok', 'jp-plb-mod-warning', 'jp-plb-mod-error', 'jp-plb-mod-unknown'];
    expect(allowed).toContain(vm.badge.className);
    expect(allowed).toContain(vm.hubs[0].badge.className);
    expect(vm.hubs[0].badge.className).toBe('jp-plb-mod-unknown');
    expect(vm.hubs[0].workers[0].stateClass).toBe('other');
    expect(vm.badge.level).toBe('unknown');
  });

  it('keeps hostile user names inside one URL path segment', () => {
    const path = userCancelPath('../../api/kernels?x=1#y');
    expect(path).toHaveLength(5);
    expect(path[3]).toBe('..%2F..%2Fapi%2Fkernels%3Fx%3D1%23y');
    expect(userCancelPath(XSS)[3]).not.toMatch(/[<>/ ]/);
    expect(isAddressableUser('..')).toBe(false);
    expect(isAddressableUser('.')).toBe(false);
    expect(isAddressableUser('')).toBe(false);
    expect(isAddressableUser(XSS)).toBe(true);
  });

  it('does not offer cancel for dot users', () => {
    const rows = userRows(
      normaliseSnapshot({ users: [{ user: '..', queued: 3 }, { user: 'x', queued: 3 }] })
    );
    expect(rows.find(r => r.user === '..')?.canCancel).toBe(false);
    expect(rows.find(r => r.user === 'x')?.canCancel).toBe(true);
  });

  it('coerces only scalars to text', () => {
    expect(asText({ toString: () => XSS })).toBe('');
    expect(asText([XSS])).toBe('');
    expect(asText(5)).toBe('5');
    expect(asText(false)).toBe('false');
    expect(asNumberOrNull('12.5')).toBe(12.5);
    expect(asNumberOrNull('  ')).toBeNull();
    expect(asNumberOrNull(Infinity)).toBeNull();
    expect(asNumberOrNull({})).toBeNull();
  });
});

describe('rows', () => {
  it('turns the sample into hub and worker rows', () => {
    const rows = hubRows(normaliseSnapshot(sample()));
    expect(rows).toHaveLength(1);
    const hub = rows[0];
    expect(hub).toMatchObject({
      key: 'hub_9c1e3f2a',
      name: 'local',
      host: 'myhost',
      pid: '4242',
      local: true,
      busy: 1,
      idle: 0,
      total: 1,
      summary: '1/1 busy',
      lastSeen: '150ms ago'
    });
    expect(hub.badge.level).toBe('ok');
    expect(hub.workers[0]).toMatchObject({
      id: 'worker_c0b28c1f',
      stateClass: 'busy',
      range: '0–9',
      done: '740',
      taskName: 'HELLO',
      taskUser: 'alice',
      taskAge: '250ms'
    });
  });

  it('sorts hubs: local first, then by state, then by name', () => {
    const s = normaliseSnapshot({
      hubs: [
        { id: 'h3', name: 'zeta', state: 'ok' },
        { id: 'h2', name: 'alpha', state: 'lost' },
        { id: 'h1', name: 'beta', state: 'ok' },
        { id: 'h4', name: 'gamma', state: 'ok', local: true },
        { id: 'h5', name: '', state: 'draining' }
      ]
    });
    expect(hubRows(s).map(h => h.key)).toEqual(['h4', 'h1', 'h3', 'h5', 'h2']);
    expect(hubRows(s).find(h => h.key === 'h5')?.name).toBe('h5');
  });

  it('sorts workers by priority range and handles idle and missing values', () => {
    const s = normaliseSnapshot({
      time: 100,
      hubs: [
        {
          id: 'h',
          workers: [
            { id: 'w3', state: 'idle', min_p: 10, max_p: 99 },
            { id: 'w1', state: 'busy', min_p: 0, max_p: 9, task: { name: '', id: 't9', started: 98 } },
            { id: 'w2', state: 'starting' },
            { id: 'w0', state: 'idle', min_p: 0, max_p: 0 }
          ]
        }
      ]
    });
    const w = workerRows(s.hubs[0], s.time);
    expect(w.map(r => r.id)).toEqual(['w0', 'w1', 'w3', 'w2']);
    expect(w[0]).toMatchObject({ range: '0', stateClass: 'idle', taskName: '', taskAge: '' });
    expect(w[1]).toMatchObject({ taskName: 't9', taskUser: '', taskAge: '2s' });
    expect(w[3]).toMatchObject({ range: '–', stateClass: 'starting' });
    const hub = hubRows(s)[0];
    expect(hub).toMatchObject({ busy: 1, idle: 2, total: 4, summary: '1/4 busy', lastSeen: '' });
  });

  it('sorts users by pending work, then name', () => {
    const s = normaliseSnapshot({
      users: [
        { user: 'carol', queued: 0, running: 0, done: 5 },
        { user: 'bob', queued: 1, running: 4 },
        { user: 'alice', queued: 5, running: 0 },
        { user: '', queued: 0, running: 1 }
      ]
    });
    const rows = userRows(s);
    expect(rows.map(r => r.user)).toEqual(['alice', 'bob', '(anonymous)', 'carol']);
    expect(rows.map(r => r.canCancel)).toEqual([true, true, false, false]);
    expect(rows[0]).toMatchObject({ queuedText: '5', runningText: '0' });
  });

  it('builds total cells with formatted values', () => {
    const cells = totalCells(normaliseSnapshot(sample()));
    const byKey = Object.fromEntries(cells.map(c => [c.key, c.value]));
    expect(byKey).toMatchObject({
      queued: '12',
      running: '4',
      done: '1.5k',
      failed: '2',
      submitted: '1.5k',
      done_per_s: '813/s',
      submitted_per_s: '900/s'
    });
  });
});

describe('formatting', () => {
  it.each([
    [0, '0'],
    [950, '950'],
    [999.6, '1000'],
    [1000, '1k'],
    [1500, '1.5k'],
    [123456, '123k'],
    [2300000, '2.3M'],
    [-1500, '-1.5k'],
    [NaN, '–'],
    [null, '–']
  ])('formatCount(%p) = %p', (value, expected) => {
    expect(formatCount(value as number)).toBe(expected);
  });

  it.each([
    [0, '0/s'],
    [0.25, '0.25/s'],
    [0.5, '0.5/s'],
    [2.5, '2.5/s'],
    [3, '3/s'],
    [812.5, '813/s'],
    [1500, '1.5k/s'],
    [-4, '0/s'],
    [undefined, '–']
  ])('formatRate(%p) = %p', (value, expected) => {
    expect(formatRate(value as number)).toBe(expected);
  });

  it.each([
    [0, '0ms'],
    [0.0012, '1.2ms'],
    [0.0005, '0.5ms'],
    [0.85, '850ms'],
    [1, '1s'],
    [12.34, '12s'],
    [5.25, '5.3s'],
    [60, '1m 00s'],
    [185, '3m 05s'],
    [3725, '1h 02m'],
    [200000, '2d 07h'],
    [-5, '0ms'],
    [Infinity, '–'],
    [null, '–']
  ])('formatDuration(%p) = %p', (value, expected) => {
    expect(formatDuration(value as number)).toBe(expected);
  });

  it('formats priority ranges', () => {
    expect(formatPriorityRange(0, 9)).toBe('0–9');
    expect(formatPriorityRange(5, 5)).toBe('5');
    expect(formatPriorityRange(null, 9)).toBe('?–9');
    expect(formatPriorityRange(10, null)).toBe('10–?');
    expect(formatPriorityRange(null, null)).toBe('–');
  });
});

describe('sparklinePath', () => {
  it('is empty without points or size', () => {
    expect(sparklinePath([], 100, 20)).toEqual({ line: '', area: '', max: 0, last: 0, count: 0 });
    expect(sparklinePath(undefined, 100, 20).line).toBe('');
    expect(sparklinePath([{ done: 1 }], 0, 20).line).toBe('');
  });

  it('spreads points over the width and scales to the max', () => {
    const sp = sparklinePath([{ done: 0 }, { done: 5 }, { done: 10 }], 100, 22, 'done', 1);
    expect(sp.line).toBe('M0,21 L50,11 L100,1');
    expect(sp.area).toBe('M0,21 L50,11 L100,1 L100,22 L0,22 Z');
    expect(sp).toMatchObject({ max: 10, last: 10, count: 3 });
  });

  it('draws a flat line for all-zero data and for a single point', () => {
    expect(sparklinePath([{ done: 0 }, { done: 0 }], 10, 10, 'done', 0).line).toBe('M0,10 L10,10');
    expect(sparklinePath([{ done: 4 }], 10, 10, 'done', 0).line).toBe('M0,0 L10,0');
  });

  it('uses the requested series and ignores junk values', () => {
    const pts: any[] = [{ submitted: 2, done: 100 }, { submitted: 'x' }, null, { submitted: 4 }];
    const sp = sparklinePath(pts, 30, 10, 'submitted', 0);
    expect(sp.line).toBe('M0,5 L10,10 L20,10 L30,0');
    expect(sp.max).toBe(4);
  });

  it('only ever contains path commands and numbers', () => {
    const pts = Array.from({ length: 120 }, (_, i) => ({ done: (i * 37) % 101 }));
    const sp = sparklinePath(pts, SPARK_WIDTH, SPARK_HEIGHT);
    expect(sp.count).toBe(120);
    expect(sp.line).toMatch(/^M[\d.,]+( L[\d.,]+)*$/);
    expect(sp.area).toMatch(/^M[\d.,]+( L[\d.,]+)* Z$/);
  });
});

describe('health badge', () => {
  it.each([
    ['ok', 'ok', 'healthy', 'jp-plb-mod-ok'],
    ['warning', 'warning', 'warning', 'jp-plb-mod-warning'],
    ['ERROR', 'error', 'error', 'jp-plb-mod-error'],
    ['weird', 'unknown', 'unknown', 'jp-plb-mod-unknown'],
    [undefined, 'unknown', 'unknown', 'jp-plb-mod-unknown']
  ])('status %p → %p', (status, level, label, cls) => {
    const b = healthBadge({ status, messages: [] });
    expect(b).toMatchObject({ level, label, className: cls });
  });

  it('puts the messages in the tooltip', () => {
    const b = healthBadge({
      status: 'warning',
      messages: ['HC - WARNING : LB HAS NO WORKERS.', 'second']
    });
    expect(b.title).toBe('HC - WARNING : LB HAS NO WORKERS.\nsecond');
  });

  it('handles a missing health block', () => {
    expect(healthBadge(undefined)).toMatchObject({ level: 'unknown', label: 'no data' });
    expect(viewModel({}).badge.level).toBe('unknown');
  });

  it('maps hub states', () => {
    expect(hubStateBadge('ok').level).toBe('ok');
    expect(hubStateBadge('draining').level).toBe('warning');
    expect(hubStateBadge('lost').level).toBe('error');
    expect(hubStateBadge('unhealthy').level).toBe('error');
    expect(hubStateBadge('')).toMatchObject({ level: 'unknown', label: 'unknown' });
  });
});

describe('error state', () => {
  it('404 means the server extension is not loaded', () => {
    const e = errorState(404, 'Not Found');
    expect(e.kind).toBe('not-loaded');
    expect(e.title).toBe('Server extension not loaded');
    expect(e.detail).toContain('jupyter server extension enable jupyter_plb');
  });

  it('network failures and 5xx mean unreachable', () => {
    expect(errorState(0, 'Failed to fetch')).toMatchObject({
      kind: 'unreachable',
      title: 'Balancer unreachable',
      detail: 'Failed to fetch'
    });
    expect(errorState(undefined).kind).toBe('unreachable');
    expect(errorState(503, '')).toMatchObject({
      kind: 'server-error',
      title: 'Balancer unreachable',
      detail: 'The server answered 503.'
    });
  });

  it('403 is its own state and keeps the server text as text', () => {
    expect(errorState(403, XSS)).toMatchObject({ kind: 'forbidden', detail: XSS });
    expect(errorState(418).kind).toBe('server-error');
  });
});

describe('view model', () => {
  it('combines everything for the sample', () => {
    const vm = viewModel(sample());
    expect(vm.badge.level).toBe('ok');
    expect(vm.balancerLine).toBe('lb_3f2a9c1e · v0.1.0 · up 1m 40s');
    expect(vm.hubs).toHaveLength(1);
    expect(vm.users).toHaveLength(1);
    expect(vm.sparkline.count).toBe(1);
    expect(vm.sparklineCaption).toBe('done/s, last 1s (peak 800, now 800)');
    expect(vm.localHub).toEqual({ present: true, running: true });
    expect(vm.failures).toEqual([
      { key: 't_3', id: 't_3', name: 'f', user: 'alice', error: 'ZeroDivisionError: division by zero' }
    ]);
    expect(vm.unschedulable.count).toBe(1);
    expect(vm.unschedulable.first).toContain('priority 5000');
  });

  it('works on an empty snapshot', () => {
    const vm = viewModel({});
    expect(vm.hubs).toEqual([]);
    expect(vm.users).toEqual([]);
    expect(vm.failures).toEqual([]);
    expect(vm.balancerLine).toBe('');
    expect(vm.sparkline.line).toBe('');
    expect(vm.sparklineCaption).toBe('no throughput data yet');
    expect(vm.localHub).toEqual({ present: false, running: false });
    expect(vm.totals.every(c => c.value === '0' || c.value === '0/s')).toBe(true);
  });

  it('keeps the newest failures first and limits them', () => {
    const failures = Array.from({ length: 8 }, (_, i) => ({ id: `t${i}`, name: 'f', time: i }));
    const vm = viewModel({ recent_failures: failures }, 3);
    expect(vm.failures.map(f => f.key)).toEqual(['t7', 't6', 't5']);
  });

  it('reports a lost local hub as not running', () => {
    expect(viewModel({ hubs: [{ id: 'h', local: true, state: 'lost' }] }).localHub).toEqual({
      present: true,
      running: false
    });
  });
});

describe('websocket messages and URLs', () => {
  it('parses snapshot and task frames', () => {
    expect(parseEventMessage(JSON.stringify({ type: 'snapshot', data: { time: 1 } }))).toEqual({
      type: 'snapshot',
      data: { time: 1 }
    });
    expect(parseEventMessage(JSON.stringify({ type: 'tasks', events: [{ id: 'a' }] }))).toEqual({
      type: 'tasks',
      events: [{ id: 'a' }]
    });
  });

  it.each(['not json', '[]', '{"type":"snapshot","data":[1]}', '{"type":"other"}', 'null'])(
    'ignores junk frame %p',
    frame => {
      expect(parseEventMessage(frame)).toEqual({ type: 'unknown' });
    }
  );

  it('ignores binary frames', () => {
    expect(parseEventMessage(new ArrayBuffer(2))).toEqual({ type: 'unknown' });
  });

  it('appends the token only when asked', () => {
    const url = 'ws://h:1/base/plb/api/events';
    expect(withToken(url, 'abc', false)).toBe(url);
    expect(withToken(url, '', true)).toBe(url);
    expect(withToken(url, 'a b&c', true)).toBe(`${url}?token=a%20b%26c`);
    expect(withToken(`${url}?x=1`, 't', true)).toBe(`${url}?x=1&token=t`);
  });
});
