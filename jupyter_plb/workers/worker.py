"""The worker process: its socket to the balancer, its task queue, and what a running task may ask of it.

A hub starts it as a fresh interpreter (spawn: no ipykernel, no inherited state) and supervises it; the worker
exits by itself when its hub dies (it watches the hub's pipe in the same poll as its socket). Tasks
run in :mod:`~jupyter_plb.workers.execution`, with the functions of :mod:`~jupyter_plb.workers.cache`.

Short tasks run back to back with the socket served between them on the main thread. While a
long task runs (one the balancer did not mark ``short``), an I/O thread owns the socket instead: it
sends the previous result and takes in the next tasks during the task, so the gap between two long
tasks is a queue pop, not a receive and a send. (A thread for every task would make short,
CPU-bound tasks fight it for the GIL.)

Its ``worker_ready`` announcement (at start, and again for a restarted balancer) names everything it
holds, so a restarted balancer can tell which of the tasks its journal left on this worker were lost
with the old connection: ``running``, the task it runs (or null); ``finished``, the tasks whose
results it has not sent yet (they follow on the same connection); ``tasks``, the ones it has not
started. A result already handed to the socket is not named: it reaches the balancer before the
announcement.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

import cloudpickle
import zmq

from jupyter_plb.core import protocol, shm
from jupyter_plb.core.protocol import Buffer, Message, Session
from jupyter_plb.transport import sockets
from jupyter_plb.workers.cache import VERSIONS, FunctionCache, Unloadable
from jupyter_plb.workers.execution import TaskRunner

__all__ = [
    "EXIT_RETIRED",
    "EXIT_SETUP_FAILED",
    "VERSIONS",
    "WorkerConfig",
    "broadcast_value",
    "cache_info",
    "current_task_id",
    "report_progress",
    "run_from_stdin",
]

log = logging.getLogger(__name__)

#: Results finished within this many seconds of each other travel in one message, as long as
#: the next task is known to be short (the balancer marks it); otherwise they leave at once.
RESULT_BATCH_WINDOW = 0.002
RESULT_BATCH_MAX = 16
#: Exit code of a worker that retired cleanly (recycled after its task quota, or drained): its hub
#: replaces it (unless draining) without counting a crash, and its tasks are not charged an attempt.
EXIT_RETIRED = 85
#: Exit code of a worker whose hub's setup hook raised: its hub does not start it again.
EXIT_SETUP_FAILED = 86


class _Retire(Exception):
    """Leave the loop: flush results, say ``worker_bye``, exit with EXIT_RETIRED."""


@dataclass(slots=True)
class WorkerConfig:
    """Everything a spawned worker needs; plain data so it pickles across *spawn*."""

    url: str
    key: bytes
    worker_id: str
    hub_id: str
    min_p: float
    max_p: float
    process_p: int
    routes: bytes
    control_fd: int = -1
    max_message_size: int = 256 << 20
    #: Retire after this many tasks (0: never); the hub starts a fresh worker.
    max_tasks: int = 0
    #: The hub's CurveZMQ keys (security.PeerKeys) when the balancer uses Curve.
    curve: Any = None
    #: The hub's setup hook, cloudpickled (b"": none), and its name for messages.
    setup: bytes = b""
    setup_name: str = ""
    #: Large results go back in shared-memory segments (a hub on its balancer's machine), described
    #: with their digests when ``shm_digests``.
    shared_memory: bool = False
    shm_digests: bool = False


#: This process's task runner, once it is a worker.
_runner: TaskRunner | None = None


def report_progress(value: float) -> None:
    """Report the running task's progress (1–99) to the balancer; a no-op outside a worker."""
    if _runner is not None:
        _runner.report_progress(value)


def current_task_id() -> str | None:
    """The id of the task this worker process is running, or None."""
    return _runner.task_id if _runner is not None else None


def cache_info() -> dict[str, int]:
    """What this worker's cache holds and has received (``client.run(cache_info)`` reads it)."""
    if _runner is None:
        return {}
    return {"cached": len(_runner.functions.entries), **_runner.functions.received}


def broadcast_value(digest: str) -> Any:
    """The broadcast object a task's arguments name (what a ``Broadcast`` reference unpickles to)."""
    objects = _runner.task_objects if _runner is not None else None
    if not objects or digest not in objects:
        raise LookupError(
            f"the broadcast object {digest} did not reach this worker (was it released?); "
            "a broadcast reference works only as an argument of submit() or map()"
        )
    value = objects[digest]
    if isinstance(value, Unloadable):
        raise value.error
    return value


class _Worker:
    """Takes tasks in and sends results out, on the main thread or, during a long task, its I/O thread."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.session = Session(config.key, max_message_size=config.max_message_size)
        self.context = zmq.Context()
        self.socket = sockets.connect_dealer(
            self.context, config.url, config.worker_id, curve=config.curve
        )
        self.functions = FunctionCache()
        share = (
            functools.partial(protocol.share, write=functools.partial(shm.write_segment, digest=config.shm_digests))
            if config.shared_memory else None
        )
        self.runner = TaskRunner(config.routes, self.functions, self.send_from_task, share)
        #: (spec, buffers); buffers is None when they failed their digest check.
        self.pending: deque[tuple[dict[str, Any], list[Buffer] | None]] = deque()
        self.outgoing: list[tuple[dict[str, Any], list[Buffer]]] = []
        #: The id of the task taken from ``pending`` until its result is in ``outgoing``.
        self.running: str | None = None
        self.first_unsent = 0.0
        self.completed = 0
        #: Guards ``pending``, ``running``, ``outgoing`` and ``notes`` between the main and the I/O thread.
        self.lock = threading.Lock()
        #: Messages a running task sends (progress) while the I/O thread owns the socket.
        self.notes: list[dict[str, Any]] = []
        #: Set by the I/O thread when the worker must leave its loop after the running task.
        self.leave: BaseException | None = None
        #: Whoever holds it owns the socket: the main thread, or the I/O thread while ``io_active``.
        self.socket_lock = threading.Lock()
        self.socket_lock.acquire()
        self.main_has_socket = True
        self.io_active = False
        self.io_closing = False
        self.io_turn = threading.Condition()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.io_thread = threading.Thread(target=self._io_loop, name="plb-worker-io", daemon=True)
        self.io_thread.start()

    # -- messages ---------------------------------------------------------------------------
    def send(self, header: dict[str, Any], buffers: list[Buffer] | None = None) -> None:
        protocol.send(self.socket, self.session.serialize(header, buffers or []))

    def announce(self) -> None:
        """Say ``worker_ready``, naming every task this worker holds (see the module docstring)."""
        c = self.config
        with self.lock:
            pending = [spec.get("id") for spec, _ in self.pending]
            running = self.running
            finished = [header.get("id") for header, _ in self.outgoing]
        self.send({
            "type": "worker_ready",
            "worker": c.worker_id,
            "hub": c.hub_id,
            "pid": os.getpid(),
            "min_p": c.min_p,
            "max_p": c.max_p,
            "process_p": c.process_p,
            "routes": sorted(self.runner.routes),
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "cloudpickle": cloudpickle.__version__,
            "running": running,
            "finished": finished,
            "tasks": pending,
        })

    def receive_all(self) -> None:
        """Drain the socket without blocking into the local task queue."""
        while (frames := protocol.recv_ready(self.socket)) is not None:
            try:
                msg = self.session.deserialize(frames, verify=False)
            except protocol.ProtocolError as exc:
                log.warning("worker %s dropped a message: %s", self.config.worker_id, exc)
                continue
            self.handle(msg)

    def handle(self, msg: Message) -> None:
        if msg.type == "tasks":
            self.accept_tasks(msg)
        elif msg.type == "reregister":
            self.announce()
        elif msg.type == "skip":
            skipped = msg.header.get("id")
            with self.lock:
                before = len(self.pending)
                self.pending = deque(p for p in self.pending if p[0].get("id") != skipped)
                removed = len(self.pending) < before
            if msg.header.get("reply") and removed:
                self.send({"type": "skipped", "id": skipped})
        elif msg.type == "forget":
            self.functions.forget(msg.header.get("digests", []))
        elif msg.type == "run":
            answer, buffers = self.runner.run_now(msg.buffers, msg.digests)
            self.send({"type": "ran", "id": msg.header.get("id"), "worker": self.config.worker_id, **answer}, buffers)
        elif msg.type == "stop":
            raise SystemExit(0)

    def accept_tasks(self, msg: Message) -> None:
        """Queue the tasks of a message; each buffer is checked against its signed digest here."""
        position = 0
        for spec in msg.header.get("tasks", []):
            position = self.functions.unpack(spec, msg.buffers, msg.digests, position)
            end = position + int(spec.get("nbuf", 0))
            buffers = msg.buffers[position:end]
            intact = protocol.matches(buffers, msg.digests[position:end])
            with self.lock:
                self.pending.append((spec, buffers if intact else None))
            position = end

    def send_from_task(self, header: dict[str, Any]) -> None:
        """Send while a task runs: directly, or through the I/O thread when it owns the socket."""
        with self.lock:
            if self.io_active:
                self.notes.append(header)
                self.wake_io()
                return
        self.send(header)

    def flush(self) -> None:
        """Send the finished results and the running task's notes (only from the socket's owner)."""
        with self.lock:
            outgoing, self.outgoing = self.outgoing, []
            notes, self.notes = self.notes, []
        for note in notes:
            self.send(note)
        if outgoing:
            headers = [h for h, _ in outgoing]
            buffers = [b for _, bufs in outgoing for b in bufs]
            self.send({"type": "results", "worker": self.config.worker_id, "results": headers}, buffers)

    def on_control(self, fd: int) -> None:
        """The hub's pipe: ``A`` asks for a new announcement; end of file means the hub died."""
        data = os.read(fd, 64)
        if not data:
            log.warning("worker %s: its hub is gone, exiting", self.config.worker_id)
            os._exit(0)
        if b"A" in data:
            self.announce()
        if b"D" in data:
            raise _Retire("its hub is draining")

    # -- the loop ---------------------------------------------------------------------------
    def loop(self) -> None:
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        if self.config.control_fd >= 0:
            self.poller.register(self.config.control_fd, zmq.POLLIN)
        self.announce()
        while True:
            spec, buffers = self.next_task()
            if not spec.get("short"):
                self.hand_socket_to_io()
            result = self.runner.run(spec, buffers)
            self.completed += 1
            with self.lock:
                if not self.outgoing:
                    self.first_unsent = time.monotonic()
                self.outgoing.append(result)
                self.running = None
                if self.io_active:
                    self.wake_io()
            if self.config.max_tasks and self.completed >= self.config.max_tasks:
                raise _Retire(f"recycled after {self.completed} tasks")
            if self.leave is not None:
                raise self.leave

    def next_task(self) -> tuple[dict[str, Any], list[Buffer] | None]:
        """The next task, after reading what arrived meanwhile: a task the balancer took back
        (``skip``, another user's turn came) is never started, even one queued here."""
        self.take_socket_back()
        if self.leave is not None:
            raise self.leave
        self.receive_all()
        while not self.pending:
            self.flush()
            events = dict(self.poller.poll())
            if self.config.control_fd in events:
                self.on_control(self.config.control_fd)
            self.receive_all()
        if (
            len(self.outgoing) >= RESULT_BATCH_MAX
            or time.monotonic() - self.first_unsent > RESULT_BATCH_WINDOW
            or not self.pending[0][0].get("short")
        ):
            self.flush()
        with self.lock:
            spec, buffers = self.pending.popleft()
            self.running = spec.get("id")
        return spec, buffers

    # -- the I/O thread ---------------------------------------------------------------------
    def wake_io(self) -> None:
        """Make the I/O thread look at ``outgoing``, ``notes`` and ``io_active`` again."""
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes it all the same
            os.write(self.wake_write, b"w")

    def hand_socket_to_io(self) -> None:
        if self.main_has_socket:
            with self.io_turn:
                self.io_active = True
                self.main_has_socket = False
                self.socket_lock.release()
                self.io_turn.notify()

    def take_socket_back(self) -> None:
        if not self.main_has_socket:
            with self.lock:
                self.io_active = False
                self.wake_io()
            self.socket_lock.acquire()
            self.main_has_socket = True

    def close_io(self) -> None:
        """Stop the I/O thread and own the socket again (before the last flush and goodbye)."""
        self.take_socket_back()
        with self.io_turn:
            self.io_closing = True
            self.io_turn.notify()
        self.io_thread.join(5)

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.wake_read, zmq.POLLIN)
        while True:
            with self.io_turn:
                self.io_turn.wait_for(lambda: self.io_active or self.io_closing)
                if self.io_closing:
                    return
            with self.socket_lock:
                try:
                    self._serve(poller)
                except BaseException as exc:  # the main thread raises it after its task
                    self.leave = exc if isinstance(exc, _Retire | SystemExit) else SystemExit(1)
                    if not isinstance(exc, _Retire | SystemExit):
                        log.exception("worker %s: its I/O thread failed", self.config.worker_id)
                    self.io_active = False

    def _serve(self, wake: zmq.Poller) -> None:
        """Own the socket while the main thread runs long tasks: flush, receive, repeat."""
        wake.register(self.socket, zmq.POLLIN)
        if self.config.control_fd >= 0:
            wake.register(self.config.control_fd, zmq.POLLIN)
        try:
            while self.io_active:
                self.flush()
                events = dict(wake.poll())
                if self.wake_read in events:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_read, 4096)
                if self.config.control_fd in events:
                    self.on_control(self.config.control_fd)
                self.receive_all()
            self.flush()
        finally:
            wake.unregister(self.socket)
            if self.config.control_fd >= 0:
                wake.unregister(self.config.control_fd)


def _set_nice(value: int) -> None:
    if not value or not hasattr(os, "nice"):
        return
    try:
        current = os.nice(0)
        if value != current:
            os.nice(value - current)
    except OSError as exc:
        log.warning("worker cannot set nice %d (%s); it runs at the default priority", value, exc)


def main(config: WorkerConfig) -> None:
    """Entry point of a spawned worker process."""
    global _runner
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _set_nice(config.process_p)
    # Ctrl-C in a terminal reaches the whole process group, and a batch scheduler's SIGTERM
    # (scancel, the time limit) every process of the job: the hub drains, its workers go on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _run_setup(config)
    worker = _Worker(config)
    _runner = worker.runner
    code = 0
    try:
        worker.loop()
    except _Retire as retire:
        code = EXIT_RETIRED
        worker.close_io()
        worker.flush()
        worker.send({"type": "worker_bye", "worker": config.worker_id, "reason": str(retire)})
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        with contextlib.suppress(_Retire, SystemExit):
            worker.close_io()
        worker.flush()
        worker.socket.close()
        worker.context.term()
    if code:
        sys.exit(code)


def _run_setup(config: WorkerConfig) -> None:
    """Call the hub's setup hook; when it raises, say so with its traceback and exit EXIT_SETUP_FAILED."""
    if not config.setup:
        return
    try:
        cloudpickle.loads(config.setup)()
    except BaseException:
        log.error("worker %s: the hub's setup hook %s failed, so this worker does not start:\n%s",
                  config.worker_id, config.setup_name, traceback.format_exc())
        sys.stderr.flush()
        os._exit(EXIT_SETUP_FAILED)


def run_from_stdin() -> None:
    """Read a pickled WorkerConfig from stdin (written by the hub) and run the worker."""
    config = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    main(config)
