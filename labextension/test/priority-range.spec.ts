/**
 * Workers started with `--workers N` accept any priority and report -1e9..1e9:
 * the panel shows that range as "any", not as two ten-digit numbers.
 */
import { formatPriorityRange, hubRows, normaliseSnapshot } from '../src/model';

describe('priority range "any"', () => {
  it.each([
    [-1e9, 1e9, 'any'],
    [-2e9, 5e9, 'any'],
    [-1e9, 9, '-1000000000–9'],
    [0, 1e9, '0–1000000000'],
    [-999999999, 1e9, '-999999999–1000000000'],
    [null, 1e9, '?–1000000000'],
    [0, 9, '0–9']
  ])('formatPriorityRange(%p, %p) = %p', (lo, hi, expected) => {
    expect(formatPriorityRange(lo, hi)).toBe(expected);
  });

  it('shows the workers of a --workers N hub as "any"', () => {
    const snapshot = normaliseSnapshot({
      time: 10,
      hubs: [
        {
          id: 'hub_1',
          name: 'local',
          state: 'ok',
          local: true,
          workers: [
            { id: 'w1', state: 'idle', min_p: -1e9, max_p: 1e9, done: 3 },
            { id: 'w2', state: 'idle', min_p: '-1000000000', max_p: '1e9', done: 0 },
            { id: 'w3', state: 'idle', min_p: 0, max_p: 9, done: 0 }
          ]
        }
      ]
    });
    const ranges = hubRows(snapshot)[0].workers.map(w => [w.id, w.range]);
    expect(ranges).toEqual([
      ['w1', 'any'],
      ['w2', 'any'],
      ['w3', '0–9']
    ]);
  });
});
