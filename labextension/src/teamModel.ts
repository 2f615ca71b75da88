/**
 * The view model of the panel's "Fair share" section: per user, running, queued and share of
 * the worker slots over the last minutes, and, on a server attached to a team balancer, who
 * this server's user is and whether the team balancer answers. Everything is the balancer's
 * (`fair_share`, `viewer`, `team` of the snapshot: ranked, in percent, in words); this module
 * only picks what to draw. Pure: no DOM, no JupyterLab.
 */
import { Snapshot } from './schema';

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

export function teamView(s: Snapshot): ITeamView {
  const viewer = s.viewer?.user ?? '';
  return {
    windowLabel: s.fair_share.window_label,
    identity: s.team?.identity ?? '',
    unreachable: s.team?.message ?? '',
    rows: s.fair_share.users.map(u => ({
      key: u.user,
      user: u.user,
      running: u.running,
      queued: u.queued,
      share: u.share,
      shareText: `${u.share_percent}%`,
      isViewer: viewer !== '' && u.user === viewer
    }))
  };
}
