"""Client: the seed's ``sendTask/getTask/cancelTask`` and a ``concurrent.futures``-style API.

One background thread owns the ZeroMQ connection: it forwards what user threads send, receives
the results the balancer pushes, and resolves futures. Nothing polls the balancer for results.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import math
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import zmq

from jupyter_plb.client.broadcast import Broadcast
from jupyter_plb.client.display import BatchCounter
from jupyter_plb.client.futures import PlbFuture, rebuild_exception, settle, unpickle
from jupyter_plb.client.pickling import function_name, pickle_arguments, pickle_function
from jupyter_plb.core import parameters, protocol, versions
from jupyter_plb.core.argsrepr import args_text
from jupyter_plb.core.protocol import Buffer, Message, Session
from jupyter_plb.core.team import default_user
from jupyter_plb.errors import (
    BalancerUnreachable,
    ClientClosed,
    DeserializationError,
    PlbError,
    QueueFull,
    SerializationError,
    TaskRejected,
    UnknownTask,
    VersionSkewWarning,
)
from jupyter_plb.transport import connection, security, sockets
from jupyter_plb.workers.worker import VERSIONS

log = logging.getLogger(__name__)

#: Tasks per submit message when many are sent at once: small enough that the balancer starts
#: dispatching while the rest are still being pickled.
SUBMIT_BATCH = 100
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Received results are acknowledged in batches of this many, or after this delay.
ACK_BATCH = 1000
ACK_DELAY_MS = 200
#: A submit that follows the previous one this closely waits (at most COALESCE_DELAY) to travel
#: with the submits after it: a loop of submits becomes a few messages, not one per task.
#: Asking a waiting future for its result sends it at once.
COALESCE_WINDOW = 0.0003
COALESCE_DELAY = 0.001
#: Task ids per state question (the balancer answers at most 10,000 at a time).
GET_BATCH = 10_000
#: While tasks are outstanding and the balancer has been silent this long, say hello again
#: (a restarted balancer then resends finished results, and unacknowledged submits are resent).
PING_MS = 1000


#: Connections still open: closed at interpreter exit (their tasks stay on the balancer).
_open_connections: set[_Connection] = set()


@atexit.register
def _close_open_connections() -> None:
    for conn in list(_open_connections):
        conn.close()


class _Connection:
    """The socket, its I/O thread and the bookkeeping of tasks in flight.

    Shared by the handles that submit through it (a ``Client`` and its views) and by its pending
    futures: it stays open while a handle lives or a future is pending, as an executor does.
    """

    def __init__(self, info: connection.ConnectionInfo, params: parameters.Parameters) -> None:
        self.info = info
        self.params = params
        self.session = Session(info.key_bytes, max_message_size=params["LB_MAX_MESSAGE_SIZE"])
        self.receiver = Session(info.key_bytes, max_message_size=params["LB_MAX_MESSAGE_SIZE"])
        self.curve = security.peer_keys(info, params, "clients")  # None: the balancer has no Curve
        self.bound_user: str | None = None
        self.id = protocol.new_id("client")
        self.context = zmq.Context()
        self.futures: dict[str, PlbFuture] = {}
        self.seed_results: dict[str, dict[str, Any]] = {}
        self.seed_collected: collections.deque[tuple[float, str]] = collections.deque()
        self.requests: dict[str, concurrent.futures.Future[Message]] = {}
        self.balancer_id: str | None = None
        self.max_queued_per_user = 0
        self.result_retention = 60.0
        #: Hub id -> what differs between its Python/cloudpickle versions and this client's.
        self.version_skew: dict[str, str] = {}
        self.closed = False
        #: The I/O thread ends after this turn and releases the sockets (nothing holds the connection).
        self._stopping = False
        self._handles: set[int] = set()
        self._handle_keys = itertools.count()
        self._release_lock = threading.Lock()
        self._acks: list[str] = []
        self.unacked: dict[str, tuple[dict[str, Any], list[Buffer]]] = {}
        self._last_heard = time.monotonic()
        self._lock = threading.Lock()
        self._req_counter = itertools.count(1)
        self.socket = self._dealer(self.id)
        self._tx = self._dealer(f"{self.id}-tx")
        self._wake_pull = self.context.socket(zmq.PAIR)
        self._wake_pull.bind(f"inproc://{self.id}-wake")
        self._wake = self.context.socket(zmq.PAIR)
        self._wake.connect(f"inproc://{self.id}-wake")
        #: Submits waiting to travel together: (task specs with buffers, function id, its buffers).
        self.outbox: list[tuple[list[tuple[dict[str, Any], list[Buffer]]], str, list[Buffer]]] = []
        self._outbox_lock = threading.Lock()
        self._last_submit = 0.0
        self._flush_due = 0.0
        #: Digests of broadcast references garbage collected, released by the I/O thread.
        self.releases: collections.deque[str] = collections.deque()
        #: The broadcast references made through this connection (released when it closes).
        self.references: weakref.WeakSet[Broadcast] = weakref.WeakSet()
        self._thread = threading.Thread(target=self._run, name=f"plb-{self.id}", daemon=True)
        self._thread.start()
        _open_connections.add(self)

    # -- lifetime ------------------------------------------------------------------------------
    def adopt(self, handle: object) -> None:
        """Keep this connection open while ``handle`` (a Client or one of its views) lives."""
        key = next(self._handle_keys)
        self._handles.add(key)
        weakref.finalize(handle, self._let_go, key).atexit = False

    def _let_go(self, key: int) -> None:
        """A handle is gone: with none left and nothing in flight, disconnect; with tasks in
        flight, the I/O thread disconnects once the last of them settles."""
        self._handles.discard(key)
        if self.orphaned:
            self.close()

    @property
    def orphaned(self) -> bool:
        """No handle left and no task in flight: nothing can use this connection any more."""
        return not self._handles and not self.futures and not self.unacked and not self.outbox

    def check_open(self) -> None:
        if self.closed or self._stopping:
            raise ClientClosed(
                "cannot schedule new futures after shutdown: this client is closed; create a new Client()"
            )

    def _dealer(self, identity: str) -> zmq.Socket:
        url = self.info.client_url
        return sockets.connect_dealer(self.context, url, identity, curve=self.curve)

    # -- sending -------------------------------------------------------------------------------
    def send(self, header: dict[str, Any], buffers: Sequence[Buffer] = ()) -> None:
        """Sign and send from any thread; replies and results come back to the I/O thread.

        User threads send on their own socket (``-tx``, under a lock) so a submit does not wait for
        the I/O thread to wake up; the balancer answers to ``reply_to``, the I/O thread's socket.
        """
        self.check_open()
        if self.outbox and header["type"] != "submit":
            self.flush_submits()  # what follows may name tasks that are still waiting
        header["reply_to"] = self.id
        with self._lock:
            protocol.send(self._tx, self.session.serialize(header, buffers))

    def submit(self, tasks: list[tuple[dict[str, Any], list[Buffer]]], fn_id: str, fn_buffers: list[Buffer]) -> None:
        """Send tasks of one function now, or, in a quick run of submits, a moment later with the rest."""
        now = time.monotonic()
        flush = False
        with self._outbox_lock:
            waits = bool(self.outbox) or now - self._last_submit < COALESCE_WINDOW
            self._last_submit = now
            if waits:
                self.outbox.append((tasks, fn_id, fn_buffers))
                if sum(len(queued) for queued, _, _ in self.outbox) >= SUBMIT_BATCH:
                    flush = True
                elif len(self.outbox) == 1:
                    with contextlib.suppress(zmq.ZMQError):
                        self._wake.send(b"flush")
        if flush:
            self.flush_submits()
        elif not waits:
            self._send_submit([(tasks, fn_id, fn_buffers)])

    def flush_submits(self) -> None:
        """Send the submits that wait, as one message."""
        with self._outbox_lock:
            waiting, self.outbox = self.outbox, []
        if waiting:
            self._send_submit(waiting)

    def _send_submit(self, parts: list[tuple[list[tuple[dict[str, Any], list[Buffer]]], str, list[Buffer]]]) -> None:
        functions: dict[str, list[Buffer]] = {}
        for _tasks, fn_id, fn_buffers in parts:
            functions.setdefault(fn_id, fn_buffers)
        header = {
            "type": "submit",
            "fns": [
                {"fn": fn_id, "nbuf": len(fn_buffers), "origin": VERSIONS} for fn_id, fn_buffers in functions.items()
            ],
            "tasks": [spec for tasks, _, _ in parts for spec, _ in tasks],
        }
        buffers = [
            *(b for fn_buffers in functions.values() for b in fn_buffers),
            *(b for tasks, _, _ in parts for _, task_buffers in tasks for b in task_buffers),
        ]
        req = self.next_request_id()
        self.unacked[req] = (header, buffers)
        self.send({**header, "req": req}, buffers)

    def release_later(self, digest: str) -> None:
        """A broadcast reference was collected: the I/O thread tells the balancer (no blocking here,
        as the garbage collector may run this in any thread, even one holding a lock of ours)."""
        if self.closed:
            return
        self.releases.append(digest)
        if self._outbox_lock.acquire(blocking=False):
            try:
                with contextlib.suppress(zmq.ZMQError):
                    self._wake.send(b"release")
            finally:
                self._outbox_lock.release()

    def _release_references(self) -> None:
        """Closing: the references still held are released (the I/O thread sends it before it ends)."""
        for reference in list(self.references):
            if reference._finalizer.detach() is not None:
                self.releases.append(reference.digest)

    def _send_releases(self) -> None:
        digests: list[str] = []
        while self.releases:
            digests.append(self.releases.popleft())
        if digests:
            self.send({"type": "release", "digests": digests})

    def next_request_id(self) -> str:
        return f"r{next(self._req_counter)}"

    def request(
        self,
        header: dict[str, Any],
        buffers: Sequence[Buffer] = (),
        timeout: float | None = None,
        explain: bool = True,
    ) -> Message:
        """Send and wait for the reply naming the same request id."""
        req = self.next_request_id()
        header["req"] = req
        reply: concurrent.futures.Future[Message] = concurrent.futures.Future()
        self.requests[req] = reply
        with contextlib.suppress(zmq.Again):  # no connection (e.g. Curve refused it): told below
            self.send(header, buffers)
        wait = timeout if timeout is not None else self.request_timeout
        try:
            msg = reply.result(wait)
        except concurrent.futures.TimeoutError:
            error = self.unreachable(header["type"], wait) if explain else BalancerUnreachable()
            raise error from None
        finally:
            self.requests.pop(req, None)
        if msg.type == "error":
            raise TaskRejected(str(msg.header.get("error")))
        return msg

    @property
    def request_timeout(self) -> float:
        return max(self.params["SOCKET_TIMEOUT"] / 1000 * 10, 5.0)

    def unreachable(self, kind: str, wait: float) -> BalancerUnreachable:
        """The error for a request without an answer, with the reason when Curve can tell it."""
        url = self.info.client_url
        problem = sockets.diagnose(url, self.curve, 1.0) if self.curve else None
        return BalancerUnreachable(
            problem
            or f"the balancer at {url} did not answer {kind!r} within {wait:g} s; "
            "is it running (`plb start`, or JupyterLab with jupyter_plb)?"
        )

    def hello(self, timeout: float) -> None:
        # The answer comes back on the receiving connection; a hello sent before that connection's
        # handshake ends (CurveZMQ makes it longer) has its answer dropped by the ROUTER: ask again.
        deadline = time.monotonic() + timeout
        retry = 0.1
        while True:
            left = deadline - time.monotonic()
            try:
                header = {"type": "hello", "outstanding": list(self.futures)}
                msg = self.request(header, timeout=max(0.0, min(retry, left)), explain=False)
                break
            except BalancerUnreachable:
                if time.monotonic() >= deadline:
                    raise self.unreachable("hello", timeout) from None
                retry = min(2 * retry, 1.0)
        self.balancer_id = msg.header.get("balancer")
        user = msg.header.get("user")
        self.bound_user = user if isinstance(user, str) and user else None
        self.max_queued_per_user = int(msg.header.get("max_queued_per_user") or 0)
        retention = msg.header.get("result_retention")
        if isinstance(retention, int | float) and retention >= 0:
            self.result_retention = float(retention)
        self.check_versions(msg.header.get("hubs"), stacklevel=4)  # Client() in the user's code

    def check_versions(self, hubs: Any, stacklevel: int = 2) -> None:
        """Warn (VersionSkewWarning) of each hub whose Python minor or cloudpickle version is not ours."""
        for hub in hubs if isinstance(hubs, list) else []:
            if not isinstance(hub, dict):
                continue
            hub_id = str(hub.get("id"))
            skew = versions.skew(hub)
            if skew is None:
                self.version_skew.pop(hub_id, None)
            elif self.version_skew.get(hub_id) != skew:
                self.version_skew[hub_id] = skew
                warnings.warn(skew, VersionSkewWarning, stacklevel=stacklevel)

    def cancel(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        msg = self.request({"type": "cancel", "ids": ids})
        return msg.header.get("results", {})

    def cancel_queued(self, ids: list[str]) -> None:
        """Cancel those of the tasks that no worker holds yet (running ones go on, as in an executor).

        A task that starts between the question and the cancel is cancelled (its worker replaced).
        """
        for start in range(0, len(ids), GET_BATCH):
            reply = self.request({"type": "get", "ids": ids[start : start + GET_BATCH]})
            tasks = reply.header.get("tasks", {})
            queued = [task_id for task_id, info in tasks.items() if info.get("state") == "queued"]
            if queued:
                self.cancel(queued)

    # -- the I/O thread --------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        try:
            while not self._stopping:
                events = dict(poller.poll(self._poll_timeout()))
                if not events:
                    self._send_acks()
                    self._ping()
                if self._wake_pull in events:
                    wake = self._wake_pull.recv()
                    if wake == b"close":
                        self._send_releases()
                        self._send_acks()
                        break
                    if wake == b"flush":
                        self._flush_due = self._flush_due or time.monotonic() + COALESCE_DELAY
                if self.releases:
                    self._send_releases()
                if self._flush_due and time.monotonic() >= self._flush_due:
                    self._flush_due = 0.0
                    self.flush_submits()
                if self.socket in events:
                    self._receive()
                if self.orphaned:
                    self._send_acks()
                    self._stopping = True
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("plb client I/O thread failed")
        finally:
            self._fail_all(PlbError("the client was closed before the task finished"))
            if self._stopping:
                self._release()

    def _poll_timeout(self) -> int | None:
        if self._flush_due:
            return max(0, math.ceil((self._flush_due - time.monotonic()) * 1000))
        if self._acks:
            return ACK_DELAY_MS
        return PING_MS if self.futures or self.unacked else None

    def _ping(self) -> None:
        """Outstanding work and a silent balancer: say hello (it may have restarted)."""
        if (self.futures or self.unacked) and time.monotonic() - self._last_heard > PING_MS / 1000:
            self.send({"type": "hello", "outstanding": list(self.futures)[:100_000]})

    def _resend_unacked(self) -> None:
        if self.unacked:
            log.info("plb: the balancer restarted; resending %d unacknowledged submission(s)", len(self.unacked))
        for req, (header, buffers) in list(self.unacked.items()):
            self.send({**header, "req": req}, buffers)

    def _receive(self) -> None:
        while cast(int, self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frames = protocol.recv_ready(self.socket)
            if frames is None:
                break
            try:
                msg = self.receiver.deserialize(frames)
            except protocol.ProtocolError as exc:
                log.warning("plb client dropped a message: %s", exc)
                continue
            self._last_heard = time.monotonic()
            self._handle(msg, self._acks)
        if len(self._acks) >= ACK_BATCH:
            self._send_acks()

    def _send_acks(self) -> None:
        """Tell the balancer which results arrived (they are dropped after the retention)."""
        if self._acks:
            acks, self._acks = self._acks, []
            self.send({"type": "ack", "ids": acks})

    def _handle(self, msg: Message, acks: list[str]) -> None:
        if msg.type == "replies":  # several replies of one balancer batch, each handled alone
            for header in msg.header.get("replies", []):
                if isinstance(header, dict):
                    self._handle(Message(header), acks)
            return
        req = msg.header.get("req")
        waiting = self.requests.get(req) if req is not None else None
        # A second message naming the request (hello's "unknown" after "welcome") is handled below.
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)
            if msg.type == "submitted":
                self._on_submitted(msg)
            return
        if msg.type == "results":
            self._on_results(msg, acks)
        elif msg.type == "welcome":
            balancer = msg.header.get("balancer")
            if balancer != self.balancer_id:
                self.balancer_id = balancer
                self._resend_unacked()
            self.check_versions(msg.header.get("hubs"))
        elif msg.type == "hub_joined":
            self.check_versions([msg.header.get("hub")])
        elif msg.type == "submitted":
            self._on_submitted(msg)
        elif msg.type == "progress":
            fut = self.futures.get(str(msg.header.get("id")))
            if fut is not None:
                fut.progress = msg.header.get("progress")
                fut.state = "running"
        elif msg.type == "warning":
            fut = self.futures.get(str(msg.header.get("id")))
            reason = str(msg.header.get("reason"))
            if fut is not None:
                fut.warning = reason
            log.warning("plb task %s cannot run yet: %s", msg.header.get("id"), reason)
        elif msg.type == "unknown":
            resending = {spec.get("id") for header, _ in self.unacked.values() for spec in header["tasks"]}
            for task_id in msg.header.get("ids", []):
                if task_id in resending:
                    continue
                fut = self.futures.pop(task_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(UnknownTask(f"the balancer lost task {task_id}"))

    def _on_submitted(self, msg: Message) -> None:
        self.unacked.pop(msg.header.get("req", ""), None)
        for task_id, reason in msg.header.get("rejected", {}).items():
            fut = self.futures.pop(task_id, None)
            if fut is not None and not fut.done():
                kind = QueueFull if "LB_QUEING_MAXPERUSER" in reason or "LB_MAX_QUEUED" in reason else TaskRejected
                fut.state = "failed"
                fut.set_exception(kind(reason))
        for task_id, reason in msg.header.get("warnings", {}).items():
            fut = self.futures.get(task_id)
            if fut is not None:
                fut.warning = reason
            log.warning("plb task %s cannot run yet: %s", task_id, reason)

    def _on_results(self, msg: Message, acks: list[str]) -> None:
        position = 0
        now = time.time()
        for info in msg.header.get("results", []):
            count = int(info.get("nbuf", 0))
            buffers = msg.buffers[position : position + count]
            position += count
            task_id = info.get("id")
            acks.append(task_id)
            fut = self.futures.pop(task_id, None)
            if fut is None:
                self._cache_seed_result(task_id, info, buffers, now)
                continue
            settle(fut, info, buffers)

    def _cache_seed_result(self, task_id: str, info: dict[str, Any], buffers: Sequence[Buffer], now: float) -> None:
        entry = dict(info)
        if info.get("state") == "done":
            try:
                entry["value"] = unpickle(buffers)
            except DeserializationError as exc:
                entry["state"] = "failed"
                entry["error"] = {"type": "DeserializationError", "message": str(exc)}
        self.seed_results[task_id] = entry

    def _fail_all(self, exc: PlbError) -> None:
        for fut in list(self.futures.values()):
            if not fut.done():
                fut.set_exception(exc)
        self.futures.clear()

    def expire_seed_results(self) -> None:
        now = time.time()
        while self.seed_collected and self.seed_collected[0][0] <= now:
            _, task_id = self.seed_collected.popleft()
            self.seed_results.pop(task_id, None)

    def close(self) -> None:
        """Disconnect: submits that wait are sent first; futures still pending fail."""
        if threading.current_thread() is self._thread:
            self._stopping = True  # the loop ends after this turn and releases the sockets
            return
        if not self.closed and not self._stopping:
            with contextlib.suppress(PlbError):
                self.flush_submits()
            self._release_references()
            with contextlib.suppress(zmq.ZMQError), self._outbox_lock:
                self._wake.send(b"close")
        self._thread.join(5)
        self._release()

    def _release(self) -> None:
        """Close the sockets and the context, once, whichever thread ends the connection."""
        with self._release_lock, self._outbox_lock, self._lock:
            if self.closed:
                return
            self.closed = True
            for sock in (self._wake, self._wake_pull, self._tx, self.socket):
                sock.close(linger=0)
        self.context.term()
        _open_connections.discard(self)


class _Batch:
    """A ``map`` in flight: one pickled function, arguments fed while the queue has room."""

    def __init__(
        self,
        submitter: _Submitter,
        fn: Callable[..., Any],
        items: Iterator[tuple[Any, ...]],
        chunksize: int,
        length: int | None = None,
    ) -> None:
        self.submitter = submitter
        self.fn_buffers, self.fn_id = pickle_function(fn)
        self.name = function_name(fn)
        self.items = items
        self.chunksize = chunksize
        self.window = submitter._connection.max_queued_per_user or 0
        self.step = max(1, min(SUBMIT_BATCH, self.window) // 2) if self.window else SUBMIT_BATCH
        self.claimed = 0
        self.settled = 0
        self._settled_counter = itertools.count(1)
        #: Futures queued and not yet handed out by the iteration (which keeps none it handed out).
        self.futures: collections.deque[PlbFuture] = collections.deque()
        self.exhausted = False
        #: Items and tasks in all, when the inputs have a length.
        self.length = length
        self.task_count = None if length is None else math.ceil(length / chunksize)
        self._counters: list[BatchCounter] = []
        self._grew = threading.Condition()

    def follow(self, counter: BatchCounter) -> None:
        """Have ``counter`` count this map's futures, those queued and those to come."""
        with self._grew:
            counter.add(self.futures)
            if self.exhausted:
                counter.seal()
            else:
                self._counters.append(counter)

    def _on_settled(self, _future: Any) -> None:
        """A future of this map settled: feed more every ``step`` of them, or when all did."""
        count = next(self._settled_counter)  # atomic: callbacks may come from several threads
        if not self.exhausted and (count % self.step == 0 or count >= self.claimed):
            self.feed(count)

    def feed(self, settled: int = 0) -> None:
        """Queue more tasks while the window has room.

        Tasks leave in messages of ``SUBMIT_BATCH``, each as soon as it is pickled.
        """
        with self._grew:
            self.settled = max(self.settled, settled)
            if self.exhausted:
                return
            outstanding = self.claimed - self.settled
            room = self.window - outstanding if self.window else SUBMIT_BATCH * 100
            if self.window and room < self.step and outstanding:
                return
            self.claimed += room  # claimed now, so a concurrent feed does not claim it too
        sent = 0
        while sent < room and not self.exhausted:
            specs = self._pickle(min(SUBMIT_BATCH, room - sent))
            sent += len(specs)
            if specs:
                self.submitter._send_tasks(specs, self.fn_id, self.fn_buffers)
                for _spec, _buffers, fut in specs:
                    fut.add_done_callback(self._on_settled)
        with self._grew:
            self.claimed -= room - sent

    def _pickle(self, count: int) -> list[tuple[dict[str, Any], list[Buffer], PlbFuture]]:
        """Up to ``count`` more tasks, made visible to iteration at once."""
        specs: list[tuple[dict[str, Any], list[Buffer], PlbFuture]] = []
        made: list[PlbFuture] = []
        with self._grew:
            while len(specs) < count:
                chunk = list(itertools.islice(self.items, self.chunksize))
                if not chunk:
                    self.exhausted = True
                    break
                payload = protocol.call_payload(chunk[0], {}) if self.chunksize == 1 else (chunk, {})
                try:
                    spec, buffers, fut = self.submitter._function_task(self.fn_id, self.name, payload)
                except SerializationError as exc:  # that chunk fails alone, when its turn comes
                    failed = self.submitter._failed(self.name, exc)
                    self.futures.append(failed)
                    made.append(failed)
                    continue
                if self.chunksize > 1:
                    spec["chunk"] = True
                specs.append((spec, buffers, fut))
                self.futures.append(fut)
                made.append(fut)
            for counter in self._counters:
                counter.add(made)
                if self.exhausted:
                    counter.seal()
            self._grew.notify_all()
        return specs

    def __iter__(self) -> Iterator[PlbFuture]:
        """The futures in submission order, as they are queued; none is kept once handed out."""
        while True:
            if self.futures:
                yield self.futures.popleft()
                continue
            if not self.exhausted:
                self.feed()
            with self._grew:
                self._grew.wait_for(lambda: bool(self.futures) or self.exhausted)
                if not self.futures:
                    return


class MapIterator(Iterator[Any]):
    """What ``map`` and ``map_futures`` return: an iterator over results or futures, with the map's
    futures behind it (``jupyter_plb.progress(it)``) and a length when its inputs have one (tqdm)."""

    def __init__(self, batch: _Batch, items: Iterator[Any], length: int | None) -> None:
        self.batch = batch
        self._items = items
        self._length = length
        #: The bar of ``progress=True`` (a :class:`jupyter_plb.client.progress.Progress`), else None.
        self.progress: Any = None

    def __iter__(self) -> MapIterator:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("this map's inputs have no length")
        return self._length


def _input_length(iterables: Sequence[Iterable[Any]]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Submitter:
    """The submitting API, shared by Client and the views ``Client.options(...)`` returns."""

    _connection: _Connection
    _defaults: dict[str, Any]

    # -- concurrent.futures-style API ------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> PlbFuture:
        """Run ``fn(*args, **kwargs)`` on a worker; return its future."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}")
        self._connection.check_open()
        try:
            fn_buffers, fn_id = pickle_function(fn)
            spec, buffers, fut = self._function_task(fn_id, function_name(fn), protocol.call_payload(args, kwargs))
        except SerializationError as exc:  # as in an executor, the future carries the error
            return self._failed(function_name(fn), exc)
        self._send_tasks([(spec, buffers, fut)], fn_id, fn_buffers)
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> MapIterator:
        """Like ``Executor.map``: results in order; an exception is raised when its turn comes.

        ``progress=True`` shows a bar while it runs (:func:`jupyter_plb.progress`, not blocking).
        """
        futures = self.map_futures(fn, *iterables, chunksize=chunksize, progress=progress)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            while (fut := next(futures, None)) is not None:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                values = list(fut.result(remaining)) if chunksize > 1 else [fut.result(remaining)]
                del fut  # results are handed out, not kept (as Executor.map does)
                values.reverse()
                while values:
                    yield values.pop()

        mapped = MapIterator(futures.batch, results(), futures.batch.length)
        mapped.progress = futures.progress
        return mapped

    def map_futures(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1, progress: bool = False
    ) -> MapIterator:
        """Submit ``fn`` over the arguments, chunked; iterate the futures in order (one per chunk).

        Tasks are fed to the balancer as results come back, never more than the per-user queue
        limit at a time, so a long map does not hit ``LB_QUEING_MAXPERUSER``. ``progress=True``
        shows a bar while it runs.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__}")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be an integer >= 1")
        self._connection.check_open()
        batch = _Batch(self, fn, zip(*iterables, strict=False), chunksize, _input_length(iterables))
        batch.feed()
        futures = MapIterator(batch, iter(batch), batch.task_count)
        if progress:
            from jupyter_plb.client.progress import progress as show_progress

            futures.progress = show_progress(futures, wait=False)
        return futures

    # -- code and data on every worker -----------------------------------------------------------
    def run(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        workers: Iterable[str] | None = None,
        on_error: str = "raise",
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Call ``fn(*args, **kwargs)`` on every connected worker now, outside the task queues.

        Returns ``{worker id: result}``. A worker that is running a long task runs ``fn`` at the same
        time, on its I/O thread. ``on_error``: ``"raise"`` the first remote exception (with its
        remote traceback as ``__cause__``), ``"return"`` it in the dict, or ``"ignore"`` that worker.
        ``workers`` limits it to those ids; ``timeout`` (s) bounds the wait (default: none).
        """
        if not callable(fn):
            raise TypeError(f"run() needs a callable, got {type(fn).__name__}")
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError("on_error must be 'raise', 'return' or 'ignore'")
        buffers = protocol.dumps((fn, args, kwargs))
        header: dict[str, Any] = {"type": "run", "nbuf": len(buffers)}
        if workers is not None:
            header["workers"] = [str(w) for w in workers]
        wait = threading.TIMEOUT_MAX if timeout is None else timeout
        try:
            reply = self._connection.request(header, buffers, timeout=wait, explain=False)
        except BalancerUnreachable:
            raise BalancerUnreachable(
                f"run() got no answer within {wait:g} s: a worker is still running {function_name(fn)}, "
                "or the balancer is unreachable"
            ) from None
        results: dict[str, Any] = {}
        position = 0
        for info in reply.header.get("results", []):
            count = int(info.get("nbuf", 0))
            answer = reply.buffers[position : position + count]
            position += count
            worker = str(info.get("worker"))
            if info.get("state") == "done":
                results[worker] = protocol.loads(answer)
                continue
            exc = rebuild_exception(info, answer)
            if on_error == "raise":
                raise exc
            if on_error == "return":
                results[worker] = exc
        return dict(sorted(results.items()))

    def broadcast(self, obj: Any) -> Broadcast:
        """Keep ``obj`` on the balancer; return a reference that tasks take as an argument.

        Each worker receives the object once (with its first task that names it) and keeps it until
        the reference is released (``release()``, ``with``, or garbage collected) and no queued or
        running task names it.
        """
        if isinstance(obj, Broadcast):
            raise TypeError("this is already a broadcast reference")
        buffers = protocol.dumps(protocol.blob(obj))
        digest = hashlib.sha256(b"".join(protocol.digest(b) for b in buffers)).hexdigest()[:32]
        self._connection.request({"type": "broadcast", "digest": digest, "nbuf": len(buffers)}, buffers)
        nbytes = sum(protocol.buffer_size(b) for b in buffers)
        return Broadcast(self._connection, digest, nbytes, type(obj).__name__)

    scatter = broadcast

    def options(self, **overrides: Any) -> ClientView:
        """A view with other defaults: ``priority=``, ``user=``, ``timeout=``, ``retries=``."""
        unknown = set(overrides) - {"priority", "user", "timeout", "retries"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; use priority, user, timeout, retries")
        return ClientView(self._connection, {**self._defaults, **overrides})

    # -- seed API ----------------------------------------------------------------------------------
    def sendTask(
        self, taskname: str, task: Any = None, userid: str | None = None, priority: float = 0
    ) -> dict[str, Any]:
        """Queue the hub task ``taskname`` with the JSON ``task``; ``{'taskid'}`` or ``{'error'}``."""
        try:
            json.dumps(task)
        except (TypeError, ValueError) as exc:
            return {"error": f"the task must be JSON serializable: {exc}"}
        task_id = protocol.new_id("t")
        spec = {
            "id": task_id,
            "name": str(taskname),
            "route": str(taskname),
            "payload": task,
            "args": args_text((task,)),
            "user": userid or self._defaults["user"],
            "priority": priority,
            "nbuf": 0,
            **self._limits(),
        }
        header = {"type": "submit", "fns": [], "tasks": [spec]}
        try:
            reply = self._connection.request(header)
        except PlbError as exc:
            return {"error": str(exc)}
        if task_id in reply.header.get("rejected", {}):
            return {"error": reply.header["rejected"][task_id]}
        return {"taskid": task_id}

    def getTask(self, taskid: str | list[str]) -> dict[str, Any]:
        """``{'progress', 'result'}`` for one id, ``{id: {...}}`` for a list; progress None if unknown."""
        ids = [taskid] if isinstance(taskid, str) else list(taskid)
        conn = self._connection
        conn.expire_seed_results()
        answers: dict[str, dict[str, Any]] = {}
        missing = []
        for task_id in ids:
            cached = conn.seed_results.get(task_id)
            if cached is not None:
                answers[task_id] = self._seed_answer(cached)
                if not cached.get("collected"):
                    cached["collected"] = True
                    conn.seed_collected.append((time.time() + conn.result_retention, task_id))
            else:
                missing.append(task_id)
        if missing:
            try:
                reply = conn.request({"type": "get", "ids": missing})
            except PlbError as exc:
                return {"error": str(exc)}
            position = 0
            infos = reply.header.get("tasks", {})
            for task_id in missing:
                info = infos.get(task_id)
                if info is None:
                    answers[task_id] = {"progress": None, "result": None, "state": None}
                    continue
                result = info.get("result") or {}
                count = int(result.get("nbuf", 0))
                buffers = reply.buffers[position : position + count]
                position += count
                if result:
                    info = {**info, **result}
                    conn._cache_seed_result(task_id, info, buffers, time.time())
                    entry = conn.seed_results[task_id]
                    entry["collected"] = True
                    conn.seed_collected.append((time.time() + conn.result_retention, task_id))
                    answers[task_id] = self._seed_answer(entry)
                else:
                    answers[task_id] = self._seed_answer(info)
        if isinstance(taskid, str):
            return answers[taskid]
        return answers

    @staticmethod
    def _seed_answer(info: dict[str, Any]) -> dict[str, Any]:
        state = info.get("state")
        answer: dict[str, Any] = {"progress": info.get("progress"), "result": None, "state": state}
        if state == "done":
            answer["progress"] = 100
            answer["result"] = info.get("value")
        elif state in ("failed", "cancelled"):
            answer["progress"] = None
            error = info.get("error")
            if isinstance(error, dict):
                answer["error"] = f"{error.get('type')}: {error.get('message')}"
                answer["traceback"] = error.get("traceback", "")
            elif error:
                answer["error"] = error
        for key in ("stdout", "stderr"):
            if info.get(key):
                answer[key] = info[key]
        return answer

    def cancelTask(self, taskid: str) -> dict[str, Any]:
        """Cancel a queued or running task: ``{'deleted': bool, 'from': 'queue'|'pending'|'done'|None}``."""
        self._connection.seed_results.pop(taskid, None)
        try:
            result = self._connection.cancel([taskid]).get(taskid, {})
        except PlbError as exc:
            return {"deleted": False, "from": None, "error": str(exc)}
        deleted = bool(result.get("cancelled")) or result.get("from") == "done"
        return {"deleted": deleted, "from": result.get("from"), "state": result.get("state")}

    # -- helpers -----------------------------------------------------------------------------------
    def _limits(self) -> dict[str, Any]:
        return {"timeout": self._defaults.get("timeout"), "retries": self._defaults.get("retries") or 0}

    def _function_task(
        self, fn_id: str, name: str, payload: tuple[Any, dict[str, Any]]
    ) -> tuple[dict[str, Any], list[Buffer], PlbFuture]:
        buffers, broadcasts = pickle_arguments(payload)
        task_id = protocol.new_id("t")
        spec: dict[str, Any] = {
            "id": task_id,
            "name": name,
            "fn": fn_id,
            "user": self._defaults["user"],
            "priority": self._defaults.get("priority", 0),
            "nbuf": len(buffers),
            "args": args_text(*payload),
            **self._limits(),
        }
        if broadcasts:
            spec["refs"] = broadcasts
        return spec, buffers, PlbFuture(self._connection, task_id, name)

    def _failed(self, name: str, exc: BaseException) -> PlbFuture:
        """A future that failed before its task could leave (its function or arguments do not pickle)."""
        fut = PlbFuture(self._connection, protocol.new_id("t"), name)
        fut.state = "failed"
        fut.progress = None
        fut.set_exception(exc)
        return fut

    def _send_tasks(
        self,
        tasks: list[tuple[dict[str, Any], list[Buffer], PlbFuture]],
        fn_id: str,
        fn_buffers: list[Buffer],
    ) -> None:
        conn = self._connection
        conn.check_open()
        for spec, _buffers, fut in tasks:
            conn.futures[spec["id"]] = fut
        conn.submit([(spec, buffers) for spec, buffers, _ in tasks], fn_id, fn_buffers)

    # -- information ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The balancer's snapshot (the monitor's ``/plb/api/status``)."""
        return self._connection.request({"type": "status"}).header["data"]

    def hubs(self) -> list[dict[str, Any]]:
        return self.status()["hubs"]

    def tasks(self, **filters: Any) -> dict[str, Any]:
        """Tasks known to the balancer: ``state=``, ``user=``, ``name=``, ``query=`` (the monitor's
        search, e.g. ``"state:failed name:simulate"``), ``offset=``, ``limit=``."""
        return self._connection.request({"type": "tasks", **filters}).header

    def cancel(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return self._connection.cancel(list(ids))

    def adapt(self, minimum: int = 0, maximum: int = 1, **options: Any) -> Any:
        """Scale Slurm hub jobs to the queue (``jupyter_plb.jobs.adapter.adapt_slurm``); ``.stop()`` ends it."""
        from jupyter_plb.jobs.adapter import adapt_slurm

        return adapt_slurm(self, minimum, maximum, **options)

    def report_jobs(self, launcher: dict[str, Any]) -> None:
        """Tell the balancer a launcher's job table (shown in the monitor and the Lab panel)."""
        self._connection.request({"type": "jobs", "launcher": launcher})

    def future(self, task_id: str) -> PlbFuture | None:
        """The future of a task this client submitted and is still waiting for."""
        return self._connection.futures.get(task_id)

    def outstanding(self) -> list[PlbFuture]:
        return list(self._connection.futures.values())


class ClientView(_Submitter):
    """The same connection with other defaults (``Client.options``)."""

    def __init__(self, conn: _Connection, defaults: dict[str, Any]) -> None:
        self._connection = conn
        self._defaults = defaults
        conn.adopt(self)


class Client(_Submitter):
    """Connects to a balancer and sends it tasks.

    ``Client()`` finds the balancer from ``$PLB_CONNECTION_FILE``, else the connection file in
    the Jupyter runtime dir; ``Client('parameters.json')`` (the seed's form) uses the file's
    ``LB_IP``/ports and the connection file's key.
    """

    def __init__(
        self,
        params: parameters.Parameters | str | Path | None = None,
        *,
        connection_file: str | Path | None = None,
        user: str | None = None,
        priority: float = 0,
        timeout: float | None = None,
        retries: int = 0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        loaded = parameters.load(params)
        if connection_file is not None:
            info = connection.read(connection_file)
        elif params is not None:
            info = connection.from_parameters(loaded)
        else:
            info = connection.read(connection.resolve_path(loaded))
        self._connection = _Connection(info, loaded)
        self._connection.adopt(self)  # open while this client, a view of it or a pending future lives
        self._defaults = {"user": user or default_user(), "priority": priority, "timeout": timeout, "retries": retries}
        try:
            self._connection.hello(connect_timeout)
        except BaseException:
            self._connection.close()
            raise
        if user is None and self._connection.bound_user:
            self._defaults["user"] = self._connection.bound_user  # the certificate's user (Curve)

    @property
    def connection_info(self) -> connection.ConnectionInfo:
        return self._connection.info

    @property
    def user(self) -> str:
        return self._defaults["user"]

    @property
    def version_skew(self) -> dict[str, str]:
        """Hub id -> how its Python minor or cloudpickle version differs from this client's
        (each was warned of with a VersionSkewWarning when the client connected or the hub joined)."""
        return dict(self._connection.version_skew)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Like ``Executor.shutdown``: optionally cancel the tasks not started yet, wait, then disconnect."""
        conn = self._connection
        if conn.closed:
            return
        pending = [f for f in conn.futures.values() if not f.done()]
        if cancel_futures and pending:
            with contextlib.suppress(PlbError):
                conn.cancel_queued([f.task_id for f in pending])
        if wait:
            concurrent.futures.wait(pending)
        conn.close()

    close = shutdown

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


wait = concurrent.futures.wait
