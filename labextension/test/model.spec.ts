/**
 * Unit tests for the pure view-model module (no DOM, no JupyterLab): it draws the balancer's
 * snapshot (schema.ts) without deriving anything the balancer already computed.
 */
import {
  asNumberOrNull,
  asText,
  errorState,
  formatCount,
  formatDuration,
  formatRate,
  healthBadge,
  hubRow,
  hubStateBadge,
  isAddressableUser,
  parseEventMessage,
  sparklinePath,
  SPARK_HEIGHT,
  SPARK_WIDTH,
  totalCells,
  userCancelPath,
  userRows,
  viewModel,
  withToken
} from '../src/model';
import { checkSnapshot, SCHEMA_VERSION, Snapshot } from '../src/schema';
import { sample } from './sample';

const XSS = '<img src=x onerror=alert(1)>';
const XSS2 = '"><script>alert("x")</script>';

describe('checkSnapshot', () => {
  it('accepts a snapshot of this schema', () => {
    const check = checkSnapshot(sample());
    expect(check.ok).toBe(true);
    expect(SCHEMA_VERSION).toBe(1);
  });

  it.each([
    [{ ...sample(), schema: 2 }, 'The balancer speaks snapshot schema 2, this panel understands schema 1'],
    [{ time: 1 }, 'The balancer speaks no schema version'],
    [null, 'The server sent no snapshot.'],
    [[], 'The server sent no snapshot.'],
    ['text', 'The server sent no snapshot.']
  ])('refuses %p with a sentence', (raw, sentence) => {
    const check = checkSnapshot(raw);
    expect(check.ok).toBe(false);
    expect(check.ok ? '' : check.problem).toContain(sentence);
  });
});

describe('hostile strings stay strings', () => {
  const hostile = (): Snapshot => {
    const s = sample();
    s.hubs[0].name = XSS;
    s.hubs[0].host = XSS2;
    s.hubs[0].workers[0].id = XSS;
    s.hubs[0].workers[0].task!.name = XSS2;
    s.hubs[0].workers[0].task!.user = XSS;
    s.users[0].user = XSS;
    s.health = { status: 'warning', label: 'warning', messages: [XSS], checked: null };
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
    const s: any = hostile();
    s.hubs[0].state = 'ok" onmouseover="x';
    s.hubs[0].workers[0].state = 'busy jp-evil';
    s.health.status = 'ok jp-evil';
    const vm = viewModel(s);
    const allowed = ['jp-plb-mod-ok', 'jp-plb-mod-warning', 'jp-plb-mod-error', 'jp-plb-mod-unknown'];
    expect(allowed).toContain(vm.badge.className);
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
    const s = sample();
    s.users = [
      { user: '..', queued: 3, running: 0, share: 0, share_percent: 0 },
      { user: 'x', queued: 3, running: 0, share: 0, share_percent: 0 }
    ];
    const rows = userRows(s);
    expect(rows.find(r => r.user === '..')?.canCancel).toBe(false);
    expect(rows.find(r => r.user === 'x')?.canCancel).toBe(true);
  });

  it('offers cancel in a team pool only on the viewer\'s own row, or to an admin', () => {
    const s = sample();
    s.viewer = { user: 'bob', admin: false, team: true };
    expect(userRows(s).map(r => [r.user, r.canCancel])).toEqual([
      ['alice', false],
      ['bob', true]
    ]);
    s.viewer = { user: 'carol', admin: true, team: true };
    expect(userRows(s).map(r => r.canCancel)).toEqual([true, true]);
    s.viewer = { user: null, admin: false, team: false };
    expect(userRows(s).map(r => r.canCancel)).toEqual([true, true]);
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

describe('rows show what the balancer computed', () => {
  it('turns the sample into hub and worker rows, in the balancer\'s order', () => {
    const hub = hubRow(sample().hubs[0]);
    expect(hub).toMatchObject({
      key: 'hub_9c1e3f2a',
      name: 'local',
      host: 'myhost',
      pid: '4242',
      local: true,
      busy: 1,
      idle: 1,
      total: 2,
      summary: '1/2 busy',
      lastSeen: '150ms ago',
      versions: 'Python 3.11.7 · cloudpickle 3.1.3',
      versionSkew: ''
    });
    expect(hub.badge.level).toBe('ok');
    expect(hub.workers.map(w => w.id)).toEqual(['worker_c0b28c1f', 'worker_5d0e9a7b']);
    expect(hub.workers[0]).toMatchObject({
      stateClass: 'busy',
      range: '0–9',
      done: '740',
      taskName: 'HELLO',
      taskUser: 'alice',
      taskAge: '250ms',
      cpu: '99%',
      memory: '50 MiB'
    });
    expect(hub.workers[1]).toMatchObject({ stateClass: 'idle', range: '10–99', taskName: '', taskAge: '' });
  });

  it('shows the priority range and the running time as the balancer says them', () => {
    const s = sample();
    s.hubs[0].workers[0].priorities = 'any';
    s.hubs[0].workers[0].running_for = 185;
    expect(hubRow(s.hubs[0]).workers[0]).toMatchObject({ range: 'any', taskAge: '3m 05s' });
  });

  it('names another user\'s task without its id (team pool)', () => {
    const s = sample();
    s.hubs[0].workers[0].task = { name: 'HELLO', user: 'bob', started: 1 };
    expect(hubRow(s.hubs[0]).workers[0]).toMatchObject({ taskName: 'HELLO', taskUser: 'bob' });
  });

  it('keeps the users in the balancer\'s order', () => {
    const rows = userRows(sample());
    expect(rows.map(r => r.user)).toEqual(['alice', 'bob']);
    expect(rows.map(r => r.canCancel)).toEqual([true, true]);
    expect(rows[0]).toMatchObject({ queuedText: '10', runningText: '1', doneText: '700', failedText: '1' });
  });

  it('builds total cells with formatted values', () => {
    const byKey = Object.fromEntries(totalCells(sample()).map(c => [c.key, c.value]));
    expect(byKey).toMatchObject({
      queued: '12',
      running: '1',
      done: '1.5k',
      failed: '2',
      submitted: '1.5k',
      done_per_s: '820/s',
      submitted_per_s: '850/s'
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
    ['ok', 'healthy', 'ok', 'jp-plb-mod-ok'],
    ['warning', 'warning', 'warning', 'jp-plb-mod-warning'],
    ['error', 'error', 'error', 'jp-plb-mod-error'],
    ['unknown', 'unknown', 'unknown', 'jp-plb-mod-unknown']
  ])('status %p shows the balancer\'s label %p', (status, label, lvl, cls) => {
    const b = healthBadge({ status: status as any, label, messages: [], checked: null });
    expect(b).toMatchObject({ level: lvl, label, className: cls });
  });

  it('puts the messages in the tooltip', () => {
    const b = healthBadge({
      status: 'warning',
      label: 'warning',
      messages: ['HC - WARNING : LB HAS NO WORKERS.', 'second'],
      checked: 1
    });
    expect(b.title).toBe('HC - WARNING : LB HAS NO WORKERS.\nsecond');
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
    expect(vm.badge).toMatchObject({ level: 'ok', label: 'healthy' });
    expect(vm.balancerLine).toBe('lb_3f2a9c1e · v0.1.0 · up 1m 40s');
    expect(vm.hubs).toHaveLength(1);
    expect(vm.users).toHaveLength(2);
    expect(vm.sparkline.count).toBe(5);
    expect(vm.sparklineCaption).toBe('done/s, last 5s (peak 840, now 840)');
    expect(vm.localHub).toEqual({ present: true, running: true });
    expect(vm.failures.map(f => f.key)).toEqual(['t_3c09', 't_3b11']);
    expect(vm.failures[0]).toEqual({
      key: 't_3c09', id: 't_3c09', name: 'f', user: 'alice', error: 'ZeroDivisionError: division by zero'
    });
    expect(vm.unschedulable.count).toBe(1);
    expect(vm.unschedulable.first).toContain('priority 5000');
  });

  it('works on a snapshot of nothing', () => {
    const s = sample();
    Object.assign(s, { hubs: [], users: [], recent_failures: [], unschedulable: [], throughput: [] });
    s.balancer = { ...s.balancer, id: null, version: null, started: 0, uptime: 0 };
    const vm = viewModel(s);
    expect(vm.hubs).toEqual([]);
    expect(vm.balancerLine).toBe('');
    expect(vm.sparkline.line).toBe('');
    expect(vm.sparklineCaption).toBe('no throughput data yet');
    expect(vm.localHub).toEqual({ present: false, running: false });
  });

  it('takes the newest failures first (the balancer orders them) and limits them', () => {
    const s = sample();
    s.recent_failures = Array.from({ length: 8 }, (_, i) => ({ id: `t${7 - i}`, name: 'f', user: 'u', time: 7 - i }));
    expect(viewModel(s, 3).failures.map(f => f.key)).toEqual(['t7', 't6', 't5']);
  });

  it('keeps another user\'s failure without an id (team pool)', () => {
    const s = sample();
    s.recent_failures = [{ name: 'f', user: 'bob', time: 1 }];
    expect(viewModel(s).failures[0]).toEqual({ key: '#0', id: '', name: 'f', user: 'bob', error: '' });
  });

  it('reports a lost local hub as not running', () => {
    const s = sample();
    s.hubs[0].state = 'lost';
    expect(viewModel(s).localHub).toEqual({ present: true, running: false });
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
