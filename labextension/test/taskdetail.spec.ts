/**
 * Unit tests for the task detail view model (no DOM, no JupyterLab).
 */
import { formatTime, taskDetailModel, taskDetailPath } from '../src/taskdetail';

/** A failed task as `GET plb/api/tasks/<id>` answers (docs/monitor-api.md). */
function failed(): any {
  return {
    id: 't_81e3f4e0d0214a224',
    name: 'simulate',
    user: 'alice',
    priority: 0,
    state: 'failed',
    progress: null,
    submitted: 1764424799.0,
    started: 1764424799.5,
    ended: 1764424800.25,
    worker: 'worker_c0b28c1f',
    hub: 'hub_9c1e3f2a',
    attempts: 1,
    retries: 2,
    error: 'RuntimeError: kaput',
    reason: null,
    args: "7, mode='fast'",
    traceback: 'Traceback (most recent call last):\n  ...\nRuntimeError: kaput\n',
    stdout: 'step 1\n',
    stderr: null,
    wait_time: 0.5,
    run_time: 0.75
  };
}

describe('taskDetailModel', () => {
  it('shows a failed task with its traceback, output and timings', () => {
    const vm = taskDetailModel(failed());
    expect(vm.id).toBe('t_81e3f4e0d0214a224');
    expect(vm.state).toBe('failed');
    expect(vm.stateClass).toBe('jp-plb-mod-failed');
    expect(vm.live).toBe(false);
    expect(vm.blocks.map(b => b.key)).toEqual(['args', 'error', 'traceback', 'stdout']);
    expect(vm.blocks[2].text).toContain('RuntimeError: kaput');
    const fields = Object.fromEntries(vm.fields.map(f => [f.key, f.value]));
    expect(fields.user).toBe('alice');
    expect(fields.worker).toBe('worker_c0b28c1f');
    expect(fields.attempts).toBe('1 / 2');
    expect(fields.wait_time).toBe('500ms');
    expect(fields.run_time).toBe('750ms');
    expect(fields.ended).toBe('2025-11-29 14:00:00 UTC');
  });

  it('marks queued and running tasks live and shows why a task waits', () => {
    const vm = taskDetailModel({
      id: 't_1',
      state: 'queued',
      reason: 'no connected worker accepts priority 5000',
      started: null,
      run_time: null
    });
    expect(vm.live).toBe(true);
    expect(vm.blocks).toEqual([]);
    const fields = Object.fromEntries(vm.fields.map(f => [f.key, f.value]));
    expect(fields.reason).toBe('no connected worker accepts priority 5000');
    expect(fields.started).toBe('–');
    expect(fields.run_time).toBe('–');
    expect(fields.worker).toBe('–');
  });

  it('never passes a server string into a class name and survives junk', () => {
    const vm = taskDetailModel({ state: '"><img src=x onerror=alert(1)>', args: { not: 'text' } });
    expect(vm.stateClass).toBe('jp-plb-mod-other');
    expect(vm.state).toBe('"><img src=x onerror=alert(1)>');
    expect(vm.blocks).toEqual([]);
    for (const junk of [null, undefined, 42, 'text', []]) {
      const empty = taskDetailModel(junk);
      expect(empty.id).toBe('');
      expect(empty.state).toBe('?');
    }
  });
});

describe('task detail helpers', () => {
  it('escapes the id as one path segment', () => {
    expect(taskDetailPath('t_a/b?c')).toEqual(['plb', 'api', 'tasks', 't_a%2Fb%3Fc']);
  });

  it('formats epoch seconds in UTC', () => {
    expect(formatTime(0)).toBe('1970-01-01 00:00:00 UTC');
    expect(formatTime(null)).toBe('–');
    expect(formatTime('soon')).toBe('–');
  });
});
