/**
 * The "Fair share" section's view model: what the panel shows of a team pool's snapshot.
 */
import { shareRows, teamView, windowLabel } from '../src/teamModel';

function snapshot(): any {
  return {
    time: 1700000000,
    share_window: 300,
    viewer: { user: 'bob', admin: false, team: true },
    team: { attached: '/srv/plb/team.json', reachable: true, unreachable_since: null, error: null },
    users: [
      { user: 'alice', queued: 4, running: 1, done: 3, share: 0.5 },
      { user: 'bob', queued: 2, running: 1, done: 3, share: 0.25 },
      { user: 'idle', queued: 0, running: 0, done: 9, share: 0 },
      { user: '<b>x</b>', queued: 1, running: 0, share: 7 }
    ]
  };
}

describe('shareRows', () => {
  it('orders by share, drops idle users, marks the viewer, clamps shares', () => {
    const rows = shareRows(snapshot(), 'bob');
    expect(rows.map(r => r.user)).toEqual(['<b>x</b>', 'alice', 'bob']);
    expect(rows[0].share).toBe(1);
    expect(rows[1]).toMatchObject({ running: 1, queued: 4, shareText: '50%', isViewer: false });
    expect(rows[2]).toMatchObject({ shareText: '25%', isViewer: true });
  });

  it('survives garbage', () => {
    expect(shareRows(null)).toEqual([]);
    expect(shareRows({ users: [null, 3, { user: 5, share: 'x' }] })).toEqual([]);
  });
});

describe('teamView', () => {
  it('says who you are in a team pool', () => {
    const view = teamView(snapshot());
    expect(view.identity).toBe('Team pool · you are bob');
    expect(view.unreachable).toBe('');
    expect(view.windowLabel).toBe('last 5 min');
  });

  it('names an admin', () => {
    const s = snapshot();
    s.viewer = { user: 'boss', admin: true, team: true };
    expect(teamView(s).identity).toBe('Team pool · you are boss (admin)');
  });

  it('says since when the team balancer is unreachable', () => {
    const s = snapshot();
    s.team = { attached: '/srv/plb/team.json', reachable: false, unreachable_since: 1700000000, error: 'no answer' };
    expect(teamView(s).unreachable).toMatch(/^Team balancer unreachable since \d\d:\d\d:\d\d: no answer$/);
  });

  it('is empty for a personal balancer', () => {
    const view = teamView({ users: [] });
    expect(view.identity).toBe('');
    expect(view.unreachable).toBe('');
    expect(view.rows).toEqual([]);
  });
});

describe('windowLabel', () => {
  it('speaks minutes, or seconds below one', () => {
    expect(windowLabel(600)).toBe('last 10 min');
    expect(windowLabel(30)).toBe('last 30 s');
    expect(windowLabel(undefined)).toBe('last 5 min');
  });
});
