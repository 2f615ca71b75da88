"""The worker process: talks to the balancer directly, runs one task at a time, event-driven.

A hub starts it as a fresh interpreter (spawn: no ipykernel, no inherited state) and supervises it; the worker
exits by itself when its hub dies (it watches the hub's pipe in the same poll as its socket).

Short tasks run back to back with the socket served between them on the main thread. While a
long task runs (one the balancer did not mark ``short``), an I/O thread owns the socket instead: it
sends the previous result and takes in the next tasks during the task, so the gap between two long
tasks is a queue pop, not a receive and a send. (A thread for every task would make short,
CPU-bound tasks fight it for the GIL.)
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import zmq

from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import FUNCTION_CACHE_SIZE, Buffer, Message, Session
from jupyter_plb.errors import DeserializationError, IntegrityError
from jupyter_plb.transport import sockets

log = logging.getLogger(__name__)

#: Captured stdout/stderr kept per task.
MAX_OUTPUT = 1 << 20
#: Results finished within this many seconds of each other travel in one message, as long as
#: the next task is known to be short (the balancer marks it); otherwise they leave at once.
RESULT_BATCH_WINDOW = 0.002
RESULT_BATCH_MAX = 16
#: Exit code of a worker that retired cleanly (recycled after its task quota, or drained): its hub
#: replaces it (unless draining) without counting a crash, and its tasks are not charged an attempt.
EXIT_RETIRED = 85
#: Exit code of a worker whose hub's setup hook raised: its hub does not start it again.
EXIT_SETUP_FAILED = 86
#: This interpreter's versions, named when a pickle from a client cannot be loaded here.
VERSIONS = "Python {}.{}.{}, cloudpickle {}".format(*sys.version_info[:3], cloudpickle.__version__)


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


_current: _Worker | None = None


def report_progress(value: float) -> None:
    """Report the running task's progress (1–99) to the balancer; a no-op outside a worker."""
    if _current is not None:
        _current.report_progress(value)


def current_task_id() -> str | None:
    """The id of the task this worker process is running, or None."""
    return _current.task_id if _current is not None else None


def cache_info() -> dict[str, int]:
    """What this worker's cache holds and has received (``client.run(cache_info)`` reads it)."""
    if _current is None:
        return {}
    return {"cached": len(_current.functions), **_current.received}


def broadcast_value(digest: str) -> Any:
    """The broadcast object a task's arguments name (what a ``Broadcast`` reference unpickles to)."""
    objects = _current.task_objects if _current is not None else None
    if not objects or digest not in objects:
        raise LookupError(
            f"the broadcast object {digest} did not reach this worker (was it released?); "
            "a broadcast reference works only as an argument of submit() or map()"
        )
    value = objects[digest]
    if isinstance(value, _Unloadable):
        raise value.error
    return value


@dataclass(slots=True)
class _Unloadable:
    """A cached pickle that could not be loaded: the error its tasks raise."""

    error: Exception


def _accepts_progress(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "progress" or p.kind is p.VAR_KEYWORD for p in params)


class _Capture(io.StringIO):
    def write(self, s: str) -> int:
        if self.tell() < MAX_OUTPUT:
            return super().write(s[: MAX_OUTPUT - self.tell()])
        return len(s)


def _error_info(exc: BaseException) -> dict[str, Any]:
    """Type, message and traceback of a task's exception, without the worker's own frames."""
    kind = type(exc)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, tb)),
    }


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.session = Session(config.key, max_message_size=config.max_message_size)
        self.context = zmq.Context()
        self.socket = sockets.connect_dealer(
            self.context, config.url, config.worker_id, curve=config.curve
        )
        self.routes: dict[str, tuple[Callable[..., Any], dict[str, Any], bool]] = {}
        for name, (fn, kwargs) in cloudpickle.loads(config.routes).items():
            self.routes[name] = (fn, kwargs, _accepts_progress(fn))
        #: Functions and broadcast objects by digest (the balancer mirrors it).
        self.functions: OrderedDict[str, Any] = OrderedDict()
        #: Pickles received into the cache, by kind, and entries the balancer told it to forget.
        self.received = {"functions": 0, "objects": 0, "forgotten": 0}
        #: The broadcast objects the running task's arguments name, resolved when it was accepted.
        self.task_objects: dict[str, Any] | None = None
        #: (spec, buffers); buffers is None when they failed their digest check.
        self.pending: deque[tuple[dict[str, Any], list[Buffer] | None]] = deque()
        self.outgoing: list[tuple[dict[str, Any], list[Buffer]]] = []
        self.first_unsent = 0.0
        self.task_id: str | None = None
        self._last_progress = (0.0, -1)
        self.completed = 0
        self.origins: dict[str, str] = {}
        #: Guards ``pending``, ``outgoing`` and ``notes`` between the main and the I/O thread.
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
        c = self.config
        self.send({
            "type": "worker_ready",
            "worker": c.worker_id,
            "hub": c.hub_id,
            "pid": os.getpid(),
            "min_p": c.min_p,
            "max_p": c.max_p,
            "process_p": c.process_p,
            "routes": sorted(self.routes),
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "cloudpickle": cloudpickle.__version__,
            "tasks": [spec.get("id") for spec, _ in list(self.pending)],
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
            for digest in msg.header.get("digests", []):
                if digest in self.functions:
                    del self.functions[digest]
                    self.received["forgotten"] += 1
        elif msg.type == "run":
            self.run_now(msg)
        elif msg.type == "stop":
            raise SystemExit(0)

    def accept_tasks(self, msg: Message) -> None:
        """Queue the tasks of a message; each buffer is checked against its signed digest here."""
        position = 0
        for spec in msg.header.get("tasks", []):
            fn_count = int(spec.get("fnbuf", 0))
            if fn_count:
                end = position + fn_count
                buffers, digests = msg.buffers[position:end], msg.digests[position:end]
                self.cache_function(spec["fn"], buffers, digests, spec.get("origin"))
                position = end
            elif spec.get("fn") in self.functions:
                self.functions.move_to_end(spec["fn"])
            objects: dict[str, Any] = {}
            for digest, count in spec.get("refs", []):
                if count:
                    end = position + count
                    self.cache_object(digest, msg.buffers[position:end], msg.digests[position:end])
                    position = end
                elif digest in self.functions:
                    self.functions.move_to_end(digest)
                objects[digest] = self.functions.get(digest, _Unloadable(LookupError(
                    f"the broadcast object {digest} was not sent with the task that needs it"
                )))
            if objects:
                spec["objects"] = objects
            end = position + int(spec.get("nbuf", 0))
            buffers = msg.buffers[position:end]
            intact = protocol.matches(buffers, msg.digests[position:end])
            with self.lock:
                self.pending.append((spec, buffers if intact else None))
            position = end

    def cache_function(
        self, digest: str, buffers: list[Buffer], digests: list[bytes], origin: Any = None
    ) -> None:
        if isinstance(origin, str):
            self.origins[digest] = origin[:200]
        try:
            protocol.verify(buffers, digests)
            fn: Any = protocol.loads(buffers)
        except IntegrityError as exc:
            fn = exc
        except DeserializationError as exc:
            fn = self.versions_error(digest, exc)
        except Exception as exc:
            fn = exc
        self.received["functions"] += 1
        self.remember(digest, fn)

    def cache_object(self, digest: str, buffers: list[Buffer], digests: list[bytes]) -> None:
        """Keep a broadcast object; one that does not load is kept as the error its tasks raise."""
        try:
            protocol.verify(buffers, digests)
            value: Any = protocol.loads(buffers)
        except Exception as exc:
            value = _Unloadable(exc)
        self.received["objects"] += 1
        self.remember(digest, value)

    def remember(self, digest: str, value: Any) -> None:
        """Cache an entry, evicting the least recently used one beyond the size (as the balancer does)."""
        self.functions[digest] = value
        if len(self.functions) > FUNCTION_CACHE_SIZE:
            evicted, _ = self.functions.popitem(last=False)
            self.origins.pop(evicted, None)

    def run_now(self, msg: Message) -> None:
        """``client.run``: call the function here and now, outside the task queue; answer at once."""
        header: dict[str, Any] = {"type": "ran", "id": msg.header.get("id"), "worker": self.config.worker_id}
        buffers: list[Buffer] = []
        try:
            protocol.verify(msg.buffers, msg.digests)
            fn, args, kwargs = protocol.loads(msg.buffers)
            value = fn(*args, **kwargs)
            buffers = protocol.dumps(protocol.blob(value))
            header["state"] = "done"
        except BaseException as exc:  # the function's SystemExit fails the call only
            header["state"] = "failed"
            header["error"] = _error_info(exc)
            with contextlib.suppress(Exception):
                buffers = protocol.dumps(exc)
        header["nbuf"] = len(buffers)
        self.send(header, buffers)

    def versions_error(self, digest: Any, exc: DeserializationError) -> DeserializationError:
        """``exc`` with both sides' Python and cloudpickle versions, and what to do about them."""
        origin = self.origins.get(digest) if isinstance(digest, str) else None
        host = socket.gethostname()
        here = f"this worker (on {host}) runs {VERSIONS}"
        if origin is None:
            advice = f"{here}; the client did not say which versions it runs"
        elif origin == VERSIONS:
            advice = (f"the client and this worker (on {host}) both run {VERSIONS}, so a module "
                      "the task needs is probably not installed on this hub's machine")
        else:
            advice = (f"the client runs {origin} but {here}: run the hub with the client's Python "
                      "and cloudpickle versions")
        error = DeserializationError(f"{exc}; {advice}")
        error.__cause__ = exc.__cause__
        return error

    # -- running ----------------------------------------------------------------------------
    def report_progress(self, value: float) -> None:
        pct = max(1, min(99, int(value)))
        now = time.monotonic()
        last_time, last_value = self._last_progress
        if pct == last_value or (now - last_time < 0.05 and pct != 99):
            return
        self._last_progress = (now, pct)
        if self.task_id is not None:
            self.send_from_task({"type": "progress", "id": self.task_id, "value": pct})

    def send_from_task(self, header: dict[str, Any]) -> None:
        """Send while a task runs: directly, or through the I/O thread when it owns the socket."""
        with self.lock:
            if self.io_active:
                self.notes.append(header)
                self.wake_io()
                return
        self.send(header)

    def call(self, spec: dict[str, Any], buffers: list[Buffer] | None) -> Any:
        if buffers is None:
            raise IntegrityError(
                "the task's arguments do not match the digest its signed header names: "
                "they were altered in transit, so they were not unpickled"
            )
        route = spec.get("route")
        if route is not None:
            if route not in self.routes:
                raise LookupError(f"this hub has no task named {route!r} (addTask it on the hub)")
            handler, kwargs, wants_progress = self.routes[route]
            extra = {"progress": report_progress} if wants_progress else {}
            return handler(task=spec.get("payload"), **kwargs, **extra)
        fn = self.functions.get(spec.get("fn", ""))
        if fn is None:
            raise LookupError("the task's function did not reach this worker")
        if isinstance(fn, Exception):
            raise fn
        self.task_objects = spec.get("objects")
        try:
            args, kwargs = protocol.loads(buffers)
        except DeserializationError as exc:
            if isinstance(exc.__cause__, LookupError):
                raise exc.__cause__ from None  # a broadcast object is missing: say that
            raise self.versions_error(spec.get("fn"), exc) from exc.__cause__
        finally:
            self.task_objects = None
        if spec.get("chunk"):
            return [fn(*item) for item in args]
        return fn(*args, **kwargs)

    def run(self, spec: dict[str, Any], buffers: list[Buffer] | None) -> None:
        self.task_id = spec["id"]
        self._last_progress = (0.0, -1)
        out, err = _Capture(), _Capture()
        started = time.time()
        header: dict[str, Any] = {"id": spec["id"], "started": started}
        result_buffers: list[Buffer] = []
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                value = self.call(spec, buffers)
            result_buffers = protocol.dumps(protocol.blob(value))
            header["state"] = "done"
        except BaseException as exc:  # a task's SystemExit or KeyboardInterrupt fails the task only
            header["state"] = "failed"
            header["error"] = _error_info(exc)
            with contextlib.suppress(Exception):
                result_buffers = protocol.dumps(exc)
        header["ended"] = time.time()
        header["nbuf"] = len(result_buffers)
        if out.tell():
            header["stdout"] = out.getvalue()
        if err.tell():
            header["stderr"] = err.getvalue()
        self.task_id = None
        self.completed += 1
        with self.lock:
            if not self.outgoing:
                self.first_unsent = time.monotonic()
            self.outgoing.append((header, result_buffers))
            if self.io_active:
                self.wake_io()

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
            self.run(spec, buffers)
            if self.config.max_tasks and self.completed >= self.config.max_tasks:
                raise _Retire(f"recycled after {self.completed} tasks")
            if self.leave is not None:
                raise self.leave

    def next_task(self) -> tuple[dict[str, Any], list[Buffer] | None]:
        """The next task: straight from the queue while the I/O thread serves the socket and the
        task is long; otherwise served here, receiving (and waiting) as needed."""
        with self.lock:
            if self.io_active and self.pending and not self.pending[0][0].get("short"):
                return self.pending.popleft()
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
            return self.pending.popleft()

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
    global _current
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _set_nice(config.process_p)
    # Ctrl-C in a terminal reaches the whole process group, and a batch scheduler's SIGTERM
    # (scancel, the time limit) every process of the job: the hub drains, its workers go on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _run_setup(config)
    _current = _Worker(config)
    code = 0
    try:
        _current.loop()
    except _Retire as retire:
        code = EXIT_RETIRED
        _current.close_io()
        _current.flush()
        _current.send({"type": "worker_bye", "worker": config.worker_id, "reason": str(retire)})
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        with contextlib.suppress(_Retire, SystemExit):
            _current.close_io()
        _current.flush()
        _current.socket.close()
        _current.context.term()
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
