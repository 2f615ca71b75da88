"""Task stores: where the balancer journals tasks so a restart loses none.

The balancer talks to "a task store"; :class:`MemoryStore` keeps nothing (the balancer's own
dicts are the truth), :class:`SqliteStore` journals to SQLite with group commit: writes are
queued and committed once per batch of messages (``commit``), in WAL mode, so the cost per task is
a few row writes, not a transaction.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol import Buffer, buffer_view
from .tasks import Task, TaskState

log = logging.getLogger(__name__)


def pack_buffers(buffers: Sequence[Buffer]) -> bytes:
    """Buffers as one blob: a count, their lengths, then their bytes."""
    views = [memoryview(buffer_view(b)).cast("B") for b in buffers]
    head = struct.pack(f"<I{len(views)}Q", len(views), *(v.nbytes for v in views))
    return head + b"".join(views)


def unpack_buffers(blob: bytes | None) -> list[bytes]:
    if not blob:
        return []
    (count,) = struct.unpack_from("<I", blob)
    sizes = struct.unpack_from(f"<{count}Q", blob, 4)
    position = 4 + 8 * count
    out = []
    for size in sizes:
        out.append(blob[position : position + size])
        position += size
    return out


@dataclass(slots=True)
class StoredTask:
    """A task as read back from a journal."""

    task: Task
    fn_buffers: list[bytes]


class TaskStore:
    """What the balancer needs from a journal. The base class journals nothing."""

    durable = False

    def submitted(self, task: Task) -> None:
        """A task was accepted (with its argument buffers)."""

    def function(self, fn_id: str, buffers: Sequence[Buffer]) -> None:
        """A pickled function that accepted tasks refer to."""

    def state(self, task: Task) -> None:
        """A task changed state (queued, running on a worker, attempts)."""

    def finished(self, task: Task) -> None:
        """A task ended; its result buffers are kept until ``forget``."""

    def collected(self, task: Task) -> None:
        """A task's result was collected at ``task.collected``."""

    def forget(self, task_id: str) -> None:
        """Drop a task and its result."""

    def result_buffers(self, task_id: str) -> list[bytes]:
        """The result buffers of a finished task (for results evicted from memory)."""
        return []

    def commit(self) -> None:
        """Make everything recorded so far durable."""

    def load(self) -> Iterator[StoredTask]:
        """Every task journaled and not forgotten, oldest first."""
        return iter(())

    def close(self) -> None:
        """Commit and release the store."""


MemoryStore = TaskStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    buffers BLOB,
    result TEXT,
    result_buffers BLOB,
    ended REAL,
    collected REAL
);
CREATE TABLE IF NOT EXISTS functions (
    fn TEXT PRIMARY KEY,
    buffers BLOB NOT NULL
);
"""


class SqliteStore(TaskStore):
    """A SQLite journal (stdlib ``sqlite3``), group-committed by the balancer after each batch."""

    durable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path.chmod(0o600)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._pending: list[tuple[str, tuple[Any, ...]]] = []

    def _queue(self, sql: str, args: tuple[Any, ...]) -> None:
        self._pending.append((sql, args))

    def submitted(self, task: Task) -> None:
        spec = {
            "user": task.user, "priority": task.priority, "name": task.name, "route": task.route,
            "fn": task.fn, "payload": task.payload, "timeout": task.timeout, "retries": task.retries,
            "chunk": task.chunk, "submitted": task.submitted,
            "client": task.client.decode(errors="replace") if task.client else None,
        }
        self._queue(
            "INSERT OR IGNORE INTO tasks (seq, id, spec, state, attempts, buffers) VALUES (?, ?, ?, ?, ?, ?)",
            (task.seq, task.id, json.dumps(spec), task.state.value, task.attempts, pack_buffers(task.buffers)),
        )

    def function(self, fn_id: str, buffers: Sequence[Buffer]) -> None:
        self._queue("INSERT OR IGNORE INTO functions (fn, buffers) VALUES (?, ?)", (fn_id, pack_buffers(buffers)))

    def state(self, task: Task) -> None:
        self._queue(
            "UPDATE tasks SET state = ?, worker = ?, attempts = ? WHERE id = ?",
            (task.state.value, task.worker, task.attempts, task.id),
        )

    def finished(self, task: Task) -> None:
        self._queue(
            "UPDATE tasks SET state = ?, worker = ?, attempts = ?, buffers = NULL, result = ?, "
            "result_buffers = ?, ended = ? WHERE id = ?",
            (task.state.value, task.worker, task.attempts, json.dumps(task.result or {}),
             pack_buffers(task.result_buffers), task.ended, task.id),
        )

    def collected(self, task: Task) -> None:
        self._queue("UPDATE tasks SET collected = ? WHERE id = ?", (task.collected, task.id))

    def forget(self, task_id: str) -> None:
        self._queue("DELETE FROM tasks WHERE id = ?", (task_id,))

    def result_buffers(self, task_id: str) -> list[bytes]:
        self.commit()
        row = self._db.execute("SELECT result_buffers FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return unpack_buffers(row[0]) if row else []

    def commit(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        cursor = self._db.cursor()
        cursor.execute("BEGIN")
        try:
            for sql, args in pending:
                cursor.execute(sql, args)
            cursor.execute("COMMIT")
        except sqlite3.Error:
            cursor.execute("ROLLBACK")
            log.exception("LB - journal write failed; %d change(s) not journaled", len(pending))

    def load(self) -> Iterator[StoredTask]:
        self.commit()
        self._db.execute(
            "DELETE FROM functions WHERE fn NOT IN (SELECT json_extract(spec, '$.fn') FROM tasks "
            "WHERE state IN ('queued', 'running') AND json_extract(spec, '$.fn') IS NOT NULL)"
        )
        functions = {
            fn: unpack_buffers(blob) for fn, blob in self._db.execute("SELECT fn, buffers FROM functions")
        }
        rows = self._db.execute(
            "SELECT seq, id, spec, state, worker, attempts, buffers, result, result_buffers, ended, "
            "collected FROM tasks ORDER BY seq"
        )
        for seq, task_id, spec_json, state, worker, attempts, buffers, result, result_buffers, ended, collected in rows:
            spec = json.loads(spec_json)
            task = Task(
                id=task_id, user=spec["user"], priority=spec["priority"], name=spec["name"],
                route=spec["route"], seq=seq, fn=spec["fn"], payload=spec["payload"],
                timeout=spec["timeout"], retries=spec["retries"], chunk=spec.get("chunk", False),
                attempts=attempts, state=TaskState(state), submitted=spec["submitted"],
                client=spec["client"].encode() if spec.get("client") else None, worker=worker,
            )
            task.buffers = unpack_buffers(buffers)
            if task.state.finished:
                task.result = json.loads(result) if result else {}
                task.result_buffers = unpack_buffers(result_buffers)
                task.ended = ended
                task.collected = collected
                task.progress = 100 if task.state is TaskState.DONE else None
            yield StoredTask(task, functions.get(task.fn, []) if task.fn else [])

    def close(self) -> None:
        self.commit()
        self._db.close()
