"""The journal seam: the task store opened, restored after a restart, and committed once per pump."""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_plb.balancer.state import ORPHAN_GRACE, PendingResults, StoredFunction
from jupyter_plb.core import protocol
from jupyter_plb.core.history import record
from jupyter_plb.core.store import MemoryStore, SqliteStore, TaskStore
from jupyter_plb.core.tasks import Task, TaskState

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


class Journal:
    """The journal seam: the task store opened, restored after a restart, and committed once per pump."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb

    def open_store(self, connection_path: Path) -> TaskStore:
        journal = self.lb.params["LB_JOURNAL"]
        if journal is False or journal in ("none", "memory"):
            return MemoryStore()
        path = Path(journal) if isinstance(journal, str) and journal != "auto" else (
            connection_path.with_name(connection_path.stem + ".journal.sqlite")
        )
        return SqliteStore(path)

    def restore(self) -> None:
        """Rebuild queues, running tasks and results from the journal of a previous run."""
        restored: collections.Counter[str] = collections.Counter()
        top_seq = 0
        finished: list[Task] = []
        for stored in self.lb.store.load():
            task = stored.task
            top_seq = max(top_seq, task.seq)
            task.digests = [protocol.digest(b) for b in task.buffers]
            if task.fn is not None and task.fn not in self.lb.functions and stored.fn_buffers:
                self.lb.functions[task.fn] = StoredFunction(
                    stored.fn_buffers, [protocol.digest(b) for b in stored.fn_buffers]
                )
            self.lb.tasks[task.id] = task
            restored[task.state.value] += 1
            if task.state.finished:
                finished.append(task)
                task.result_digests = [protocol.digest(b) for b in task.result_buffers]
                task.result_size = sum(len(b) for b in task.result_buffers)
                self.lb.result_bytes += task.result_size
                self.lb.in_memory.append(task.id)
                self.lb.finished.append((task.ended or self.lb.now(), task.id))
                if task.collected is not None:
                    self.lb.retention.append((task.collected + self.lb.params["LB_RESULT_RETENTION"], task.id))
                continue
            if task.fn is not None and task.fn in self.lb.functions:
                self.lb.functions[task.fn].refs += 1
            self._restore_objects(task, stored.objects)
            if task.state is TaskState.RUNNING:
                self.lb.orphans[task.id] = task
            else:
                self.lb.scheduler.requeue(task)
        self.lb.scheduler.continue_sequence(top_seq)
        for task in sorted(finished, key=lambda t: t.ended or 0.0):
            self.lb.history.add(record(task))
        self.lb.results.enforce_memory_budget()
        if restored:
            self.lb.orphans_deadline = self.lb.now() + ORPHAN_GRACE * self.lb.params["LB_HEARTBEAT_INTERVAL"]
            log.info("LB - RESTORED from %s: %s", getattr(self.lb.store, "path", "journal"),
                     ", ".join(f"{n} {s}" for s, n in sorted(restored.items())))

    def _restore_objects(self, task: Task, objects: dict[str, list[bytes]]) -> None:
        """The broadcast objects a restored task names, kept for it (no client pins them any
        more: a reference used after the restart must be broadcast again)."""
        if not objects:
            return
        for digest, buffers in objects.items():
            stored = self.lb.objects.get(digest)
            if stored is None:
                stored = self.lb.objects[digest] = StoredFunction(buffers, [protocol.digest(b) for b in buffers])
            stored.refs += 1
        self.lb.task_objects[task.id] = tuple(objects)

    def commit(self) -> None:
        """Hand this batch's journal writes over; "submitted" replies and results leave once the
        batch is durable, so a result a client holds is never run again after a crash."""
        replies, self.lb.after_commit = self.lb.after_commit, []
        results, self.lb.client_out = self.lb.client_out, {}
        durable = functools.partial(self._durable, replies, results) if replies or results else None
        self.lb.store.commit(durable)

    def _durable(self, replies: list[tuple[bytes, dict[str, Any]]], results: PendingResults) -> None:
        """Called by the store when a batch is durable, from its writer thread or this loop."""
        if self.lb.loop is None or self.lb.loop.is_closed():
            return
        if threading.get_ident() == self.lb.loop_thread:
            self.lb.results.send_replies(replies, results)
        else:
            with contextlib.suppress(RuntimeError):
                self.lb.loop.call_soon_threadsafe(self.lb.results.send_replies, replies, results)
