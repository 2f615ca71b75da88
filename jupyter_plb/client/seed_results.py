"""Results of the seed API's tasks (``sendTask``): kept for ``getTask`` until it has collected them
and the balancer's retention has passed."""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import Any

from jupyter_plb.client.futures import unpickle
from jupyter_plb.core.protocol import Buffer
from jupyter_plb.errors import DeserializationError


class SeedResults:
    """Task id -> the task's final state, its value unpickled (results no future waits for)."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Any]] = {}
        #: (when, task id) of the collected results, in the order they expire.
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()
        #: Seconds a collected result stays (the balancer's ``result_retention``).
        self.retention = 60.0

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._entries

    def store(self, task_id: str, info: dict[str, Any], buffers: Sequence[Buffer]) -> dict[str, Any]:
        """Keep (and return) a result the balancer sent; a value that does not unpickle makes it a failure."""
        entry = dict(info)
        if info.get("state") == "done":
            try:
                entry["value"] = unpickle(buffers)
            except DeserializationError as exc:
                entry["state"] = "failed"
                entry["error"] = {"type": "DeserializationError", "message": str(exc)}
        self._entries[task_id] = entry
        return entry

    def collect(self, task_id: str) -> dict[str, Any] | None:
        """The task's result, if kept; the first collection starts its retention."""
        entry = self._entries.get(task_id)
        if entry is not None and not entry.get("collected"):
            entry["collected"] = True
            self._expiry.append((time.time() + self.retention, task_id))
        return entry

    def discard(self, task_id: str) -> None:
        self._entries.pop(task_id, None)

    def expire(self) -> None:
        """Drop the collected results whose retention has passed."""
        now = time.time()
        while self._expiry and self._expiry[0][0] <= now:
            _, task_id = self._expiry.popleft()
            self._entries.pop(task_id, None)
