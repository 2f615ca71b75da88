"""Stage timers for ``benchmarks/run.py --profile``: where a round trip's time goes, per process.

``install(role)`` wraps chosen functions of jupyter_plb (and the selector / poller waits) in this
process. Every call of a wrapped function appends one record — start and end in nanoseconds, the
stage, the message type it handled, the thread — to a memory-mapped file ``<dir>/<role>-<pid>.bin``
(``PLB_PROBE_DIR``); a process killed at the end of the run leaves its records behind, and
recording costs no system call. The clock is ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux),
one clock for every process of the machine, so records of different processes line up.

Nothing in jupyter_plb knows about this module: it patches attributes from outside, in benchmark
processes only (``probed.py`` starts the balancer and the hub through it; the hub's workers are
started through it too). A wrapped call costs about a microsecond; ``stages.py`` measures the
round trip with and without the probes in the same run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "PLB_PROBE_DIR"
#: start ns, end ns, stage, message type, thread
RECORD = struct.Struct("<qqHHI")
HEADER = 64
CAPACITY = 1 << 20
#: Message types the probes name; anything else is "other".
TYPES = (
    "", "submit", "submitted", "tasks", "results", "ack", "hello", "welcome", "heartbeat", "heartbeat_ack",
    "health", "health_report", "health_update", "status", "snapshot", "replies", "skip", "skipped", "other",
)
_TYPE_INDEX = {name: i for i, name in enumerate(TYPES)}

_stages: list[str] = []
_patched: list[tuple[Any, str, Any]] = []
_local = threading.local()
_threads: dict[int, int] = {}
_state: dict[str, Any] = {}


def _type_index(kind: Any) -> int:
    return _TYPE_INDEX.get(kind, _TYPE_INDEX["other"]) if isinstance(kind, str) else 0


def _thread_index() -> int:
    ident = threading.get_ident()
    index = _threads.get(ident)
    if index is None:
        index = _threads[ident] = len(_threads)
        names = _state.setdefault("thread_names", {})
        names[index] = threading.current_thread().name
        _write_meta()
    return index


def _write_meta() -> None:
    path: Path | None = _state.get("meta")
    if path is not None:
        path.write_text(json.dumps({
            "role": _state["role"], "pid": os.getpid(), "stages": _stages, "types": TYPES,
            "threads": _state.get("thread_names", {}),
        }))


def record(start: int, end: int, stage: int, kind: int = 0) -> None:
    mm = _state.get("mm")
    if mm is None:
        return
    index = next(_state["counter"])
    if index >= CAPACITY:
        return
    RECORD.pack_into(mm, HEADER + index * RECORD.size, start, end, stage, kind, _thread_index())
    struct.pack_into("<q", mm, 0, index + 1)


def stage(name: str) -> int:
    """The id of a stage (created on first use)."""
    if name not in _stages:
        _stages.append(name)
        _write_meta()
    return _stages.index(name)


def set_type(kind: Any) -> None:
    """The message type this thread handles now (named by later records of the thread)."""
    _local.kind = _type_index(kind)


def current_type() -> int:
    return getattr(_local, "kind", 0)


def _patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    if isinstance(owner, dict):
        original = owner[name]
        owner[name] = make(original)
    else:
        original = getattr(owner, name)
        setattr(owner, name, make(original))
    _patched.append((owner, name, original))


def span(owner: Any, name: str, label: str, *, kind: Callable[..., int] | None = None,
         keep: Callable[[Any], bool] | None = None) -> None:
    """Time every call of ``owner.name`` as stage ``label``.

    ``kind(args, result)``: the message type to record (default: the thread's current one);
    ``keep(result)``: record only calls for which it is true (a receive that got a message).
    """
    stage_id = stage(label)
    clock = time.perf_counter_ns

    def make(fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            result = None
            try:
                result = fn(*args, **kwargs)
                return result
            finally:
                end = clock()
                if keep is None or keep(result):
                    record(start, end, stage_id, kind(args, result) if kind is not None else current_type())

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    _patch(owner, name, make)


def marker(label: str) -> Callable[[int, int], None]:
    """A function recording a span ``label`` the caller timed itself."""
    stage_id = stage(label)
    return lambda start, end: record(start, end, stage_id, 0)


# -- what each process wraps ---------------------------------------------------------------------
def _serialize_kind(args: tuple[Any, ...], _result: Any) -> int:
    kind = _type_index(args[1].get("type"))
    _local.kind = kind
    return kind


def _deserialize_kind(_args: tuple[Any, ...], result: Any) -> int:
    kind = _type_index(getattr(result, "header", {}).get("type"))
    _local.kind = kind
    return kind


def _got_message(result: Any) -> bool:
    return result is not None


def _common() -> None:
    import zmq

    from jupyter_plb.core import protocol

    span(protocol.Session, "serialize", "sign+json (serialize)", kind=_serialize_kind)
    span(protocol.Session, "deserialize", "verify+parse (deserialize)", kind=_deserialize_kind)
    span(protocol, "digest", "sha256 of a buffer")
    span(protocol, "send", "zmq send")
    span(protocol, "recv_ready", "zmq recv", keep=_got_message, kind=lambda a, r: 0)
    span(protocol, "dumps", "pickle")
    span(protocol, "loads", "unpickle")
    span(zmq.Poller, "poll", "idle: zmq poll", kind=lambda a, r: 0)


def _client() -> None:
    from jupyter_plb.client import connection, executor, futures, outbox

    span(executor._Submitter, "submit", "submit()")
    span(executor._Submitter, "_function_task", "task spec (args text, ids)")
    span(outbox.Outbox, "add", "outbox / coalescing")
    span(connection.Connection, "_receive", "I/O thread: receive")
    span(connection.Connection, "_handle", "I/O thread: handle")
    span(connection, "settle", "I/O thread: settle future")
    span(connection.Connection, "_send_acks", "I/O thread: acks")
    span(futures.PlbFuture, "result", "result() (waits)")


def _balancer() -> None:
    import selectors

    from jupyter_plb.balancer import clients, dispatch, housekeeping, hubs, journal, results, service
    from jupyter_plb.core import scheduler, store

    span(selectors.EpollSelector, "select", "idle: epoll", kind=lambda a, r: 0)
    span(service.Balancer, "_pump", "pump (asyncio callback)")
    span(service.Balancer, "_handle", "handle a message")
    span(housekeeping.Housekeeping, "tick", "periodic tick")
    for desk, kind in ((clients.ClientDesk, "submit"), (clients.ClientDesk, "ack"), (clients.ClientDesk, "hello"),
                       (hubs.HubDesk, "results"), (hubs.HubDesk, "heartbeat")):
        span(desk, f"on_{kind}", f"on_{kind}")
    span(dispatch.Dispatcher, "dispatch", "dispatch")
    span(scheduler.Scheduler, "dispatch", "scheduler.dispatch")
    span(scheduler.Scheduler, "submit", "scheduler.submit")
    span(scheduler.Scheduler, "release", "scheduler.release")
    span(dispatch.Dispatcher, "_send_tasks", "send tasks")
    span(results.Results, "finish", "finish (bookkeeping)")
    span(results, "record", "history record")
    span(journal.Journal, "commit", "commit (journal)")
    span(results.Results, "send_replies", "send replies/results")
    span(results.Results, "event", "monitor event")
    span(store.SqliteStore, "_write", "sqlite transaction")
    for name in ("submitted", "state", "finished", "collected"):
        span(store.SqliteStore, name, "journal: queue rows")


def _worker() -> None:
    from jupyter_plb.workers import execution, worker

    span(worker._Worker, "receive_all", "receive all")
    span(worker._Worker, "accept_tasks", "accept tasks (verify args)")
    span(worker._Worker, "next_task", "next task (waits)")
    span(execution.TaskRunner, "run", "run task (all)")
    span(execution.TaskRunner, "_call", "call (unpickle + fn)")
    span(worker._Worker, "flush", "flush results")
    span(worker._Worker, "hand_socket_to_io", "hand socket to I/O thread")
    span(worker._Worker, "take_socket_back", "take socket back")


def _hub() -> None:
    from jupyter_plb.workers import supervisor

    supervisor._WORKER_COMMAND = (
        "import probes; probes.install('worker'); "
        "from jupyter_plb.workers.worker import run_from_stdin; run_from_stdin()"
    )


_ROLES = {"client": _client, "balancer": _balancer, "worker": _worker, "hub": _hub}


def install(role: str, directory: str | Path | None = None) -> bool:
    """Wrap this process's functions for ``role``; False when no probe directory is set."""
    folder = directory or os.environ.get(ENV)
    if not folder:
        return False
    path = Path(folder) / f"{role}-{os.getpid()}"
    fd = os.open(f"{path}.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, HEADER + CAPACITY * RECORD.size)
    _state.update(
        role=role, mm=mmap.mmap(fd, HEADER + CAPACITY * RECORD.size), counter=itertools.count(),
        meta=Path(f"{path}.json"), fd=fd,
    )
    _write_meta()
    if role != "hub":
        _common()
    _ROLES[role]()
    return True


def uninstall() -> None:
    """Undo every patch and stop recording (the file stays)."""
    while _patched:
        owner, name, original = _patched.pop()
        if isinstance(owner, dict):
            owner[name] = original
        else:
            setattr(owner, name, original)
    mm = _state.pop("mm", None)
    if mm is not None:
        mm.flush()
        mm.close()
        os.close(_state.pop("fd"))
    _state.clear()
    _stages.clear()
    _threads.clear()


# -- reading -------------------------------------------------------------------------------------
@dataclass(slots=True)
class Span:
    start: int
    end: int
    stage: str
    kind: str
    thread: str
    process: str
    self_ns: int = 0


def read(directory: str | Path) -> Iterator[Span]:
    """Every record of every process that wrote into ``directory``."""
    for meta_path in sorted(Path(directory).glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            meta = json.loads(meta_path.read_text())
            data = meta_path.with_suffix(".bin").read_bytes()
            (count,) = struct.unpack_from("<q", data, 0)
            process = meta["role"]
            threads = {int(k): v for k, v in meta["threads"].items()}
            for start, end, stage_id, kind, thread in RECORD.iter_unpack(
                data[HEADER : HEADER + min(count, CAPACITY) * RECORD.size]
            ):
                if end:
                    yield Span(start, end, meta["stages"][stage_id], TYPES[kind], threads.get(thread, str(thread)),
                               f"{process}-{meta['pid']}")


def with_self_times(spans: list[Span]) -> list[Span]:
    """Set each span's time not spent in spans nested in it (same process and thread)."""
    by_thread: dict[tuple[str, str], list[Span]] = {}
    for s in spans:
        by_thread.setdefault((s.process, s.thread), []).append(s)
    for group in by_thread.values():
        group.sort(key=lambda s: (s.start, -s.end))
        stack: list[Span] = []
        for s in group:
            s.self_ns = s.end - s.start
            while stack and stack[-1].end <= s.start:
                stack.pop()
            if stack and s.end <= stack[-1].end:
                stack[-1].self_ns -= s.end - s.start
            stack.append(s)
    return spans
