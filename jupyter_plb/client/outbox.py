"""Submits on their way to the balancer: a quick run of them travels as one message, and each
message is kept until the balancer acknowledges it (a restarted balancer gets it again)."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from jupyter_plb.core.protocol import Buffer
from jupyter_plb.workers.worker import VERSIONS

if TYPE_CHECKING:
    from jupyter_plb.client.connection import Connection

log = logging.getLogger(__name__)

#: Tasks per submit message when many are sent at once: small enough that the balancer starts
#: dispatching while the rest are still being pickled.
SUBMIT_BATCH = 100
#: A submit that follows the previous one this closely waits (at most COALESCE_DELAY) to travel
#: with the submits after it: a loop of submits becomes a few messages, not one per task.
#: Asking a waiting future for its result sends it at once.
COALESCE_WINDOW = 0.0003
COALESCE_DELAY = 0.001

#: One ``submit`` of tasks of one function: (task specs with their buffers, function id, its buffers).
Submit = tuple[list[tuple[dict[str, Any], list[Buffer]]], str, list[Buffer]]


class Outbox:
    """The submits that wait to travel together, and the sent ones the balancer has not acknowledged."""

    def __init__(self, conn: Connection) -> None:
        self._connection = conn
        self.waiting: list[Submit] = []
        #: Request id -> the submit message sent under it, until the balancer says ``submitted``.
        self.unacked: dict[str, tuple[dict[str, Any], list[Buffer]]] = {}
        self._lock = threading.Lock()
        self._last_submit = 0.0
        #: When the I/O thread sends what waits (0: nothing is due).
        self._flush_due = 0.0

    def add(self, tasks: list[tuple[dict[str, Any], list[Buffer]]], fn_id: str, fn_buffers: list[Buffer]) -> None:
        """Send tasks of one function now, or, in a quick run of submits, a moment later with the rest."""
        now = time.monotonic()
        flush = False
        with self._lock:
            waits = bool(self.waiting) or now - self._last_submit < COALESCE_WINDOW
            self._last_submit = now
            if waits:
                self.waiting.append((tasks, fn_id, fn_buffers))
                if sum(len(queued) for queued, _, _ in self.waiting) >= SUBMIT_BATCH:
                    flush = True
                elif len(self.waiting) == 1:
                    self._connection.wake(b"flush")
        if flush:
            self.flush()
        elif not waits:
            self._send([(tasks, fn_id, fn_buffers)])

    def flush(self) -> None:
        """Send the submits that wait, as one message."""
        with self._lock:
            waiting, self.waiting = self.waiting, []
        if waiting:
            self._send(waiting)

    def _send(self, parts: list[Submit]) -> None:
        functions: dict[str, list[Buffer]] = {}
        for _tasks, fn_id, fn_buffers in parts:
            functions.setdefault(fn_id, fn_buffers)
        header = {
            "type": "submit",
            "fns": [
                {"fn": fn_id, "nbuf": len(fn_buffers), "origin": VERSIONS} for fn_id, fn_buffers in functions.items()
            ],
            "tasks": [spec for tasks, _, _ in parts for spec, _ in tasks],
        }
        buffers = [
            *(b for fn_buffers in functions.values() for b in fn_buffers),
            *(b for tasks, _, _ in parts for _, task_buffers in tasks for b in task_buffers),
        ]
        req = self._connection.next_request_id()
        self.unacked[req] = (header, buffers)
        self._connection.send({**header, "req": req}, buffers)

    # -- on the I/O thread -----------------------------------------------------------------------
    def flush_soon(self) -> None:
        """A submit waits: send it (with those that join it) after COALESCE_DELAY at most."""
        self._flush_due = self._flush_due or time.monotonic() + COALESCE_DELAY

    def flush_if_due(self) -> None:
        if self._flush_due and time.monotonic() >= self._flush_due:
            self._flush_due = 0.0
            self.flush()

    def ms_to_flush(self) -> int | None:
        """Milliseconds until the waiting submits are due, None if none is."""
        if not self._flush_due:
            return None
        return max(0, math.ceil((self._flush_due - time.monotonic()) * 1000))

    def resend(self) -> None:
        """Send again what the balancer did not acknowledge (it restarted and may not have it)."""
        if self.unacked:
            log.info("plb: the balancer restarted; resending %d unacknowledged submission(s)", len(self.unacked))
        for req, (header, buffers) in list(self.unacked.items()):
            self._connection.send({**header, "req": req}, buffers)

    def unacked_tasks(self) -> set[str]:
        """The ids of the tasks in unacknowledged submits."""
        return {spec.get("id") for header, _ in self.unacked.values() for spec in header["tasks"]}
