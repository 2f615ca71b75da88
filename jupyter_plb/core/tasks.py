"""A task as the balancer knows it: what it is, who sent it, where it is in its life."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from jupyter_plb.core.protocol import Buffer


class TaskState(StrEnum):
    QUEUED = "queued"  # accepted, waiting for a worker slot that fits it
    RUNNING = "running"  # handed to a worker slot (running, or next in its prefetch)
    DONE = "done"  # finished; the result is held until collected + retention
    FAILED = "failed"  # raised, timed out or lost its worker beyond its retries
    CANCELLED = "cancelled"  # cancelled by a client or the monitor

    @property
    def finished(self) -> bool:
        return self in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


@dataclass(slots=True, eq=False)
class Task:
    """One unit of work. ``route`` names the hub task it needs (seed ``sendTask``), or None.

    ``queue_mark`` is the scheduler's: 1 while queued, 2 when cancelled while its queue entry is
    still held (it is dropped lazily), 0 otherwise.
    """

    id: str
    user: str
    priority: float
    name: str
    route: str | None
    seq: int = 0
    client: bytes | None = None
    fn: str | None = None
    payload: Any = None
    #: The client's short text of the arguments (``history.MAX_ARGS`` characters at most), for the monitor.
    args: str | None = None
    buffers: Sequence[Buffer] = ()
    digests: Sequence[bytes] = ()
    timeout: float | None = None
    retries: int = 0
    chunk: bool = False
    attempts: int = 0
    state: TaskState = TaskState.QUEUED
    progress: int | None = 0
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None
    worker: str | None = None
    hub: str | None = None
    reason: str | None = None
    result: dict[str, Any] | None = None
    result_buffers: Sequence[Buffer] = ()
    result_digests: Sequence[bytes] = ()
    result_size: int = 0
    result_offloaded: bool = False
    collected: float | None = None
    queue_mark: int = 0

    @property
    def state_value(self) -> str:
        return self.state.value

    def summary(self) -> dict[str, Any]:
        """The JSON shape the monitor API and the clients' status replies use."""
        error = None
        if self.result and self.result.get("error"):
            err = self.result["error"]
            error = f"{err.get('type', 'Error')}: {err.get('message', '')}"
        return {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "priority": self.priority,
            "state": self.state.value,
            "progress": self.progress,
            "submitted": self.submitted,
            "started": self.started,
            "ended": self.ended,
            "worker": self.worker,
            "hub": self.hub,
            "attempts": self.attempts,
            "error": error,
            "reason": self.reason,
        }


class KeptTask(NamedTuple):
    """A finished task whose result was collected, kept for its retention (``LB_RESULT_RETENTION``).

    It reads like a ``Task``; change it with ``_replace``. A :class:`TaskTable` stores it as a
    plain tuple of plain values (small result buffers as bytes).
    """

    id: str
    user: str
    priority: float
    name: str
    route: str | None
    seq: int
    client: bytes | None
    fn: str | None
    state_value: str
    progress: int | None
    submitted: float
    started: float | None
    ended: float | None
    worker: str | None
    hub: str | None
    attempts: int
    result_json: str | None
    result_buffers: tuple[Any, ...]
    result_digests: tuple[bytes, ...]
    result_size: int
    result_offloaded: bool
    collected: float | None

    @classmethod
    def of(cls, task: Task) -> KeptTask:
        return cls(
            task.id, task.user, task.priority, task.name, task.route, task.seq, task.client, task.fn,
            task.state.value, task.progress, task.submitted, task.started, task.ended, task.worker,
            task.hub, task.attempts, json.dumps(task.result) if task.result else None,
            tuple(task.result_buffers), tuple(task.result_digests), task.result_size,
            task.result_offloaded, task.collected,
        )

    @property
    def state(self) -> TaskState:
        return TaskState(self.state_value)

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.result_json) if self.result_json else {}

    @property
    def reason(self) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        return Task.summary(self)  # type: ignore[arg-type]


class TaskTable(dict[str, Any]):
    """The balancer's tasks by id: ``Task`` objects, and collected ones kept as plain tuples.

    CPython's garbage collector stops visiting an exact tuple of plain values after one pass (a
    tuple subclass such as ``KeptTask`` it visits forever). A fast map leaves hundreds of thousands
    of collected tasks for their retention; as objects, every full collection would walk them all,
    100 ms and more inside the Jupyter server. Reads hand them out as ``KeptTask``.
    """

    def __setitem__(self, task_id: str, task: Task | KeptTask) -> None:
        super().__setitem__(task_id, tuple(task) if isinstance(task, KeptTask) else task)

    def __getitem__(self, task_id: str) -> Task | KeptTask:
        return _read(super().__getitem__(task_id))

    def get(self, task_id: str, default: Any = None) -> Any:
        found = super().get(task_id, default)
        return _read(found) if found is not default else default

    def values(self) -> Iterator[Task | KeptTask]:  # type: ignore[override]
        return (_read(task) for task in super().values())

    def reversed_values(self) -> Iterator[Task | KeptTask]:
        """Newest first."""
        return (self[task_id] for task_id in reversed(self))

    def unfinished_newest(self) -> Iterator[Task]:
        """Queued and running tasks, newest first (kept ones are skipped without being read)."""
        return (
            task for task in reversed(super().values())
            if type(task) is not tuple and not task.state.finished
        )


def _read(stored: Any) -> Any:
    return KeptTask._make(stored) if type(stored) is tuple else stored
