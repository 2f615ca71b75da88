"""The monitor's routes, written once, and their Jupyter authentication layer.

A ``*Route`` mixin turns one HTTP request into one call on the balancer (or the local hub) and
answers with :meth:`reply`, which the host's base class provides. :func:`jupyter_handlers` puts
every route behind Jupyter's login (``@web.authenticated`` + ``@authorized``, resource ``plb``;
``@ws_authenticated`` for the websocket); :mod:`.standalone` puts the same routes behind a token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web, websocket

from jupyter_plb.core.taskquery import QueryError
from jupyter_plb.errors import BalancerUnreachable, TaskRejected
from jupyter_plb.monitor import PAGE_CSP, STATIC_DIR, dumps
from jupyter_plb.monitor.localhub import MAX_WORKERS
from jupyter_plb.monitor.service import SETTINGS_KEY, MonitorService

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer
    from jupyter_plb.monitor.events import Channel
    from jupyter_plb.monitor.remote import RemoteBalancer

#: What a Jupyter Authorizer is asked about (``read``/``write`` on ``plb``).
AUTH_RESOURCE = "plb"
JSON_TYPE = "application/json; charset=UTF-8"
MAX_TASKS_LIMIT = 1000


class Route(web.RequestHandler):
    """Shared by every route; the host's base class supplies :meth:`reply` and authentication."""

    verbs: tuple[str, ...] = ("get",)

    @property
    def monitor(self) -> MonitorService:
        return self.settings[SETTINGS_KEY]

    @property
    def balancer(self) -> Balancer | RemoteBalancer:
        return self.monitor.balancer

    if TYPE_CHECKING:

        def reply(self, body: str | bytes, content_type: str = JSON_TYPE) -> None:
            """Send ``body`` and finish; defined by each host's base class."""

    def reply_json(self, data: Any) -> None:
        self.reply(dumps(data))

    async def ask(self, answer: Any) -> Any:
        """The balancer's answer; an attached team balancer's (monitor/remote.py) is awaited, and
        its refusals become 403 (another user's task) or 503 (it does not answer)."""
        try:
            return await ensure_async(answer)
        except TaskRejected as exc:
            raise web.HTTPError(403, str(exc)) from None
        except BalancerUnreachable as exc:
            raise web.HTTPError(503, str(exc)) from None

    def int_argument(self, name: str, default: int, maximum: int) -> int:
        value = self.get_query_argument(name, None)
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise web.HTTPError(400, f"{name} must be an integer") from None
        if not 0 <= number <= maximum:
            raise web.HTTPError(400, f"{name} must be from 0 to {maximum}")
        return number


class StatusRoute(Route):
    def get(self) -> None:
        self.reply_json(self.balancer.snapshot())


class TasksRoute(Route):
    """``?q=`` searches (Flower's syntax, :mod:`..taskquery`); ``state=`` takes ``failed,cancelled``."""

    async def get(self) -> None:
        try:
            listing = await self.ask(self.balancer.list_tasks(
                state=self.get_query_argument("state", None) or None,
                user=self.get_query_argument("user", None) or None,
                name=self.get_query_argument("name", None) or None,
                query=self.get_query_argument("q", None) or None,
                offset=self.int_argument("offset", 0, 1 << 31),
                limit=self.int_argument("limit", 100, MAX_TASKS_LIMIT),
            ))
        except QueryError as exc:
            raise web.HTTPError(400, str(exc)) from None
        self.reply_json(listing)


class TaskRoute(Route):
    verbs = ("get", "delete")

    async def get(self, task_id: str) -> None:
        info = await self.ask(self.balancer.task_info(task_id))
        if info is None:
            raise web.HTTPError(404, "no such task (unknown, or older than the task history keeps)")
        self.reply_json(info)

    async def delete(self, task_id: str) -> None:
        if await self.ask(self.balancer.task_info(task_id)) is None:
            raise web.HTTPError(404, "no such task (unknown, or forgotten after its retention)")
        self.reply_json(await self.ask(self.balancer.cancel(task_id)))


class UserCancelRoute(Route):
    verbs = ("post",)

    async def post(self, user: str) -> None:
        self.reply_json({"cancelled": await self.ask(self.balancer.cancel_user(user))})


class LocalHubRoute(Route):
    verbs = ("post",)

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        workers = body.get("workers") if isinstance(body, dict) else None
        if action not in ("start", "stop"):
            raise web.HTTPError(400, 'the body must be {"action": "start"} or {"action": "stop"}')
        if workers is not None and (
            not isinstance(workers, int)
            or isinstance(workers, bool)
            or not 1 <= workers <= MAX_WORKERS
        ):
            raise web.HTTPError(400, f"workers must be an integer from 1 to {MAX_WORKERS}")
        hub = self.monitor.local_hub
        self.reply_json(await (hub.start(workers) if action == "start" else hub.stop()))


class ConnectionRoute(Route):
    def get(self) -> None:
        info, path = self.balancer.info, self.balancer.connection_path
        if info is None or path is None:
            raise web.HTTPError(503, "the balancer is not running")
        self.reply_json(
            {
                "connection_file": str(path),
                "command": f"plb hub --connect {path}",
                "address": f"{info.transport}://{info.address}",
            }
        )


class MetricsRoute(Route):
    def get(self) -> None:
        metrics = self.monitor.metrics
        self.reply(metrics.render(), metrics.content_type)


class PageRoute(Route):
    """The monitor page; sets the ``_xsrf`` cookie its script sends back on POST/DELETE."""

    def get(self) -> None:
        self.xsrf_token  # noqa: B018  (reading it sets the cookie)
        self.set_header("Referrer-Policy", "no-referrer")
        self.reply((STATIC_DIR / "monitor.html").read_bytes(), "text/html; charset=UTF-8")


class EventsRoute(websocket.WebSocketHandler):
    """``/plb/api/events``: a snapshot at once, then the :class:`.events.EventStream`."""

    channel: Channel | None = None

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)
        self.channel = self.settings[SETTINGS_KEY].events.connect(self.write_message)

    def on_message(self, message: str | bytes) -> None:
        """The stream is one-way; what the page sends is ignored."""

    def on_close(self) -> None:
        if self.channel is not None:
            self.channel.stream.disconnect(self.channel)
            self.channel = None
        super().on_close()


#: Route pattern → route; the static files and the websocket are added by each host.
ROUTES: list[tuple[str, type[Route]]] = [
    (r"/plb/api/status", StatusRoute),
    (r"/plb/api/tasks", TasksRoute),
    (r"/plb/api/tasks/([^/]+)", TaskRoute),
    (r"/plb/api/users/([^/]+)/cancel", UserCancelRoute),
    (r"/plb/api/hub/local", LocalHubRoute),
    (r"/plb/api/connection", ConnectionRoute),
    (r"/plb/metrics", MetricsRoute),
    (r"/plb/monitor", PageRoute),
]
EVENTS_PATTERN = r"/plb/api/events"
STATIC_PATTERN = r"/plb/static/(.*)"


# -- the Jupyter layer ---------------------------------------------------------------------------
class JupyterApiHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def reply(self, body: str | bytes, content_type: str = JSON_TYPE) -> None:
        self.finish(body, set_content_type=content_type)


class JupyterPageHandler(JupyterHandler):
    """The page: Jupyter's login redirect when logged out, and the monitor's strict CSP."""

    auth_resource = AUTH_RESOURCE

    @property
    def content_security_policy(self) -> str:
        return PAGE_CSP

    def reply(self, body: str | bytes, content_type: str = JSON_TYPE) -> None:
        self.set_header("Content-Type", content_type)
        self.finish(body)


class JupyterStaticHandler(JupyterHandler, web.StaticFileHandler):
    """``/plb/static/…``: the page's script, style and icon, behind the login too."""

    auth_resource = AUTH_RESOURCE

    def get_login_url(self) -> str:
        raise web.HTTPError(403)

    @web.authenticated
    @authorized
    async def get(self, path: str, include_body: bool = True) -> None:  # type: ignore[override]
        await web.StaticFileHandler.get(self, path, include_body)

    @web.authenticated
    @authorized
    async def head(self, path: str) -> None:  # type: ignore[override]
        await web.StaticFileHandler.get(self, path, include_body=False)


class JupyterEventsHandler(EventsRoute, WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    auth_resource = AUTH_RESOURCE

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        if not await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "read", AUTH_RESOURCE)
        ):
            raise web.HTTPError(403)
        await super().get(*args, **kwargs)


def _logged_in(method: Callable[..., Any]) -> Callable[..., Any]:
    return web.authenticated(authorized(method))


def _jupyter_class(route: type[Route], base: type[JupyterHandler]) -> type[web.RequestHandler]:
    methods = {verb: _logged_in(getattr(route, verb)) for verb in route.verbs}
    return type(route.__name__.replace("Route", "Handler"), (route, base), methods)


def jupyter_handlers() -> list[tuple[str, type[web.RequestHandler], dict[str, Any]]]:
    """The routes for ``ExtensionApp.handlers`` (Jupyter prefixes the server's ``base_url``)."""
    handlers: list[tuple[str, type[web.RequestHandler], dict[str, Any]]] = [
        (
            pattern,
            _jupyter_class(route, JupyterPageHandler if route is PageRoute else JupyterApiHandler),
            {},
        )
        for pattern, route in ROUTES
    ]
    handlers.append((EVENTS_PATTERN, JupyterEventsHandler, {}))
    handlers.append((STATIC_PATTERN, JupyterStaticHandler, {"path": str(STATIC_DIR)}))
    return handlers
