"""Running a task in a worker: its function, its arguments, its captured output, its error, its progress.

A task names a hub route (``addTask``) or a cached function; either way it runs on the worker's
main thread, and :meth:`TaskRunner.run` turns whatever happens into a result header and buffers.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import Buffer
from jupyter_plb.errors import DeserializationError, IntegrityError
from jupyter_plb.workers.cache import FunctionCache

#: Captured stdout/stderr kept per task.
MAX_OUTPUT = 1 << 20
#: The worker's own frames, left out of a task's traceback.
_OWN_FILES = frozenset({__file__, inspect.getfile(FunctionCache)})


def _accepts_progress(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "progress" or p.kind is p.VAR_KEYWORD for p in params)


class _Capture(io.StringIO):
    def write(self, s: str) -> int:
        if self.tell() < MAX_OUTPUT:
            return super().write(s[: MAX_OUTPUT - self.tell()])
        return len(s)


def _error_info(exc: BaseException) -> dict[str, Any]:
    """Type, message and traceback of a task's exception, without the worker's own frames."""
    kind = type(exc)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
        tb = tb.tb_next
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, tb)),
    }


class TaskRunner:
    """Runs tasks one at a time; ``send`` carries its progress reports to the balancer."""

    def __init__(
        self,
        routes: bytes,
        functions: FunctionCache,
        send: Callable[[dict[str, Any]], None],
        share_results: Callable[[list[Buffer]], list[Buffer]] | None = None,
    ) -> None:
        self.routes: dict[str, tuple[Callable[..., Any], dict[str, Any], bool]] = {}
        for name, (fn, kwargs) in cloudpickle.loads(routes).items():
            self.routes[name] = (fn, kwargs, _accepts_progress(fn))
        self.functions = functions
        self.send = send
        #: Moves a result's large buffers to shared memory (a hub on its balancer's machine).
        self.share_results = share_results
        self.task_id: str | None = None
        #: The broadcast objects the running task's arguments name, while they are unpickled.
        self.task_objects: dict[str, Any] | None = None
        self._last_progress = (0.0, -1)

    def report_progress(self, value: float) -> None:
        pct = max(1, min(99, int(value)))
        now = time.monotonic()
        last_time, last_value = self._last_progress
        if pct == last_value or (now - last_time < 0.05 and pct != 99):
            return
        self._last_progress = (now, pct)
        if self.task_id is not None:
            self.send({"type": "progress", "id": self.task_id, "value": pct})

    def run(self, spec: dict[str, Any], buffers: list[Buffer] | None) -> tuple[dict[str, Any], list[Buffer]]:
        """Run a task (``buffers`` None: they failed their digest check); its result header and buffers."""
        self.task_id = spec["id"]
        self._last_progress = (0.0, -1)
        out, err = _Capture(), _Capture()
        started = time.time()
        header: dict[str, Any] = {"id": spec["id"], "started": started}
        result_buffers: list[Buffer] = []
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                value = self._call(spec, buffers)
            result_buffers = protocol.dumps(protocol.blob(value))
            if self.share_results is not None:
                result_buffers = self.share_results(result_buffers)
            header["state"] = "done"
        except BaseException as exc:  # a task's SystemExit or KeyboardInterrupt fails the task only
            header["state"] = "failed"
            header["error"] = _error_info(exc)
            with contextlib.suppress(Exception):
                result_buffers = protocol.dumps(exc)
        header["ended"] = time.time()
        header["nbuf"] = len(result_buffers)
        if out.tell():
            header["stdout"] = out.getvalue()
        if err.tell():
            header["stderr"] = err.getvalue()
        self.task_id = None
        return header, result_buffers

    def run_now(self, buffers: list[Buffer], digests: list[bytes]) -> tuple[dict[str, Any], list[Buffer]]:
        """``client.run``: call the pickled ``(fn, args, kwargs)`` here and now; the answer's state and buffers."""
        header: dict[str, Any] = {}
        result_buffers: list[Buffer] = []
        try:
            protocol.verify(buffers, digests)
            fn, args, kwargs = protocol.loads(buffers)
            value = fn(*args, **kwargs)
            result_buffers = protocol.dumps(protocol.blob(value))
            header["state"] = "done"
        except BaseException as exc:  # the function's SystemExit fails the call only
            header["state"] = "failed"
            header["error"] = _error_info(exc)
            with contextlib.suppress(Exception):
                result_buffers = protocol.dumps(exc)
        header["nbuf"] = len(result_buffers)
        return header, result_buffers

    def _call(self, spec: dict[str, Any], buffers: list[Buffer] | None) -> Any:
        if buffers is None:
            raise IntegrityError(
                "the task's arguments do not match the digest its signed header names: "
                "they were altered in transit, so they were not unpickled"
            )
        route = spec.get("route")
        if route is not None:
            if route not in self.routes:
                raise LookupError(f"this hub has no task named {route!r} (addTask it on the hub)")
            handler, kwargs, wants_progress = self.routes[route]
            extra = {"progress": self.report_progress} if wants_progress else {}
            return handler(task=spec.get("payload"), **kwargs, **extra)
        fn = self.functions.entries.get(spec.get("fn", ""))
        if fn is None:
            raise LookupError("the task's function did not reach this worker")
        if isinstance(fn, Exception):
            raise fn
        self.task_objects = spec.get("objects")
        try:
            args, kwargs = protocol.loads(buffers)
        except DeserializationError as exc:
            if isinstance(exc.__cause__, LookupError):
                raise exc.__cause__ from None  # a broadcast object is missing: say that
            raise self.functions.versions_error(spec.get("fn"), exc) from exc.__cause__
        finally:
            self.task_objects = None
        if spec.get("chunk"):
            return [fn(*item) for item in args]
        return fn(*args, **kwargs)
