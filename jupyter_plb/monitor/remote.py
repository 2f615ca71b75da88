"""A team balancer seen from a Jupyter server attached to it (``c.PlbExtension.attach``).

:class:`RemoteBalancer` has the part of :class:`jupyter_plb.balancer.service.Balancer`'s interface the
monitor routes, the event stream and the metrics use (``snapshot``, ``list_tasks``,
``task_info``, ``cancel``, ``cancel_user``, ``info``, ``connection_path``, ``subscribers``), so
the monitor page, the Lab panel and ``/plb/metrics`` work unchanged over a balancer in another
process or on another machine. It speaks the client protocol with this server's credential (its
CurveZMQ client certificate), so the team balancer shows it what that user may see.

A snapshot is fetched every :data:`POLL_INTERVAL` and served from memory; every request has a
deadline (:data:`REQUEST_TIMEOUT`). When the team balancer does not answer, the snapshot says so
(``team.reachable`` false, ``team.unreachable_since``, health ``error``) and requests fail with
:class:`~jupyter_plb.errors.BalancerUnreachable` at once; the next answer clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio

from jupyter_plb.core import parameters, protocol
from jupyter_plb.core import snapshot as snap
from jupyter_plb.core.protocol import Message, Session
from jupyter_plb.errors import BalancerUnreachable, PlbError, ProtocolError, TaskRejected
from jupyter_plb.transport import connection, security, sockets

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5
REQUEST_TIMEOUT = 3.0
#: Queued tasks ``cancel_user`` cancels at most (pages of the balancer's task list).
MAX_CANCEL = 100_000


def empty_snapshot(now: float) -> snap.Snapshot:
    """A snapshot of nothing, in the balancer's shape, for before the first answer."""
    return snap.empty(now)


unreachable_message = snap.unreachable_message


class RemoteBalancer:
    """The monitor's view of a balancer reached through a connection file."""

    def __init__(
        self,
        connection_file: str | Path,
        params: parameters.Parameters | None = None,
        *,
        poll_interval: float = POLL_INTERVAL,
        timeout: float = REQUEST_TIMEOUT,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.connection_path = Path(connection_file).expanduser()
        self.params = params or parameters.load()
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.now = now
        self.info: connection.ConnectionInfo | None = None
        #: Task events are not forwarded from a remote balancer; listeners get snapshots.
        self.subscribers: set[Callable[[list[dict[str, Any]]], None]] = set()
        self.reachable = False
        self.unreachable_since: float | None = None
        self.error: str | None = None
        self._last: snap.Snapshot | None = None
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._session: Session | None = None
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._counter = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._id = protocol.new_id("attach")

    # -- life cycle --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        """Start polling; an unreachable or missing team balancer is reported, never raised."""
        self._context = zmq.asyncio.Context()
        self._tasks = [asyncio.get_running_loop().create_task(self._poll(), name="plb-attach-poll")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._close_socket()
        if self._context is not None:
            self._context.term()
            self._context = None

    def _close_socket(self) -> None:
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(BalancerUnreachable("the connection to the team balancer was reset"))
        self._waiting.clear()
        if len(self._tasks) > 1:
            self._tasks.pop().cancel()  # the reader of the closed socket
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _connect(self) -> zmq.asyncio.Socket:
        """(Re)read the connection file and connect a DEALER with this server's certificate."""
        assert self._context is not None
        self.info = connection.read(self.connection_path)
        curve = security.peer_keys(self.info, self.params, "clients")
        self._session = Session(self.info.key_bytes, max_message_size=self.params["LB_MAX_MESSAGE_SIZE"])
        sock = cast(zmq.asyncio.Socket, sockets.connect_dealer(
            self._context, self.info.client_url, f"{self._id}-{next(self._counter)}", linger_ms=0, curve=curve
        ))
        self._socket = sock
        self._tasks.append(asyncio.get_running_loop().create_task(self._read(sock)))
        return sock

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            assert self._session is not None
            try:
                msg = self._session.deserialize(frames)
            except ProtocolError as exc:
                log.debug("PLB - attach: dropped a message: %s", exc)
                continue
            waiting = self._waiting.pop(str(msg.header.get("req")), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(msg)

    # -- requests ----------------------------------------------------------------------------
    async def request(self, header: dict[str, Any]) -> Message:
        """Send ``header`` and wait at most ``timeout`` for its answer."""
        if self._context is None:
            raise BalancerUnreachable("the attached monitor is not running")
        if not self.reachable and self.error is not None and header.get("type") != "status":
            raise BalancerUnreachable(unreachable_message(self.unreachable_since or self.now(), self.error))
        try:
            sock = self._socket or self._connect()
        except PlbError as exc:
            raise BalancerUnreachable(str(exc)) from exc
        assert self._session is not None
        req = f"a{next(self._counter)}"
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[req] = answer
        try:
            await sock.send_multipart(self._session.serialize({**header, "req": req}))
            msg = await asyncio.wait_for(answer, self.timeout)
        except (TimeoutError, zmq.ZMQError):
            self._close_socket()  # a fresh connection next time; late answers go nowhere
            raise BalancerUnreachable(
                f"the team balancer at {self.info.client_url if self.info else self.connection_path} "
                f"did not answer {header.get('type')!r} within {self.timeout:g} s"
            ) from None
        finally:
            self._waiting.pop(req, None)
        if msg.type == "error":
            raise TaskRejected(str(msg.header.get("error")))
        return msg

    async def _poll(self) -> None:
        while True:
            try:
                msg = await self.request({"type": "status"})
            except PlbError as exc:
                self._lost(str(exc))
            else:
                self._last = msg.header.get("data") or empty_snapshot(self.now())
                if not self.reachable and self.unreachable_since is not None:
                    log.info("PLB - the team balancer %s answers again", self.connection_path)
                self.reachable, self.unreachable_since, self.error = True, None, None
            await asyncio.sleep(self.poll_interval)

    def _lost(self, error: str) -> None:
        if self.reachable or self.unreachable_since is None:
            self.unreachable_since = self.now()
            log.warning("PLB - %s", unreachable_message(self.unreachable_since, error))
        self.reachable, self.error = False, error

    # -- the Balancer interface the monitor uses -------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The last snapshot the team balancer sent, with ``team`` saying whether it still answers
        (a :class:`jupyter_plb.core.snapshot.Snapshot`, as the balancer's own)."""
        data = self._last if self._last is not None else snap.empty(self.now())
        return cast(dict[str, Any], snap.attached(
            data, path=str(self.connection_path), reachable=self.reachable,
            unreachable_since=self.unreachable_since, error=self.error, now=self.now(),
        ))

    async def list_tasks(self, **filters: Any) -> snap.TaskList:
        msg = await self.request({"type": "tasks", **{k: v for k, v in filters.items() if v is not None}})
        return snap.task_list(msg.header.get("total", 0), msg.header.get("tasks", []))

    async def task_info(self, task_id: str) -> dict[str, Any] | None:
        msg = await self.request({"type": "info", "ids": [task_id]})
        return msg.header.get("tasks", {}).get(task_id)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        msg = await self.request({"type": "cancel", "ids": [task_id]})
        return msg.header.get("results", {}).get(task_id, {"cancelled": False, "state": None, "from": None})

    async def cancel_user(self, user: str) -> int:
        """Cancel ``user``'s queued tasks (the team balancer lets a non-admin cancel only its own)."""
        cancelled = 0
        while cancelled < MAX_CANCEL:
            page = await self.list_tasks(state="queued", user=user, limit=1000)
            ids = [t["id"] for t in page["tasks"]]
            if not ids:
                break
            msg = await self.request({"type": "cancel", "ids": ids})
            done = sum(1 for r in msg.header.get("results", {}).values() if r.get("cancelled"))
            cancelled += done
            if not done:
                break
        return cancelled
