"""A ``map`` in flight (:class:`Batch`: its tasks fed while the queue has room) and what ``map``
returns (:class:`MapIterator`)."""

from __future__ import annotations

import collections
import itertools
import math
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from jupyter_plb.client.display import BatchCounter
from jupyter_plb.client.futures import PlbFuture
from jupyter_plb.client.outbox import SUBMIT_BATCH
from jupyter_plb.client.pickling import function_name, pickle_function
from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import Buffer
from jupyter_plb.errors import SerializationError

if TYPE_CHECKING:
    from jupyter_plb.client.executor import _Submitter


class Batch:
    """A ``map`` in flight: one pickled function, arguments fed while the queue has room."""

    def __init__(
        self,
        submitter: _Submitter,
        fn: Callable[..., Any],
        items: Iterator[tuple[Any, ...]],
        chunksize: int,
        length: int | None = None,
    ) -> None:
        self.submitter = submitter
        self.fn_buffers, self.fn_id = pickle_function(fn)
        self.name = function_name(fn)
        self.items = items
        self.chunksize = chunksize
        self.window = submitter._connection.max_queued_per_user or 0
        self.step = max(1, min(SUBMIT_BATCH, self.window) // 2) if self.window else SUBMIT_BATCH
        self.claimed = 0
        self.settled = 0
        self._settled_counter = itertools.count(1)
        #: Futures queued and not yet handed out by the iteration (which keeps none it handed out).
        self.futures: collections.deque[PlbFuture] = collections.deque()
        self.exhausted = False
        #: Items and tasks in all, when the inputs have a length.
        self.length = length
        self.task_count = None if length is None else math.ceil(length / chunksize)
        self._counters: list[BatchCounter] = []
        self._grew = threading.Condition()

    def follow(self, counter: BatchCounter) -> None:
        """Have ``counter`` count this map's futures, those queued and those to come."""
        with self._grew:
            counter.add(self.futures)
            if self.exhausted:
                counter.seal()
            else:
                self._counters.append(counter)

    def _on_settled(self, _future: Any) -> None:
        """A future of this map settled: feed more every ``step`` of them, or when all did."""
        count = next(self._settled_counter)  # atomic: callbacks may come from several threads
        if not self.exhausted and (count % self.step == 0 or count >= self.claimed):
            self.feed(count)

    def feed(self, settled: int = 0) -> None:
        """Queue more tasks while the window has room.

        Tasks leave in messages of ``SUBMIT_BATCH``, each as soon as it is pickled.
        """
        with self._grew:
            self.settled = max(self.settled, settled)
            if self.exhausted:
                return
            outstanding = self.claimed - self.settled
            room = self.window - outstanding if self.window else SUBMIT_BATCH * 100
            if self.window and room < self.step and outstanding:
                return
            self.claimed += room  # claimed now, so a concurrent feed does not claim it too
        sent = 0
        while sent < room and not self.exhausted:
            specs = self._pickle(min(SUBMIT_BATCH, room - sent))
            sent += len(specs)
            if specs:
                self.submitter._send_tasks(specs, self.fn_id, self.fn_buffers)
                for _spec, _buffers, fut in specs:
                    fut.add_done_callback(self._on_settled)
        with self._grew:
            self.claimed -= room - sent

    def _pickle(self, count: int) -> list[tuple[dict[str, Any], list[Buffer], PlbFuture]]:
        """Up to ``count`` more tasks, made visible to iteration at once."""
        specs: list[tuple[dict[str, Any], list[Buffer], PlbFuture]] = []
        made: list[PlbFuture] = []
        with self._grew:
            while len(specs) < count:
                chunk = list(itertools.islice(self.items, self.chunksize))
                if not chunk:
                    self.exhausted = True
                    break
                payload = protocol.call_payload(chunk[0], {}) if self.chunksize == 1 else (chunk, {})
                try:
                    spec, buffers, fut = self.submitter._function_task(self.fn_id, self.name, payload)
                except SerializationError as exc:  # that chunk fails alone, when its turn comes
                    failed = self.submitter._failed(self.name, exc)
                    self.futures.append(failed)
                    made.append(failed)
                    continue
                if self.chunksize > 1:
                    spec["chunk"] = True
                specs.append((spec, buffers, fut))
                self.futures.append(fut)
                made.append(fut)
            for counter in self._counters:
                counter.add(made)
                if self.exhausted:
                    counter.seal()
            self._grew.notify_all()
        return specs

    def __iter__(self) -> Iterator[PlbFuture]:
        """The futures in submission order, as they are queued; none is kept once handed out."""
        while True:
            if self.futures:
                yield self.futures.popleft()
                continue
            if not self.exhausted:
                self.feed()
            with self._grew:
                self._grew.wait_for(lambda: bool(self.futures) or self.exhausted)
                if not self.futures:
                    return


class MapIterator(Iterator[Any]):
    """What ``map`` and ``map_futures`` return: an iterator over results or futures, with the map's
    futures behind it (``jupyter_plb.progress(it)``) and a length when its inputs have one (tqdm)."""

    def __init__(self, batch: Batch, items: Iterator[Any], length: int | None) -> None:
        self.batch = batch
        self._items = items
        self._length = length
        #: The bar of ``progress=True`` (a :class:`jupyter_plb.client.progress.Progress`), else None.
        self.progress: Any = None

    def __iter__(self) -> MapIterator:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("this map's inputs have no length")
        return self._length
