"""Finished tasks: results kept for their client (retention, memory budget) and sent when durable."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jupyter_plb.balancer.state import PendingResults, retained
from jupyter_plb.core import protocol, shm
from jupyter_plb.core.history import record
from jupyter_plb.core.protocol import Buffer
from jupyter_plb.core.shm import Segment, SegmentError
from jupyter_plb.core.tasks import KeptTask, Task, TaskState

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


class Results:
    """Finished tasks: results kept for their client (retention, memory budget) and sent when durable."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb

    def finish(
        self,
        task: Task,
        state: TaskState,
        now: float,
        result: dict[str, Any],
        buffers: list[Buffer] | None = None,
        digests: list[bytes] | None = None,
        *,
        run_time: float | None = None,
    ) -> None:
        task.state = state
        task.ended = now
        task.progress = 100 if state is TaskState.DONE else None
        task.result = result
        task.result_buffers = retained(buffers or ())
        task.result_digests = tuple(digests or ())
        task.result_size = sum(protocol.buffer_size(b) for b in task.result_buffers)
        self.lb.result_bytes += task.result_size
        self.lb.in_memory.append(task.id)
        self._release_payload(task)
        self.lb.unschedulable.pop(task.id, None)
        self.lb.orphans.pop(task.id, None)
        self.lb.store.finished(task)
        self.lb.stats.finished(task, now)
        self.lb.history.add(record(task, run_time))
        self.lb.finished.append((now, task.id))
        self.queue_result(task)
        self.event(task)
        self.enforce_memory_budget()

    def fail(self, task: Task, kind: str, message: str, now: float) -> None:
        error = {"type": kind, "message": message, "traceback": ""}
        self.finish(task, TaskState.FAILED, now, {"error": error})

    def _release_payload(self, task: Task) -> None:
        if task.fn is not None and task.fn in self.lb.functions:
            stored = self.lb.functions[task.fn]
            stored.refs -= 1
            if stored.refs <= 0:
                del self.lb.functions[task.fn]
        for digest in self.lb.task_objects.pop(task.id, ()):
            if digest in self.lb.objects:
                self.lb.objects[digest].refs -= 1
                self.lb.shared.drop_unused_object(digest)
        task.buffers = ()
        task.digests = ()

    def queue_result(self, task: Task | KeptTask) -> None:
        if task.client is None:
            return
        info: dict[str, Any] = {
            "id": task.id, "state": task.state.value, "progress": task.progress, "worker": task.worker,
            "hub": task.hub, "started": task.started, "ended": task.ended,
        }
        if task.result:
            info.update(task.result)
        buffers, digests = self.result_frames(task)
        info["nbuf"] = len(buffers)
        self.lb.client_out.setdefault(task.client, []).append((info, buffers, digests))

    def send_replies(self, replies: list[tuple[bytes, dict[str, Any]]], results: PendingResults) -> None:
        """One message per client for its replies of a batch ("replies"), one for its results."""
        grouped: dict[bytes, list[dict[str, Any]]] = {}
        for identity, header in replies:
            grouped.setdefault(identity, []).append(header)
        for identity, headers in grouped.items():
            header = headers[0] if len(headers) == 1 else {"type": "replies", "replies": headers}
            self.lb.send("clients", identity, header)
        for client, items in results.items():
            header = {"type": "results", "results": [info for info, _, _ in items]}
            buffers = [b for _, bufs, _ in items for b in bufs]
            digests = [d for _, _, digs in items for d in digs]
            self.lb.send("clients", client, header, buffers, digests)

    def flush(self) -> None:
        """Hand the task events the pump produced to the subscribers (the monitor)."""
        if self.lb.events:
            events, self.lb.events = self.lb.events, []
            for callback in list(self.lb.subscribers):
                try:
                    callback(events)
                except Exception:
                    log.exception("LB - a task-event subscriber failed; removing it")
                    self.lb.subscribers.discard(callback)

    def event(self, task: Task) -> None:
        if self.lb.subscribers:
            self.lb.events.append(task.summary())

    def collected(self, task: Task | KeptTask, now: float) -> None:
        """A result reached its client: the task is kept, compact, until its retention ends."""
        if isinstance(task, Task) and task.collected is None:
            task.collected = now
            self.lb.store.collected(task)
            self.lb.retention.append((now + self.lb.params["LB_RESULT_RETENTION"], task.id))
            self.lb.tasks[task.id] = KeptTask.of(task)

    def set_client(self, task: Task | KeptTask, client: bytes | None) -> Task | KeptTask:
        """Results of ``task`` now go to ``client`` (a client that reconnected or resubmitted)."""
        if isinstance(task, KeptTask):
            task = self.lb.tasks[task.id] = task._replace(client=client)
        else:
            task.client = client
        return task

    def forget(self, task: Task | KeptTask) -> None:
        self.lb.tasks.pop(task.id, None)
        self.lb.store.forget(task)
        if not task.result_offloaded:
            self.lb.result_bytes -= task.result_size
        for buf in task.result_buffers:  # a result in shared memory lives as long as it is kept here
            if isinstance(buf, Segment):
                with contextlib.suppress(SegmentError, OSError):
                    shm.unlink_segment(buf.info.name)
        if isinstance(task, Task):
            task.result_buffers = ()
            task.result_digests = ()
            task.result_size = 0

    def enforce_memory_budget(self) -> None:
        """Past LB_RESULT_MEMORY, the oldest results leave memory: to the journal, else dropped."""
        budget = self.lb.params["LB_RESULT_MEMORY"]
        while self.lb.result_bytes > budget and self.lb.in_memory:
            task = self.lb.tasks.get(self.lb.in_memory.popleft())
            if task is None or not task.result_size or task.result_offloaded:
                continue
            if self.lb.store.durable:
                self.lb.result_bytes -= task.result_size
                if isinstance(task, KeptTask):
                    self.lb.tasks[task.id] = task._replace(result_buffers=(), result_digests=(), result_offloaded=True)
                else:
                    task.result_buffers, task.result_digests = (), ()
                    task.result_offloaded = True
            else:
                log.warning(
                    "LB - result of %s dropped: results held exceed LB_RESULT_MEMORY (%d bytes); "
                    "turn the journal on (LB_JOURNAL) to keep them on disk", task.id, budget,
                )
                self.forget(task)

    def result_frames(self, task: Task | KeptTask) -> tuple[Sequence[Buffer], Sequence[bytes]]:
        """A finished task's result buffers, read back from the journal when they left memory."""
        if task.result_offloaded:
            buffers: list[Buffer] = list(self.lb.store.result_buffers(task.id))
            return buffers, [protocol.digest(b) for b in buffers]
        return task.result_buffers, task.result_digests

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a task: queued → removed; running → its worker is killed and replaced.

        A finished task's result is dropped. Returns ``{"cancelled", "state", "from"}`` where
        ``from`` is the seed's ``queue`` / ``pending`` / ``done`` / None.
        """
        task = self.lb.tasks.get(task_id)
        now = self.lb.now()
        if task is None:
            return {"cancelled": False, "state": None, "from": None}
        if task.state is TaskState.QUEUED:
            self.lb.scheduler.cancel_queued(task)
            self.finish(task, TaskState.CANCELLED, now, {})
            self.lb.schedule_pump()
            return {"cancelled": True, "state": "cancelled", "from": "queue"}
        if task.state is TaskState.RUNNING:
            slot = self.lb.scheduler.slot_of(task.worker or "")
            is_head = slot is not None and next(iter(slot.assigned), None) == task.id
            if is_head and task.worker is not None:
                self.lb.scheduler.release(task.worker, task.id)
                self.finish(task, TaskState.CANCELLED, now, {})
                self.lb.hub_desk.kill_worker(task.worker, f"task {task.id} was cancelled")
            else:
                if task.worker is not None:
                    self.lb.scheduler.release(task.worker, task.id)
                self.lb.hub_desk.skip_on_worker(task)
                self.finish(task, TaskState.CANCELLED, now, {})
            self.lb.schedule_pump()
            return {"cancelled": True, "state": "cancelled", "from": "pending"}
        state = task.state.value
        self.forget(task)
        return {"cancelled": False, "state": state, "from": "done"}

    def cancel_user(self, user: str) -> int:
        """Cancel every queued task of ``user``; return how many."""
        ids = [t.id for t in self.lb.scheduler.iter_queued(user)]
        for task_id in ids:
            self.cancel(task_id)
        return len(ids)
