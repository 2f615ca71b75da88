"""WorkerHub: the hub a seed script or ``plb hub`` sets up, and its life from start to stop.

A hub starts worker processes on one machine and keeps them running (:mod:`~jupyter_plb.workers.supervisor`),
and registers itself and them with the balancer (:mod:`~jupyter_plb.workers.link`); the workers then
talk to the balancer directly, so a task costs four hops, not six.

SIGTERM or Ctrl-C drains it: no new tasks, running ones get ``grace`` seconds, the rest are handed
back. A worker may retire after ``max_tasks_per_worker`` tasks and have a memory limit
(docs/multihost.md). What ``plb hub`` reads from its command line (``--tasks``, ``--setup``,
``--memory-limit``) is parsed here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket as stdsocket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from jupyter_plb.core import parameters, protocol
from jupyter_plb.errors import PlbError
from jupyter_plb.transport import connection, security
from jupyter_plb.transport.connection import ConnectionInfo
from jupyter_plb.workers.link import SILENT_AFTER, BalancerLink
from jupyter_plb.workers.supervisor import Routes, Supervisor, WorkerLaunch

log = logging.getLogger(__name__)

#: Priority range of workers made with ``workers=N`` (no priority groups): any priority.
ANY_PRIORITY = (-1e9, 1e9)
#: Seconds a stopping hub gives running tasks to finish (``plb hub --grace``).
DEFAULT_GRACE = 30.0


def groups_for(
    workers: int | list[dict[str, Any]] | None, params: parameters.Parameters
) -> list[dict[str, Any]]:
    """Worker groups from a count (any priority), a list of seed groups, or WKHUB_WORKERS."""
    if workers is None:
        return params["WKHUB_WORKERS"]
    if isinstance(workers, int):
        if workers < 0:
            raise PlbError("workers must be >= 0")
        lo, hi = ANY_PRIORITY
        return [{"nWorkers": workers, "minP": lo, "maxP": hi, "processP": 0}]
    return parameters.validate({"WKHUB_WORKERS": workers}, "workers")["WKHUB_WORKERS"]


class WorkerHub:
    """Seed API: ``WorkerHub(params)``, ``addTask(name, fn, **kwargs)``, ``startWKHUB()``."""

    def __init__(
        self,
        params: parameters.Parameters | str | Path | None = None,
        *,
        connection_file: str | Path | None = None,
        workers: int | list[dict[str, Any]] | None = None,
        name: str | None = None,
        local: bool = False,
        max_tasks_per_worker: int = 0,
        memory_limit: int = 0,
        grace: float | None = None,
        exit_with_stdin: bool = False,
        setup: str | Callable[[], Any] | None = None,
    ) -> None:
        """``grace``: seconds running tasks get when the hub is asked to stop (SIGTERM, Ctrl-C,
        :meth:`drain`); default 30, or 0 for a ``local`` hub (started with its balancer, stopped
        with it). ``max_tasks_per_worker``: a worker retires after that many tasks and a fresh one
        takes its place. ``memory_limit``: bytes of resident memory per worker (0: none); a worker
        over it is killed and replaced, and its task fails with ``WorkerMemoryExceeded``.
        ``exit_with_stdin``: drain when standard input closes (how ``plb ssh`` stops its hubs).
        ``setup``: a function (or ``"module:function"``) each new worker calls before it takes
        tasks; a worker whose setup raises is not started again and the hub reports itself unhealthy.
        """
        if max_tasks_per_worker < 0:
            raise PlbError("max_tasks_per_worker must be >= 0 (0: no limit)")
        if memory_limit < 0:
            raise PlbError("memory_limit must be >= 0 bytes (0: no limit)")
        if grace is not None and grace < 0:
            raise PlbError("grace must be >= 0 seconds")
        self.params = parameters.load(params)
        self._explicit_params = params is not None
        self._connection_file = connection_file
        self.groups = groups_for(workers, self.params)
        self.id = protocol.new_id("hub")
        self.name = name or f"{stdsocket.gethostname()}:{os.getpid()}"
        self.local = local
        self.max_tasks_per_worker = max_tasks_per_worker
        self.memory_limit = memory_limit
        self.grace = float(grace) if grace is not None else (0.0 if local else DEFAULT_GRACE)
        self.exit_with_stdin = exit_with_stdin
        self.setup_name, self._setup = _setup_hook(setup)
        self.tasks: Routes = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_timers: list[asyncio.TimerHandle] = []

    # -- seed API ----------------------------------------------------------------------------
    def addTask(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> None:
        """Offer the named task ``name``: workers call ``fn(task=<client dict>, **kwargs)``."""
        if not isinstance(name, str) or not name:
            raise PlbError("a task name must be a non-empty string")
        if not callable(fn):
            raise PlbError(f"the task {name!r} needs a callable, got {type(fn).__name__}")
        if name in self.tasks:
            log.warning("WKHUB - task %r was already added; replacing it", name)
        self.tasks[name] = (fn, kwargs)

    def rmvTask(self, name: str) -> None:
        self.tasks.pop(name, None)

    def startWKHUB(self) -> None:
        """Run the hub until SIGINT/SIGTERM, which drain it (blocks; a second signal stops it)."""
        asyncio.run(self.run())

    # -- life cycle ----------------------------------------------------------------------------
    def connection_info(self) -> ConnectionInfo:
        if self._connection_file is not None:
            return connection.read(self._connection_file)
        if self._explicit_params:
            return connection.from_parameters(self.params)
        return connection.read(connection.resolve_path(self.params))

    async def run(self) -> None:
        """Register, spawn the workers, and supervise them until stopped."""
        self._loop = loop = asyncio.get_running_loop()
        info = self.connection_info()
        curve = security.peer_keys(info, self.params, "hubs")  # None: no CurveZMQ
        launch = WorkerLaunch(
            hub_id=self.id,
            url=info.worker_url,
            key=info.key_bytes,
            curve=curve,
            max_message_size=self.params["LB_MAX_MESSAGE_SIZE"],
            routes=self.tasks,
            max_tasks=self.max_tasks_per_worker,
            setup=self._setup,
            setup_name=self.setup_name,
            shared_memory=self.local and bool(self.params["LB_SHARED_MEMORY"]),
            shm_digests=bool(self.params["LB_SHM_DIGESTS"]),
        )
        self._supervisor = Supervisor(
            loop, launch, memory_limit=self.memory_limit, report=self._tell_balancer, on_drained=self._request_stop
        )
        self._link = BalancerLink(
            loop, info, self.params, curve,
            hub_id=self.id, name=self.name, local=self.local, routes=self.tasks, supervisor=self._supervisor,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._begin_drain)
        self._done = asyncio.Event()
        if self.local:
            self._stop_with_parent()
        if self.exit_with_stdin:
            self._drain_on_stdin_eof()
        self._link.hello()
        self._supervisor.start(self.groups)
        self._link.beat()
        log.info(
            "WKHUB - %s (%s) started %d worker(s), connected to %s",
            self.name, self.id, len(self._supervisor.workers), info.worker_url,
        )
        try:
            await self._done.wait()
        finally:
            self._shutdown()

    def _tell_balancer(self, header: dict[str, Any]) -> None:
        """What the supervisor reports (a worker lost) goes out on the link."""
        self._link.send(header)

    def _stop_with_parent(self) -> None:
        """A local hub (started by a Jupyter server, ``startAll``, a test) dies with its parent."""
        assert self._loop is not None
        try:
            parent = os.pidfd_open(os.getppid())
        except (AttributeError, OSError):
            return
        self._loop.add_reader(parent, self._request_stop)

    def _drain_on_stdin_eof(self) -> None:
        assert self._loop is not None
        try:
            fd = sys.stdin.fileno()
            self._loop.add_reader(fd, self._on_stdin, fd)
        except (AttributeError, OSError, ValueError, PermissionError) as exc:
            log.warning("WKHUB - cannot watch standard input (%s); stop the hub with SIGTERM", exc)

    def _on_stdin(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            assert self._loop is not None
            self._loop.remove_reader(fd)
            log.info("WKHUB - standard input closed: draining")
            self._begin_drain()

    def stop(self) -> None:
        """Stop from any thread at once: say goodbye (running tasks requeue), stop the workers."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._request_stop)

    def drain(self) -> None:
        """Stop from any thread gracefully: what SIGTERM does (see :meth:`_begin_drain`)."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _request_stop(self) -> None:
        self._supervisor.stopping = True
        self._done.set()

    def _begin_drain(self) -> None:
        """Take no new tasks, let running ones finish within ``grace`` seconds, hand back the rest.

        The balancer stops dispatching to this hub's workers and takes back their prefetched
        tasks (``hub_drain``); then each worker retires after its running task. A second signal,
        the grace period's end, or ``grace=0`` stops at once: ``hub_bye`` makes the balancer
        requeue whatever is still running here, without charging the tasks an attempt.
        """
        supervisor = self._supervisor
        if supervisor.stopping:
            return
        if supervisor.state == "draining" or self.grace <= 0:
            if supervisor.state == "draining":
                log.warning("WKHUB - asked again: stopping now; running tasks are handed back")
            self._request_stop()
            return
        assert self._loop is not None
        supervisor.drain()
        log.info(
            "WKHUB - draining %s: no new tasks; running tasks have %g s to finish "
            "(signal again to stop now)",
            self.name, self.grace,
        )
        self._link.send({"type": "hub_drain", "hub": self.id})
        if not supervisor.workers:
            self._request_stop()
            return
        self._drain_timers = [
            self._loop.call_later(self.grace, self._grace_over),
            # If the balancer does not acknowledge (it is away), retire the workers all the same.
            self._loop.call_later(
                min(self.grace / 2, SILENT_AFTER * self._link.heartbeat_interval), supervisor.retire
            ),
        ]

    def _grace_over(self) -> None:
        if self._supervisor.workers:
            log.warning(
                "WKHUB - grace period of %g s is over: stopping %d worker(s); "
                "their tasks are handed back",
                self.grace, len(self._supervisor.workers),
            )
        self._request_stop()

    def _shutdown(self) -> None:
        for timer in self._drain_timers:
            timer.cancel()
        self._link.bye()
        self._supervisor.stop()
        self._link.close()
        log.info("WKHUB - %s stopped", self.name)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _setup_hook(setup: str | Callable[[], Any] | None) -> tuple[str, bytes]:
    """The hook's name and pickle for the workers; ``"module:function"`` is imported here, so a
    typo is an error at once rather than in every worker."""
    if setup is None:
        return "", b""
    if isinstance(setup, str):
        functions = load_tasks(setup, option="--setup")
        if len(functions) != 1:
            raise PlbError(f"--setup {setup}: must name a function")
        fn = next(iter(functions.values()))
        name = setup
    elif callable(setup):
        fn, name = setup, getattr(setup, "__qualname__", repr(setup))
    else:
        raise PlbError(f"setup must be a function or 'module:function', got {type(setup).__name__}")
    try:
        return name, cloudpickle.dumps(fn)
    except Exception as exc:
        raise PlbError(f"the setup hook {name} cannot be pickled for the workers: {exc}") from exc


def parse_size(text: str) -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1048576"`` (binary units; 0: no limit)."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in _SIZE_UNITS:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = float(number)
    except ValueError:
        raise PlbError(f"a size like 512M or 2G is needed, got {text!r}") from None
    if value < 0 or value != value:
        raise PlbError(f"a size must be >= 0, got {text!r}")
    return int(value * _SIZE_UNITS[unit])


def load_tasks(spec: str, option: str = "--tasks") -> dict[str, Callable[..., Any]]:
    """``module:attr`` naming a dict of task name → function (or a function, named after itself)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PlbError(f"{option} expects module:attr, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PlbError(f"{option} {spec}: cannot import {module_name!r} ({exc})") from None
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise PlbError(f"{option} {spec}: {module_name!r} has no attribute {attr!r}") from None
    if callable(value):
        return {attr: value}
    if isinstance(value, dict) and all(callable(v) for v in value.values()):
        return dict(value)
    raise PlbError(f"{option} {spec}: must name a function or a dict of name -> function")
