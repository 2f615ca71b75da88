"""The client's connection to the balancer: its sockets, requests and their replies, and the I/O thread.

One background thread owns the receiving socket: it forwards what user threads queue, receives
the results the balancer pushes, and resolves futures. Nothing polls the balancer for results.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, cast

import zmq

from jupyter_plb.client.broadcast import References
from jupyter_plb.client.futures import PlbFuture, settle
from jupyter_plb.client.outbox import Outbox
from jupyter_plb.client.seed_results import SeedResults
from jupyter_plb.core import parameters, protocol, shm, versions
from jupyter_plb.core.protocol import Buffer, Message, Session
from jupyter_plb.errors import (
    BalancerUnreachable,
    ClientClosed,
    PlbError,
    QueueFull,
    TaskRejected,
    UnknownTask,
    VersionSkewWarning,
)
from jupyter_plb.transport import connection, security, sockets

log = logging.getLogger(__name__)

#: Received results are acknowledged in batches of this many, or after this delay.
ACK_BATCH = 1000
ACK_DELAY_MS = 200
#: Task ids per state question (the balancer answers at most 10,000 at a time).
GET_BATCH = 10_000
#: While tasks are outstanding and the balancer has been silent this long, say hello again
#: (a restarted balancer then resends finished results, and unacknowledged submits are resent).
PING_MS = 1000

#: Connections still open: closed at interpreter exit (their tasks stay on the balancer).
_open_connections: set[Connection] = set()


@atexit.register
def _close_open_connections() -> None:
    for conn in list(_open_connections):
        conn.close()


class Connection:
    """The sockets, their I/O thread and the bookkeeping of tasks in flight.

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
        self.seed_results = SeedResults()
        self.requests: dict[str, concurrent.futures.Future[Message]] = {}
        self.balancer_id: str | None = None
        self.max_queued_per_user = 0
        #: Hub id -> what differs between its Python/cloudpickle versions and this client's.
        self.version_skew: dict[str, str] = {}
        #: The shared-memory segments of large task arguments, by task (None: the balancer is on
        #: another machine or said not to use them); each task's are removed when its future settles.
        self.segments: shm.SegmentRegistry | None = None
        self.closed = False
        #: The I/O thread ends after this turn and releases the sockets (nothing holds the connection).
        self._stopping = False
        self._handles: set[int] = set()
        self._handle_keys = itertools.count()
        self._release_lock = threading.Lock()
        self._acks: list[str] = []
        self._last_heard = time.monotonic()
        self._lock = threading.Lock()
        self._req_counter = itertools.count(1)
        self.socket = self._dealer(self.id)
        self._tx = self._dealer(f"{self.id}-tx")
        self._wake_pull = self.context.socket(zmq.PAIR)
        self._wake_pull.bind(f"inproc://{self.id}-wake")
        self._wake = self.context.socket(zmq.PAIR)
        self._wake.connect(f"inproc://{self.id}-wake")
        self._wake_lock = threading.Lock()
        self.outbox = Outbox(self)
        self.references = References(self)
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
        outbox = self.outbox
        return not self._handles and not self.futures and not outbox.unacked and not outbox.waiting

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
        if self.outbox.waiting and header["type"] != "submit":
            self.outbox.flush()  # what follows may name tasks that are still waiting
        header["reply_to"] = self.id
        with self._lock:
            protocol.send(self._tx, self.session.serialize(header, buffers))

    def wake(self, reason: bytes, block: bool = True) -> None:
        """Wake the I/O thread from any thread (``flush``, ``release``, ``close``); without ``block``,
        only if no other thread is waking it at that moment."""
        if not self._wake_lock.acquire(blocking=block):
            return
        try:
            with contextlib.suppress(zmq.ZMQError):
                self._wake.send(reason)
        finally:
            self._wake_lock.release()

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
            self.seed_results.retention = float(retention)
        self.check_versions(msg.header.get("hubs"), stacklevel=4)  # Client() in the user's code
        shared = msg.header.get("shared_memory")
        if shared and self.params["LB_SHARED_MEMORY"] and shared == shm.machine_id():
            self.segments = self.segments or shm.SegmentRegistry()

    def share(self, task_id: str, buffers: list[Buffer]) -> list[Buffer]:
        """``buffers`` with the large ones in shared-memory segments of the task, when the
        balancer is on this machine (the segments are removed when the task's future settles)."""
        segments = self.segments
        if segments is None or not any(protocol.buffer_size(b) >= shm.THRESHOLD for b in buffers):
            return buffers
        digests = bool(self.params["LB_SHM_DIGESTS"])
        return protocol.share(buffers, lambda buf: segments.write(task_id, buf, digest=digests))

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
        outbox, references = self.outbox, self.references
        try:
            while not self._stopping:
                events = dict(poller.poll(self._poll_timeout()))
                if not events:
                    self._send_acks()
                    self._ping()
                if self._wake_pull in events:
                    wake = self._wake_pull.recv()
                    if wake == b"close":
                        references.send_releases()
                        self._send_acks()
                        break
                    if wake == b"flush":
                        outbox.flush_soon()
                if references.to_release:
                    references.send_releases()
                outbox.flush_if_due()
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
        flush = self.outbox.ms_to_flush()
        if flush is not None:
            return flush
        if self._acks:
            return ACK_DELAY_MS
        return PING_MS if self.futures or self.outbox.unacked else None

    def _ping(self) -> None:
        """Outstanding work and a silent balancer: say hello (it may have restarted)."""
        if (self.futures or self.outbox.unacked) and time.monotonic() - self._last_heard > PING_MS / 1000:
            self.send({"type": "hello", "outstanding": list(self.futures)[:100_000]})

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
                self.outbox.resend()
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
            resending = self.outbox.unacked_tasks()
            for task_id in msg.header.get("ids", []):
                if task_id in resending:
                    continue
                fut = self.futures.pop(task_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(UnknownTask(f"the balancer lost task {task_id}"))

    def _on_submitted(self, msg: Message) -> None:
        self.outbox.unacked.pop(msg.header.get("req", ""), None)
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
        for info in msg.header.get("results", []):
            count = int(info.get("nbuf", 0))
            buffers = msg.buffers[position : position + count]
            position += count
            task_id = info.get("id")
            acks.append(task_id)
            fut = self.futures.pop(task_id, None)
            if fut is None:
                self.seed_results.store(task_id, info, buffers)
                continue
            settle(fut, info, buffers)

    def _fail_all(self, exc: PlbError) -> None:
        for fut in list(self.futures.values()):
            if not fut.done():
                fut.set_exception(exc)
        self.futures.clear()

    def close(self) -> None:
        """Disconnect: submits that wait are sent first; futures still pending fail."""
        if threading.current_thread() is self._thread:
            self._stopping = True  # the loop ends after this turn and releases the sockets
            return
        if not self.closed and not self._stopping:
            with contextlib.suppress(PlbError):
                self.outbox.flush()
            self.references.release_all()
            self.wake(b"close")
        self._thread.join(5)
        self._release()

    def _release(self) -> None:
        """Close the sockets and the context, once, whichever thread ends the connection."""
        with self._release_lock, self._wake_lock, self._lock:
            if self.closed:
                return
            self.closed = True
            for sock in (self._wake, self._wake_pull, self._tx, self.socket):
                sock.close(linger=0)
        self.context.term()
        if self.segments is not None:
            self.segments.release_all()
        _open_connections.discard(self)
