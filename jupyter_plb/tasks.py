"""A task as the balancer knows it: what it is, who sent it, where it is in its life."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .protocol import Buffer


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
    buffers: list[Buffer] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
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
    result_buffers: list[Buffer] = field(default_factory=list)
    result_digests: list[bytes] = field(default_factory=list)
    result_size: int = 0
    result_offloaded: bool = False
    collected: float | None = None
    queue_mark: int = 0

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
