"""The monitor outside Jupyter (``startAll()`` / ``plb start``): the same routes behind a token.

The token is random per start and printed in :attr:`StandaloneMonitor.url`. A request is let in
with ``Authorization: token <t>`` (or ``bearer``), with ``?token=<t>`` (which also sets an HttpOnly
cookie, so the page's own requests need nothing more), or with that cookie; anything else gets 403.
As in Jupyter, POST/DELETE authenticated by the cookie alone must carry the ``_xsrf`` token the
page was given; requests that carry the token itself need not.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any

from tornado import httputil, web, websocket
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jupyter_plb.monitor import API_CSP, PAGE_CSP, STATIC_DIR, dumps
from jupyter_plb.monitor.handlers import (
    EVENTS_PATTERN,
    JSON_TYPE,
    ROUTES,
    STATIC_PATTERN,
    EventsRoute,
    PageRoute,
    Route,
)
from jupyter_plb.monitor.localhub import LocalHub
from jupyter_plb.monitor.service import SETTINGS_KEY, MonitorService
from jupyter_plb.workers.resources import usable_cpus

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer
    from jupyter_plb.core.parameters import Parameters

log = logging.getLogger(__name__)

TOKEN_KEY = "plb_monitor_token"
COOKIE_KEY = "plb_monitor_cookie"


class TokenAuth(web.RequestHandler):
    """The token, or the signed cookie it sets (for the browser session, a day at most)."""

    def _request_token(self) -> str | None:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        return self.get_query_argument("token", None)

    def _token_ok(self) -> bool:
        token = self._request_token()
        return token is not None and hmac.compare_digest(
            token.encode(), self.settings[TOKEN_KEY].encode()
        )

    def get_current_user(self) -> str | None:
        if self._token_ok():
            return "token"
        if self.get_signed_cookie(self.settings[COOKIE_KEY], max_age_days=1) == b"ok":
            return "cookie"
        return None

    def prepare(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "open the monitor URL printed at start: it carries the token")
        if self.get_query_argument("token", None) is not None:
            self.set_signed_cookie(
                self.settings[COOKIE_KEY], "ok", expires_days=None, httponly=True, samesite="Lax"
            )

    def check_xsrf_cookie(self) -> None:
        """POST/DELETE on the cookie alone need the page's ``_xsrf`` token; with the token, not."""
        if not self._token_ok():
            super().check_xsrf_cookie()


class StandaloneApiHandler(TokenAuth):
    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", API_CSP)

    def reply(self, body: str | bytes, content_type: str = JSON_TYPE) -> None:
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = httputil.responses.get(status_code, "Unknown")
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else reason
        self.reply(dumps({"message": message, "reason": reason}))


class StandalonePageHandler(StandaloneApiHandler):
    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", PAGE_CSP)

    def prepare(self) -> None:
        """After ``?token=`` set the cookie, reload without the token (history, referrers)."""
        super().prepare()
        if self.get_query_argument("token", None) is not None:
            self.redirect(self.request.path)


class StandaloneStaticHandler(TokenAuth, web.StaticFileHandler):
    pass


class StandaloneEventsHandler(EventsRoute, TokenAuth, websocket.WebSocketHandler):
    pass


def standalone_handlers() -> list[tuple[str, type[web.RequestHandler], dict[str, Any]]]:
    handlers: list[tuple[str, type[web.RequestHandler], dict[str, Any]]] = [
        (pattern, _standalone_class(route), {}) for pattern, route in ROUTES
    ]
    handlers.append((EVENTS_PATTERN, StandaloneEventsHandler, {}))
    handlers.append((STATIC_PATTERN, StandaloneStaticHandler, {"path": str(STATIC_DIR)}))
    return handlers


def _standalone_class(route: type[Route]) -> type[web.RequestHandler]:
    base = StandalonePageHandler if route is PageRoute else StandaloneApiHandler
    return type(route.__name__.replace("Route", "Handler"), (route, base), {})


class StandaloneMonitor:
    """A Tornado server for the monitor on ``MONITOR_IP:MONITOR_PORT`` (0: a free port).

    ``start()`` runs on the balancer's loop; ``stop()`` also stops the local hub if the monitor's
    ``POST /plb/api/hub/local`` started one.
    """

    def __init__(
        self, balancer: Balancer, params: Parameters, *, local_workers: int | None = None
    ) -> None:
        self.balancer = balancer
        self.ip = params["MONITOR_IP"]
        self.requested_port = params["MONITOR_PORT"]
        self.port = 0
        self.token = secrets.token_urlsafe(32)
        self.local_workers = local_workers or usable_cpus()
        self.service: MonitorService | None = None
        self._server: HTTPServer | None = None

    def start(self) -> None:
        assert self.balancer.connection_path is not None, "start the balancer first"
        self.service = MonitorService(
            self.balancer, LocalHub(self.balancer.connection_path, self.local_workers)
        )
        sockets = bind_sockets(self.requested_port, address=self.ip)
        self.port = sockets[0].getsockname()[1]
        app = web.Application(
            standalone_handlers(), xsrf_cookies=True, cookie_secret=secrets.token_bytes(32)
        )
        app.settings.update(
            {
                SETTINGS_KEY: self.service,
                TOKEN_KEY: self.token,
                COOKIE_KEY: f"plb-monitor-{self.port}",
            }
        )
        self._server = HTTPServer(app)
        self._server.add_sockets(sockets)
        log.info("MONITOR - open %s in a web browser", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.service is not None:
            self.service.events.close()
            self.service.local_hub.terminate()

    @property
    def url(self) -> str:
        """``http://IP:PORT/plb/monitor?token=…`` (a wildcard IP is shown as 127.0.0.1)."""
        host = "127.0.0.1" if self.ip in ("", "0.0.0.0", "::") else self.ip
        if ":" in host:
            host = f"[{host}]"
        query = urllib.parse.urlencode({"token": self.token})
        return f"http://{host}:{self.port}/plb/monitor?{query}"
