/**
 * The "Load Balancer" side-bar panel.
 *
 * Data arrive on the `plb/api/events` websocket (one `snapshot` at most twice
 * a second); a `Poll` on `plb/api/status` fills the panel before the socket
 * is up, replaces it while the socket is down, and backs off while the API is
 * missing or failing. All server text is written with `textContent`; the DOM
 * is built with `document.createElement` and updated in place (rows keyed by
 * id), so buttons under the mouse survive the twice-a-second refresh.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';
import { CommandRegistry } from '@lumino/commands';

import { cancelUserTasks, eventsUrl, fetchStatus, PlbApiError } from './api';
import { refreshIcon } from '@jupyterlab/ui-components';

import { plbIcon } from './icon';
import { TeamSection } from './team';
import { JobsSection } from './jobs';
import { showTaskDetail } from './taskdialog';
import {
  errorState,
  IErrorState,
  IFailureRow,
  IHubRow,
  ITotalCell,
  IUserRow,
  IViewModel,
  IWorkerRow,
  parseEventMessage,
  SPARK_HEIGHT,
  SPARK_WIDTH,
  viewModel
} from './model';
import { el } from './dom';
import { checkSnapshot } from './schema';

/** Command ids, shared with index.ts. */
export namespace CommandIDs {
  export const openPanel = 'jupyter-plb:open-panel';
  export const openMonitor = 'jupyter-plb:open-monitor';
  export const copyHubCommand = 'jupyter-plb:copy-hub-command';
  export const startLocalHub = 'jupyter-plb:start-local-hub';
  export const stopLocalHub = 'jupyter-plb:stop-local-hub';
  export const refresh = 'jupyter-plb:refresh';
}

/** Stable DOM id of the panel (also the side-bar tab's `data-id`). */
export const PANEL_ID = 'jupyter-plb-panel';

/** If no websocket frame came for this long, the REST poll takes over. */
const WS_STALE_MS = 5000;

const SVG_NS = 'http://www.w3.org/2000/svg';

/* ------------------------------------------------------------------ */
/* Small DOM helpers                                                    */
/* ------------------------------------------------------------------ */


function setText(node: Node, text: string): void {
  if (node.textContent !== text) {
    node.textContent = text;
  }
}

function setHidden(node: HTMLElement, hidden: boolean): void {
  if (node.hidden !== hidden) {
    node.hidden = hidden;
  }
}

/** Replace the modifier classes from a fixed set (never from data). */
function setModifier(node: Element, all: string[], current: string): void {
  for (const c of all) {
    node.classList.toggle(c, c === current);
  }
}

const BADGE_MODS = [
  'jp-plb-mod-ok',
  'jp-plb-mod-warning',
  'jp-plb-mod-error',
  'jp-plb-mod-unknown'
];

const WORKER_MODS = [
  'jp-plb-mod-busy',
  'jp-plb-mod-idle',
  'jp-plb-mod-starting',
  'jp-plb-mod-other'
];

interface IRowView<T> {
  node: HTMLElement;
  update(item: T): void;
}

/**
 * Keep `container`'s children in step with `items`: one node per key,
 * created once, updated in place, moved into order, removed when gone.
 */
class KeyedList<T> {
  constructor(
    container: HTMLElement,
    create: (item: T) => IRowView<T>,
    key: (item: T) => string
  ) {
    this._container = container;
    this._create = create;
    this._key = key;
  }

  sync(items: T[]): void {
    const seen = new Set<string>();
    let previous: Node | null = null;
    items.forEach((item, index) => {
      let k = this._key(item);
      if (seen.has(k)) {
        k = `${k}\u0000${index}`; // duplicate ids from the server: keep both
      }
      seen.add(k);
      let view = this._views.get(k);
      if (!view) {
        view = this._create(item);
        this._views.set(k, view);
      }
      view.update(item);
      const expected: Node | null = previous
        ? previous.nextSibling
        : this._container.firstChild;
      if (expected !== view.node) {
        this._container.insertBefore(view.node, expected);
      }
      previous = view.node;
    });
    for (const [k, view] of this._views) {
      if (!seen.has(k)) {
        view.node.remove();
        this._views.delete(k);
      }
    }
  }

  private _container: HTMLElement;
  private _create: (item: T) => IRowView<T>;
  private _key: (item: T) => string;
  private _views = new Map<string, IRowView<T>>();
}

function button(
  label: string,
  title: string,
  onClick: () => void,
  extra = ''
): HTMLButtonElement {
  const b = el('button', `jp-plb-button ${extra}`.trim(), label);
  b.type = 'button';
  b.title = title;
  b.addEventListener('click', event => {
    event.preventDefault();
    onClick();
  });
  return b;
}

/* ------------------------------------------------------------------ */
/* Panel                                                                */
/* ------------------------------------------------------------------ */

export type ConnectionState = 'connecting' | 'live' | 'polling' | 'offline';

export class PlbPanel extends Widget {
  constructor(options: PlbPanel.IOptions) {
    super();
    this._settings = options.serverSettings;
    this._commands = options.commands;
    this.id = PANEL_ID;
    this.addClass('jp-plb-panel');
    this.title.icon = plbIcon;
    this.title.caption = 'Load Balancer: balancer health, hubs, workers and queues';
    this.title.label = '';
    this._build();

    this._poll = new Poll({
      auto: false,
      factory: () => this._tick(),
      frequency: { interval: 2000, backoff: true, max: 60 * 1000 },
      name: 'jupyter-plb:status',
      standby: 'when-hidden'
    });
    this._onVisibility = () => {
      if (document.hidden) {
        this._closeSocket();
      } else if (this.isVisible) {
        void this.refresh();
      }
    };
    document.addEventListener('visibilitychange', this._onVisibility);
    void this._poll.start();
  }

  /** Connection state shown in the header. */
  get connection(): ConnectionState {
    return this._connection;
  }

  /** Fetch now (and reconnect the socket if needed). */
  async refresh(): Promise<void> {
    if (this.isDisposed) {
      return;
    }
    this._lastWsMessage = 0;
    this._wsRetryAt = 0;
    await this._poll.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    document.removeEventListener('visibilitychange', this._onVisibility);
    this._poll.dispose();
    this._closeSocket();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    // Nobody looks: stop the twice-a-second stream; the poll idles too.
    this._closeSocket();
  }

  /* ---------------------------- data flow --------------------------- */

  private async _tick(): Promise<void> {
    if (this.isDisposed || !this.isVisible) {
      return;
    }
    if (this._socket && Date.now() - this._lastWsMessage < WS_STALE_MS) {
      return; // the socket keeps us current
    }
    try {
      const data = await fetchStatus(this._settings);
      this._apply(data);
      this._setConnection(this._socketOpen ? 'live' : 'polling');
      this._openSocket();
    } catch (error) {
      const status = error instanceof PlbApiError ? error.status : 0;
      const message = error instanceof Error ? error.message : String(error);
      this._showError(
        status === -1
          ? {
              kind: 'bad-data',
              title: 'Unexpected answer',
              detail: message
            }
          : errorState(status, message)
      );
      throw error; // let the Poll back off
    }
  }

  private _openSocket(): void {
    if (
      this._socket ||
      this.isDisposed ||
      !this.isVisible ||
      document.hidden ||
      Date.now() < this._wsRetryAt
    ) {
      return;
    }
    let socket: WebSocket;
    try {
      socket = new this._settings.WebSocket(eventsUrl(this._settings));
    } catch (error) {
      console.warn('jupyter-plb: cannot open the events socket', error);
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      if (this._socket === socket) {
        this._socketOpen = true;
        this._wsFailures = 0;
        this._wsRetryAt = 0;
      }
    };
    socket.onmessage = (event: MessageEvent) => {
      if (this._socket !== socket) {
        return;
      }
      const msg = parseEventMessage(event.data);
      if (msg.type === 'snapshot') {
        this._lastWsMessage = Date.now();
        this._apply(msg.data);
        this._setConnection('live');
      }
    };
    socket.onclose = () => {
      if (this._socket !== socket) {
        return;
      }
      const wasOpen = this._socketOpen;
      this._socket = null;
      this._socketOpen = false;
      this._lastWsMessage = 0;
      if (!wasOpen) {
        // Never got through (no events route, proxy without websockets, …):
        // retry after 2, 4, 8 … 60 s while REST polling carries on.
        this._wsFailures += 1;
        this._wsRetryAt =
          Date.now() + Math.min(60000, 1000 * 2 ** this._wsFailures);
      }
      if (!this.isDisposed && this._connection === 'live') {
        this._setConnection('polling');
        // Fall back to REST right away; a successful fetch reopens the socket.
        void this._poll.refresh();
      }
    };
    socket.onerror = () => {
      /* onclose follows */
    };
  }

  private _closeSocket(): void {
    const socket = this._socket;
    this._socket = null;
    this._socketOpen = false;
    this._lastWsMessage = 0;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close();
      } catch {
        /* already closed */
      }
    }
  }

  /* ----------------------------- render ----------------------------- */

  private _apply(data: unknown): void {
    if (this.isDisposed) {
      return;
    }
    const check = checkSnapshot(data);
    if (!check.ok) {
      // Another jupyter_plb release on the server: say so rather than draw a wrong picture.
      this._showError({ kind: 'bad-data', title: 'Snapshot schema mismatch', detail: check.problem });
      return;
    }
    let vm: IViewModel;
    try {
      vm = viewModel(check.snapshot);
      this._render(vm);
      this._team.update(check.snapshot);
      this._jobs.update(check.snapshot);
    } catch (error) {
      console.warn('jupyter-plb: cannot render snapshot', error);
      return;
    }
    this._hasData = true;
    setHidden(this._errorBox, true);
    setHidden(this._body, false);
    setHidden(this._emptyBox, true);
    this._body.classList.remove('jp-plb-mod-stale');
  }

  private _showError(state: IErrorState): void {
    this._setConnection('offline');
    setModifier(
      this._errorBox,
      ['jp-plb-mod-not-loaded', 'jp-plb-mod-unreachable'],
      state.kind === 'not-loaded' ? 'jp-plb-mod-not-loaded' : 'jp-plb-mod-unreachable'
    );
    setText(this._errorTitle, state.title);
    setText(this._errorDetail, state.detail);
    setHidden(this._errorBox, false);
    setHidden(this._emptyBox, true);
    if (state.kind === 'not-loaded' || !this._hasData) {
      setHidden(this._body, true);
    } else {
      this._body.classList.add('jp-plb-mod-stale');
    }
  }

  private _setConnection(state: ConnectionState): void {
    this._connection = state;
    const labels: Record<ConnectionState, [string, string]> = {
      connecting: ['connecting…', 'Waiting for the first answer'],
      live: ['live', 'Streaming from plb/api/events'],
      polling: ['polling', 'Websocket down: refreshing from plb/api/status'],
      offline: ['offline', 'The load balancer API does not answer']
    };
    const [label, title] = labels[state];
    setText(this._connLabel, label);
    this._conn.title = title;
    setModifier(
      this._conn,
      [
        'jp-plb-mod-connecting',
        'jp-plb-mod-live',
        'jp-plb-mod-polling',
        'jp-plb-mod-offline'
      ],
      `jp-plb-mod-${state}`
    );
  }

  private _render(vm: IViewModel): void {
    // Health
    setText(this._badge, vm.badge.label);
    this._badge.title = vm.badge.title;
    setModifier(this._badge, BADGE_MODS, vm.badge.className);
    setText(this._balancerLine, vm.balancerLine);
    this._balancerLine.title = vm.balancerLine;
    this._messages.sync(vm.healthMessages.map((m, i) => ({ m, i })));
    setHidden(this._messagesList, vm.healthMessages.length === 0);

    // Totals and throughput
    this._totals.sync(vm.totals);
    this._sparkArea.setAttribute('d', vm.sparkline.area);
    this._sparkLine.setAttribute('d', vm.sparkline.line);
    setText(this._sparkCaption, vm.sparklineCaption);

    // Hubs
    setText(this._hubsTitle, `Hubs (${vm.hubs.length})`);
    this._hubs.sync(vm.hubs);
    setHidden(this._noHubs, vm.hubs.length > 0);
    setHidden(this._startHub, vm.localHub.present);
    setHidden(this._stopHub, !vm.localHub.present);

    // Users
    setText(this._usersTitle, `Users (${vm.users.length})`);
    this._users.sync(vm.users);
    setHidden(this._usersTable, vm.users.length === 0);
    setHidden(this._noUsers, vm.users.length > 0);

    // Unschedulable + failures
    setHidden(this._unschedulable, vm.unschedulable.count === 0);
    setText(
      this._unschedulable,
      vm.unschedulable.count === 0
        ? ''
        : `${vm.unschedulable.count} task(s) cannot be scheduled: ${vm.unschedulable.first}`
    );
    this._failures.sync(vm.failures);
    setHidden(this._failuresSection, vm.failures.length === 0);
  }

  /* ------------------------------ build ----------------------------- */

  private _build(): void {
    const root = this.node;

    // Header: title, connection state, actions
    const header = el('div', 'jp-plb-header');
    const titleRow = el('div', 'jp-plb-title-row');
    titleRow.appendChild(el('h2', 'jp-plb-title', 'Load Balancer'));
    this._conn = el('span', 'jp-plb-conn');
    this._conn.appendChild(el('span', 'jp-plb-conn-dot'));
    this._connLabel = el('span', 'jp-plb-conn-label');
    this._conn.appendChild(this._connLabel);
    const refresh = button(
      '',
      'Refresh now',
      () => void this.refresh(),
      'jp-plb-icon-button'
    );
    refresh.setAttribute('aria-label', 'Refresh');
    refresh.appendChild(refreshIcon.element({ tag: 'span' }));
    titleRow.append(this._conn, refresh);
    header.appendChild(titleRow);

    const actions = el('div', 'jp-plb-actions');
    actions.appendChild(
      button('Open monitor', 'Open the monitor page in a tab', () =>
        void this._commands.execute(CommandIDs.openMonitor)
      )
    );
    actions.appendChild(
      button(
        'Copy hub command',
        'Copy the "plb hub --connect …" command to start a hub on another machine',
        () => void this._commands.execute(CommandIDs.copyHubCommand)
      )
    );
    header.appendChild(actions);
    root.appendChild(header);

    // Error and empty states
    this._errorBox = el('div', 'jp-plb-error');
    this._errorBox.setAttribute('role', 'alert');
    this._errorTitle = el('div', 'jp-plb-error-title');
    this._errorDetail = el('div', 'jp-plb-error-detail');
    this._errorBox.append(
      this._errorTitle,
      this._errorDetail,
      button('Retry', 'Try again now', () => void this.refresh())
    );
    this._errorBox.hidden = true;
    root.appendChild(this._errorBox);

    this._emptyBox = el('div', 'jp-plb-empty', 'Connecting to the load balancer…');
    root.appendChild(this._emptyBox);

    // Body
    this._body = el('div', 'jp-plb-body');
    this._body.hidden = true;
    root.appendChild(this._body);

    // -- health
    const health = this._section('Balancer');
    const healthRow = el('div', 'jp-plb-health-row');
    this._badge = el('span', 'jp-plb-badge');
    this._balancerLine = el('span', 'jp-plb-muted jp-plb-ellipsis');
    healthRow.append(this._badge, this._balancerLine);
    health.appendChild(healthRow);
    this._messagesList = el('ul', 'jp-plb-messages');
    health.appendChild(this._messagesList);
    this._messages = new KeyedList<{ m: string; i: number }>(
      this._messagesList,
      () => {
        const li = el('li');
        return { node: li, update: item => setText(li, item.m) };
      },
      item => `${item.i}`
    );

    // -- totals
    const totalsGrid = el('div', 'jp-plb-totals');
    health.appendChild(totalsGrid);
    this._totals = new KeyedList<ITotalCell>(
      totalsGrid,
      () => {
        const cell = el('div', 'jp-plb-total');
        const value = el('div', 'jp-plb-total-value');
        const label = el('div', 'jp-plb-total-label');
        cell.append(value, label);
        return {
          node: cell,
          update: item => {
            setText(value, item.value);
            setText(label, item.label);
            cell.dataset.key = item.key;
            cell.classList.toggle(
              'jp-plb-mod-error',
              item.key === 'failed' && item.value !== '0'
            );
          }
        };
      },
      item => item.key
    );

    // -- throughput sparkline
    const spark = el('div', 'jp-plb-spark');
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('class', 'jp-plb-spark-svg');
    svg.setAttribute('viewBox', `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', 'Throughput, tasks done per second');
    this._sparkArea = document.createElementNS(SVG_NS, 'path');
    this._sparkArea.setAttribute('class', 'jp-plb-spark-area');
    this._sparkLine = document.createElementNS(SVG_NS, 'path');
    this._sparkLine.setAttribute('class', 'jp-plb-spark-line');
    svg.append(this._sparkArea, this._sparkLine);
    this._sparkCaption = el('div', 'jp-plb-muted jp-plb-small');
    spark.append(svg, this._sparkCaption);
    health.appendChild(spark);

    this._unschedulable = el('div', 'jp-plb-warning-line');
    this._unschedulable.hidden = true;
    health.appendChild(this._unschedulable);

    // -- hubs
    const hubs = this._section('');
    const hubsHead = el('div', 'jp-plb-section-head');
    this._hubsTitle = el('h3', 'jp-plb-section-title', 'Hubs');
    this._startHub = button(
      'Start local hub',
      'Start the hub embedded in this Jupyter server',
      () => void this._commands.execute(CommandIDs.startLocalHub),
      'jp-plb-small-button'
    );
    this._stopHub = button(
      'Stop local hub',
      'Stop the hub embedded in this Jupyter server',
      () => void this._commands.execute(CommandIDs.stopLocalHub),
      'jp-plb-small-button'
    );
    this._stopHub.hidden = true;
    hubsHead.append(this._hubsTitle, this._startHub, this._stopHub);
    hubs.appendChild(hubsHead);
    this._noHubs = el('div', 'jp-plb-muted jp-plb-small', 'No hub connected.');
    hubs.appendChild(this._noHubs);
    const hubList = el('div', 'jp-plb-hubs');
    hubs.appendChild(hubList);
    this._hubs = new KeyedList<IHubRow>(
      hubList,
      () => this._createHub(),
      h => h.key
    );

    this._jobs = new JobsSection(this._section(''));

    // -- users
    const users = this._section('');
    this._usersTitle = el('h3', 'jp-plb-section-title', 'Users');
    users.appendChild(this._usersTitle);
    this._noUsers = el('div', 'jp-plb-muted jp-plb-small', 'No tasks yet.');
    users.appendChild(this._noUsers);
    this._usersTable = el('div', 'jp-plb-users');
    users.appendChild(this._usersTable);
    this._users = new KeyedList<IUserRow>(
      this._usersTable,
      () => this._createUserRow(),
      u => u.key
    );

    // -- fair share between users (team.ts)
    this._team = new TeamSection(this._section(''));

    // -- recent failures
    this._failuresSection = this._section('Recent failures');
    const failList = el('ul', 'jp-plb-failures');
    this._failuresSection.appendChild(failList);
    this._failures = new KeyedList<IFailureRow>(
      failList,
      () => {
        const li = el('li');
        const head = el('div', 'jp-plb-failure-head');
        const what = el('div', 'jp-plb-failure-what jp-plb-ellipsis');
        let id = '';
        const details = button(
          'Details',
          'Show the traceback, output, arguments and timings of this task',
          () => void showTaskDetail(this._settings, id),
          'jp-plb-small-button jp-plb-task-details'
        );
        head.append(what, details);
        const err = el('div', 'jp-plb-failure-error');
        li.append(head, err);
        return {
          node: li,
          update: f => {
            id = f.id;
            setHidden(details, !f.id);
            setText(what, f.user ? `${f.name} · ${f.user}` : f.name);
            setText(err, f.error);
            err.title = f.error;
          }
        };
      },
      f => f.key
    );

    this._setConnection('connecting');
  }

  private _section(title: string): HTMLElement {
    const section = el('section', 'jp-plb-section');
    if (title) {
      section.appendChild(el('h3', 'jp-plb-section-title', title));
    }
    this._body.appendChild(section);
    return section;
  }

  private _createHub(): IRowView<IHubRow> {
    const node = el('div', 'jp-plb-hub');
    const head = el('div', 'jp-plb-hub-head');
    const name = el('span', 'jp-plb-hub-name jp-plb-ellipsis');
    const local = el('span', 'jp-plb-tag', 'local');
    const state = el('span', 'jp-plb-badge');
    head.append(name, local, state);
    const meta = el('div', 'jp-plb-muted jp-plb-small jp-plb-ellipsis');
    const skew = el('div', 'jp-plb-hub-skew jp-plb-small');
    const workers = el('div', 'jp-plb-workers');
    node.append(head, meta, skew, workers);
    const list = new KeyedList<IWorkerRow>(
      workers,
      () => this._createWorkerRow(),
      w => w.key
    );
    return {
      node,
      update: hub => {
        setText(name, hub.name);
        name.title = hub.id ? `${hub.name} (${hub.id})` : hub.name;
        setHidden(local, !hub.local);
        setText(state, hub.badge.label);
        setModifier(state, BADGE_MODS, hub.badge.className);
        const parts = [hub.summary, hub.host, hub.pid ? `pid ${hub.pid}` : '', hub.lastSeen ? `seen ${hub.lastSeen}` : '', hub.versions];
        const metaText = parts.filter(p => p).join(' · ');
        setText(meta, metaText);
        meta.title = metaText;
        setText(skew, hub.versionSkew ? `⚠ ${hub.versionSkew}` : '');
        setHidden(skew, !hub.versionSkew);
        list.sync(hub.workers);
      }
    };
  }

  private _createWorkerRow(): IRowView<IWorkerRow> {
    const node = el('div', 'jp-plb-worker');
    const dot = el('span', 'jp-plb-worker-dot');
    const range = el('span', 'jp-plb-worker-range');
    const task = el('span', 'jp-plb-worker-task jp-plb-ellipsis');
    const usage = el('span', 'jp-plb-worker-usage');
    const done = el('span', 'jp-plb-worker-done');
    node.append(dot, range, task, usage, done);
    return {
      node,
      update: w => {
        setModifier(node, WORKER_MODS, `jp-plb-mod-${w.stateClass}`);
        let taskText = w.state;
        if (w.taskName) {
          taskText = [w.taskName, w.taskUser, w.taskAge]
            .filter(p => p)
            .join(' · ');
        }
        setText(range, w.range);
        setText(task, taskText);
        setText(usage, `${w.cpu} · ${w.memory}`);
        setText(done, w.done);
        node.title =
          `${w.id} (${w.state})\npriorities ${w.range}\n` +
          (w.taskName ? `task: ${taskText}\n` : '') +
          `CPU ${w.cpu}, resident memory ${w.memory}\n` +
          `${w.done} tasks done`;
      }
    };
  }

  private _createUserRow(): IRowView<IUserRow> {
    const row = el('div', 'jp-plb-user-row');
    const head = el('div', 'jp-plb-user-head');
    const user = el('span', 'jp-plb-user jp-plb-ellipsis');
    let current: IUserRow | null = null;
    const cancel = button(
      'Cancel queued',
      "Cancel this user's queued tasks",
      () => {
        if (current) {
          void this._cancelUser(current.user, current.queued);
        }
      },
      'jp-plb-small-button jp-mod-warn'
    );
    head.append(user, cancel);
    const stats = el('div', 'jp-plb-user-stats');
    const cells = (['queued', 'running', 'done', 'failed'] as const).map(
      name => {
        const cell = el('span', `jp-plb-stat jp-plb-stat-${name}`);
        const value = el('span', 'jp-plb-stat-value');
        cell.append(value, document.createTextNode(` ${name}`));
        stats.appendChild(cell);
        return { name, cell, value };
      }
    );
    row.append(head, stats);
    return {
      node: row,
      update: u => {
        current = u;
        setText(user, u.user);
        user.title = u.user;
        const text = {
          queued: u.queuedText,
          running: u.runningText,
          done: u.doneText,
          failed: u.failedText
        };
        for (const c of cells) {
          setText(c.value, text[c.name]);
        }
        cells[3].cell.classList.toggle('jp-plb-mod-error', u.failed > 0);
        setHidden(cells[3].cell, u.failed === 0);
        cells[0].cell.classList.toggle('jp-plb-mod-active', u.queued > 0);
        cells[1].cell.classList.toggle('jp-plb-mod-active', u.running > 0);
        setHidden(cancel, !u.canCancel);
        cancel.disabled = !u.canCancel;
      }
    };
  }

  private async _cancelUser(user: string, queued: number): Promise<void> {
    const result = await showDialog({
      title: 'Cancel queued tasks',
      body: `Cancel the ${queued} queued task(s) of user "${user}"? Running tasks are not affected.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep' }),
        Dialog.warnButton({ label: 'Cancel tasks' })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      const answer = await cancelUserTasks(this._settings, user);
      const n = typeof answer?.cancelled === 'number' ? answer.cancelled : 0;
      Notification.success(`Cancelled ${n} queued task(s) of ${user}.`, {
        autoClose: 4000
      });
    } catch (error) {
      Notification.error(
        `Could not cancel the tasks of ${user}: ${error instanceof Error ? error.message : String(error)}`,
        { autoClose: 8000 }
      );
    }
    void this.refresh();
  }

  private _settings: ServerConnection.ISettings;
  private _commands: CommandRegistry;
  private _poll: Poll;
  private _onVisibility: () => void;
  private _socket: WebSocket | null = null;
  private _socketOpen = false;
  private _lastWsMessage = 0;
  private _wsFailures = 0;
  private _wsRetryAt = 0;
  private _connection: ConnectionState = 'connecting';
  private _hasData = false;

  private _conn!: HTMLElement;
  private _connLabel!: HTMLElement;
  private _errorBox!: HTMLElement;
  private _errorTitle!: HTMLElement;
  private _errorDetail!: HTMLElement;
  private _emptyBox!: HTMLElement;
  private _body!: HTMLElement;
  private _badge!: HTMLElement;
  private _balancerLine!: HTMLElement;
  private _messagesList!: HTMLElement;
  private _messages!: KeyedList<{ m: string; i: number }>;
  private _totals!: KeyedList<ITotalCell>;
  private _sparkArea!: SVGPathElement;
  private _sparkLine!: SVGPathElement;
  private _sparkCaption!: HTMLElement;
  private _unschedulable!: HTMLElement;
  private _hubsTitle!: HTMLElement;
  private _startHub!: HTMLButtonElement;
  private _stopHub!: HTMLButtonElement;
  private _noHubs!: HTMLElement;
  private _hubs!: KeyedList<IHubRow>;
  private _jobs!: JobsSection;
  private _usersTitle!: HTMLElement;
  private _noUsers!: HTMLElement;
  private _usersTable!: HTMLElement;
  private _users!: KeyedList<IUserRow>;
  private _team!: TeamSection;
  private _failuresSection!: HTMLElement;
  private _failures!: KeyedList<IFailureRow>;
}

export namespace PlbPanel {
  export interface IOptions {
    serverSettings: ServerConnection.ISettings;
    commands: CommandRegistry;
  }
}
