/**
 * Thin REST client for the jupyter_plb server extension (docs/monitor-api.md).
 *
 * Every request goes through `ServerConnection.makeRequest` with the
 * application's `serverSettings`, so the base URL, the XSRF header and the
 * token/cookie handling are JupyterLab's.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { userCancelPath, withToken } from './model';

/** An API call that failed; `status` is 0 when no HTTP answer came back. */
export class PlbApiError extends Error {
  constructor(message: string, status: number) {
    super(message);
    this.name = 'PlbApiError';
    this.status = status;
  }

  readonly status: number;
}

/** The answer of `GET plb/api/connection`. */
export interface IConnectionInfo {
  connection_file?: string;
  command?: string;
  address?: string;
}

/** The answer of `POST plb/api/hub/local`. */
export interface ILocalHubState {
  running?: boolean;
  workers?: number;
}

/**
 * Call `<baseUrl>/<...path>` and parse the JSON answer.
 *
 * Throws `PlbApiError` with the HTTP status (0 for network failures) and the
 * server's `message`/`reason` when there is one.
 */
export async function requestAPI<T>(
  settings: ServerConnection.ISettings,
  path: string[],
  init: RequestInit = {}
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, ...path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new PlbApiError(
      error instanceof Error ? error.message : String(error),
      0
    );
  }
  const text = await response.text().catch(() => '');
  let data: unknown = undefined;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = undefined;
    }
  }
  if (!response.ok) {
    let message = '';
    if (typeof data === 'object' && data !== null) {
      const d = data as { message?: unknown; reason?: unknown };
      message =
        typeof d.message === 'string'
          ? d.message
          : typeof d.reason === 'string'
            ? d.reason
            : '';
    }
    throw new PlbApiError(
      message || `${response.status} ${response.statusText}`.trim(),
      response.status
    );
  }
  if (data === undefined && text.length > 0) {
    throw new PlbApiError('The server sent a body that is not JSON.', -1);
  }
  return data as T;
}

export function fetchStatus(
  settings: ServerConnection.ISettings
): Promise<unknown> {
  return requestAPI<unknown>(settings, ['plb', 'api', 'status']);
}

export function fetchConnection(
  settings: ServerConnection.ISettings
): Promise<IConnectionInfo> {
  return requestAPI<IConnectionInfo>(settings, ['plb', 'api', 'connection']);
}

export function cancelUserTasks(
  settings: ServerConnection.ISettings,
  user: string
): Promise<{ cancelled?: number }> {
  return requestAPI<{ cancelled?: number }>(settings, userCancelPath(user), {
    method: 'POST',
    body: '{}'
  });
}

export function setLocalHub(
  settings: ServerConnection.ISettings,
  action: 'start' | 'stop'
): Promise<ILocalHubState> {
  return requestAPI<ILocalHubState>(settings, ['plb', 'api', 'hub', 'local'], {
    method: 'POST',
    body: JSON.stringify({ action })
  });
}

/** `ws(s)://…/plb/api/events`, with `?token=` only when the settings ask for it. */
export function eventsUrl(settings: ServerConnection.ISettings): string {
  return withToken(
    URLExt.join(settings.wsUrl, 'plb', 'api', 'events'),
    settings.token,
    settings.appendToken
  );
}

/** Same-origin URL of the monitor page. */
export function monitorUrl(settings: ServerConnection.ISettings): string {
  return URLExt.join(settings.baseUrl, 'plb', 'monitor');
}
