"""The monitor's history of finished tasks, apart from result retention.

A bounded record per finished task (done, failed, cancelled): its timings, worker, hub, the text
of its arguments (made by the client), and for a failure the remote traceback and what it
printed, clipped. Bounded by count (``LB_HISTORY_SIZE``), age (``LB_HISTORY_AGE``) and the text
it holds (:data:`TEXT_BUDGET`); O(1) per task. Records are stored as exact tuples of plain values,
which CPython's garbage collector stops visiting (see :class:`.tasks.TaskTable`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, NamedTuple

from jupyter_plb.core.tasks import Task

#: Characters kept of a task's stdout and of its stderr, and of its traceback (head and tail).
MAX_OUTPUT = 8192
MAX_TRACEBACK = 16384
#: Characters kept of the error line ("Type: message") and of the arguments' text.
MAX_ERROR = 1000
MAX_ARGS = 256
#: Characters of text (arguments, errors, tracebacks, output) held by the whole history at most.
TEXT_BUDGET = 64 << 20


def clip(text: Any, limit: int) -> str | None:
    """``text`` if it is a string of at most ``limit`` characters; longer: its head and its tail."""
    if not isinstance(text, str) or not text:
        return None
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n… [{len(text) - limit} characters cut] …\n{text[-tail:]}"


class FinishedTask(NamedTuple):
    """One finished task as the history keeps it."""

    id: str
    name: str
    user: str
    priority: float
    state: str
    submitted: float
    started: float | None
    ended: float
    run_time: float | None
    worker: str | None
    hub: str | None
    attempts: int
    retries: int
    args: str | None
    error: str | None
    traceback: str | None
    stdout: str | None
    stderr: str | None
    text_size: int

    @classmethod
    def of(cls, task: Any, run_time: float | None = None) -> FinishedTask:
        return cls._make(record(task, run_time))

    @property
    def wait_time(self) -> float | None:
        return max(0.0, self.started - self.submitted) if self.started is not None else None

    def summary(self) -> dict[str, Any]:
        """The task-table shape (as ``Task.summary``)."""
        return {
            "id": self.id, "name": self.name, "user": self.user, "priority": self.priority,
            "state": self.state, "progress": 100 if self.state == "done" else None,
            "submitted": self.submitted, "started": self.started, "ended": self.ended,
            "worker": self.worker, "hub": self.hub, "attempts": self.attempts, "error": self.error,
            "reason": None,
        }

    def detail(self) -> dict[str, Any]:
        """The summary with the arguments, traceback, output and timings."""
        return {
            **self.summary(), "retries": self.retries, "args": self.args, "traceback": self.traceback,
            "stdout": self.stdout, "stderr": self.stderr, "wait_time": self.wait_time,
            "run_time": self.run_time,
        }


def record(task: Any, run_time: float | None = None) -> tuple[Any, ...]:
    """A finished ``Task`` (or ``KeptTask``) as a plain tuple in :class:`FinishedTask` order.

    ``run_time`` is the worker's measure; without it, from ``started`` to ``ended``. A task that
    printed nothing and did not fail (the common case) costs one tuple.
    """
    live = type(task) is Task  # a KeptTask has neither arguments nor retries
    started, ended = task.started, task.ended
    args, retries = (task.args, task.retries) if live else (None, 0)
    state = task.state._value_ if live else task.state_value
    if ended is None:
        ended = task.submitted
    if run_time is None and started is not None:
        run_time = max(0.0, ended - started)
    if args is not None and len(args) > MAX_ARGS:
        args = clip(args, MAX_ARGS)
    result = task.result
    if not result:
        return (
            task.id, task.name, task.user, task.priority, state, task.submitted, started, ended,
            run_time, task.worker, task.hub, task.attempts, retries, args,
            None, None, None, None, len(args) if args else 0,
        )
    error = result.get("error")
    error_line = traceback = None
    if isinstance(error, dict):
        error_line = clip(f"{error.get('type', 'Error')}: {error.get('message', '')}", MAX_ERROR)
        traceback = clip(error.get("traceback"), MAX_TRACEBACK)
    elif error is not None:
        error_line = clip(str(error), MAX_ERROR)
    stdout = clip(result.get("stdout"), MAX_OUTPUT)
    stderr = clip(result.get("stderr"), MAX_OUTPUT)
    size = sum(len(s) for s in (args, error_line, traceback, stdout, stderr) if s)
    return (
        task.id, task.name, task.user, task.priority, state, task.submitted, started, ended,
        run_time, task.worker, task.hub, task.attempts, retries, args,
        error_line, traceback, stdout, stderr, size,
    )


class History:
    """Finished tasks by id, oldest first; bounded by count, age and text size."""

    def __init__(self, size: int, age: float, text_budget: int = TEXT_BUDGET) -> None:
        self.size = size
        self.age = age
        self.text_budget = text_budget
        self._records: collections.OrderedDict[str, tuple[Any, ...]] = collections.OrderedDict()
        self._text = 0

    def add(self, finished: tuple[Any, ...]) -> None:
        """Keep ``finished`` (a :func:`record`) as the newest; the oldest leave while a bound is exceeded."""
        records = self._records
        task_id = finished[0]
        if task_id in records:
            self._text -= records.pop(task_id)[-1]
        records[task_id] = finished
        self._text += finished[-1]
        while len(records) > self.size or self._text > self.text_budget:
            self._text -= records.popitem(last=False)[1][-1]

    def expire(self, now: float) -> None:
        """Drop the records that ended more than ``age`` seconds before ``now``."""
        records = self._records
        oldest_kept = now - self.age
        while records:
            oldest = next(iter(records.values()))
            if oldest[7] > oldest_kept:  # its ``ended``
                break
            self._text -= records.popitem(last=False)[1][-1]

    def get(self, task_id: str) -> FinishedTask | None:
        stored = self._records.get(task_id)
        return FinishedTask._make(stored) if stored is not None else None

    def newest(self) -> Iterator[FinishedTask]:
        """Most recently finished first."""
        return map(FinishedTask._make, reversed(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._records

    @property
    def text_size(self) -> int:
        return self._text
