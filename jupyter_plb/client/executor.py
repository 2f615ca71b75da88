"""The ``concurrent.futures``-style API (``submit``, ``map``, ``run``, ``broadcast``) and the seed's
``sendTask``/``getTask``/``cancelTask``: :class:`Client` and the views it makes (:class:`ClientView`)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jupyter_plb.client.batches import Batch, MapIterator
from jupyter_plb.client.broadcast import Broadcast
from jupyter_plb.client.connection import Connection
from jupyter_plb.client.futures import PlbFuture, rebuild_exception
from jupyter_plb.client.pickling import function_name, pickle_arguments, pickle_function
from jupyter_plb.client.progress import progress as show_progress
from jupyter_plb.core import parameters, protocol
from jupyter_plb.core.argsrepr import args_text
from jupyter_plb.core.protocol import Buffer
from jupyter_plb.core.team import default_user
from jupyter_plb.errors import BalancerUnreachable, PlbError, SerializationError
from jupyter_plb.transport import connection

DEFAULT_CONNECT_TIMEOUT = 5.0


def _input_length(iterables: Sequence[Iterable[Any]]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Submitter:
    """The submitting API, shared by Client and the views ``Client.options(...)`` returns."""

    _connection: Connection
    _defaults: dict[str, Any]

    # -- concurrent.futures-style API ------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> PlbFuture:
        """Run ``fn(*args, **kwargs)`` on a worker; return its future."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}")
        self._connection.check_open()
        try:
            fn_buffers, fn_id = pickle_function(fn)
            spec, buffers, fut = self._function_task(fn_id, function_name(fn), protocol.call_payload(args, kwargs))
        except SerializationError as exc:  # as in an executor, the future carries the error
            return self._failed(function_name(fn), exc)
        self._send_tasks([(spec, buffers, fut)], fn_id, fn_buffers)
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> MapIterator:
        """Like ``Executor.map``: results in order; an exception is raised when its turn comes.

        ``progress=True`` shows a bar while it runs (:func:`jupyter_plb.progress`, not blocking).
        """
        futures = self.map_futures(fn, *iterables, chunksize=chunksize, progress=progress)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            while (fut := next(futures, None)) is not None:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                values = list(fut.result(remaining)) if chunksize > 1 else [fut.result(remaining)]
                del fut  # results are handed out, not kept (as Executor.map does)
                values.reverse()
                while values:
                    yield values.pop()

        mapped = MapIterator(futures.batch, results(), futures.batch.length)
        mapped.progress = futures.progress
        return mapped

    def map_futures(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1, progress: bool = False
    ) -> MapIterator:
        """Submit ``fn`` over the arguments, chunked; iterate the futures in order (one per chunk).

        Tasks are fed to the balancer as results come back, never more than the per-user queue
        limit at a time, so a long map does not hit ``LB_QUEING_MAXPERUSER``. ``progress=True``
        shows a bar while it runs.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__}")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be an integer >= 1")
        self._connection.check_open()
        batch = Batch(self, fn, zip(*iterables, strict=False), chunksize, _input_length(iterables))
        batch.feed()
        futures = MapIterator(batch, iter(batch), batch.task_count)
        if progress:
            futures.progress = show_progress(futures, wait=False)
        return futures

    # -- code and data on every worker -----------------------------------------------------------
    def run(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        workers: Iterable[str] | None = None,
        on_error: str = "raise",
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Call ``fn(*args, **kwargs)`` on every connected worker now, outside the task queues.

        Returns ``{worker id: result}``. A worker that is running a long task runs ``fn`` at the same
        time, on its I/O thread. ``on_error``: ``"raise"`` the first remote exception (with its
        remote traceback as ``__cause__``), ``"return"`` it in the dict, or ``"ignore"`` that worker.
        ``workers`` limits it to those ids; ``timeout`` (s) bounds the wait (default: none).
        """
        if not callable(fn):
            raise TypeError(f"run() needs a callable, got {type(fn).__name__}")
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError("on_error must be 'raise', 'return' or 'ignore'")
        buffers = protocol.dumps((fn, args, kwargs))
        header: dict[str, Any] = {"type": "run", "nbuf": len(buffers)}
        if workers is not None:
            header["workers"] = [str(w) for w in workers]
        wait = threading.TIMEOUT_MAX if timeout is None else timeout
        try:
            reply = self._connection.request(header, buffers, timeout=wait, explain=False)
        except BalancerUnreachable:
            raise BalancerUnreachable(
                f"run() got no answer within {wait:g} s: a worker is still running {function_name(fn)}, "
                "or the balancer is unreachable"
            ) from None
        results: dict[str, Any] = {}
        position = 0
        for info in reply.header.get("results", []):
            count = int(info.get("nbuf", 0))
            answer = reply.buffers[position : position + count]
            position += count
            worker = str(info.get("worker"))
            if info.get("state") == "done":
                results[worker] = protocol.loads(answer)
                continue
            exc = rebuild_exception(info, answer)
            if on_error == "raise":
                raise exc
            if on_error == "return":
                results[worker] = exc
        return dict(sorted(results.items()))

    def broadcast(self, obj: Any) -> Broadcast:
        """Keep ``obj`` on the balancer; return a reference that tasks take as an argument.

        Each worker receives the object once (with its first task that names it) and keeps it until
        the reference is released (``release()``, ``with``, or garbage collected) and no queued or
        running task names it.
        """
        if isinstance(obj, Broadcast):
            raise TypeError("this is already a broadcast reference")
        buffers = protocol.dumps(protocol.blob(obj))
        digest = hashlib.sha256(b"".join(protocol.digest(b) for b in buffers)).hexdigest()[:32]
        self._connection.request({"type": "broadcast", "digest": digest, "nbuf": len(buffers)}, buffers)
        nbytes = sum(protocol.buffer_size(b) for b in buffers)
        return Broadcast(self._connection, digest, nbytes, type(obj).__name__)

    scatter = broadcast

    def options(self, **overrides: Any) -> ClientView:
        """A view with other defaults: ``priority=``, ``user=``, ``timeout=``, ``retries=``."""
        unknown = set(overrides) - {"priority", "user", "timeout", "retries"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; use priority, user, timeout, retries")
        return ClientView(self._connection, {**self._defaults, **overrides})

    # -- seed API ----------------------------------------------------------------------------------
    def sendTask(
        self, taskname: str, task: Any = None, userid: str | None = None, priority: float = 0
    ) -> dict[str, Any]:
        """Queue the hub task ``taskname`` with the JSON ``task``; ``{'taskid'}`` or ``{'error'}``."""
        try:
            json.dumps(task)
        except (TypeError, ValueError) as exc:
            return {"error": f"the task must be JSON serializable: {exc}"}
        task_id = protocol.new_id("t")
        spec = {
            "id": task_id,
            "name": str(taskname),
            "route": str(taskname),
            "payload": task,
            "args": args_text((task,)),
            "user": userid or self._defaults["user"],
            "priority": priority,
            "nbuf": 0,
            **self._limits(),
        }
        header = {"type": "submit", "fns": [], "tasks": [spec]}
        try:
            reply = self._connection.request(header)
        except PlbError as exc:
            return {"error": str(exc)}
        if task_id in reply.header.get("rejected", {}):
            return {"error": reply.header["rejected"][task_id]}
        return {"taskid": task_id}

    def getTask(self, taskid: str | list[str]) -> dict[str, Any]:
        """``{'progress', 'result'}`` for one id, ``{id: {...}}`` for a list; progress None if unknown."""
        ids = [taskid] if isinstance(taskid, str) else list(taskid)
        conn = self._connection
        conn.seed_results.expire()
        answers: dict[str, dict[str, Any]] = {}
        missing = []
        for task_id in ids:
            cached = conn.seed_results.collect(task_id)
            if cached is not None:
                answers[task_id] = self._seed_answer(cached)
            else:
                missing.append(task_id)
        if missing:
            try:
                reply = conn.request({"type": "get", "ids": missing})
            except PlbError as exc:
                return {"error": str(exc)}
            position = 0
            infos = reply.header.get("tasks", {})
            for task_id in missing:
                info = infos.get(task_id)
                if info is None:
                    answers[task_id] = {"progress": None, "result": None, "state": None}
                    continue
                result = info.get("result") or {}
                count = int(result.get("nbuf", 0))
                buffers = reply.buffers[position : position + count]
                position += count
                if result:
                    entry = conn.seed_results.store(task_id, {**info, **result}, buffers)
                    conn.seed_results.collect(task_id)
                    answers[task_id] = self._seed_answer(entry)
                else:
                    answers[task_id] = self._seed_answer(info)
        if isinstance(taskid, str):
            return answers[taskid]
        return answers

    @staticmethod
    def _seed_answer(info: dict[str, Any]) -> dict[str, Any]:
        state = info.get("state")
        answer: dict[str, Any] = {"progress": info.get("progress"), "result": None, "state": state}
        if state == "done":
            answer["progress"] = 100
            answer["result"] = info.get("value")
        elif state in ("failed", "cancelled"):
            answer["progress"] = None
            error = info.get("error")
            if isinstance(error, dict):
                answer["error"] = f"{error.get('type')}: {error.get('message')}"
                answer["traceback"] = error.get("traceback", "")
            elif error:
                answer["error"] = error
        for key in ("stdout", "stderr"):
            if info.get(key):
                answer[key] = info[key]
        return answer

    def cancelTask(self, taskid: str) -> dict[str, Any]:
        """Cancel a queued or running task: ``{'deleted': bool, 'from': 'queue'|'pending'|'done'|None}``."""
        self._connection.seed_results.discard(taskid)
        try:
            result = self._connection.cancel([taskid]).get(taskid, {})
        except PlbError as exc:
            return {"deleted": False, "from": None, "error": str(exc)}
        deleted = bool(result.get("cancelled")) or result.get("from") == "done"
        return {"deleted": deleted, "from": result.get("from"), "state": result.get("state")}

    # -- helpers -----------------------------------------------------------------------------------
    def _limits(self) -> dict[str, Any]:
        return {"timeout": self._defaults.get("timeout"), "retries": self._defaults.get("retries") or 0}

    def _function_task(
        self, fn_id: str, name: str, payload: tuple[Any, dict[str, Any]]
    ) -> tuple[dict[str, Any], list[Buffer], PlbFuture]:
        buffers, broadcasts = pickle_arguments(payload)
        task_id = protocol.new_id("t")
        shared = self._connection.share(task_id, buffers)
        spec: dict[str, Any] = {
            "id": task_id,
            "name": name,
            "fn": fn_id,
            "user": self._defaults["user"],
            "priority": self._defaults.get("priority", 0),
            "nbuf": len(shared),
            "args": args_text(*payload),
            **self._limits(),
        }
        if broadcasts:
            spec["refs"] = broadcasts
        fut = PlbFuture(self._connection, task_id, name)
        if shared is not buffers:
            segments = self._connection.segments
            assert segments is not None
            fut.add_done_callback(lambda _: segments.release(task_id))
        return spec, shared, fut

    def _failed(self, name: str, exc: BaseException) -> PlbFuture:
        """A future that failed before its task could leave (its function or arguments do not pickle)."""
        fut = PlbFuture(self._connection, protocol.new_id("t"), name)
        fut.state = "failed"
        fut.progress = None
        fut.set_exception(exc)
        return fut

    def _send_tasks(
        self,
        tasks: list[tuple[dict[str, Any], list[Buffer], PlbFuture]],
        fn_id: str,
        fn_buffers: list[Buffer],
    ) -> None:
        conn = self._connection
        conn.check_open()
        for spec, _buffers, fut in tasks:
            conn.futures[spec["id"]] = fut
        conn.outbox.add([(spec, buffers) for spec, buffers, _ in tasks], fn_id, fn_buffers)

    # -- information ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The balancer's snapshot (the monitor's ``/plb/api/status``)."""
        return self._connection.request({"type": "status"}).header["data"]

    def hubs(self) -> list[dict[str, Any]]:
        return self.status()["hubs"]

    def tasks(self, **filters: Any) -> dict[str, Any]:
        """Tasks known to the balancer: ``state=``, ``user=``, ``name=``, ``query=`` (the monitor's
        search, e.g. ``"state:failed name:simulate"``), ``offset=``, ``limit=``."""
        return self._connection.request({"type": "tasks", **filters}).header

    def cancel(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return self._connection.cancel(list(ids))

    def adapt(self, minimum: int = 0, maximum: int = 1, **options: Any) -> Any:
        """Scale Slurm hub jobs to the queue (``jupyter_plb.jobs.adapter.adapt_slurm``); ``.stop()`` ends it."""
        from jupyter_plb.jobs.adapter import adapt_slurm

        return adapt_slurm(self, minimum, maximum, **options)

    def report_jobs(self, launcher: dict[str, Any]) -> None:
        """Tell the balancer a launcher's job table (shown in the monitor and the Lab panel)."""
        self._connection.request({"type": "jobs", "launcher": launcher})

    def future(self, task_id: str) -> PlbFuture | None:
        """The future of a task this client submitted and is still waiting for."""
        return self._connection.futures.get(task_id)

    def outstanding(self) -> list[PlbFuture]:
        return list(self._connection.futures.values())


class ClientView(_Submitter):
    """The same connection with other defaults (``Client.options``)."""

    def __init__(self, conn: Connection, defaults: dict[str, Any]) -> None:
        self._connection = conn
        self._defaults = defaults
        conn.adopt(self)


class Client(_Submitter):
    """Connects to a balancer and sends it tasks.

    ``Client()`` finds the balancer from ``$PLB_CONNECTION_FILE``, else the connection file in
    the Jupyter runtime dir; ``Client('parameters.json')`` (the seed's form) uses the file's
    ``LB_IP``/ports and the connection file's key.
    """

    def __init__(
        self,
        params: parameters.Parameters | str | Path | None = None,
        *,
        connection_file: str | Path | None = None,
        user: str | None = None,
        priority: float = 0,
        timeout: float | None = None,
        retries: int = 0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        loaded = parameters.load(params)
        if connection_file is not None:
            info = connection.read(connection_file)
        elif params is not None:
            info = connection.from_parameters(loaded)
        else:
            info = connection.read(connection.resolve_path(loaded))
        self._connection = Connection(info, loaded)
        self._connection.adopt(self)  # open while this client, a view of it or a pending future lives
        self._defaults = {"user": user or default_user(), "priority": priority, "timeout": timeout, "retries": retries}
        try:
            self._connection.hello(connect_timeout)
        except BaseException:
            self._connection.close()
            raise
        if user is None and self._connection.bound_user:
            self._defaults["user"] = self._connection.bound_user  # the certificate's user (Curve)

    @property
    def connection_info(self) -> connection.ConnectionInfo:
        return self._connection.info

    @property
    def user(self) -> str:
        return self._defaults["user"]

    @property
    def version_skew(self) -> dict[str, str]:
        """Hub id -> how its Python minor or cloudpickle version differs from this client's
        (each was warned of with a VersionSkewWarning when the client connected or the hub joined)."""
        return dict(self._connection.version_skew)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Like ``Executor.shutdown``: optionally cancel the tasks not started yet, wait, then disconnect."""
        conn = self._connection
        if conn.closed:
            return
        pending = [f for f in conn.futures.values() if not f.done()]
        if cancel_futures and pending:
            with contextlib.suppress(PlbError):
                conn.cancel_queued([f.task_id for f in pending])
        if wait:
            concurrent.futures.wait(pending)
        conn.close()

    close = shutdown

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)
