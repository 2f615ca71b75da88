"""Fan the balancer's task events and snapshots out to websocket listeners, with backpressure.

The balancer calls :meth:`EventStream._on_events` after each batch of state changes. Events are
coalesced per task (latest fields win) and sent as one ``{"type": "tasks"}`` message at most every
``BATCH_INTERVAL``, each event a task row with its wait and run times; a ``{"type": "snapshot"}``
goes out every ``SNAPSHOT_INTERVAL`` (≤ 2 Hz), and one as soon as a listener connects. Both are
messages of the monitor's schema (:mod:`jupyter_plb.core.snapshot`), with its version. Each
listener has at most one write in flight and a bounded backlog: a slow reader loses its oldest
messages, never the server's memory. Task events dropped
before a batch is sent are counted in the batch's ``dropped`` field.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jupyter_plb.core import snapshot as snap
from jupyter_plb.monitor import dumps

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer
    from jupyter_plb.monitor.remote import RemoteBalancer

log = logging.getLogger(__name__)

SNAPSHOT_INTERVAL = 0.5
BATCH_INTERVAL = 0.1
#: Task events coalesced between two batches; past it the oldest tasks' events are dropped.
MAX_PENDING_EVENTS = 5000
#: Messages waiting for a slow listener; past it its oldest messages are dropped.
MAX_BACKLOG = 32

Send = Callable[[str], Awaitable[None]]


class Channel:
    """One listener: a ``send(text)`` that returns a future resolved once written."""

    def __init__(self, stream: EventStream, send: Send) -> None:
        self.stream = stream
        self.send = send
        self.backlog: collections.deque[str] = collections.deque()
        self.writing = False
        self.closed = False

    def push(self, text: str) -> None:
        if len(self.backlog) >= MAX_BACKLOG:
            self.backlog.popleft()
        self.backlog.append(text)
        self._next()

    def _next(self) -> None:
        if self.writing or self.closed or not self.backlog:
            return
        text = self.backlog.popleft()
        try:
            written = self.send(text)
        except Exception:  # the connection is gone (WebSocketClosedError, StreamClosedError)
            self.stream.disconnect(self)
            return
        self.writing = True
        asyncio.ensure_future(written).add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self.writing = False
        if future.cancelled() or future.exception() is not None:
            self.stream.disconnect(self)
        else:
            self._next()


class EventStream:
    """The balancer's events for every connected listener; subscribed only while one is."""

    def __init__(self, balancer: Balancer | RemoteBalancer) -> None:
        self.balancer = balancer
        self.channels: set[Channel] = set()
        self.dropped_events = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self._batch_timer: asyncio.TimerHandle | None = None
        self._snapshot_timer: asyncio.TimerHandle | None = None

    def connect(self, send: Send) -> Channel:
        """Add a listener; it gets a snapshot at once, then the stream."""
        channel = Channel(self, send)
        if not self.channels:
            self.balancer.subscribers.add(self._on_events)
            self._snapshot_timer = asyncio.get_running_loop().call_later(
                SNAPSHOT_INTERVAL, self._send_snapshot
            )
        self.channels.add(channel)
        channel.push(self._snapshot_message())
        return channel

    def disconnect(self, channel: Channel) -> None:
        channel.closed = True
        channel.backlog.clear()
        self.channels.discard(channel)
        if not self.channels:
            self._unsubscribe()

    def close(self) -> None:
        """Forget every listener (their connections are closed by their handlers)."""
        for channel in list(self.channels):
            self.disconnect(channel)

    def _unsubscribe(self) -> None:
        self.balancer.subscribers.discard(self._on_events)
        for timer in (self._batch_timer, self._snapshot_timer):
            if timer is not None:
                timer.cancel()
        self._batch_timer = self._snapshot_timer = None
        self._pending.clear()

    def _snapshot_message(self) -> str:
        return dumps(snap.snapshot_message(self.balancer.snapshot()))

    def _broadcast(self, text: str) -> None:
        for channel in list(self.channels):
            channel.push(text)

    def _send_snapshot(self) -> None:
        self._snapshot_timer = None
        if not self.channels:
            return
        try:
            self._broadcast(self._snapshot_message())
        finally:
            self._snapshot_timer = asyncio.get_running_loop().call_later(
                SNAPSHOT_INTERVAL, self._send_snapshot
            )

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        pending = self._pending
        for event in events:
            task_id = event["id"]
            previous = pending.pop(task_id, None)
            pending[task_id] = {**previous, **event} if previous else event
        while len(pending) > MAX_PENDING_EVENTS:
            del pending[next(iter(pending))]
            self.dropped_events += 1
        if self._batch_timer is None and pending:
            self._batch_timer = asyncio.get_running_loop().call_later(
                BATCH_INTERVAL, self._send_batch
            )

    def _send_batch(self) -> None:
        self._batch_timer = None
        if not self._pending or not self.channels:
            return
        events, self._pending = list(self._pending.values()), {}
        now = self.balancer.now()
        dropped, self.dropped_events = self.dropped_events, 0
        rows = [snap.task_row(e, now) if "submitted" in e else e for e in events]  # partial: as given
        self._broadcast(dumps(snap.tasks_message(rows, dropped)))  # type: ignore[arg-type]
