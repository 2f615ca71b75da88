/**
 * The "Fair share" section's view model: what the panel shows of a team pool's snapshot (the
 * ranking, the percentages and the sentences are the balancer's).
 */
import { Snapshot } from '../src/schema';
import { teamView } from '../src/teamModel';
import { sample } from './sample';

function teamSnapshot(): Snapshot {
  const s = sample();
  s.viewer = { user: 'bob', admin: false, team: true };
  s.team = {
    attached: '/srv/plb/team.json',
    reachable: true,
    unreachable_since: null,
    error: null,
    identity: 'Team pool · you are bob',
    message: ''
  };
  return s;
}

describe('teamView', () => {
  it('shows the balancer\'s ranking and marks the viewer', () => {
    const view = teamView(teamSnapshot());
    expect(view.rows.map(r => [r.user, r.shareText, r.isViewer])).toEqual([
      ['alice', '50%', false],
      ['bob', '25%', true]
    ]);
    expect(view.rows[0]).toMatchObject({ running: 1, queued: 10, share: 0.5 });
    expect(view.windowLabel).toBe('last 5 min');
  });

  it('says who you are in a team pool and since when the team balancer is unreachable', () => {
    const s = teamSnapshot();
    expect(teamView(s).identity).toBe('Team pool · you are bob');
    expect(teamView(s).unreachable).toBe('');
    s.team!.message = 'Team balancer unreachable since 12:01:02: no answer';
    expect(teamView(s).unreachable).toBe('Team balancer unreachable since 12:01:02: no answer');
  });

  it('is empty for a personal balancer', () => {
    const view = teamView(sample());
    expect(view.identity).toBe('');
    expect(view.unreachable).toBe('');
    expect(view.rows.every(r => !r.isViewer)).toBe(true);
  });
});
