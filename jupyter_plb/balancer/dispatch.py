"""Hands queued tasks to free worker slots, takes provisional ones back, steals for idle slots."""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from jupyter_plb.balancer.state import PREFETCH_BELOW, StoredFunction
from jupyter_plb.core import protocol, shm
from jupyter_plb.core.protocol import FUNCTION_CACHE_SIZE, Buffer
from jupyter_plb.core.scheduler import Slot, stealable
from jupyter_plb.core.shm import Segment, SegmentError
from jupyter_plb.core.tasks import Task, TaskState

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


class Dispatcher:
    """Hands queued tasks to free worker slots, takes provisional ones back, steals for idle slots."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb

    def dispatch(self, idle_only: bool = False) -> None:
        """Hand queued tasks to free slots (only to idle ones while a socket is being drained:
        prefetched tasks wait for the end of the pump, so each slot gets them in one message)."""
        assignments = self.lb.scheduler.dispatch(idle_only, self._prefetchable)
        self.take_back()
        self.lb.slots_full = self.lb.scheduler.queued_count > 0
        if self.lb.went_idle:
            if not self.lb.scheduler.queued_count:
                self._steal_for_idle_slots()
            self.lb.went_idle.clear()
        if not assignments:
            return
        now = self.lb.now()
        by_slot: dict[str, tuple[Slot, list[Task]]] = {}
        for slot, task in assignments:
            task.state = TaskState.RUNNING
            task.worker = slot.id
            task.hub = slot.group
            task.reason = None
            self.lb.unschedulable.pop(task.id, None)
            if len(slot.assigned) == 1:
                task.started = now
            by_slot.setdefault(slot.id, (slot, []))[1].append(task)
            self.lb.store.state(task)
            self.lb.stats.dispatched(task, now)
            self.lb.results.event(task)
        for slot_id, (_slot, tasks) in by_slot.items():
            self._send_tasks(slot_id, tasks)

    def take_back(self) -> None:
        """Ask workers to hand back the provisional tasks the scheduler revokes, at once: before
        any reply to a later message, so no task starts that the fairness order no longer names."""
        for slot, task in self.lb.scheduler.take_back():
            self.lb.send("workers", slot.id.encode(), {"type": "skip", "id": task.id, "reply": True})

    def _prefetchable(self, task: Task) -> bool:
        """More than one task may wait behind a running one only when their kind is known short."""
        return self.lb.stats.runs_shorter_than(task.name, PREFETCH_BELOW)

    def _steal_for_idle_slots(self) -> None:
        """Nothing is queued but a slot went idle: ask a busy worker to hand back a waiting task."""
        thieves = {thief for _, thief in self.lb.stealing.values()}
        for slot_id in self.lb.went_idle:
            slot = self.lb.scheduler.slot_of(slot_id)
            if slot is None or slot.assigned or not slot.accepting or slot.id in thieves:
                continue
            found = stealable(self.lb.scheduler.slots.values(), slot, set(self.lb.stealing))
            if found is None:
                return
            victim, task = found
            self.lb.stealing[task.id] = (victim.id, slot.id)
            self.lb.send("workers", victim.id.encode(), {"type": "skip", "id": task.id, "reply": True})

    def _send_tasks(self, worker_id: str, tasks: list[Task]) -> None:
        cache = self.lb.worker_functions.setdefault(worker_id, collections.OrderedDict())
        specs: list[dict[str, Any]] = []
        buffers: list[Buffer] = []
        digests: list[bytes] = []
        for task in tasks:
            spec: dict[str, Any] = {"id": task.id, "nbuf": len(task.buffers)}
            if self.lb.stats.is_short(task.name):
                spec["short"] = True
            if task.route is not None:
                spec["route"] = task.route
                spec["payload"] = task.payload
            else:
                spec["fn"] = task.fn
                if task.chunk:
                    spec["chunk"] = True
                assert task.fn is not None
                stored = self.lb.functions[task.fn]
                if self._ship(cache, task.fn, stored, buffers, digests):
                    spec["fnbuf"] = len(stored.buffers)
                    if stored.origin:
                        spec["origin"] = stored.origin
                refs = self.lb.task_objects.get(task.id)
                if refs:
                    objects = self.lb.objects
                    spec["refs"] = [
                        [d, len(objects[d].buffers) if self._ship(cache, d, objects[d], buffers, digests) else 0]
                        for d in refs
                    ]
            if any(isinstance(b, Segment) for b in task.buffers) and self._remote(worker_id):
                spec["nbuf"] = self._materialize(task, buffers, digests)
            else:
                buffers.extend(task.buffers)
                digests.extend(task.digests)
            specs.append(spec)
        if not self.lb.send("workers", worker_id.encode(), {"type": "tasks", "tasks": specs}, buffers, digests):
            self.lb.hub_desk.lose_worker(worker_id, "its connection is gone", count_attempt=False)

    def _remote(self, worker_id: str) -> bool:
        """Whether the worker's hub is on another machine than this balancer (not ``--local``)."""
        hub = self.lb.hub_desk.hub_of(worker_id)
        return hub is None or not hub.local

    @staticmethod
    def _materialize(task: Task, buffers: list[Buffer], digests: list[bytes]) -> int:
        """A task's arguments for a hub on another machine: its segments' bytes (read here, where
        they live) with their digests, so the far worker checks them as any buffer from a network.
        A segment this process cannot read goes as it is: the task fails there, saying why."""
        for buf, digest in zip(task.buffers, task.digests, strict=True):
            with contextlib.suppress(SegmentError):
                if isinstance(buf, Segment):
                    view = shm.open_segment(buf.info, unlink=False)
                    buffers.append(view)
                    digests.append(protocol.digest(view))
                    continue
            buffers.append(buf)
            digests.append(digest)
        return len(task.buffers)

    @staticmethod
    def _ship(
        cache: collections.OrderedDict[str, None],
        digest: str,
        stored: StoredFunction,
        buffers: list[Buffer],
        digests: list[bytes],
    ) -> bool:
        """Add a cached pickle to a worker's message unless it has it; mirror its cache's LRU."""
        if digest in cache:
            cache.move_to_end(digest)
            return False
        buffers.extend(stored.buffers)
        digests.extend(stored.digests)
        cache[digest] = None
        if len(cache) > FUNCTION_CACHE_SIZE:
            cache.popitem(last=False)
        return True
