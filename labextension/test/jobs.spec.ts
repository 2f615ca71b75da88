/**
 * Unit tests for the batch jobs section's pure part.
 */
import { jobRows } from '../src/jobs';

describe('jobRows', () => {
  it('lists each launcher with its counts, bounds and jobs', () => {
    const rows = jobRows({
      launchers: [
        {
          id: 'adapter-1',
          name: 'slurm',
          kind: 'slurm',
          minimum: 0,
          maximum: 20,
          reason: '8 task(s) waited 2.1 s with no free slot',
          jobs: [
            { id: '41', state: 'running', hubs: 1, slots: 4, busy: 3 },
            { id: '42', state: 'pending', hubs: 0, slots: 0, busy: 0 }
          ]
        }
      ]
    });
    expect(rows).toHaveLength(1);
    expect(rows[0].title).toBe('slurm (slurm)');
    expect(rows[0].summary).toBe('1 pending, 1 running, 0 ending · 0–20 jobs');
    expect(rows[0].jobs.map(j => [j.id, j.state, j.busy, j.slots])).toEqual([
      ['41', 'running', 3, 4],
      ['42', 'pending', 0, 0]
    ]);
  });

  it('turns bad input into blanks, never throws', () => {
    expect(jobRows(null)).toEqual([]);
    expect(jobRows({ launchers: 'x' })).toEqual([]);
    const [row] = jobRows({
      launchers: [{ jobs: [{ id: 7, state: '<b>', hubs: -3, slots: 'x' }] }]
    });
    expect(row.jobs[0]).toEqual({
      key: '7',
      id: '7',
      state: 'ending',
      hubs: 0,
      busy: 0,
      slots: 0
    });
  });
});
