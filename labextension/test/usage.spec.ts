/**
 * Per-worker CPU and resident memory, and a hub's version skew, from the snapshot to the rows.
 */
import { formatBytes, formatPercent, hubRow } from '../src/model';
import { sample } from './sample';

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
    const hub = sample().hubs[0];
    hub.versions = 'Python 3.12.1 · cloudpickle 3.1.0';
    hub.version_skew =
      'hub gpu:7 on gpu runs Python 3.12.1, this balancer Python 3.11.7: tasks sent there may fail to unpickle';
    hub.workers[0].rss = 250 * 2 ** 20;
    hub.workers[1].cpu = null;
    hub.workers[1].rss = null;
    const row = hubRow(hub);
    expect(row.workers.map(w => [w.cpu, w.memory])).toEqual([
      ['99%', '250 MiB'],
      ['–', '–']
    ]);
    expect(row.versions).toBe('Python 3.12.1 · cloudpickle 3.1.0');
    expect(row.versionSkew).toContain('may fail to unpickle');
  });

  it('shows no versions nor skew when the hub said none', () => {
    const hub = sample().hubs[0];
    hub.versions = '';
    expect(hubRow(hub)).toMatchObject({ versions: '', versionSkew: '' });
  });
});
