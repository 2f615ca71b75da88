"""Task stores: where the balancer journals tasks so a restart loses none.

The balancer talks to "a task store"; :class:`MemoryStore` keeps nothing (the balancer's own
dicts are the truth), :class:`SqliteStore` journals to SQLite with group commit: writes are
queued and committed once per batch of messages (``commit``), in WAL mode, so the cost per task is
a few row writes, not a transaction.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_plb.core.protocol import Buffer, buffer_size, buffer_view
from jupyter_plb.core.shm import Segment
from jupyter_plb.core.tasks import KeptTask, Task, TaskState

log = logging.getLogger(__name__)


_ONE = struct.Struct("<IQ")
#: Set in a packed length when the buffer describes a shared-memory segment (shm.Segment).
_SEGMENT_BIT = 1 << 63


def pack_buffers(buffers: Sequence[Buffer]) -> bytes:
    """Buffers as one blob: a count, their lengths, then their bytes."""
    if len(buffers) == 1 and not isinstance(buffers[0], Segment):
        view = buffer_view(buffers[0])
        if isinstance(view, bytes) or (view.format == "B" and view.ndim == 1):
            return _ONE.pack(1, len(view)) + view
    views = _views(buffers)
    return _layout(buffers, views) + b"".join(views)


def _views(buffers: Sequence[Buffer]) -> list[memoryview]:
    return [memoryview(buffer_view(b)).cast("B") for b in buffers]


def _layout(buffers: Sequence[Buffer], views: Sequence[memoryview]) -> bytes:
    """What precedes the bytes in a packed blob: the count, then each length (segments flagged)."""
    sizes = [v.nbytes | (_SEGMENT_BIT if isinstance(b, Segment) else 0) for b, v in zip(buffers, views, strict=True)]
    return struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes)


def unpack_buffers(blob: bytes | None) -> list[bytes]:
    if not blob:
        return []
    (count,) = struct.unpack_from("<I", blob)
    sizes = struct.unpack_from(f"<{count}Q", blob, 4)
    position = 4 + 8 * count
    out = []
    for size in sizes:
        length = size & ~_SEGMENT_BIT
        piece = blob[position : position + length]
        out.append(Segment(piece) if size & _SEGMENT_BIT else piece)
        position += length
    return out


@dataclass(slots=True)
class StoredTask:
    """A task as read back from a journal: with its function's pickles and, for a queued or
    running task, the broadcast objects it names (digest -> pickles)."""

    task: Task
    fn_buffers: list[bytes]
    objects: dict[str, list[bytes]] = field(default_factory=dict)


class TaskStore:
    """What the balancer needs from a journal. The base class journals nothing."""

    durable = False

    def submitted(self, task: Task, objects: Sequence[str] = ()) -> None:
        """A task was accepted (with its argument buffers and the broadcast objects it names)."""

    def function(self, fn_id: str, buffers: Sequence[Buffer]) -> None:
        """A pickled function, or a broadcast object, that accepted tasks refer to by digest."""

    def drop_function(self, fn_id: str) -> None:
        """A broadcast object no reference and no task needs any more."""

    def state(self, task: Task) -> None:
        """A task changed state (queued, running on a worker, attempts)."""

    def finished(self, task: Task) -> None:
        """A task ended; its result buffers are kept until ``forget``."""

    def collected(self, task: Task) -> None:
        """A task's result was collected at ``task.collected``."""

    def forget(self, task: Task | KeptTask) -> None:
        """Drop a task and its result."""

    def result_buffers(self, task_id: str) -> list[bytes]:
        """The result buffers of a finished task (for results evicted from memory)."""
        return []

    def commit(self, durable: Callable[[], None] | None = None) -> None:
        """Make everything recorded so far durable, then call ``durable`` (from any thread)."""
        if durable is not None:
            durable()

    def load(self) -> Iterator[StoredTask]:
        """Every task journaled and not forgotten, oldest first."""
        return iter(())

    def close(self) -> None:
        """Commit and release the store."""


MemoryStore = TaskStore

SCHEMA_VERSION = 3
#: Pickles smaller than this are kept in the task's row; larger ones in their own table.
SMALL_BLOB = 4096
#: Pickles at least this large go to a file of their own beside the journal (written with one
#: system call per buffer, unlinked when the task is forgotten), their table row saying so with a
#: NULL: SQLite would copy them into pages, the WAL, then the database again.
FILE_BLOB = 64 * 1024
_WRITE_FILE = "write file"
_UNLINK = "unlink"
#: Batches with fewer bytes of pickles than this are committed on the balancer's loop (cheaper
#: than a thread hand-off); larger ones go to the writer thread so the loop never waits on disk.
INLINE_BYTES = 256 * 1024

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
CREATE TABLE IF NOT EXISTS payloads (id TEXT PRIMARY KEY, buffers BLOB);
CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, buffers BLOB);
CREATE TABLE IF NOT EXISTS functions (
    fn TEXT PRIMARY KEY,
    buffers BLOB NOT NULL
);
"""


class _Packed:
    """Buffers to be packed into one blob by the writer thread, off the balancer's loop."""

    __slots__ = ("buffers",)

    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self.buffers = list(buffers)


def _write_file(path: Path, packed: _Packed) -> None:
    """``packed``'s buffers in the layout of :func:`pack_buffers`, mode 0600, replaced atomically."""
    views = _views(packed.buffers)
    partial = path.with_name(path.name + ".partial")
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(_layout(packed.buffers, views))
        out.writelines(views)
    os.replace(partial, path)


def _unpacked(args: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(args) == 2 and isinstance(args[1], _Packed):
        return (args[0], pack_buffers(args[1].buffers))
    return args


class SqliteStore(TaskStore):
    """A SQLite journal (stdlib ``sqlite3``), group-committed by the balancer after each batch.

    A writer thread runs the transactions, so the balancer's loop never waits for the disk; each
    ``commit`` says what to do once its batch is durable. Argument and result buffers live in their
    own tables, written once and deleted once, so a task's frequent state updates rewrite a small
    row, never its pickles; the largest live in files (``FILE_BLOB``).
    """

    durable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path.chmod(0o600)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            if self._db.execute("SELECT name FROM sqlite_master WHERE name = 'tasks'").fetchone():
                log.warning("LB - journal %s has another layout (version %s); starting a new one", self.path, version)
                self._db.executescript("DROP TABLE IF EXISTS tasks; DROP TABLE IF EXISTS functions; "
                                       "DROP TABLE IF EXISTS payloads; DROP TABLE IF EXISTS results;")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.blobs = Path(f"{self.path}.blobs")
        self.blobs.mkdir(mode=0o700, exist_ok=True)
        self.blobs.chmod(0o700)
        self._large: set[str] = set()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._batches: queue.SimpleQueue[tuple[list[tuple[str, tuple[Any, ...]]], Callable[[], None] | None] | None]
        self._batches = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._in_flight = 0
        self._pending_bytes = 0
        self._writer = threading.Thread(target=self._write_batches, name="plb-journal", daemon=True)
        self._writer.start()

    def _queue(self, sql: str, args: tuple[Any, ...]) -> None:
        self._pending.append((sql, args))

    def _queue_packed(self, sql: str, task_id: str, buffers: Sequence[Buffer]) -> None:
        """A large blob: packed by whoever writes the batch (the writer thread for big batches)."""
        packed = _Packed(buffers)
        self._pending_bytes += sum(buffer_size(b) for b in packed.buffers)
        self._pending.append((sql, (task_id, packed)))

    def _queue_blob(self, table: str, task_id: str, buffers: Sequence[Buffer]) -> None:
        """A task's large pickles: a row of ``table``, and a file when they are very large."""
        verb = "INSERT OR IGNORE" if table == "payloads" else "INSERT OR REPLACE"
        size = sum(buffer_size(b) for b in buffers)
        if size < FILE_BLOB:
            self._queue_packed(f"{verb} INTO {table} (id, buffers) VALUES (?, ?)", task_id, buffers)
            return
        self._pending_bytes += size
        self._pending.append((_WRITE_FILE, (self._blob_path(table, task_id), _Packed(buffers))))
        self._queue(f"{verb} INTO {table} (id, buffers) VALUES (?, NULL)", (task_id,))

    def _blob_path(self, table: str, task_id: str) -> Path:
        return self.blobs / f"{table}-{hashlib.sha256(task_id.encode()).hexdigest()[:40]}"

    def _read_blob(self, table: str, task_id: str) -> list[bytes]:
        try:
            return unpack_buffers(self._blob_path(table, task_id).read_bytes())
        except OSError as exc:
            log.warning("LB - journal: the %s of task %s is gone (%s)", table[:-1], task_id, exc)
            return []

    def submitted(self, task: Task, objects: Sequence[str] = ()) -> None:
        spec = {
            "user": task.user, "priority": task.priority, "name": task.name, "route": task.route,
            "fn": task.fn, "payload": task.payload, "args": task.args, "timeout": task.timeout, "retries": task.retries,
            "chunk": task.chunk, "submitted": task.submitted,
            "client": task.client.decode(errors="replace") if task.client else None,
        }
        if objects:
            spec["objects"] = list(objects)
        small = self._small(task.id, task.buffers)
        self._queue(
            "INSERT OR IGNORE INTO tasks (seq, id, spec, state, attempts, buffers) VALUES (?, ?, ?, ?, ?, ?)",
            (task.seq, task.id, json.dumps(spec), task.state.value, task.attempts, small),
        )
        if small is None:
            self._queue_blob("payloads", task.id, task.buffers)

    def _small(self, task_id: str, buffers: Sequence[Buffer]) -> bytes | None:
        """Small pickles go in the task's row; large ones in a side table (remembered here)."""
        if sum(buffer_size(b) for b in buffers) < SMALL_BLOB:
            return pack_buffers(buffers)
        self._large.add(task_id)
        return None

    def function(self, fn_id: str, buffers: Sequence[Buffer]) -> None:
        self._queue_packed("INSERT OR IGNORE INTO functions (fn, buffers) VALUES (?, ?)", fn_id, buffers)

    def drop_function(self, fn_id: str) -> None:
        self._queue("DELETE FROM functions WHERE fn = ?", (fn_id,))

    def state(self, task: Task) -> None:
        self._queue(
            "UPDATE tasks SET state = ?, worker = ?, attempts = ? WHERE seq = ?",
            (task.state.value, task.worker, task.attempts, task.seq),
        )

    def finished(self, task: Task) -> None:
        small = self._small(task.id, task.result_buffers)
        self._queue(
            "UPDATE tasks SET state = ?, worker = ?, attempts = ?, result = ?, result_buffers = ?, ended = ? "
            "WHERE seq = ?",
            (task.state.value, task.worker, task.attempts, json.dumps(task.result) if task.result else None, small,
             task.ended, task.seq),
        )
        if small is None:
            self._queue_blob("results", task.id, task.result_buffers)

    def collected(self, task: Task) -> None:
        self._queue("UPDATE tasks SET collected = ? WHERE seq = ?", (task.collected, task.seq))

    def forget(self, task: Task | KeptTask) -> None:
        task_id = task.id
        self._queue("DELETE FROM tasks WHERE seq = ?", (task.seq,))
        if task_id in self._large:
            self._large.discard(task_id)
            self._queue("DELETE FROM payloads WHERE id = ?", (task_id,))
            self._queue("DELETE FROM results WHERE id = ?", (task_id,))
            for table in ("payloads", "results"):
                self._pending.append((_UNLINK, (self._blob_path(table, task_id),)))

    def result_buffers(self, task_id: str) -> list[bytes]:
        self._wait_written()
        with self._lock:
            row = self._db.execute(
                "SELECT r.id IS NOT NULL AND r.buffers IS NULL, COALESCE(r.buffers, t.result_buffers) "
                "FROM tasks t LEFT JOIN results r ON r.id = t.id WHERE t.id = ?", (task_id,),
            ).fetchone()
        if row is None:
            return []
        return self._read_blob("results", task_id) if row[0] else unpack_buffers(row[1])

    def commit(self, durable: Callable[[], None] | None = None) -> None:
        """Small batches are written here and now; large ones (pickles) by the writer thread."""
        if not self._pending and durable is None:
            return
        pending, self._pending = self._pending, []
        size, self._pending_bytes = self._pending_bytes, 0
        with self._counter_lock:
            inline = size < INLINE_BYTES and not self._in_flight
            if not inline:
                self._in_flight += 1
        if inline:
            if pending:
                self._write(pending)
            if durable is not None:
                durable()
        else:
            self._batches.put((pending, durable))

    def _wait_written(self) -> None:
        """Block until every batch handed to the writer is in the database."""
        written = threading.Event()
        with self._counter_lock:
            self._in_flight += 1
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        self._batches.put((pending, written.set))
        written.wait()

    def _write_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            pending, durable = batch
            if pending:
                self._write(pending)
            if durable is not None:
                try:
                    durable()
                except Exception:
                    log.exception("LB - journal: a commit callback failed")
            with self._counter_lock:
                self._in_flight -= 1

    def _write(self, pending: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Files first, then one transaction, then the unlinks of forgotten tasks' files."""
        with self._lock:
            for op, args in pending:
                if op == _WRITE_FILE:
                    _write_file(*args)
            cursor = self._db.cursor()
            cursor.execute("BEGIN")
            try:
                statements = (item for item in pending if item[0] not in (_WRITE_FILE, _UNLINK))
                for sql, rows in itertools.groupby(statements, key=lambda item: item[0]):
                    cursor.executemany(sql, [_unpacked(args) for _, args in rows])
                cursor.execute("COMMIT")
            except sqlite3.Error:
                cursor.execute("ROLLBACK")
                log.exception("LB - journal write failed; %d change(s) not journaled", len(pending))
            for op, args in pending:
                if op == _UNLINK:
                    args[0].unlink(missing_ok=True)

    def load(self) -> Iterator[StoredTask]:
        self._wait_written()
        self._db.execute(
            "DELETE FROM functions WHERE fn NOT IN (SELECT json_extract(spec, '$.fn') FROM tasks "
            "WHERE state IN ('queued', 'running') AND json_extract(spec, '$.fn') IS NOT NULL) "
            "AND fn NOT IN (SELECT o.value FROM tasks, json_each(tasks.spec, '$.objects') AS o "
            "WHERE state IN ('queued', 'running'))"
        )
        functions = {
            fn: unpack_buffers(blob) for fn, blob in self._db.execute("SELECT fn, buffers FROM functions")
        }
        self._drop_unused_files()
        rows = self._db.execute(
            "SELECT t.seq, t.id, t.spec, t.state, t.worker, t.attempts, "
            "CASE WHEN t.state IN ('queued', 'running') THEN COALESCE(p.buffers, t.buffers) END, t.result, "
            "COALESCE(r.buffers, t.result_buffers), t.ended, t.collected, "
            "p.id IS NOT NULL OR r.id IS NOT NULL, p.id IS NOT NULL AND p.buffers IS NULL, "
            "r.id IS NOT NULL AND r.buffers IS NULL "
            "FROM tasks t LEFT JOIN payloads p ON p.id = t.id LEFT JOIN results r ON r.id = t.id ORDER BY t.seq"
        )
        for (seq, task_id, spec_json, state, worker, attempts, buffers, result, result_buffers, ended, collected,
             large, payload_file, result_file) in rows:
            if large:
                self._large.add(task_id)
            spec = json.loads(spec_json)
            task = Task(
                id=task_id, user=spec["user"], priority=spec["priority"], name=spec["name"],
                route=spec["route"], seq=seq, fn=spec["fn"], payload=spec["payload"], args=spec.get("args"),
                timeout=spec["timeout"], retries=spec["retries"], chunk=spec.get("chunk", False),
                attempts=attempts, state=TaskState(state), submitted=spec["submitted"],
                client=spec["client"].encode() if spec.get("client") else None, worker=worker,
            )
            active = not task.state.finished
            task.buffers = self._read_blob("payloads", task_id) if payload_file and active else unpack_buffers(buffers)
            if task.state.finished:
                task.result = json.loads(result) if result else {}
                task.result_buffers = (
                    self._read_blob("results", task_id) if result_file else unpack_buffers(result_buffers)
                )
                task.ended = ended
                task.collected = collected
                task.progress = 100 if task.state is TaskState.DONE else None
            objects = {d: functions[d] for d in spec.get("objects", ()) if d in functions} if active else {}
            yield StoredTask(task, functions.get(task.fn, []) if task.fn else [], objects)

    def _drop_unused_files(self) -> None:
        """Remove pickle files no row names (a crash between writing one and its commit)."""
        named = {
            self._blob_path(table, task_id).name
            for table in ("payloads", "results")
            for (task_id,) in self._db.execute(f"SELECT id FROM {table} WHERE buffers IS NULL")
        }
        for path in self.blobs.iterdir():
            if path.name not in named:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self.commit()
        self._batches.put(None)
        self._writer.join()
        self._db.close()
