/**
 * Unit tests for the batch jobs section's pure part.
 */
import { jobRows } from '../src/jobs';
import { sample } from './sample';

describe('jobRows', () => {
  it('lists each launcher with the balancer\'s counts, bounds and jobs', () => {
    const s = sample();
    s.launchers = [
      {
        id: 'adapter-1',
        name: 'slurm',
        kind: 'slurm',
        minimum: 0,
        maximum: 20,
        slots_per_job: 4,
        reason: '8 task(s) waited 2.1 s with no free slot',
        updated: 1,
        counts: { pending: 1, running: 1, ending: 0 },
        jobs: [
          { id: '41', state: 'running', hubs: 1, slots: 4, busy: 3 },
          { id: '42', state: 'pending', hubs: 0, slots: 0, busy: 0 }
        ]
      }
    ];
    const rows = jobRows(s);
    expect(rows).toHaveLength(1);
    expect(rows[0].title).toBe('slurm (slurm)');
    expect(rows[0].summary).toBe('1 pending, 1 running, 0 ending · 0–20 jobs');
    expect(rows[0].jobs.map(j => [j.id, j.state, j.busy, j.slots])).toEqual([
      ['41', 'running', 3, 4],
      ['42', 'pending', 0, 0]
    ]);
  });

  it('never lets a job state choose a CSS class', () => {
    const s: any = sample();
    s.launchers = [{ id: 'l', name: 'n', kind: 'k', minimum: 0, maximum: 1, reason: '',
      counts: { pending: 0, running: 0, ending: 0 }, jobs: [{ id: '7', state: '<b>', hubs: 0, slots: 0, busy: 0 }] }];
    expect(jobRows(s)[0].jobs[0].state).toBe('ending');
  });
});
