/**
 * jupyter-plb: JupyterLab front end of the jupyter_plb load balancer.
 *
 * - a left side-bar panel ("Load Balancer") with the live state of the balancer,
 * - the monitor page in a main-area tab,
 * - commands to copy the hub command line and to start/stop the local hub.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Clipboard,
  ICommandPalette,
  IThemeManager,
  MainAreaWidget,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import { IFrame } from '@jupyterlab/ui-components';

import {
  fetchConnection,
  monitorUrl,
  PlbApiError,
  setLocalHub
} from './api';
import { plbIcon } from './icon';
import { withToken } from './model';
import { CommandIDs, PlbPanel } from './panel';

const CATEGORY = 'Load Balancer';
const MONITOR_ID = 'jupyter-plb-monitor';

function describe(error: unknown): string {
  if (error instanceof PlbApiError && error.status === 404) {
    return 'the jupyter_plb server extension is not loaded';
  }
  return error instanceof Error ? error.message : String(error);
}

/** Quote a path for a POSIX shell if it needs it. */
function shellQuote(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text)
    ? text
    : `'${text.replace(/'/g, "'\\''")}'`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-plb:plugin',
  description:
    'Side-bar panel and commands for the jupyter_plb load balancer.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    themes: IThemeManager | null
  ) => {
    const { commands, shell } = app;
    const settings = app.serviceManager.serverSettings;

    // ---- side-bar panel
    const panel = new PlbPanel({ serverSettings: settings, commands });
    shell.add(panel, 'left', { rank: 900 });
    if (restorer) {
      restorer.add(panel, 'jupyter-plb:panel');
    }

    // ---- monitor tab
    const tracker = new WidgetTracker<MainAreaWidget<IFrame>>({
      namespace: 'jupyter-plb-monitor'
    });
    if (restorer) {
      void restorer.restore(tracker, {
        command: CommandIDs.openMonitor,
        name: () => 'monitor'
      });
    }

    // The monitor page follows Lab's theme, not the OS: ?theme= when opened, then a message
    // on each theme change and on each (re)load of the frame (monitor.js listens).
    const scheme = (): 'light' | 'dark' | null => {
      if (!themes || !themes.theme) {
        return null; // no theme manager, or no theme loaded yet: the OS decides
      }
      return themes.isLight(themes.theme) ? 'light' : 'dark';
    };
    const postScheme = (widget: MainAreaWidget<IFrame>) => {
      const frame = widget.content.node.querySelector('iframe');
      const current = scheme();
      if (!frame?.contentWindow || !current) {
        return;
      }
      const origin = new URL(frame.src || widget.content.url, window.location.href).origin;
      frame.contentWindow.postMessage(
        { type: 'jupyter-plb:theme', scheme: current },
        origin
      );
    };
    themes?.themeChanged.connect(() => tracker.forEach(postScheme));

    commands.addCommand(CommandIDs.openPanel, {
      label: 'Show Load Balancer Panel',
      caption: 'Show the load balancer side-bar panel',
      icon: plbIcon,
      execute: () => {
        shell.activateById(panel.id);
      }
    });

    commands.addCommand(CommandIDs.openMonitor, {
      label: 'Open Load Balancer Monitor',
      caption: 'Open the load balancer monitor page in a tab',
      icon: plbIcon,
      execute: () => {
        const existing = tracker.find(w => w.id === MONITOR_ID);
        if (existing) {
          shell.activateById(existing.id);
          return existing;
        }
        // Same origin as JupyterLab, so the login cookie authenticates it;
        // scripts + same-origin are needed for the page's own API calls.
        const content = new IFrame({
          sandbox: [
            'allow-scripts',
            'allow-same-origin',
            'allow-forms',
            'allow-popups',
            'allow-downloads'
          ],
          referrerPolicy: 'same-origin'
        });
        const current = scheme();
        content.url = withToken(
          monitorUrl(settings) + (current ? `?theme=${current}` : ''),
          settings.token,
          settings.appendToken
        );
        const widget = new MainAreaWidget<IFrame>({ content });
        content.node
          .querySelector('iframe')
          ?.addEventListener('load', () => postScheme(widget));
        widget.id = MONITOR_ID;
        widget.title.label = 'PLB Monitor';
        widget.title.caption = 'Load balancer monitor';
        widget.title.icon = plbIcon;
        widget.title.closable = true;
        void tracker.add(widget);
        shell.add(widget, 'main');
        shell.activateById(widget.id);
        return widget;
      }
    });

    commands.addCommand(CommandIDs.copyHubCommand, {
      label: 'Copy Hub Command for Another Machine',
      caption: 'Copy "plb hub --connect …" to start a hub elsewhere',
      execute: async () => {
        try {
          const info = await fetchConnection(settings);
          let command = typeof info?.command === 'string' ? info.command : '';
          if (!command && typeof info?.connection_file === 'string') {
            command = `plb hub --connect ${shellQuote(info.connection_file)}`;
          }
          if (!command) {
            throw new Error('the server sent no command');
          }
          Clipboard.copyToSystem(command);
          Notification.success(`Copied: ${command}`, { autoClose: 5000 });
        } catch (error) {
          Notification.error(
            `Could not get the hub command: ${describe(error)}`,
            { autoClose: 8000 }
          );
        }
      }
    });

    const localHub = (action: 'start' | 'stop') => async () => {
      try {
        const state = await setLocalHub(settings, action);
        const running = state?.running === true;
        const workers =
          typeof state?.workers === 'number' ? state.workers : undefined;
        Notification.success(
          running
            ? `Local hub running${workers !== undefined ? ` with ${workers} worker(s)` : ''}.`
            : 'Local hub stopped.',
          { autoClose: 4000 }
        );
      } catch (error) {
        Notification.error(
          `Could not ${action} the local hub: ${describe(error)}`,
          { autoClose: 8000 }
        );
      }
      void panel.refresh();
    };

    commands.addCommand(CommandIDs.startLocalHub, {
      label: 'Start Local Hub',
      caption: 'Start the hub embedded in this Jupyter server',
      execute: localHub('start')
    });

    commands.addCommand(CommandIDs.stopLocalHub, {
      label: 'Stop Local Hub',
      caption: 'Stop the hub embedded in this Jupyter server',
      execute: localHub('stop')
    });

    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Load Balancer Panel',
      execute: () => panel.refresh()
    });

    if (palette) {
      for (const command of [
        CommandIDs.openPanel,
        CommandIDs.openMonitor,
        CommandIDs.copyHubCommand,
        CommandIDs.startLocalHub,
        CommandIDs.stopLocalHub,
        CommandIDs.refresh
      ]) {
        palette.addItem({ command, category: CATEGORY });
      }
    }
  }
};

export default plugin;
