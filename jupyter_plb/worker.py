"""The worker process: talks to the balancer directly, runs one task at a time, event-driven.

A hub starts it as a fresh interpreter (spawn: no ipykernel, no inherited state) and supervises it; the worker
exits by itself when its hub dies (it watches the hub's pipe in the same poll as its socket).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import pickle
import resource
import signal
import socket
import sys
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import zmq

from . import protocol, sockets
from .errors import DeserializationError, IntegrityError
from .protocol import Buffer, Message, Session

log = logging.getLogger(__name__)

#: Functions a worker keeps unpickled, by digest; the balancer mirrors this cache exactly.
FUNCTION_CACHE_SIZE = 256
#: Captured stdout/stderr kept per task.
MAX_OUTPUT = 1 << 20
#: Results finished within this many seconds of each other travel in one message, as long as
#: the next task is known to be short (the balancer marks it); otherwise they leave at once.
RESULT_BATCH_WINDOW = 0.002
RESULT_BATCH_MAX = 16
#: Exit code of a worker that retired cleanly (recycled after its task quota, or drained): its hub
#: replaces it (unless draining) without counting a crash, and its tasks are not charged an attempt.
EXIT_RETIRED = 85
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
    #: Address-space limit in bytes (RLIMIT_AS; 0: none): a task over it fails with MemoryError.
    memory_limit: int = 0
    #: The hub's CurveZMQ keys (security.PeerKeys) when the balancer uses Curve.
    curve: Any = None


_current: _Worker | None = None


def report_progress(value: float) -> None:
    """Report the running task's progress (1–99) to the balancer; a no-op outside a worker."""
    if _current is not None:
        _current.report_progress(value)


def current_task_id() -> str | None:
    """The id of the task this worker process is running, or None."""
    return _current.task_id if _current is not None else None


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
        self.functions: OrderedDict[str, Any] = OrderedDict()
        #: (spec, buffers); buffers is None when they failed their digest check.
        self.pending: deque[tuple[dict[str, Any], list[Buffer] | None]] = deque()
        self.outgoing: list[tuple[dict[str, Any], list[Buffer]]] = []
        self.first_unsent = 0.0
        self.task_id: str | None = None
        self._last_progress = (0.0, -1)
        self.completed = 0
        self.origins: dict[str, str] = {}

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
            "tasks": [spec.get("id") for spec, _ in self.pending],
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
            before = len(self.pending)
            self.pending = deque(p for p in self.pending if p[0].get("id") != skipped)
            if msg.header.get("reply") and len(self.pending) < before:
                self.send({"type": "skipped", "id": skipped})
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
            end = position + int(spec.get("nbuf", 0))
            buffers = msg.buffers[position:end]
            intact = protocol.matches(buffers, msg.digests[position:end])
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
        self.functions[digest] = fn
        if len(self.functions) > FUNCTION_CACHE_SIZE:
            evicted, _ = self.functions.popitem(last=False)
            self.origins.pop(evicted, None)

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
            self.send({"type": "progress", "id": self.task_id, "value": pct})

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
            fn, kwargs, wants_progress = self.routes[route]
            extra = {"progress": report_progress} if wants_progress else {}
            return fn(task=spec.get("payload"), **kwargs, **extra)
        fn = self.functions.get(spec.get("fn"))
        if fn is None:
            raise LookupError("the task's function did not reach this worker")
        if isinstance(fn, Exception):
            raise fn
        try:
            args, kwargs = protocol.loads(buffers)
        except DeserializationError as exc:
            raise self.versions_error(spec.get("fn"), exc) from exc.__cause__
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
            if isinstance(exc, MemoryError) and self.config.memory_limit:
                limit = self.config.memory_limit / (1 << 20)
                exc = MemoryError(" ".join(filter(None, [
                    str(exc), f"(the task went over this worker's memory limit of {limit:.0f} MiB: "
                    "plb hub --memory-limit)",
                ]))).with_traceback(exc.__traceback__)
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
        if not self.outgoing:
            self.first_unsent = time.monotonic()
        self.outgoing.append((header, result_buffers))

    def flush(self) -> None:
        if not self.outgoing:
            return
        headers = [h for h, _ in self.outgoing]
        buffers = [b for _, bufs in self.outgoing for b in bufs]
        self.outgoing = []
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

    def loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        control = self.config.control_fd
        if control >= 0:
            poller.register(control, zmq.POLLIN)
        self.announce()
        while True:
            if not self.pending:
                self.flush()
                events = dict(poller.poll())
                if control in events:
                    self.on_control(control)
            self.receive_all()
            while self.pending:
                self.run(*self.pending.popleft())
                if self.config.max_tasks and self.completed >= self.config.max_tasks:
                    raise _Retire(f"recycled after {self.completed} tasks")
                self.receive_all()
                if (
                    len(self.outgoing) >= RESULT_BATCH_MAX
                    or time.monotonic() - self.first_unsent > RESULT_BATCH_WINDOW
                    or (self.pending and not self.pending[0][0].get("short"))
                ):
                    self.flush()


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
    # Ctrl-C in a terminal reaches the whole process group: the hub drains, its workers go on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _current = _Worker(config)
    _limit_memory(config.memory_limit)
    code = 0
    try:
        _current.loop()
    except _Retire as retire:
        code = EXIT_RETIRED
        _current.flush()
        _current.send({"type": "worker_bye", "worker": config.worker_id, "reason": str(retire)})
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        _current.flush()
        _current.socket.close()
        _current.context.term()
    if code:
        sys.exit(code)


def _limit_memory(limit: int) -> None:
    """Cap the address space (RLIMIT_AS): allocations past it raise MemoryError in the task."""
    if limit <= 0:
        return
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError) as exc:
        log.warning("worker cannot limit its memory to %d bytes (%s); it runs unlimited", limit, exc)


def run_from_stdin() -> None:
    """Read a pickled WorkerConfig from stdin (written by the hub) and run the worker."""
    config = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    main(config)
