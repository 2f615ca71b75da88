"""The Balancer: an asyncio service around the scheduler, with three ROUTER sockets.

Everyone connects to it: clients on ``LB_CLIENTPULLPORT``, hubs and their worker processes on
``LB_WKPULLPORT``, the health check on ``LB_HCREPPORT``. It runs on whatever asyncio loop is running
(the Jupyter server's, or the one ``startAll`` makes). Sockets are read by ``add_reader`` callbacks
that drain each socket until it is empty; nothing on the data path sleeps or polls on a timer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import zmq

from jupyter_plb.balancer.clients import ClientDesk
from jupyter_plb.balancer.dispatch import Dispatcher
from jupyter_plb.balancer.housekeeping import Housekeeping
from jupyter_plb.balancer.hubs import HubDesk
from jupyter_plb.balancer.journal import Journal
from jupyter_plb.balancer.launcher_board import LauncherBoard
from jupyter_plb.balancer.objects import SharedObjects
from jupyter_plb.balancer.results import Results
from jupyter_plb.balancer.state import DRAIN_BUDGET, DRAIN_SECONDS, Hub, PendingResults, Run, StoredFunction
from jupyter_plb.balancer.views import Views
from jupyter_plb.core import parameters, protocol, team
from jupyter_plb.core import snapshot as snap
from jupyter_plb.core.history import History
from jupyter_plb.core.protocol import Buffer, Message, Session
from jupyter_plb.core.scheduler import Scheduler
from jupyter_plb.core.stats import Stats
from jupyter_plb.core.store import MemoryStore, TaskStore
from jupyter_plb.core.tasks import Task, TaskTable
from jupyter_plb.errors import ConnectionFileError, PlbError, ProtocolError
from jupyter_plb.transport import connection, security, sockets

log = logging.getLogger(__name__)


class Balancer:
    """Receives tasks, keeps them fair, hands them to worker slots, returns their results."""

    def __init__(
        self,
        params: parameters.Parameters | str | Path | None = None,
        *,
        connection_file: str | Path | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.params = parameters.load(params)
        if connection_file is not None:
            self.params = {**self.params, "LB_CONNECTION_FILE": str(connection_file)}
        #: A team pool's access rule (core/team.py); None for a personal balancer.
        self.team = team.policy_for(self.params)
        if self.team is not None:
            self.params = {**self.params, "LB_CURVE": True}
        self.fair_share = team.FairShare()
        self.id = protocol.new_id("lb")
        self.now = now
        self.scheduler = Scheduler(
            self.params["LB_QUEING_MAXPERUSER"],
            prefetch=self.params["LB_PREFETCH"],
            max_queued=self.params["LB_MAX_QUEUED"],
        )
        #: Every task it knows; those whose result was collected in their compact, kept form.
        self.tasks = TaskTable()
        self.hubs: dict[str, Hub] = {}
        self.launchers = LauncherBoard()
        self.functions: dict[str, StoredFunction] = {}
        self.worker_functions: dict[str, collections.OrderedDict[str, None]] = {}
        #: Broadcast objects by digest, and the ones each queued or running task names.
        self.objects: dict[str, StoredFunction] = {}
        self.task_objects: dict[str, tuple[str, ...]] = {}
        self.runs: dict[str, Run] = {}
        self.stats = Stats()
        #: Finished tasks for the monitor, kept apart from their results (LB_HISTORY_SIZE, LB_HISTORY_AGE).
        self.history = History(self.params["LB_HISTORY_SIZE"], self.params["LB_HISTORY_AGE"])
        self.health: dict[str, Any] = {"status": "unknown", "messages": [], "checked": None}
        self.subscribers: set[Callable[[list[dict[str, Any]]], None]] = set()
        self.started = 0.0
        self.info: connection.ConnectionInfo | None = None
        self.connection_path: Path | None = None
        self.events: list[dict[str, Any]] = []
        self.client_out: PendingResults = {}
        self.retention: collections.deque[tuple[float, str]] = collections.deque()
        self.finished: collections.deque[tuple[float, str]] = collections.deque()
        self.unschedulable: dict[str, str] = {}
        self.run_times: dict[str, float] = {}
        self.orphans: dict[str, Task] = {}
        self.in_memory: collections.deque[str] = collections.deque()
        self.orphans_deadline = 0.0
        self.store: TaskStore = MemoryStore()
        self.stealing: dict[str, tuple[str, str]] = {}
        self.went_idle: set[str] = set()
        #: Clients that said hello, told of every hub that joins (``hub_joined``).
        self.hub_listeners: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.after_commit: list[tuple[bytes, dict[str, Any]]] = []
        self.loop_thread = 0
        self.result_bytes = 0
        self._context: zmq.Context | None = None
        self.sockets: dict[str, zmq.Socket] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._in_pump = False
        #: Set when a dispatch left tasks queued: every slot's credit is used until results arrive.
        self.slots_full = False
        self.session: Session | None = None
        #: CurveZMQ keys and authenticator (transport/security.py); None when Curve is off.
        self.curve: security.CurveServer | None = None
        #: The certificate User-Id of the message being handled (None without Curve).
        self.sender: str | None = None
        #: The balancer's behaviour by concern; each part keeps a reference to this object's state.
        self.client_desk = ClientDesk(self)
        self.shared = SharedObjects(self)
        self.hub_desk = HubDesk(self)
        self.dispatcher = Dispatcher(self)
        self.results = Results(self)
        self.journal = Journal(self)
        self.housekeeping = Housekeeping(self)
        self.views = Views(self)
        #: What each message type runs, on the client port and on the worker port.
        self.client_handlers: dict[str, Callable[[Message], None]] = {
            "hello": self.client_desk.on_hello,
            "submit": self.client_desk.on_submit,
            "get": self.client_desk.on_get,
            "cancel": self.client_desk.on_cancel,
            "ack": self.client_desk.on_ack,
            "status": self.client_desk.on_status,
            "tasks": self.client_desk.on_tasks,
            "broadcast": self.shared.on_broadcast,
            "release": self.shared.on_release,
            "run": self.shared.on_run,
            "info": self.client_desk.on_info,
            "jobs": self.client_desk.on_jobs,
        }
        self.worker_handlers: dict[str, Callable[[Message], None]] = {
            "hub_hello": self.hub_desk.on_hub_hello,
            "heartbeat": self.hub_desk.on_heartbeat,
            "worker_ready": self.hub_desk.on_worker_ready,
            "results": self.hub_desk.on_results,
            "progress": self.hub_desk.on_progress,
            "worker_lost": self.hub_desk.on_worker_lost,
            "hub_bye": self.hub_desk.on_hub_bye,
            "skipped": self.hub_desk.on_skipped,
            "worker_bye": self.hub_desk.on_worker_bye,
            "hub_drain": self.hub_desk.on_hub_drain,
            "ran": self.shared.on_ran,
        }

    @property
    def running(self) -> bool:
        return bool(self.sockets)

    async def start(self) -> connection.ConnectionInfo:
        """Bind the sockets on the running loop and write the connection file."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        path = connection.resolve_path(self.params)
        try:
            previous: connection.ConnectionInfo | None = connection.read(path)
        except ConnectionFileError:
            previous = None
        key = previous.key if previous else connection.new_key()
        self.session = Session(key.encode(), max_message_size=self.params["LB_MAX_MESSAGE_SIZE"])
        self._context = zmq.Context()
        self._start_curve()
        bind_ip = self.params["LB_BIND_IP"] or self.params["LB_IP"]
        ports = {}
        try:
            for role, key_name in (
                ("clients", "LB_CLIENTPULLPORT"),
                ("workers", "LB_WKPULLPORT"),
                ("health", "LB_HCREPPORT"),
            ):
                sock, ports[role] = sockets.bind_router(
                    self._context, bind_ip, self._port_for(key_name, previous),
                    max_message_size=self.params["LB_MAX_MESSAGE_SIZE"],
                    curve=self.curve.keys if self.curve else None, domain=role,
                )
                self.sockets[role] = sock
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise PlbError(
                f"balancer cannot bind {bind_ip} ports {self.params['LB_CLIENTPULLPORT']}, "
                f"{self.params['LB_WKPULLPORT']}, {self.params['LB_HCREPPORT']}: {exc}; another "
                "balancer may be running, or set other ports (0 picks free ones)"
            ) from exc
        for sock in self.sockets.values():
            self.loop.add_reader(sock.fileno(), self._pump)
        self.started = self.now()
        self.info = connection.ConnectionInfo(
            address=self.params["LB_IP"],
            client_port=ports["clients"],
            worker_port=ports["workers"],
            health_port=ports["health"],
            key=key,
            balancer_id=self.id,
            curve_serverkey=self.curve.keys.public.decode() if self.curve else "",
            security_dir=str(self.curve.directory) if self.curve else "",
        )
        self.connection_path = connection.write(self.info, path)
        self.store = self.journal.open_store(path)
        self.journal.restore()
        self.timer = self.loop.call_later(self.tick_interval, self.housekeeping.tick)
        log.info(
            "LB - STARTED %s on %s (clients %d, workers %d, health %d); connection file %s",
            self.id, bind_ip, ports["clients"], ports["workers"], ports["health"],
            self.connection_path,
        )
        self.schedule_pump()
        return self.info

    async def stop(self) -> None:
        """Commit the journal and close the sockets."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.store.close()
        self._close_sockets()
        log.info("LB - STOPPED %s", self.id)

    def _port_for(self, key_name: str, previous: connection.ConnectionInfo | None) -> int:
        """The configured port; when it is 0 (any), the previous balancer's, so peers find us again."""
        port = self.params[key_name]
        if port or previous is None or previous.address != self.params["LB_IP"]:
            return port
        return {
            "LB_CLIENTPULLPORT": previous.client_port,
            "LB_WKPULLPORT": previous.worker_port,
            "LB_HCREPPORT": previous.health_port,
        }[key_name]

    def _start_curve(self) -> None:
        """CurveZMQ on every socket when the policy asks for it, with the ZAP authenticator."""
        assert self._context is not None and self.loop is not None and self.session is not None
        loop, rejected = self.loop, self.session.rejected
        try:
            if security.curve_enabled(self.params):
                self.curve = security.CurveServer.load(self.params)
                self.curve.start(
                    self._context,
                    lambda _dom, _why: loop.call_soon_threadsafe(rejected.update, ["certificate"]),
                )
        except BaseException:
            self._context.term()
            self._context = None
            raise

    def _close_sockets(self) -> None:
        for sock in self.sockets.values():
            if self.loop is not None and not sock.closed:
                self.loop.remove_reader(sock.fileno())
            sock.close(linger=0)
        self.sockets.clear()
        if self.curve is not None:
            self.curve.stop()
        if self._context is not None:
            self._context.term()
            self._context = None

    @property
    def tick_interval(self) -> float:
        return min(0.25, self.params["LB_HEARTBEAT_INTERVAL"] / 2)

    def schedule_pump(self) -> None:
        if not self._pump_scheduled and self.loop is not None:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Drain every socket, dispatch, flush.

        ZeroMQ's file descriptor is edge-triggered and a send can consume the edge, so every send
        made outside the pump schedules one more pump (see ``_send``).
        """
        self._pump_scheduled = False
        if not self.sockets:
            return
        self._in_pump = True
        try:
            self._pump_once()
        finally:
            self._in_pump = False

    def _pump_once(self) -> None:
        """Workers first (results free slots), then clients, then the health check.

        Idle slots get work between messages, so workers never wait while a long run of submits
        is read; prefetch is topped up once at the end.
        """
        busy = False
        self.slots_full = False
        for role, handler in (
            ("workers", self.hub_desk.on_worker_message),
            ("clients", self.client_desk.on_client_message),
            ("health", self.views.on_health_message),
        ):
            sock = self.sockets[role]
            deadline = time.perf_counter() + DRAIN_SECONDS
            for _ in range(DRAIN_BUDGET):
                if not cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    break
                frames = protocol.recv_ready(sock)
                if frames is None:
                    break
                self._handle(role, frames, handler)
                self.dispatcher.take_back()
                if not self.slots_full and self.scheduler.queued_count:
                    self.dispatcher.dispatch(idle_only=True)
                if time.perf_counter() > deadline:
                    busy = True
                    break
            else:
                busy = True
        self.dispatcher.dispatch()
        self.results.flush()
        self.journal.commit()
        if busy or any(cast(int, s.getsockopt(zmq.EVENTS)) & zmq.POLLIN for s in self.sockets.values()):
            self.schedule_pump()

    def _handle(
        self,
        role: str,
        frames: list[zmq.Frame],
        handler: Callable[[Message], None],
    ) -> None:
        assert self.session is not None
        try:
            msg = self.session.deserialize(frames, routed=True, verify=False)
        except ProtocolError as exc:
            log.debug("LB - dropped a message on the %s port: %s", role, exc)
            return
        self.sender = security.frame_user(frames[0]) if self.curve is not None else None
        try:
            handler(msg)
        except (PlbError, KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            self._refuse(role, msg, exc)
        except Exception as exc:
            log.exception("LB - unexpected error handling a %r message on the %s port", msg.type, role)
            self._refuse(role, msg, exc)
        finally:
            self.sender = None

    def _refuse(self, role: str, msg: Message, exc: Exception) -> None:
        """A verified message the balancer cannot act on: count it, answer with the reason."""
        log.warning("LB - bad %r message on the %s port: %s", msg.type, role, exc)
        self.stats.bad_messages += 1
        if "req" in msg.header and msg.identity is not None:
            self.reply(role, msg, {"type": "error", "error": f"bad {msg.type!r} message: {exc}"})

    def send(
        self,
        role: str,
        identity: bytes,
        header: dict[str, Any],
        buffers: list[Buffer] | None = None,
        digests: list[bytes] | None = None,
    ) -> bool:
        assert self.session is not None
        sock = self.sockets.get(role)
        if sock is None:
            return False
        try:
            protocol.send(sock, self.session.serialize(header, buffers or [], digests), identity)
        except zmq.ZMQError as exc:
            log.debug("LB - cannot send %s to %r: %s", header.get("type"), identity, exc)
            return False
        finally:
            if not self._in_pump:
                self.schedule_pump()
        return True

    def reply(
        self,
        role: str,
        msg: Message,
        header: dict[str, Any],
        buffers: list[Buffer] | None = None,
        digests: list[bytes] | None = None,
    ) -> None:
        """Answer ``msg`` on the port it came in on, naming its request id."""
        header["req"] = msg.header.get("req")
        assert msg.identity is not None
        self.send(role, msg.identity, header, buffers, digests)

    # -- what the monitor asks (the same calls as monitor.remote.RemoteBalancer's) ------------------------------
    def snapshot(self) -> dict[str, Any]:
        return self.views.snapshot()

    def list_tasks(
        self,
        state: str | None = None,
        user: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 100,
        query: str | None = None,
    ) -> snap.TaskList:
        return self.views.list_tasks(state, user, name, offset, limit, query)

    def task_info(self, task_id: str) -> snap.TaskDetail | None:
        return self.views.task_info(task_id)

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.results.cancel(task_id)

    def cancel_user(self, user: str) -> int:
        return self.results.cancel_user(user)
