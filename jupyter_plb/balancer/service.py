"""The Balancer: an asyncio service around the scheduler, with three ROUTER sockets.

Everyone connects to it: clients on ``LB_CLIENTPULLPORT``, hubs and their worker processes on
``LB_WKPULLPORT``, the health check on ``LB_HCREPPORT``. It runs on whatever asyncio loop is running
(the Jupyter server's, or the one ``startAll`` makes). Sockets are read by ``add_reader`` callbacks
that drain each socket until it is empty; nothing on the data path sleeps or polls on a timer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import math
import os
import socket as stdsocket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast

import zmq

from jupyter_plb.balancer.launcher_board import LauncherBoard
from jupyter_plb.core import parameters, protocol, taskquery, team, versions
from jupyter_plb.core import snapshot as snap
from jupyter_plb.core.history import MAX_ARGS, FinishedTask, History, record
from jupyter_plb.core.protocol import FUNCTION_CACHE_SIZE, Buffer, Message, Session
from jupyter_plb.core.scheduler import Scheduler, Slot
from jupyter_plb.core.stats import Stats
from jupyter_plb.core.store import MemoryStore, SqliteStore, TaskStore
from jupyter_plb.core.tasks import KeptTask, Task, TaskState, TaskTable
from jupyter_plb.errors import ConnectionFileError, PlbError, ProtocolError, TaskRejected
from jupyter_plb.transport import connection, security, sockets

log = logging.getLogger(__name__)

#: Messages handled per socket, and seconds spent on it, before the next socket (and the loop)
#: gets a turn: a burst of submits must not keep finished workers waiting for new tasks.
DRAIN_BUDGET = 2000
DRAIN_SECONDS = 0.002
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_RETRIES = 100
#: After a restart, tasks that were running wait this many heartbeats for their worker to
#: re-announce them before they are queued again.
ORPHAN_GRACE = 3
#: Slots whose tasks take less than this on average get prefetched tasks.
PREFETCH_BELOW = 0.005
#: Clients told when a hub joins (so that they can warn of version skew), most recent hellos.
MAX_HUB_LISTENERS = 10_000


@dataclass(slots=True, eq=False)
class Hub:
    id: str
    name: str
    host: str
    pid: int
    routes: frozenset[str]
    local: bool = False
    python: str = ""
    cloudpickle: str = ""
    #: The batch job (Slurm or PBS job id) the hub runs in, if any.
    job: str | None = None
    last_seen: float = 0.0
    state: str = "ok"
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    #: With CurveZMQ, the User-Id of the certificate that registered it (only it may speak for it).
    cert: str | None = None


@dataclass(slots=True, eq=False)
class StoredFunction:
    """A pickle workers cache by digest: a task's function, or a broadcast object."""

    buffers: Sequence[Buffer]
    digests: list[bytes]
    refs: int = 0
    #: Broadcast objects: references clients hold (``Client.broadcast``) and have not released.
    pins: int = 0
    #: The submitting client's "Python x.y.z, cloudpickle v", passed on to workers with the pickle.
    origin: str | None = None


@dataclass(slots=True, eq=False)
class _Run:
    """A ``client.run`` in flight: who asked, and the workers that have not answered yet."""

    client: bytes
    req: Any
    waiting: set[str]
    results: list[tuple[dict[str, Any], Sequence[Buffer], Sequence[bytes]]] = field(default_factory=list)


def function_digest(digests: list[bytes]) -> str:
    """The id of a pickled function: a hash over the digests of its buffers."""
    return hashlib.sha256(b"".join(digests)).hexdigest()[:32]


#: Results waiting for their batch to be durable, by client: (info, buffers, digests).
_Results = dict[bytes, list[tuple[dict[str, Any], Sequence[Buffer], Sequence[bytes]]]]


def _retained(buffers: Sequence[Buffer]) -> tuple[Buffer, ...]:
    """Result buffers to keep until collected: small ones as bytes, so that the thousands of
    finished tasks a fast map leaves behind add no objects for the garbage collector to visit
    (a memoryview of a received frame is one; bytes are not)."""
    return tuple(
        bytes(protocol.buffer_view(buf)) if protocol.buffer_size(buf) < protocol.ZERO_COPY_THRESHOLD else buf
        for buf in buffers
    )


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
        #: A team pool's access rule (team.py); None for a personal balancer.
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
        self._task_objects: dict[str, tuple[str, ...]] = {}
        self._runs: dict[str, _Run] = {}
        self.stats = Stats()
        #: Finished tasks for the monitor, kept apart from their results (LB_HISTORY_SIZE, LB_HISTORY_AGE).
        self.history = History(self.params["LB_HISTORY_SIZE"], self.params["LB_HISTORY_AGE"])
        self.health: dict[str, Any] = {"status": "unknown", "messages": [], "checked": None}
        self.subscribers: set[Callable[[list[dict[str, Any]]], None]] = set()
        self.started = 0.0
        self.info: connection.ConnectionInfo | None = None
        self.connection_path: Path | None = None
        self._events: list[dict[str, Any]] = []
        self._client_out: _Results = {}
        self._retention: collections.deque[tuple[float, str]] = collections.deque()
        self._finished: collections.deque[tuple[float, str]] = collections.deque()
        self._unschedulable: dict[str, str] = {}
        self._run_times: dict[str, float] = {}
        self._orphans: dict[str, Task] = {}
        self._in_memory: collections.deque[str] = collections.deque()
        self._orphans_deadline = 0.0
        self.store: TaskStore = MemoryStore()
        self._stealing: dict[str, tuple[str, str]] = {}
        self._went_idle: set[str] = set()
        #: Clients that said hello, told of every hub that joins (``hub_joined``).
        self._hub_listeners: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._after_commit: list[tuple[bytes, dict[str, Any]]] = []
        self._loop_thread = 0
        self._result_bytes = 0
        self._context: zmq.Context | None = None
        self._sockets: dict[str, zmq.Socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._in_pump = False
        #: Set when a dispatch left tasks queued: every slot's credit is used until results arrive.
        self._slots_full = False
        self.session: Session | None = None
        #: CurveZMQ keys and authenticator (security.py); None when Curve is off.
        self.curve: security.CurveServer | None = None
        #: The certificate User-Id of the message being handled (None without Curve).
        self.sender: str | None = None

    # -- life cycle -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._sockets)

    async def start(self) -> connection.ConnectionInfo:
        """Bind the sockets on the running loop and write the connection file."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
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
                self._sockets[role] = sock
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise PlbError(
                f"balancer cannot bind {bind_ip} ports {self.params['LB_CLIENTPULLPORT']}, "
                f"{self.params['LB_WKPULLPORT']}, {self.params['LB_HCREPPORT']}: {exc}; another "
                "balancer may be running, or set other ports (0 picks free ones)"
            ) from exc
        for sock in self._sockets.values():
            self._loop.add_reader(sock.fileno(), self._pump)
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
        self.store = self._open_store(path)
        self._restore()
        self._timer = self._loop.call_later(self._tick_interval, self._tick)
        log.info(
            "LB - STARTED %s on %s (clients %d, workers %d, health %d); connection file %s",
            self.id, bind_ip, ports["clients"], ports["workers"], ports["health"],
            self.connection_path,
        )
        self._schedule_pump()
        return self.info

    async def stop(self) -> None:
        """Commit the journal and close the sockets."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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

    def _open_store(self, connection_path: Path) -> TaskStore:
        journal = self.params["LB_JOURNAL"]
        if journal is False or journal in ("none", "memory"):
            return MemoryStore()
        path = Path(journal) if isinstance(journal, str) and journal != "auto" else (
            connection_path.with_name(connection_path.stem + ".journal.sqlite")
        )
        return SqliteStore(path)

    def _restore(self) -> None:
        """Rebuild queues, running tasks and results from the journal of a previous run."""
        restored: collections.Counter[str] = collections.Counter()
        top_seq = 0
        finished: list[Task] = []
        for stored in self.store.load():
            task = stored.task
            top_seq = max(top_seq, task.seq)
            task.digests = [protocol.digest(b) for b in task.buffers]
            if task.fn is not None and task.fn not in self.functions and stored.fn_buffers:
                self.functions[task.fn] = StoredFunction(
                    stored.fn_buffers, [protocol.digest(b) for b in stored.fn_buffers]
                )
            self.tasks[task.id] = task
            restored[task.state.value] += 1
            if task.state.finished:
                finished.append(task)
                task.result_digests = [protocol.digest(b) for b in task.result_buffers]
                task.result_size = sum(len(b) for b in task.result_buffers)
                self._result_bytes += task.result_size
                self._in_memory.append(task.id)
                self._finished.append((task.ended or self.now(), task.id))
                if task.collected is not None:
                    self._retention.append((task.collected + self.params["LB_RESULT_RETENTION"], task.id))
                continue
            if task.fn is not None and task.fn in self.functions:
                self.functions[task.fn].refs += 1
            if task.state is TaskState.RUNNING:
                self._orphans[task.id] = task
            else:
                self.scheduler.requeue(task)
        self.scheduler.continue_sequence(top_seq)
        for task in sorted(finished, key=lambda t: t.ended or 0.0):
            self.history.add(record(task))
        self._enforce_memory_budget()
        if restored:
            self._orphans_deadline = self.now() + ORPHAN_GRACE * self.params["LB_HEARTBEAT_INTERVAL"]
            log.info("LB - RESTORED from %s: %s", getattr(self.store, "path", "journal"),
                     ", ".join(f"{n} {s}" for s, n in sorted(restored.items())))

    # -- transport security (security.py) -------------------------------------------------------
    def _start_curve(self) -> None:
        """CurveZMQ on every socket when the policy asks for it, with the ZAP authenticator."""
        assert self._context is not None and self._loop is not None and self.session is not None
        loop, rejected = self._loop, self.session.rejected
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

    def _owned(self, task_id: Any) -> Task | KeptTask | None:
        """The task, if the sending client may see it: with Curve, only its certificate's user's
        (in a team pool an admin sees every task)."""
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is not None and self.sender is not None and task.user != self.sender and not (
            self.team is not None and self.team.is_admin(self.sender)
        ):
            return None
        return task

    def _denied(self, msg: Message, ids: list[Any], action: str) -> bool:
        """In a team pool, answer a request naming another user's task with the rule, and say so."""
        if self.team is None or self.sender is None:
            return False
        for task_id in ids:
            task = self.tasks.get(task_id) if isinstance(task_id, str) else None
            if task is not None and not self.team.may_access(self.sender, task.user):
                self._reply("clients", msg, {
                    "type": "error", "error": self.team.denial(self.sender, task_id, task.user, action),
                })
                return True
        return False

    def _check_hub_sender(self, msg: Message) -> None:
        """With Curve, a hub (and its workers) speaks only for the hub its certificate made."""
        h = msg.header
        ident = msg.identity.decode(errors="replace") if msg.identity else ""
        named = (self.hubs.get(str(h.get("hub"))), self._hub_of(str(h.get("worker"))))
        for hub in (*named, self._hub_of(ident)):
            if hub is not None and hub.cert is not None and hub.cert != self.sender:
                raise TaskRejected(f"hub {hub.name} belongs to another certificate")

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            if self._loop is not None and not sock.closed:
                self._loop.remove_reader(sock.fileno())
            sock.close(linger=0)
        self._sockets.clear()
        if self.curve is not None:
            self.curve.stop()
        if self._context is not None:
            self._context.term()
            self._context = None

    @property
    def _tick_interval(self) -> float:
        return min(0.25, self.params["LB_HEARTBEAT_INTERVAL"] / 2)

    # -- the pump: drain every socket, dispatch, flush ------------------------------------------
    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Drain every socket, dispatch, flush.

        ZeroMQ's file descriptor is edge-triggered and a send can consume the edge, so every send
        made outside the pump schedules one more pump (see ``_send``).
        """
        self._pump_scheduled = False
        if not self._sockets:
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
        self._slots_full = False
        for role, handler in (
            ("workers", self._on_worker_message),
            ("clients", self._on_client_message),
            ("health", self._on_health_message),
        ):
            sock = self._sockets[role]
            deadline = time.perf_counter() + DRAIN_SECONDS
            for _ in range(DRAIN_BUDGET):
                if not cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    break
                frames = protocol.recv_ready(sock)
                if frames is None:
                    break
                self._handle(role, frames, handler)
                self._take_back()
                if not self._slots_full and self.scheduler.queued_count:
                    self._dispatch(idle_only=True)
                if time.perf_counter() > deadline:
                    busy = True
                    break
            else:
                busy = True
        self._dispatch()
        self._flush()
        self._commit()
        if busy or any(cast(int, s.getsockopt(zmq.EVENTS)) & zmq.POLLIN for s in self._sockets.values()):
            self._schedule_pump()

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
            self._reply(role, msg, {"type": "error", "error": f"bad {msg.type!r} message: {exc}"})

    def _send(
        self,
        role: str,
        identity: bytes,
        header: dict[str, Any],
        buffers: list[Buffer] | None = None,
        digests: list[bytes] | None = None,
    ) -> bool:
        assert self.session is not None
        sock = self._sockets.get(role)
        if sock is None:
            return False
        try:
            protocol.send(sock, self.session.serialize(header, buffers or [], digests), identity)
        except zmq.ZMQError as exc:
            log.debug("LB - cannot send %s to %r: %s", header.get("type"), identity, exc)
            return False
        finally:
            if not self._in_pump:
                self._schedule_pump()
        return True

    def _reply(
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
        self._send(role, msg.identity, header, buffers, digests)

    # -- clients ----------------------------------------------------------------------------
    def _on_client_message(self, msg: Message) -> None:
        if self.team is not None and self.sender is None:
            raise TaskRejected("a team pool knows a client only by its certificate, and this one has none")
        reply_to = msg.header.get("reply_to")
        if isinstance(reply_to, str) and 0 < len(reply_to) <= MAX_ID_LENGTH and (
            self.sender is None or msg.identity in (reply_to.encode(), f"{reply_to}-tx".encode())
        ):  # with Curve, replies go only to the sender's own (-tx) connection pair
            msg.identity = reply_to.encode()
        handler = self._client_handlers.get(msg.type)
        if handler is None:
            raise TaskRejected(f"unknown message type {msg.type!r}")
        handler(self, msg)

    def _on_hello(self, msg: Message) -> None:
        self._reply("clients", msg, {
            "type": "welcome",
            "balancer": self.id,
            "version": versions.package_version(),
            "max_queued_per_user": self.params["LB_QUEING_MAXPERUSER"],
            "result_retention": self.params["LB_RESULT_RETENTION"],
            "user": self.sender,  # with Curve: the user id its certificate binds the client to
            "hubs": [self._hub_versions(hub) for hub in itertools.islice(self.hubs.values(), 1000)
                     if hub.state != "lost"],
        })
        assert msg.identity is not None
        self._hub_listeners[msg.identity] = None
        self._hub_listeners.move_to_end(msg.identity)
        if len(self._hub_listeners) > MAX_HUB_LISTENERS:
            self._hub_listeners.popitem(last=False)
        outstanding = msg.header.get("outstanding") or []
        if isinstance(outstanding, list):
            unknown = []
            for task_id in outstanding[:1_000_000]:
                task = self._owned(task_id)
                if task is None:
                    unknown.append(task_id)
                else:
                    task = self._set_client(task, msg.identity)
                    if task.state.finished:
                        self._queue_result(task)
            if unknown:
                assert msg.identity is not None
                self._send("clients", msg.identity, {"type": "unknown", "ids": unknown})

    def _on_submit(self, msg: Message) -> None:
        header = msg.header
        now = self.now()
        position = 0
        fn_ids: dict[str, str] = {}
        for spec in header.get("fns", []):
            count = int(spec["nbuf"])
            if count < 1 or position + count > len(msg.buffers):
                raise TaskRejected("function buffers missing from the message")
            buffers = msg.buffers[position : position + count]
            digests = msg.digests[position : position + count]
            position += count
            fn_id = function_digest(digests)
            if spec.get("fn") != fn_id or not protocol.matches(buffers, digests):
                raise TaskRejected("function digest does not match its buffers")
            fn_ids[fn_id] = fn_id
            if fn_id not in self.functions:
                origin = spec.get("origin")
                self.functions[fn_id] = StoredFunction(
                    buffers, digests, origin=origin[:200] if isinstance(origin, str) else None
                )
                self.store.function(fn_id, buffers)
        accepted: list[str] = []
        rejected: dict[str, str] = {}
        warnings: dict[str, str] = {}
        for spec in header.get("tasks", []):
            count = spec.get("nbuf", 0)
            if not isinstance(count, int) or count < 0 or position + count > len(msg.buffers):
                raise TaskRejected("task buffers missing from the message")
            buffers = msg.buffers[position : position + count]
            digests = msg.digests[position : position + count]
            position += count
            task_id = spec.get("id")
            try:
                task = self._new_task(spec, msg.identity, now)
            except PlbError as exc:
                if isinstance(task_id, str):
                    rejected[task_id[:MAX_ID_LENGTH]] = str(exc)
                continue
            if task.id in self.tasks:
                if self.tasks[task.id].user != task.user:
                    rejected[task.id] = "this task id is already in use; submit with a new id"
                    continue
                accepted.append(task.id)
                self._set_client(self.tasks[task.id], msg.identity)
                continue
            if task.fn is not None and task.fn not in self.functions:
                rejected[task.id] = "the task's function was not sent with it; resubmit"
                continue
            refs = self._object_refs(spec)
            if isinstance(refs, str):
                rejected[task.id] = refs
                continue
            try:
                self.scheduler.submit(task)
            except PlbError as exc:
                rejected[task.id] = str(exc)
                continue
            task.buffers, task.digests = tuple(buffers), tuple(digests)
            if task.fn is not None:
                self.functions[task.fn].refs += 1
            if refs:
                self._task_objects[task.id] = refs
                for digest in refs:
                    self.objects[digest].refs += 1
            self.tasks[task.id] = task
            accepted.append(task.id)
            self.store.submitted(task)
            self.stats.submitted(task, now)
            reason = self.scheduler.unschedulable_reason(task) if self.scheduler.slots else None
            if reason:
                task.reason = reason
                self._unschedulable[task.id] = reason
                warnings[task.id] = reason
            self._event(task)
        self._drop_unused_functions(fn_ids)
        assert msg.identity is not None
        self._after_commit.append((msg.identity, {
            "type": "submitted", "accepted": accepted, "rejected": rejected, "warnings": warnings,
            "req": msg.header.get("req"),
        }))

    def _new_task(self, spec: dict[str, Any], client: bytes | None, now: float) -> Task:
        task_id = spec.get("id")
        if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID_LENGTH:
            raise TaskRejected(f"task id must be a string of 1 to {MAX_ID_LENGTH} characters")
        user = spec.get("user")
        if not isinstance(user, str) or not 0 < len(user) <= MAX_NAME_LENGTH:
            raise TaskRejected(f"user must be a string of 1 to {MAX_NAME_LENGTH} characters")
        if self.team is not None and self.sender is not None:
            user = self.sender  # a team pool charges the certificate's user, whatever is claimed
        elif self.sender is not None and user != self.sender:
            raise TaskRejected(
                f"user {user!r} is not this client's: its certificate makes it {self.sender!r}"
            )
        priority = spec.get("priority", 0)
        if not _finite(priority):
            raise TaskRejected(f"priority must be a finite number, got {priority!r}")
        name = spec.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise TaskRejected(f"task name must be a string of 1 to {MAX_NAME_LENGTH} characters")
        route = spec.get("route")
        fn = spec.get("fn")
        if (route is None) == (fn is None):
            raise TaskRejected("a task names either a hub task (route) or a function (fn)")
        if route is not None and (not isinstance(route, str) or len(route) > MAX_NAME_LENGTH):
            raise TaskRejected("route must be a task name string")
        if fn is not None and not isinstance(fn, str):
            raise TaskRejected("fn must be a function digest string")
        timeout = spec.get("timeout")
        if timeout is not None and (not _finite(timeout) or timeout <= 0):
            raise TaskRejected(f"timeout must be a number of seconds > 0, got {timeout!r}")
        retries = spec.get("retries", 0)
        if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise TaskRejected(f"retries must be an integer from 0 to {MAX_RETRIES}")
        args = spec.get("args")
        return Task(
            id=task_id,
            user=user,
            priority=float(priority),
            name=name,
            route=route,
            client=client,
            fn=fn,
            payload=spec.get("payload"),
            args=args[:MAX_ARGS] if isinstance(args, str) else None,
            timeout=float(timeout) if timeout is not None else None,
            retries=retries,
            submitted=now,
            chunk=bool(spec.get("chunk", False)),
        )

    def _object_refs(self, spec: dict[str, Any]) -> tuple[str, ...] | str:
        """The broadcast objects a task spec names, or why the task cannot have them."""
        refs = spec.get("refs") or []
        if not isinstance(refs, list) or len(refs) > FUNCTION_CACHE_SIZE // 2:
            return f"refs must be a list of at most {FUNCTION_CACHE_SIZE // 2} broadcast digests"
        for digest in refs:
            if not isinstance(digest, str) or digest not in self.objects:
                return (f"the broadcast object {str(digest)[:40]} is not on the balancer (released, or the "
                        "balancer restarted): broadcast it again")
        return tuple(dict.fromkeys(refs))

    # -- broadcast objects and client.run -------------------------------------------------------
    def _on_broadcast(self, msg: Message) -> None:
        """Keep an object the client's tasks will name; workers get it with the first task that does."""
        count = msg.header.get("nbuf")
        if not isinstance(count, int) or count < 1 or count != len(msg.buffers):
            raise TaskRejected("a broadcast message carries its object's buffers")
        digests = list(msg.digests)
        digest = function_digest(digests)
        if msg.header.get("digest") != digest or not protocol.matches(msg.buffers, digests):
            raise TaskRejected("the broadcast object does not match its digest")
        stored = self.objects.get(digest)
        if stored is None:
            stored = self.objects[digest] = StoredFunction(list(msg.buffers), digests)
        stored.pins += 1
        self._reply("clients", msg, {"type": "broadcasted", "digest": digest})

    def _on_release(self, msg: Message) -> None:
        for digest in msg.header.get("digests", [])[:10_000]:
            stored = self.objects.get(digest) if isinstance(digest, str) else None
            if stored is not None:
                stored.pins = max(0, stored.pins - 1)
                self._drop_unused_object(digest)

    def _drop_unused_object(self, digest: str) -> None:
        """Forget a broadcast object no reference and no task needs, here and on the workers."""
        stored = self.objects.get(digest)
        if stored is None or stored.pins > 0 or stored.refs > 0:
            return
        del self.objects[digest]
        for worker_id, cache in self.worker_functions.items():
            if digest in cache:
                del cache[digest]
                self._send("workers", worker_id.encode(), {"type": "forget", "digests": [digest]})

    def _on_run(self, msg: Message) -> None:
        """``client.run``: the function goes to every connected worker now, outside the queues."""
        count = msg.header.get("nbuf")
        if not isinstance(count, int) or count < 1 or count != len(msg.buffers):
            raise TaskRejected("a run message carries its function's buffers")
        targets = list(self.scheduler.slots)
        wanted = msg.header.get("workers")
        if isinstance(wanted, list):
            targets = [w for w in targets if w in set(wanted)]
        assert msg.identity is not None
        run_id = protocol.new_id("run")
        run = self._runs[run_id] = _Run(msg.identity, msg.header.get("req"), set())
        for worker_id in targets:
            if self._send("workers", worker_id.encode(), {"type": "run", "id": run_id},
                          list(msg.buffers), list(msg.digests)):
                run.waiting.add(worker_id)
        self._answer_run(run_id)

    def _on_ran(self, msg: Message) -> None:
        worker_id = msg.identity.decode(errors="replace") if msg.identity else ""
        run = self._runs.get(str(msg.header.get("id")))
        if run is None or worker_id not in run.waiting:
            return
        count = int(msg.header.get("nbuf", 0))
        if count != len(msg.buffers):
            raise TaskRejected("run result buffers missing from the message")
        info: dict[str, Any] = {k: msg.header.get(k) for k in ("state", "error") if k in msg.header}
        run.results.append(({**info, "worker": worker_id, "nbuf": count}, msg.buffers, msg.digests))
        run.waiting.discard(worker_id)
        self._answer_run(str(msg.header.get("id")))

    def _run_lost(self, worker_id: str, reason: str) -> None:
        """A worker gone while a ``client.run`` waits for it answers with WorkerLost."""
        for run_id, run in list(self._runs.items()):
            if worker_id in run.waiting:
                run.waiting.discard(worker_id)
                error = {"type": "WorkerLost", "message": f"worker {worker_id} was lost: {reason}", "traceback": ""}
                run.results.append(({"worker": worker_id, "state": "failed", "error": error, "nbuf": 0}, (), ()))
                self._answer_run(run_id)

    def _answer_run(self, run_id: str) -> None:
        run = self._runs[run_id]
        if run.waiting:
            return
        del self._runs[run_id]
        self._send("clients", run.client, {
            "type": "ran", "req": run.req, "results": [info for info, _, _ in run.results],
        }, [b for _, bufs, _ in run.results for b in bufs], [d for _, _, ds in run.results for d in ds])

    def _drop_unused_functions(self, fn_ids: dict[str, str]) -> None:
        for fn_id in fn_ids:
            stored = self.functions.get(fn_id)
            if stored is not None and stored.refs <= 0:
                del self.functions[fn_id]

    def _on_get(self, msg: Message) -> None:
        ids = msg.header.get("ids")
        if not isinstance(ids, list):
            raise TaskRejected("'ids' must be a list of task ids")
        if self._denied(msg, ids[:10_000], "read"):
            return
        now = self.now()
        infos: dict[str, Any] = {}
        buffers: list[Buffer] = []
        digests: list[bytes] = []
        for task_id in ids[:10_000]:
            task = self._owned(task_id)
            if task is None:
                continue
            info = task.summary()
            if task.state.finished and task.result is not None:
                result_buffers, result_digests = self._result_frames(task)
                info["result"] = {**task.result, "nbuf": len(result_buffers)}
                buffers.extend(result_buffers)
                digests.extend(result_digests)
                self._collected(task, now)
            infos[str(task_id)] = info
        self._reply("clients", msg, {"type": "status", "tasks": infos}, buffers, digests)

    def _on_cancel(self, msg: Message) -> None:
        ids = msg.header.get("ids")
        if not isinstance(ids, list):
            raise TaskRejected("'ids' must be a list of task ids")
        if self._denied(msg, ids[:100_000], "cancel"):
            return
        unknown = {"cancelled": False, "state": None, "from": None}
        results = {
            str(i): self.cancel(i) if self._owned(i) else dict(unknown)
            for i in ids[:100_000] if isinstance(i, str)
        }
        self._reply("clients", msg, {"type": "cancelled", "results": results})

    def _on_ack(self, msg: Message) -> None:
        now = self.now()
        for task_id in msg.header.get("ids", [])[:100_000]:
            task = self._owned(task_id)
            if task is not None and task.state.finished:
                self._collected(task, now)

    def _on_status(self, msg: Message) -> None:
        snapshot = self.snapshot()
        if self.team is not None:
            snapshot = self.team.redact(snapshot, self.sender)
        self._reply("clients", msg, {"type": "snapshot", "data": snapshot})

    def _on_tasks(self, msg: Message) -> None:
        header = msg.header
        if self.team is not None:
            try:
                user = self.team.check_listing(self.sender, header.get("user"))
            except team.AccessDenied as exc:
                self._reply("clients", msg, {"type": "error", "error": str(exc)})
                return
        else:
            user = self.sender or header.get("user")  # with Curve: its own tasks only
        self._reply("clients", msg, {
            "type": "task_list",
            **self.list_tasks(
                state=header.get("state"),
                user=user,
                name=header.get("name"),
                query=header.get("query"),
                offset=int(header.get("offset", 0)),
                limit=int(header.get("limit", 100)),
            ),
        })

    def _on_info(self, msg: Message) -> None:
        """Task summaries by id without collecting results: the monitor of a server attached to
        this balancer (monitor/remote.py)."""
        ids = msg.header.get("ids")
        if not isinstance(ids, list):
            raise TaskRejected("'ids' must be a list of task ids")
        if self._denied(msg, ids[:1000], "read"):
            return
        owned = ((str(i), self._owned(i)) for i in ids[:1000])
        self._reply("clients", msg, {
            "type": "task_info", "tasks": {i: t.summary() for i, t in owned if t is not None},
        })

    def _on_jobs(self, msg: Message) -> None:
        self.launchers.note(msg.header.get("launcher"), self.now())
        self._reply("clients", msg, {"type": "jobs_noted"})

    _client_handlers: dict[str, Callable[[Balancer, Message], None]] = {
        "hello": _on_hello,
        "submit": _on_submit,
        "get": _on_get,
        "cancel": _on_cancel,
        "ack": _on_ack,
        "status": _on_status,
        "tasks": _on_tasks,
        "broadcast": _on_broadcast,
        "release": _on_release,
        "run": _on_run,
        "info": _on_info,
        "jobs": _on_jobs,
    }

    # -- hubs and workers ---------------------------------------------------------------------
    def _on_worker_message(self, msg: Message) -> None:
        handler = self._worker_handlers.get(msg.type)
        if handler is None:
            raise TaskRejected(f"unknown message type {msg.type!r}")
        if self.sender is not None:
            self._check_hub_sender(msg)
        handler(self, msg)

    def _on_hub_hello(self, msg: Message) -> None:
        h = msg.header
        hub_id = str(h["hub"])[:MAX_ID_LENGTH]
        if hub_id not in self.hubs and len(self.hubs) >= self.params["LB_MAX_PEERS"]:
            raise TaskRejected("too many hubs connected (LB_MAX_PEERS)")
        routes = frozenset(str(r)[:MAX_NAME_LENGTH] for r in h.get("routes", [])[:10_000])
        hub = self.hubs.get(hub_id)
        joined = hub is None or hub.state == "lost"
        if hub is None:
            hub = self.hubs[hub_id] = Hub(hub_id, "", "", 0, routes, cert=self.sender)
            log.info("LB - ADDING HUB (%s) from %s", hub_id, h.get("host"))
        known_versions = (hub.python, hub.cloudpickle)
        hub.name = str(h.get("name") or hub_id)[:MAX_NAME_LENGTH]
        hub.host = str(h.get("host", ""))[:MAX_NAME_LENGTH]
        hub.pid = int(h.get("pid", 0))
        hub.job = str(h["job"])[:MAX_ID_LENGTH] if h.get("job") else None
        hub.routes = routes
        hub.local = bool(h.get("local", False))
        hub.python = str(h.get("python", ""))[:32]
        hub.cloudpickle = str(h.get("cloudpickle", ""))[:32]
        hub.last_seen = self.now()
        hub.state = "ok"
        if h.get("state") == "draining":
            self._drain_hub(hub)
        if joined or known_versions != (hub.python, hub.cloudpickle):
            self._announce_hub(hub)
        assert msg.identity is not None
        self._send("workers", msg.identity, {
            "type": "hub_welcome",
            "balancer": self.id,
            "heartbeat": self.params["LB_HEARTBEAT_INTERVAL"],
        })

    @staticmethod
    def _hub_versions(hub: Hub) -> dict[str, Any]:
        return {"id": hub.id, "name": hub.name, "host": hub.host, "python": hub.python,
                "cloudpickle": hub.cloudpickle}

    def _announce_hub(self, hub: Hub) -> None:
        """Tell the clients that said hello of a hub that joined, with its versions."""
        skew = versions.skew(self._hub_versions(hub), here="this balancer")
        if skew:
            log.warning("LB - VERSION SKEW: %s", skew)
        header = {"type": "hub_joined", "hub": self._hub_versions(hub)}
        for identity in list(self._hub_listeners):
            if not self._send("clients", identity, header):
                del self._hub_listeners[identity]  # gone (the socket is ROUTER_MANDATORY)

    def _on_heartbeat(self, msg: Message) -> None:
        hub = self.hubs.get(str(msg.header.get("hub")))
        assert msg.identity is not None
        if hub is None:
            self._send("workers", msg.identity, {"type": "reregister", "balancer": self.id})
            return
        if hub.state == "lost":
            self._send("workers", msg.identity, {"type": "reregister", "balancer": self.id})
            return
        hub.last_seen = self.now()
        workers = msg.header.get("workers")
        if isinstance(workers, list):
            hub.alive = {str(w) for w in workers[:100_000]}
        usage = msg.header.get("usage")
        if isinstance(usage, dict):
            self._record_usage(hub, usage)
        state = msg.header.get("state")
        if state == "draining":
            self._drain_hub(hub)
        elif state in ("ok", "unhealthy") and hub.state != "draining" and state != hub.state:
            hub.state = state
            for worker_id in hub.workers:
                slot = self.scheduler.slot_of(worker_id)
                if slot is not None:
                    slot.accepting = state == "ok"
            if state == "unhealthy":
                log.warning("LB - HUB UNHEALTHY (%s): its workers keep dying; it gets no new tasks", hub.name)
        self._send("workers", msg.identity, {
            "type": "heartbeat_ack",
            "balancer": self.id,
            "heartbeat": self.params["LB_HEARTBEAT_INTERVAL"],
        })

    @staticmethod
    def _record_usage(hub: Hub, usage: dict[str, Any]) -> None:
        """A heartbeat's CPU percent and resident bytes per worker, shown in the snapshot."""
        for worker_id, winfo in hub.workers.items():
            sample = usage.get(worker_id)
            if isinstance(sample, dict):
                for key in ("cpu", "rss"):
                    value = sample.get(key)
                    winfo[key] = value if _finite(value) and value >= 0 else None

    def _on_worker_ready(self, msg: Message) -> None:
        h = msg.header
        worker_id = str(h["worker"])[:MAX_ID_LENGTH]
        hub_id = str(h["hub"])[:MAX_ID_LENGTH]
        if msg.identity != worker_id.encode():
            raise TaskRejected("a worker must announce itself from its own connection")
        min_p, max_p = h["min_p"], h["max_p"]
        if not (_finite(min_p) and _finite(max_p) and min_p <= max_p):
            raise TaskRejected("worker priority range must be two numbers with min_p <= max_p")
        hub = self.hubs.get(hub_id)
        if hub is None:
            hub = self.hubs[hub_id] = Hub(
                hub_id, hub_id, "", 0, frozenset(), last_seen=self.now(), cert=self.sender
            )
        if worker_id in self.scheduler.slots:
            return
        if sum(len(x.workers) for x in self.hubs.values()) >= self.params["LB_MAX_PEERS"]:
            raise TaskRejected("too many workers connected (LB_MAX_PEERS)")
        routes = frozenset(str(r)[:MAX_NAME_LENGTH] for r in h.get("routes", [])[:10_000])
        slot = self.scheduler.add_slot(worker_id, hub_id, float(min_p), float(max_p), routes)
        slot.accepting = hub.state == "ok"
        self.worker_functions[worker_id] = collections.OrderedDict()
        hub.workers[worker_id] = {
            "id": worker_id,
            "pid": int(h.get("pid", 0)),
            "min_p": min_p,
            "max_p": max_p,
            "process_p": int(h.get("process_p", 0)),
            "done": 0,
            "cpu": None,
            "rss": None,
        }
        log.info("LB - ADDING WORKER (%s)", worker_id)
        self._reclaim(worker_id, h.get("tasks", []))
        self._recheck_unschedulable()

    def _reclaim(self, worker_id: str, task_ids: list[Any]) -> None:
        """A worker that re-announces itself after a restart still holds these tasks."""
        for task_id in task_ids[: 1 + self.params["LB_PREFETCH"]]:
            task = self._orphans.pop(str(task_id), None)
            if task is not None:
                self.scheduler.attach(worker_id, task)
                task.worker = worker_id
            elif str(task_id) not in self.tasks or self.tasks[str(task_id)].state.finished:
                self._send("workers", worker_id.encode(), {"type": "skip", "id": str(task_id)})

    def _on_results(self, msg: Message) -> None:
        worker_id = msg.identity.decode(errors="replace") if msg.identity else ""
        now = self.now()
        hub = self._hub_of(worker_id)
        if hub is not None and hub.state != "lost":
            hub.last_seen = now
        position = 0
        for info in msg.header.get("results", []):
            count = int(info.get("nbuf", 0))
            if count < 0 or position + count > len(msg.buffers):
                raise TaskRejected("result buffers missing from the message")
            buffers = msg.buffers[position : position + count]
            digests = msg.digests[position : position + count]
            position += count
            self._on_result(worker_id, hub, info, buffers, digests, now)

    def _on_result(
        self,
        worker_id: str,
        hub: Hub | None,
        info: dict[str, Any],
        buffers: list[Buffer],
        digests: list[bytes],
        now: float,
    ) -> None:
        task_id: Any = info.get("id")
        self._stealing.pop(task_id, None)
        released = self.scheduler.release(worker_id, task_id) if isinstance(task_id, str) else None
        slot = self.scheduler.slot_of(worker_id)
        if released is not None and slot is not None and not slot.assigned:
            self._went_idle.add(worker_id)
        if released is not None and slot is not None and slot.assigned:
            following = next(iter(slot.assigned.values()))
            if following.started is None:
                following.started = now
                self.scheduler.started(following)
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None or task.state.finished:
            return
        if task.state is TaskState.QUEUED:
            self.scheduler.cancel_queued(task)
        elif task.worker != worker_id and task.worker is not None:
            self._skip_on_worker(task)
        state = TaskState.DONE if info.get("state") == "done" else TaskState.FAILED
        result: dict[str, Any] = {
            key: info[key]
            for key in ("error", "stdout", "stderr")
            if key in info and info[key] is not None
        }
        started = info.get("started")
        ended = info.get("ended")
        if _finite(started):
            task.started = float(started)
        task.worker = worker_id
        if hub is not None and worker_id in hub.workers:
            task.hub = hub.id
            hub.workers[worker_id]["done"] += 1
        span = (float(started), float(ended)) if _finite(started) and _finite(ended) else None
        self._finish(task, state, now, result, buffers, digests, run_time=span[1] - span[0] if span else None)
        if span is not None:
            self.stats.ran(task, *span)
            self._learn_run_time(worker_id, span[1] - span[0])

    def _learn_run_time(self, worker_id: str, seconds: float) -> None:
        """Keep a moving average of a slot's task run time; prefetch only for short tasks."""
        previous = self._run_times.get(worker_id, seconds)
        average = 0.8 * previous + 0.2 * seconds
        self._run_times[worker_id] = average
        self.scheduler.set_prefetch(worker_id, average < PREFETCH_BELOW)

    def _on_progress(self, msg: Message) -> None:
        task = self.tasks.get(str(msg.header.get("id")))
        value = msg.header.get("value")
        if task is None or task.state is not TaskState.RUNNING or not _finite(value):
            return
        task.progress = max(1, min(99, int(value)))
        if task.client is not None:
            self._send("clients", task.client, {
                "type": "progress", "id": task.id, "progress": task.progress,
            })
        self._event(task)

    def _on_worker_lost(self, msg: Message) -> None:
        worker_id = str(msg.header.get("worker"))
        reason = str(msg.header.get("reason", "the worker process died"))[:1000]
        retired = bool(msg.header.get("retired"))
        error = "WorkerMemoryExceeded" if msg.header.get("error") == "WorkerMemoryExceeded" else "WorkerLost"
        self._lose_worker(worker_id, reason, count_attempt=not retired, retired=retired, error=error)

    def _on_worker_bye(self, msg: Message) -> None:
        """A worker retires (task quota reached, hub draining): after its last results, in order."""
        worker_id = str(msg.header.get("worker"))
        if msg.identity != worker_id.encode():
            raise TaskRejected("a worker must say goodbye from its own connection")
        reason = str(msg.header.get("reason", "it retired"))[:1000]
        self._lose_worker(worker_id, reason, count_attempt=False, retired=True)

    def _on_hub_drain(self, msg: Message) -> None:
        """A hub is stopping: no new tasks for its workers; its prefetched tasks come back."""
        hub = self.hubs.get(str(msg.header.get("hub")))
        assert msg.identity is not None
        if hub is None:
            self._send("workers", msg.identity, {"type": "reregister", "balancer": self.id})
            return
        hub.last_seen = self.now()
        self._drain_hub(hub)
        self._send("workers", msg.identity, {"type": "drain_ack", "balancer": self.id})

    def _drain_hub(self, hub: Hub) -> None:
        if hub.state != "draining":
            log.info("LB - HUB DRAINING (%s)", hub.name)
        hub.state = "draining"
        for worker_id in list(hub.workers):
            slot = self.scheduler.slot_of(worker_id)
            if slot is None:
                continue
            slot.accepting = False
            for task in list(slot.assigned.values())[1:]:
                # The worker hands back what it has not started ("skipped"), or runs it and reports.
                skip = {"type": "skip", "id": task.id, "reply": True}
                self._send("workers", worker_id.encode(), skip)

    def _on_hub_bye(self, msg: Message) -> None:
        hub = self.hubs.pop(str(msg.header.get("hub")), None)
        if hub is not None:
            log.info("LB - HUB LEFT (%s)", hub.id)
            for worker_id in list(hub.workers):
                self._lose_worker(worker_id, f"hub {hub.name} stopped", count_attempt=False)

    def _on_skipped(self, msg: Message) -> None:
        """A worker handed back a task it had not started: queue it again, first in line."""
        task_id = str(msg.header.get("id"))
        worker_id = msg.identity.decode(errors="replace") if msg.identity else ""
        self._stealing.pop(task_id, None)
        task = self.scheduler.release(worker_id, task_id)
        if task is not None and task.state is TaskState.RUNNING:
            self._requeue(task)

    _worker_handlers: dict[str, Callable[[Balancer, Message], None]] = {
        "hub_hello": _on_hub_hello,
        "heartbeat": _on_heartbeat,
        "worker_ready": _on_worker_ready,
        "results": _on_results,
        "progress": _on_progress,
        "worker_lost": _on_worker_lost,
        "hub_bye": _on_hub_bye,
        "skipped": _on_skipped,
        "worker_bye": _on_worker_bye,
        "hub_drain": _on_hub_drain,
        "ran": _on_ran,
    }

    def _hub_of(self, worker_id: str) -> Hub | None:
        slot = self.scheduler.slot_of(worker_id)
        if slot is not None:
            return self.hubs.get(slot.group)
        return next((h for h in self.hubs.values() if worker_id in h.workers), None)

    def _lose_worker(
        self, worker_id: str, reason: str, *, count_attempt: bool, retired: bool = False,
        error: str = "WorkerLost",
    ) -> None:
        """A worker is gone: its running task is retried or fails, its prefetched ones requeue.

        ``retired``: it left cleanly (recycled, drained); its tasks requeue, nothing is "lost".
        ``error``: the failed task's error type (``WorkerMemoryExceeded`` when its hub killed it).
        """
        hub = self._hub_of(worker_id)
        if hub is not None:
            hub.workers.pop(worker_id, None)
        self.worker_functions.pop(worker_id, None)
        self._run_lost(worker_id, reason)
        self._run_times.pop(worker_id, None)
        tasks = self.scheduler.remove_slot(worker_id)
        for task in tasks:
            self._stealing.pop(task.id, None)
        if retired:
            if hub is not None:
                log.info("LB - WORKER LEFT (%s): %s", worker_id, reason)
        elif tasks or hub is not None:
            log.warning("LB - WORKER LOST (%s): %s", worker_id, reason)
        now = self.now()
        for index, task in enumerate(tasks):
            if task.state is not TaskState.RUNNING:
                continue
            if index == 0 and count_attempt:
                task.attempts += 1
                if task.attempts > task.retries:
                    self._fail(task, error, f"worker {worker_id} was lost: {reason}", now)
                    continue
            self._requeue(task)
        self._recheck_unschedulable()

    def _requeue(self, task: Task) -> None:
        task.state = TaskState.QUEUED
        task.worker = None
        task.started = None
        task.progress = 0
        self.scheduler.requeue(task)
        self.store.state(task)
        self._event(task)

    def kill_worker(self, worker_id: str, reason: str) -> None:
        """Ask the worker's hub to kill it (it is replaced at once); its tasks are settled now."""
        hub = self._hub_of(worker_id)
        if hub is not None:
            self._send("workers", hub.id.encode(), {
                "type": "kill_worker", "worker": worker_id, "reason": reason,
            })
        self._lose_worker(worker_id, reason, count_attempt=False)

    def _skip_on_worker(self, task: Task) -> None:
        if task.worker is not None:
            self._send("workers", task.worker.encode(), {"type": "skip", "id": task.id})

    # -- health check --------------------------------------------------------------------------
    def _on_health_message(self, msg: Message) -> None:
        if msg.type == "health":
            self._reply("health", msg, {"type": "health_report", **self.health_report()})
        elif msg.type == "health_update":
            status = msg.header.get("status")
            messages = msg.header.get("messages", [])
            if status in ("ok", "warning", "error") and isinstance(messages, list):
                self.health = {
                    "status": status,
                    "messages": [str(m)[:1000] for m in messages[:100]],
                    "checked": self.now(),
                }
        elif msg.type == "status":
            self._reply("health", msg, {"type": "snapshot", "data": self.snapshot()})
        else:
            raise TaskRejected(f"unknown message type {msg.type!r}")

    def health_report(self) -> snap.HealthReport:
        now = self.now()
        overdue = [
            t.id for s in self.scheduler.slots.values() for t in list(s.assigned.values())[:1]
            if t.timeout and t.started and now - t.started > t.timeout
        ]
        return snap.health_report(
            balancer=self.id,
            hubs=[{"name": h.name, "last_seen": h.last_seen, "state": h.state} for h in self.hubs.values()],
            workers=len(self.scheduler.slots),
            queued=self.scheduler.queued_count,
            running=self.scheduler.running_count,
            overdue=overdue,
            unschedulable=len(self._unschedulable),
            now=now,
            heartbeat=self.params["LB_HEARTBEAT_INTERVAL"],
        )

    # -- dispatch and results -----------------------------------------------------------------
    def _dispatch(self, idle_only: bool = False) -> None:
        """Hand queued tasks to free slots (only to idle ones while a socket is being drained:
        prefetched tasks wait for the end of the pump, so each slot gets them in one message)."""
        assignments = self.scheduler.dispatch(idle_only, self._prefetchable)
        self._take_back()
        self._slots_full = self.scheduler.queued_count > 0
        if self._went_idle:
            if not self.scheduler.queued_count:
                self._steal_for_idle_slots()
            self._went_idle.clear()
        if not assignments:
            return
        now = self.now()
        by_slot: dict[str, tuple[Slot, list[Task]]] = {}
        for slot, task in assignments:
            task.state = TaskState.RUNNING
            task.worker = slot.id
            task.hub = slot.group
            task.reason = None
            self._unschedulable.pop(task.id, None)
            if len(slot.assigned) == 1:
                task.started = now
            by_slot.setdefault(slot.id, (slot, []))[1].append(task)
            self.store.state(task)
            self.stats.dispatched(task, now)
            self._event(task)
        for slot_id, (_slot, tasks) in by_slot.items():
            self._send_tasks(slot_id, tasks)

    def _take_back(self) -> None:
        """Ask workers to hand back the provisional tasks the scheduler revokes, at once: before
        any reply to a later message, so no task starts that the fairness order no longer names."""
        for slot, task in self.scheduler.take_back():
            self._send("workers", slot.id.encode(), {"type": "skip", "id": task.id, "reply": True})

    def _prefetchable(self, task: Task) -> bool:
        """More than one task may wait behind a running one only when their kind is known short."""
        return self.stats.runs_shorter_than(task.name, PREFETCH_BELOW)

    def _steal_for_idle_slots(self) -> None:
        """Nothing is queued but a slot went idle: ask a busy worker to hand back a waiting task."""
        thieves = {thief for _, thief in self._stealing.values()}
        for slot_id in self._went_idle:
            slot = self.scheduler.slot_of(slot_id)
            if slot is None or slot.assigned or not slot.accepting or slot.id in thieves:
                continue
            found = self.scheduler.stealable(slot, set(self._stealing))
            if found is None:
                return
            victim, task = found
            self._stealing[task.id] = (victim.id, slot.id)
            self._send("workers", victim.id.encode(), {"type": "skip", "id": task.id, "reply": True})

    def _send_tasks(self, worker_id: str, tasks: list[Task]) -> None:
        cache = self.worker_functions.setdefault(worker_id, collections.OrderedDict())
        specs: list[dict[str, Any]] = []
        buffers: list[Buffer] = []
        digests: list[bytes] = []
        for task in tasks:
            spec: dict[str, Any] = {"id": task.id, "nbuf": len(task.buffers)}
            if self.stats.is_short(task.name):
                spec["short"] = True
            if task.route is not None:
                spec["route"] = task.route
                spec["payload"] = task.payload
            else:
                spec["fn"] = task.fn
                if task.chunk:
                    spec["chunk"] = True
                assert task.fn is not None
                stored = self.functions[task.fn]
                if self._ship(cache, task.fn, stored, buffers, digests):
                    spec["fnbuf"] = len(stored.buffers)
                    if stored.origin:
                        spec["origin"] = stored.origin
                refs = self._task_objects.get(task.id)
                if refs:
                    spec["refs"] = [
                        [d, len(self.objects[d].buffers) if self._ship(cache, d, self.objects[d], buffers, digests)
                         else 0] for d in refs
                    ]
            buffers.extend(task.buffers)
            digests.extend(task.digests)
            specs.append(spec)
        if not self._send("workers", worker_id.encode(), {"type": "tasks", "tasks": specs}, buffers, digests):
            self._lose_worker(worker_id, "its connection is gone", count_attempt=False)

    @staticmethod
    def _ship(
        cache: collections.OrderedDict[str, None],
        digest: str,
        stored: StoredFunction,
        buffers: list[Buffer],
        digests: list[bytes],
    ) -> bool:
        """Add a cached pickle to a worker's message unless it has it; mirror its cache's LRU."""
        if digest in cache:
            cache.move_to_end(digest)
            return False
        buffers.extend(stored.buffers)
        digests.extend(stored.digests)
        cache[digest] = None
        if len(cache) > FUNCTION_CACHE_SIZE:
            cache.popitem(last=False)
        return True

    def _finish(
        self,
        task: Task,
        state: TaskState,
        now: float,
        result: dict[str, Any],
        buffers: list[Buffer] | None = None,
        digests: list[bytes] | None = None,
        *,
        run_time: float | None = None,
    ) -> None:
        task.state = state
        task.ended = now
        task.progress = 100 if state is TaskState.DONE else None
        task.result = result
        task.result_buffers = _retained(buffers or ())
        task.result_digests = tuple(digests or ())
        task.result_size = sum(protocol.buffer_size(b) for b in task.result_buffers)
        self._result_bytes += task.result_size
        self._in_memory.append(task.id)
        self._release_payload(task)
        self._unschedulable.pop(task.id, None)
        self._orphans.pop(task.id, None)
        self.store.finished(task)
        self.stats.finished(task, now)
        self.history.add(record(task, run_time))
        self._finished.append((now, task.id))
        self._queue_result(task)
        self._event(task)
        self._enforce_memory_budget()

    def _fail(self, task: Task, kind: str, message: str, now: float) -> None:
        error = {"type": kind, "message": message, "traceback": ""}
        self._finish(task, TaskState.FAILED, now, {"error": error})

    def _release_payload(self, task: Task) -> None:
        if task.fn is not None and task.fn in self.functions:
            stored = self.functions[task.fn]
            stored.refs -= 1
            if stored.refs <= 0:
                del self.functions[task.fn]
        for digest in self._task_objects.pop(task.id, ()):
            if digest in self.objects:
                self.objects[digest].refs -= 1
                self._drop_unused_object(digest)
        task.buffers = ()
        task.digests = ()

    def _queue_result(self, task: Task | KeptTask) -> None:
        if task.client is None:
            return
        info: dict[str, Any] = {
            "id": task.id, "state": task.state.value, "progress": task.progress, "worker": task.worker,
            "hub": task.hub, "started": task.started, "ended": task.ended,
        }
        if task.result:
            info.update(task.result)
        buffers, digests = self._result_frames(task)
        info["nbuf"] = len(buffers)
        self._client_out.setdefault(task.client, []).append((info, buffers, digests))

    def _commit(self) -> None:
        """Hand this batch's journal writes over; "submitted" replies and results leave once the
        batch is durable, so a result a client holds is never run again after a crash."""
        replies, self._after_commit = self._after_commit, []
        results, self._client_out = self._client_out, {}
        durable = functools.partial(self._durable, replies, results) if replies or results else None
        self.store.commit(durable)

    def _durable(self, replies: list[tuple[bytes, dict[str, Any]]], results: _Results) -> None:
        """Called by the store when a batch is durable, from its writer thread or this loop."""
        if self._loop is None or self._loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            self._send_replies(replies, results)
        else:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._send_replies, replies, results)

    def _send_replies(self, replies: list[tuple[bytes, dict[str, Any]]], results: _Results) -> None:
        """One message per client for its replies of a batch ("replies"), one for its results."""
        grouped: dict[bytes, list[dict[str, Any]]] = {}
        for identity, header in replies:
            grouped.setdefault(identity, []).append(header)
        for identity, headers in grouped.items():
            header = headers[0] if len(headers) == 1 else {"type": "replies", "replies": headers}
            self._send("clients", identity, header)
        for client, items in results.items():
            header = {"type": "results", "results": [info for info, _, _ in items]}
            buffers = [b for _, bufs, _ in items for b in bufs]
            digests = [d for _, _, digs in items for d in digs]
            self._send("clients", client, header, buffers, digests)

    def _flush(self) -> None:
        """Hand the task events the pump produced to the subscribers (the monitor)."""
        if self._events:
            events, self._events = self._events, []
            for callback in list(self.subscribers):
                try:
                    callback(events)
                except Exception:
                    log.exception("LB - a task-event subscriber failed; removing it")
                    self.subscribers.discard(callback)

    def _event(self, task: Task) -> None:
        if self.subscribers:
            self._events.append(task.summary())

    def _collected(self, task: Task | KeptTask, now: float) -> None:
        """A result reached its client: the task is kept, compact, until its retention ends."""
        if isinstance(task, Task) and task.collected is None:
            task.collected = now
            self.store.collected(task)
            self._retention.append((now + self.params["LB_RESULT_RETENTION"], task.id))
            self.tasks[task.id] = KeptTask.of(task)

    def _set_client(self, task: Task | KeptTask, client: bytes | None) -> Task | KeptTask:
        """Results of ``task`` now go to ``client`` (a client that reconnected or resubmitted)."""
        if isinstance(task, KeptTask):
            task = self.tasks[task.id] = task._replace(client=client)
        else:
            task.client = client
        return task

    def _forget(self, task: Task | KeptTask) -> None:
        self.tasks.pop(task.id, None)
        self.store.forget(task)
        if not task.result_offloaded:
            self._result_bytes -= task.result_size
        if isinstance(task, Task):
            task.result_buffers = ()
            task.result_digests = ()
            task.result_size = 0

    def _enforce_memory_budget(self) -> None:
        """Past LB_RESULT_MEMORY, the oldest results leave memory: to the journal, else dropped."""
        budget = self.params["LB_RESULT_MEMORY"]
        while self._result_bytes > budget and self._in_memory:
            task = self.tasks.get(self._in_memory.popleft())
            if task is None or not task.result_size or task.result_offloaded:
                continue
            if self.store.durable:
                self._result_bytes -= task.result_size
                if isinstance(task, KeptTask):
                    self.tasks[task.id] = task._replace(result_buffers=(), result_digests=(), result_offloaded=True)
                else:
                    task.result_buffers, task.result_digests = (), ()
                    task.result_offloaded = True
            else:
                log.warning(
                    "LB - result of %s dropped: results held exceed LB_RESULT_MEMORY (%d bytes); "
                    "turn the journal on (LB_JOURNAL) to keep them on disk", task.id, budget,
                )
                self._forget(task)

    def _result_frames(self, task: Task | KeptTask) -> tuple[Sequence[Buffer], Sequence[bytes]]:
        """A finished task's result buffers, read back from the journal when they left memory."""
        if task.result_offloaded:
            buffers: list[Buffer] = list(self.store.result_buffers(task.id))
            return buffers, [protocol.digest(b) for b in buffers]
        return task.result_buffers, task.result_digests

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a task: queued → removed; running → its worker is killed and replaced.

        A finished task's result is dropped. Returns ``{"cancelled", "state", "from"}`` where
        ``from`` is the seed's ``queue`` / ``pending`` / ``done`` / None.
        """
        task = self.tasks.get(task_id)
        now = self.now()
        if task is None:
            return {"cancelled": False, "state": None, "from": None}
        if task.state is TaskState.QUEUED:
            self.scheduler.cancel_queued(task)
            self._finish(task, TaskState.CANCELLED, now, {})
            self._schedule_pump()
            return {"cancelled": True, "state": "cancelled", "from": "queue"}
        if task.state is TaskState.RUNNING:
            slot = self.scheduler.slot_of(task.worker or "")
            is_head = slot is not None and next(iter(slot.assigned), None) == task.id
            if is_head and task.worker is not None:
                self.scheduler.release(task.worker, task.id)
                self._finish(task, TaskState.CANCELLED, now, {})
                self.kill_worker(task.worker, f"task {task.id} was cancelled")
            else:
                if task.worker is not None:
                    self.scheduler.release(task.worker, task.id)
                self._skip_on_worker(task)
                self._finish(task, TaskState.CANCELLED, now, {})
            self._schedule_pump()
            return {"cancelled": True, "state": "cancelled", "from": "pending"}
        state = task.state.value
        self._forget(task)
        return {"cancelled": False, "state": state, "from": "done"}

    def cancel_user(self, user: str) -> int:
        """Cancel every queued task of ``user``; return how many."""
        ids = [t.id for t in self.scheduler.iter_queued(user)]
        for task_id in ids:
            self.cancel(task_id)
        return len(ids)

    # -- periodic work (control path only) -----------------------------------------------------
    def _tick(self) -> None:
        try:
            now = self.now()
            self._check_hubs(now)
            self._check_timeouts(now)
            self._expire(now)
            self.stats.roll(now, self.scheduler.queued_count)
            self._sample_fair_share(now)
            self._requeue_orphans(now)
            self._dispatch()
            self._commit()
            self._flush()
        except Exception:
            log.exception("LB - periodic check failed")
        finally:
            if self._loop is not None and self._sockets:
                self._timer = self._loop.call_later(self._tick_interval, self._tick)

    def _requeue_orphans(self, now: float) -> None:
        """Tasks running before a restart whose worker did not come back: their run was lost."""
        if not self._orphans or now < self._orphans_deadline:
            return
        alive = {w for hub in self.hubs.values() if hub.state != "lost" for w in hub.alive}
        lost = {tid: t for tid, t in self._orphans.items() if t.worker not in alive}
        if not lost:
            return
        for task_id in lost:
            del self._orphans[task_id]
        log.warning("LB - %d task(s) running before the restart were not reclaimed; queued again", len(lost))
        for task in lost.values():
            self._requeue(task)

    def _check_hubs(self, now: float) -> None:
        limit = 3 * self.params["LB_HEARTBEAT_INTERVAL"]
        for hub in list(self.hubs.values()):
            if hub.state != "lost" and now - hub.last_seen > limit:
                hub.state = "lost"
                log.warning("LB - HUB LOST (%s): no heartbeat for %.1f s", hub.name, now - hub.last_seen)
                for worker_id in list(hub.workers):
                    self._lose_worker(worker_id, f"hub {hub.name} stopped answering", count_attempt=False)
            if hub.state == "lost" and now - hub.last_seen > max(60.0, 10 * limit):
                del self.hubs[hub.id]

    def _check_timeouts(self, now: float) -> None:
        for slot in list(self.scheduler.slots.values()):
            head = next(iter(slot.assigned.values()), None)
            if head is None or not head.timeout or head.started is None:
                continue
            if now - head.started > head.timeout:
                self.scheduler.release(slot.id, head.id)
                self._finish(head, TaskState.FAILED, now, {"error": {
                    "type": "TaskTimeout",
                    "message": f"task ran longer than its timeout of {head.timeout:g} s; its worker was killed",
                    "traceback": "",
                }})
                self.kill_worker(slot.id, f"task {head.id} timed out")
        for task_id, _reason in list(self._unschedulable.items()):
            task = self.tasks.get(task_id)
            if task is not None and task.timeout and now - task.submitted > task.timeout:
                self.scheduler.cancel_queued(task)
                reason = f"no worker could take it within {task.timeout:g} s: {task.reason}"
                self._fail(task, "TaskRejected", reason, now)

    def _expire(self, now: float) -> None:
        self.history.expire(now)
        while self._retention and self._retention[0][0] <= now:
            _, task_id = self._retention.popleft()
            task = self.tasks.get(task_id)
            if task is not None:
                self._forget(task)
        ttl = self.params["LB_RESULT_TTL"]
        while self._finished and self._finished[0][0] + ttl <= now:
            _, task_id = self._finished.popleft()
            task = self.tasks.get(task_id)
            if task is not None and task.collected is None:
                self._forget(task)

    def _recheck_unschedulable(self) -> None:
        for task in self.scheduler.iter_queued() if self._unschedulable or self.scheduler.slots else []:
            reason = self.scheduler.unschedulable_reason(task)
            if reason and task.id not in self._unschedulable:
                task.reason = reason
                self._unschedulable[task.id] = reason
                if task.client is not None:
                    self._send("clients", task.client, {"type": "warning", "id": task.id, "reason": reason})
            elif not reason and task.id in self._unschedulable:
                task.reason = None
                del self._unschedulable[task.id]

    def _sample_fair_share(self, now: float) -> None:
        slots = self.scheduler.slots
        heads = (next(iter(s.assigned.values()), None) for s in slots.values() if s.assigned)
        self.fair_share.sample(now, collections.Counter(t.user for t in heads if t is not None), len(slots))

    # -- views for the monitor, the health check and the magics ---------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The balancer's state: a :class:`jupyter_plb.core.snapshot.Snapshot` (docs/monitor-api.md)."""
        now = self.now()
        info = self.info
        hubs = []
        for hub in self.hubs.values():
            workers = []
            for worker_id, winfo in hub.workers.items():
                slot = self.scheduler.slot_of(worker_id)
                head = next(iter(slot.assigned.values()), None) if slot else None
                current = None if head is None else {
                    "id": head.id, "name": head.name, "user": head.user, "started": head.started,
                }
                workers.append(snap.worker(winfo, current, now))
            hubs.append(snap.hub({
                "id": hub.id, "name": hub.name, "host": hub.host, "pid": hub.pid, "state": hub.state,
                "last_seen": hub.last_seen, "tasks": sorted(hub.routes), "local": hub.local,
                "python": hub.python, "cloudpickle": hub.cloudpickle, "job": hub.job,
                "version_skew": versions.skew(self._hub_versions(hub), here="this balancer"),
            }, workers, now))
        queues: dict[str, snap.Queue] = {}
        for task in itertools.islice(self.scheduler.iter_queued(), 100_000):
            entry = queues.setdefault(task.name, {"name": task.name, "queued": 0, "max_wait": 0.0})
            entry["queued"] += 1
            entry["max_wait"] = max(entry["max_wait"], now - task.submitted)
        rejected = self.session.rejected if self.session else {}
        return cast(dict[str, Any], snap.build(
            now=now,
            balancer={
                "id": self.id,
                "version": versions.package_version(),
                "started": self.started,
                "uptime": now - self.started if self.started else 0.0,
                "address": f"tcp://{info.address}" if info else None,
                "ports": {"clients": info.client_port, "workers": info.worker_port, "health": info.health_port}
                if info else {},
                "host": stdsocket.gethostname(),
                "pid": os.getpid(),
                "python": versions.LOCAL["python"],
                "cloudpickle": versions.LOCAL["cloudpickle"],
            },
            health=snap.health(self.health["status"], self.health["messages"], self.health["checked"]),
            totals={
                "queued": self.scheduler.queued_count,
                "running": self.scheduler.running_count,
                **self.stats.totals(),  # type: ignore[typeddict-item]
                "bad_messages": self.stats.bad_messages + sum(rejected.values()),
            },
            rejected=rejected,
            throughput=self.stats.history(),  # type: ignore[arg-type]
            users=snap.users(self.stats.per_user, self.scheduler.user_counts(), self.fair_share.shares()),
            share_window=self.fair_share.window,
            hubs=hubs,
            launchers=self.launchers.rows(now),
            queues=queues.values(),
            stats=self.stats.per_name_list(),  # type: ignore[arg-type]
            unschedulable=[
                {"id": t.id, "name": t.name, "user": t.user, "priority": t.priority, "reason": t.reason}
                for t in (self.tasks.get(i) for i in list(self._unschedulable)[:100]) if t is not None
            ],
            failures=self.stats.failures,  # type: ignore[arg-type]
            timeline=list(self.stats.timeline),  # type: ignore[arg-type]
        ))

    def list_tasks(
        self,
        state: str | None = None,
        user: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 100,
        query: str | None = None,
    ) -> snap.TaskList:
        """Tasks matching ``query`` (:mod:`.taskquery`) and the exact filters: queued and running
        ones newest first, then finished ones from the history, most recently finished first."""
        wanted = taskquery.parse(query, state=state, user=user, name=name)
        limit = max(0, min(limit, 1000))
        offset = max(0, offset)
        everything = wanted == taskquery.TaskQuery()
        now = self.now()
        total = 0
        page: list[snap.TaskRow] = []
        if wanted.wants_live:
            for task in self.tasks.unfinished_newest():
                if everything or wanted.matches(_search_fields(task)):
                    if offset <= total < offset + limit:
                        page.append(snap.task_row(task.summary(), now))
                    total += 1
        if wanted.wants_finished:
            for kept in self.history.newest():
                if everything or wanted.matches(taskquery.SearchFields(
                    kept.id, kept.name, kept.user, kept.state, kept.worker, kept.hub, kept.error, kept.args,
                )):
                    if offset <= total < offset + limit:
                        page.append(snap.task_row(kept.summary(), now, kept.run_time))
                    total += 1
        return snap.task_list(total, page)

    def task_info(self, task_id: str) -> snap.TaskDetail | None:
        """A task's full detail (arguments, timings, worker; traceback and output once finished),
        live or from the history; None if neither knows it."""
        task = self.tasks.get(task_id)
        if task is not None and not task.state.finished:
            return {
                **snap.task_row(task.summary(), self.now()), "retries": task.retries, "args": task.args,
                "traceback": None, "stdout": None, "stderr": None,
            }
        kept = self.history.get(task_id)
        if kept is None and task is not None:
            kept = FinishedTask.of(task)
        if kept is None:
            return None
        return cast(snap.TaskDetail, snap.task_row(kept.detail(), self.now(), kept.run_time))


def _search_fields(task: Task) -> taskquery.SearchFields:
    return taskquery.SearchFields(
        task.id, task.name, task.user, task.state.value, task.worker, task.hub, None, task.args,
    )
