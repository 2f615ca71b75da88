/**
 * Per-worker CPU and resident memory, and a hub's version skew, from the snapshot to the rows.
 */
import {
  formatBytes,
  formatPercent,
  hubRows,
  normaliseSnapshot
} from '../src/model';

function snapshot(): any {
  return {
    time: 100,
    hubs: [
      {
        id: 'hub_a',
        name: 'gpu:7',
        host: 'gpu',
        state: 'ok',
        last_seen: 99.5,
        python: '3.12.1',
        cloudpickle: '3.1.0',
        version_skew:
          'hub gpu:7 on gpu runs Python 3.12.1, this balancer Python 3.11.7: tasks sent there may fail to unpickle',
        workers: [
          { id: 'w1', state: 'busy', min_p: 0, max_p: 9, cpu: 97.6, rss: 250 * 2 ** 20, done: 3 },
          { id: 'w2', state: 'idle', min_p: 0, max_p: 9, cpu: null, rss: null, done: 0 }
        ]
      },
      { id: 'hub_b', name: 'old', state: 'ok', workers: [{ id: 'w3', state: 'idle', cpu: 'x', rss: -5 }] }
    ]
  };
}

describe('formatPercent and formatBytes', () => {
  it('round and fall back to a dash', () => {
    expect(formatPercent(12.4)).toBe('12%');
    expect(formatPercent(0)).toBe('0%');
    expect(formatPercent(null)).toBe('–');
    expect(formatPercent(Number.NaN)).toBe('–');
    expect(formatBytes(25_000_000)).toBe('24 MiB');
    expect(formatBytes(3 * 2 ** 30)).toBe('3.0 GiB');
    expect(formatBytes(null)).toBe('–');
    expect(formatBytes(-1)).toBe('–');
  });
});

describe('worker usage and version skew rows', () => {
  it('carry CPU, memory and the skew warning', () => {
    const [gpu, old] = hubRows(normaliseSnapshot(snapshot()));
    expect(gpu.workers.map(w => [w.id, w.cpu, w.memory])).toEqual([
      ['w1', '98%', '250 MiB'],
      ['w2', '–', '–']
    ]);
    expect(gpu.versions).toBe('Python 3.12.1 · cloudpickle 3.1.0');
    expect(gpu.versionSkew).toContain('may fail to unpickle');
    expect(old.versions).toBe('');
    expect(old.versionSkew).toBe('');
    expect(old.workers.map(w => [w.cpu, w.memory])).toEqual([['–', '–']]);
  });
});
