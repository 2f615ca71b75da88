"""A task's future (:class:`PlbFuture`) and how the balancer's answer settles it: the result
unpickled, or the remote exception rebuilt; :func:`as_completed` over such futures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import Buffer
from jupyter_plb.errors import (
    DeserializationError,
    RemoteTraceback,
    TaskFailed,
    TaskRejected,
    TaskTimeout,
    WorkerLost,
    WorkerMemoryExceeded,
)

if TYPE_CHECKING:
    from jupyter_plb.client.connection import Connection


class PlbFuture(concurrent.futures.Future):
    """A task's future: ``result()``, ``exception()``, ``cancel()`` (remote), awaitable.

    Also carries what the balancer told about the task: ``state``, ``progress``, ``worker``,
    ``hub``, ``started``, ``ended``, the task's captured ``stdout``/``stderr``, and ``warning``
    when no connected worker can take it.
    """

    def __init__(self, client: Connection | None, task_id: str, name: str) -> None:
        super().__init__()
        self._connection = client
        self.task_id = task_id
        self.name = name
        self.state = "queued"
        self.progress: int | None = 0
        self.worker: str | None = None
        self.hub: str | None = None
        self.submitted = time.time()
        self.started: float | None = None
        self.ended: float | None = None
        self.stdout = ""
        self.stderr = ""
        self.warning: str | None = None

    def result(self, timeout: float | None = None) -> Any:
        conn = self._connection
        if conn is not None and conn.outbox.waiting:
            conn.outbox.flush()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        conn = self._connection
        if conn is not None and conn.outbox.waiting:
            conn.outbox.flush()
        return super().exception(timeout)

    def cancel(self) -> bool:
        """Cancel the task on the balancer (a running one has its worker killed)."""
        if self.done():
            return super().cancel()
        if self._connection is None:
            return super().cancel()
        reply = self._connection.cancel([self.task_id]).get(self.task_id, {})
        if reply.get("cancelled"):
            self.state = "cancelled"
            self.progress = None
            return super().cancel()
        return False

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    @property
    def elapsed(self) -> float:
        end = self.ended or time.time()
        return max(0.0, end - (self.started or self.submitted))

    def __repr__(self) -> str:
        return f"<PlbFuture {self.task_id} {self.name} {self.state}>"

    def _repr_html_(self) -> str:
        from jupyter_plb.client.display import future_html

        return future_html(self)


def settle(fut: PlbFuture, info: dict[str, Any], buffers: Sequence[Buffer]) -> None:
    """Give ``fut`` its task's outcome, as a result message tells it (nothing if it is done already)."""
    if fut.done():
        return
    fut.state = info.get("state", "failed")
    fut.progress = info.get("progress")
    fut.worker = info.get("worker")
    fut.hub = info.get("hub")
    fut.started = info.get("started")
    fut.ended = info.get("ended")
    fut.stdout = info.get("stdout", "")
    fut.stderr = info.get("stderr", "")
    if fut.state == "done":
        try:
            value = unpickle(buffers)
        except DeserializationError as exc:
            fut.state = "failed"
            fut.set_exception(exc)
            return
        fut.set_result(value)
    elif fut.state == "cancelled":
        concurrent.futures.Future.cancel(fut)
        fut.set_running_or_notify_cancel()
    else:
        fut.set_exception(rebuild_exception(info, buffers))


def unpickle(buffers: Sequence[Buffer]) -> Any:
    """``protocol.loads``, where whatever the pickle raises (even SystemExit from an object's
    ``__reduce__``) becomes a DeserializationError: the I/O thread must go on."""
    try:
        return protocol.loads(buffers)
    except DeserializationError:
        raise
    except BaseException as exc:
        raise DeserializationError(f"cannot unpickle: unpickling raised {type(exc).__name__}: {exc}") from exc


def rebuild_exception(info: dict[str, Any], buffers: Sequence[Buffer]) -> BaseException:
    """The exception a failed task (or ``run`` call) raised, with its remote traceback as ``__cause__``."""
    error = info.get("error") or {}
    kind = str(error.get("type", "Error"))
    message = str(error.get("message", ""))
    remote_tb = str(error.get("traceback", ""))
    exc: BaseException | None = None
    if kind == "WorkerLost":
        exc = WorkerLost(message)
    elif kind == "WorkerMemoryExceeded":
        exc = WorkerMemoryExceeded(message)
    elif kind == "TaskTimeout":
        exc = TaskTimeout(message)
    elif kind == "TaskRejected":
        exc = TaskRejected(message)
    elif buffers:
        with contextlib.suppress(DeserializationError):
            loaded = unpickle(buffers)
            if isinstance(loaded, BaseException):
                exc = loaded
    if exc is None:
        exc = TaskFailed(kind, message, remote_tb)
    if remote_tb:
        exc.__cause__ = RemoteTraceback(remote_tb)
    return exc


class _Completed(Iterator[PlbFuture]):
    """``as_completed`` with a length (the number of futures), so ``tqdm(as_completed(fs))`` has a total."""

    def __init__(self, futures: Iterable[PlbFuture], timeout: float | None) -> None:
        unique = set(futures)
        self._length = len(unique)
        self._futures = concurrent.futures.as_completed(unique, timeout)

    def __iter__(self) -> _Completed:
        return self

    def __next__(self) -> PlbFuture:
        return cast(PlbFuture, next(self._futures))

    def __len__(self) -> int:
        return self._length


def as_completed(fs: Iterable[PlbFuture], timeout: float | None = None) -> Iterator[PlbFuture]:
    """Like ``concurrent.futures.as_completed``, with ``len()`` (for tqdm's total)."""
    return _Completed(fs, timeout)
