/**
 * The view model of the panel's "Fair share" section: per user, running, queued and share of
 * the worker slots over the last minutes, and, on a server attached to a team balancer, who
 * this server's user is and whether the team balancer answers. The numbers are the snapshot's
 * (`users[].share`, `share_window`, `viewer`, `team`, computed by the balancer); this module
 * only shapes them for display. Pure: no DOM, no JupyterLab.
 */

export interface IShareRow {
  key: string;
  user: string;
  running: number;
  queued: number;
  /** 0..1 */
  share: number;
  shareText: string;
  isViewer: boolean;
}

export interface ITeamView {
  /** "last 5 min" */
  windowLabel: string;
  /** "Team pool · you are alice" or '' outside a team pool. */
  identity: string;
  /** "Team balancer unreachable since 12:01:02: …" or '' while it answers. */
  unreachable: string;
  rows: IShareRow[];
}

function dict(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

function count(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) && value > 0
    ? value
    : 0;
}

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

export function windowLabel(seconds: unknown): string {
  const s = count(seconds) || 300;
  return s >= 60 ? `last ${Math.round(s / 60)} min` : `last ${Math.round(s)} s`;
}

export function clockTime(epochSeconds: number): string {
  const d = new Date(epochSeconds * 1000);
  const two = (n: number) => String(n).padStart(2, '0');
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** Users with anything to show, the biggest share first. */
export function shareRows(raw: unknown, viewer = ''): IShareRow[] {
  const users = Array.isArray(dict(raw).users) ? (dict(raw).users as unknown[]) : [];
  return users
    .map(u => dict(u))
    .map(u => {
      const share = Math.min(1, count(u.share));
      const user = text(u.user);
      return {
        key: user,
        user,
        running: count(u.running),
        queued: count(u.queued),
        share,
        shareText: `${Math.round(share * 100)}%`,
        isViewer: viewer !== '' && user === viewer
      };
    })
    .filter(u => u.user !== '' && (u.running > 0 || u.queued > 0 || u.share > 0))
    .sort(
      (a, b) =>
        b.share - a.share ||
        b.running - a.running ||
        a.user.localeCompare(b.user)
    );
}

export function teamView(raw: unknown): ITeamView {
  const d = dict(raw);
  const viewer = dict(d.viewer);
  const team = dict(d.team);
  const user = text(viewer.user);
  const parts: string[] = [];
  if (viewer.team === true) {
    parts.push(`Team pool · you are ${user || 'the balancer'}${viewer.admin === true ? ' (admin)' : ''}`);
  }
  const since = count(team.unreachable_since);
  const lost = text(team.attached) !== '' && team.reachable === false && since > 0;
  return {
    windowLabel: windowLabel(d.share_window),
    identity: parts.join(''),
    unreachable: lost
      ? `Team balancer unreachable since ${clockTime(since)}${text(team.error) ? `: ${text(team.error)}` : ''}`
      : '',
    rows: shareRows(raw, user)
  };
}
