"""WorkerHub: starts worker processes on one machine and supervises them.

The hub registers with the balancer, heartbeats, and spawns, renices, kills and replaces its
workers; the workers talk to the balancer directly, so a task costs four hops, not six.

On another machine (``plb hub --connect FILE``) it outlives its balancer: when the balancer goes
silent it retries with backoff and registers again, workers included, when one answers. SIGTERM or
Ctrl-C drains it: no new tasks, running ones get ``grace`` seconds, the rest are handed back. A
worker may retire after ``max_tasks_per_worker`` tasks and have a memory limit (docs/multihost.md).

With each heartbeat the hub reports its workers' CPU use and resident memory (read from ``/proc``);
with a memory limit it reads their resident memory every MEMORY_CHECK_INTERVAL seconds and kills a
worker over the limit, as Dask's nanny does: its task fails with ``WorkerMemoryExceeded`` (or is
retried) and a fresh worker takes its place. Address space is not limited: libraries that reserve
large virtual ranges (BLAS, CUDA, memory-mapped files) run as they would anywhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import signal
import socket as stdsocket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import zmq

from jupyter_plb.core import parameters, protocol
from jupyter_plb.core.protocol import Message, Session
from jupyter_plb.errors import PlbError
from jupyter_plb.transport import connection, security, sockets
from jupyter_plb.transport.connection import ConnectionInfo
from jupyter_plb.workers import resources
from jupyter_plb.workers.worker import EXIT_RETIRED, EXIT_SETUP_FAILED, WorkerConfig

log = logging.getLogger(__name__)

#: Priority range of workers made with ``workers=N`` (no priority groups): any priority.
ANY_PRIORITY = (-1e9, 1e9)
#: Worker deaths within CRASH_WINDOW seconds that mark the hub unhealthy and slow respawns.
CRASH_LIMIT = 5
CRASH_WINDOW = 30.0
#: Only workers dying younger than this count towards a crash loop (a worker that fails to start
#: or dies on its first task), not long-lived workers killed from outside.
CRASH_YOUNG = 1.0
MAX_RESPAWN_DELAY = 30.0
#: The balancer is "silent" after this many heartbeat intervals without an answer.
SILENT_AFTER = 3
#: While the balancer is silent, heartbeats back off (doubling) up to this many seconds.
MAX_RETRY_INTERVAL = 10.0
#: Seconds a stopping hub gives running tasks to finish (``plb hub --grace``).
DEFAULT_GRACE = 30.0
#: Seconds between two reads of the workers' resident memory when a memory limit is set.
MEMORY_CHECK_INTERVAL = 0.25

_WORKER_COMMAND = "from jupyter_plb.workers.worker import run_from_stdin; run_from_stdin()"


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


@dataclass(slots=True, eq=False)
class _WorkerProcess:
    id: str
    group: dict[str, Any]
    process: subprocess.Popen[bytes]
    control: int
    started: float
    kill_requested: bool = False
    #: Why the hub killed it for its memory (the task's WorkerMemoryExceeded message), or None.
    memory_exceeded: str | None = None
    #: CPU seconds and the monotonic time at the last heartbeat, for its CPU percent.
    cpu_seconds: float = 0.0
    sampled: float = 0.0


@dataclass(slots=True, eq=False)
class _Supervision:
    deaths: collections.deque[float] = field(default_factory=collections.deque)
    respawn_delay: float = 0.0


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
        #: Set when a worker's setup hook raised: the hub stays unhealthy and starts no more workers.
        self.setup_failed = False
        self.tasks: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
        self.workers: dict[str, _WorkerProcess] = {}
        self.state = "ok"
        self.heartbeat_interval = float(self.params["LB_HEARTBEAT_INTERVAL"])
        self.balancer_id: str | None = None
        self._supervision = _Supervision()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket: zmq.Socket | None = None
        self._context: zmq.Context | None = None
        self._session: Session | None = None
        self._info: ConnectionInfo | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._memory_check: asyncio.TimerHandle | None = None
        self._last_ack = 0.0
        self._last_hello = 0.0
        self._started = 0.0
        self._silent = False
        self._retry_interval = self.heartbeat_interval
        self._drain_timers: list[asyncio.TimerHandle] = []
        self._workers_retiring = False

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
        self._loop = asyncio.get_running_loop()
        self._info = self.connection_info()
        self._curve = security.peer_keys(self._info, self.params, "hubs")  # None: no CurveZMQ
        self._session = Session(
            self._info.key_bytes, max_message_size=self.params["LB_MAX_MESSAGE_SIZE"]
        )
        self._context = zmq.Context()
        self._socket = sockets.connect_dealer(
            self._context, self._info.worker_url, self.id, linger_ms=500, curve=self._curve
        )
        self._loop.add_reader(self._socket.fileno(), self._on_readable)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(sig, self._begin_drain)
        self._done = asyncio.Event()
        self._started = time.monotonic()
        if self.local:
            self._stop_with_parent()
        if self.exit_with_stdin:
            self._drain_on_stdin_eof()
        self._hello()
        for group in self.groups:
            for _ in range(group["nWorkers"]):
                self._spawn(group)
        self._beat()
        if self.memory_limit:
            self._check_memory()
        log.info(
            "WKHUB - %s (%s) started %d worker(s), connected to %s",
            self.name, self.id, len(self.workers), self._info.worker_url,
        )
        try:
            await self._done.wait()
        finally:
            self._shutdown()

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
        self._stopping = True
        self._done.set()

    def _begin_drain(self) -> None:
        """Take no new tasks, let running ones finish within ``grace`` seconds, hand back the rest.

        The balancer stops dispatching to this hub's workers and takes back their prefetched
        tasks (``hub_drain``); then each worker retires after its running task. A second signal,
        the grace period's end, or ``grace=0`` stops at once: ``hub_bye`` makes the balancer
        requeue whatever is still running here, without charging the tasks an attempt.
        """
        if self._stopping:
            return
        if self.state == "draining" or self.grace <= 0:
            if self.state == "draining":
                log.warning("WKHUB - asked again: stopping now; running tasks are handed back")
            self._request_stop()
            return
        assert self._loop is not None
        self.state = "draining"
        log.info(
            "WKHUB - draining %s: no new tasks; running tasks have %g s to finish "
            "(signal again to stop now)",
            self.name, self.grace,
        )
        self._send({"type": "hub_drain", "hub": self.id})
        if not self.workers:
            self._request_stop()
            return
        self._drain_timers = [
            self._loop.call_later(self.grace, self._grace_over),
            # If the balancer does not acknowledge (it is away), retire the workers all the same.
            self._loop.call_later(
                min(self.grace / 2, SILENT_AFTER * self.heartbeat_interval), self._retire_workers
            ),
        ]

    def _retire_workers(self) -> None:
        """Each worker leaves after its running task (the control pipe's ``D``)."""
        if self._workers_retiring:
            return
        self._workers_retiring = True
        for proc in self.workers.values():
            with contextlib.suppress(OSError):
                os.write(proc.control, b"D")

    def _grace_over(self) -> None:
        if self.workers:
            log.warning(
                "WKHUB - grace period of %g s is over: stopping %d worker(s); "
                "their tasks are handed back",
                self.grace, len(self.workers),
            )
        self._request_stop()

    def _shutdown(self) -> None:
        self._stopping = True
        for timer in (self._heartbeat, self._memory_check, *self._drain_timers):
            if timer is not None:
                timer.cancel()
        self._send({"type": "hub_bye", "hub": self.id})
        for proc in list(self.workers.values()):
            self._stop_worker(proc)
        deadline = time.monotonic() + 5
        for proc in list(self.workers.values()):
            try:
                proc.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
            self._forget_worker(proc)
        assert self._loop is not None and self._socket is not None and self._context is not None
        self._loop.remove_reader(self._socket.fileno())
        self._socket.close(linger=500)
        self._context.term()
        log.info("WKHUB - %s stopped", self.name)

    # -- messages ------------------------------------------------------------------------------
    def _send(self, header: dict[str, Any]) -> None:
        """Send, then look for input: a send can consume the edge of ZeroMQ's readable FD."""
        assert self._session is not None and self._socket is not None and self._loop is not None
        with contextlib.suppress(zmq.ZMQError):
            protocol.send(self._socket, self._session.serialize(header))
        if not self._socket.closed:
            self._loop.call_soon(self._on_readable)

    def _hello(self) -> None:
        self._last_hello = time.monotonic()
        self._send({
            "type": "hub_hello",
            "hub": self.id,
            "name": self.name,
            "host": stdsocket.gethostname(),
            "pid": os.getpid(),
            "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID"),
            "routes": sorted(self.tasks),
            "local": self.local,
            "state": self.state,
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "cloudpickle": cloudpickle.__version__,
        })

    def _on_readable(self) -> None:
        assert self._socket is not None and self._session is not None
        if self._socket.closed:
            return
        while (frames := protocol.recv_ready(self._socket)) is not None:
            try:
                msg = self._session.deserialize(frames)
            except protocol.ProtocolError as exc:
                log.warning("WKHUB - dropped a message: %s", exc)
                continue
            self._handle(msg)

    def _handle(self, msg: Message) -> None:
        balancer = msg.header.get("balancer")
        if msg.type in ("hub_welcome", "heartbeat_ack", "drain_ack"):
            self._answered()
        if msg.type in ("hub_welcome", "heartbeat_ack"):
            interval: Any = msg.header.get("heartbeat")
            valid = isinstance(interval, int | float) and 0.01 <= interval <= 60
            if valid and interval != self.heartbeat_interval:
                self.heartbeat_interval = float(interval)
                if self._heartbeat is not None and self._loop is not None:
                    self._heartbeat.cancel()
                    self._heartbeat = self._loop.call_later(self.heartbeat_interval, self._beat)
            if balancer != self.balancer_id:
                if self.balancer_id is not None:
                    log.info("WKHUB - balancer changed to %s; workers announce again", balancer)
                    self._announce_workers()
                self.balancer_id = balancer
        elif msg.type == "reregister":
            self._answered()
            recent = time.monotonic() - self._last_hello < self.heartbeat_interval
            if balancer == self.balancer_id and recent:
                return  # heartbeats queued while the balancer was away: one hello answers them all
            log.info("WKHUB - balancer %s does not know this hub; registering again", balancer)
            self.balancer_id = balancer
            self._hello()
            self._announce_workers()
        elif msg.type == "drain_ack":
            self._retire_workers()
        elif msg.type == "kill_worker":
            proc = self.workers.get(str(msg.header.get("worker")))
            if proc is not None:
                log.info("WKHUB - killing %s: %s", proc.id, msg.header.get("reason"))
                proc.kill_requested = True
                with contextlib.suppress(ProcessLookupError):
                    proc.process.kill()

    def _announce_workers(self) -> None:
        for proc in self.workers.values():
            with contextlib.suppress(OSError):
                os.write(proc.control, b"A")

    def _answered(self) -> None:
        """The balancer answered: if it had been silent, heartbeats return to their interval."""
        self._last_ack = time.monotonic()
        if self._silent:
            self._silent = False
            self._retry_interval = self.heartbeat_interval
            log.info("WKHUB - the balancer answers again")
            if self._heartbeat is not None and self._loop is not None:
                self._heartbeat.cancel()
                self._heartbeat = self._loop.call_later(self.heartbeat_interval, self._beat)

    def _beat(self) -> None:
        """Heartbeat; while the balancer is silent, back off (ZeroMQ reconnects underneath).

        Whichever balancer answers next (the same one, or a new one on the same address) says
        ``heartbeat_ack`` or ``reregister``, and the hub registers again and so do its workers.
        """
        assert self._loop is not None
        deaths = self._supervision.deaths
        calm = not deaths or time.monotonic() - deaths[-1] > CRASH_WINDOW
        if self.state == "unhealthy" and calm and not self.setup_failed:
            self.state = "ok"
            self._supervision.respawn_delay = 0.0
        silent_for = time.monotonic() - max(self._last_ack, self._started)
        delay = self.heartbeat_interval
        if silent_for > SILENT_AFTER * self.heartbeat_interval:
            if not self._silent:
                self._silent = True
                self._retry_interval = self.heartbeat_interval
                assert self._info is not None
                log.warning(
                    "WKHUB - the balancer at %s has not answered for %.0f s; retrying with backoff "
                    "(up to every %.0f s) for as long as it is away",
                    self._info.worker_url, silent_for, MAX_RETRY_INTERVAL,
                )
            self._retry_interval = min(MAX_RETRY_INTERVAL, self._retry_interval * 2)
            delay = max(delay, self._retry_interval)
        self._send({
            "type": "heartbeat",
            "hub": self.id,
            "state": self.state,
            "workers": list(self.workers),
            "usage": self._usage(),
        })
        self._heartbeat = self._loop.call_later(delay, self._beat)

    def _usage(self) -> dict[str, dict[str, float | int | None]]:
        """Each worker's CPU percent since the last heartbeat and its resident memory in bytes."""
        now = time.monotonic()
        usage: dict[str, dict[str, float | int | None]] = {}
        for proc in self.workers.values():
            seconds = resources.cpu_seconds(proc.process.pid)
            cpu = None
            if seconds is not None:
                if proc.sampled and now > proc.sampled:
                    cpu = round(max(0.0, seconds - proc.cpu_seconds) / (now - proc.sampled) * 100, 1)
                proc.cpu_seconds, proc.sampled = seconds, now
            usage[proc.id] = {"cpu": cpu, "rss": resources.resident_memory(proc.process.pid)}
        return usage

    def _check_memory(self) -> None:
        """Kill each worker whose resident memory is over the limit; it is replaced on exit."""
        assert self._loop is not None
        for proc in self.workers.values():
            if proc.memory_exceeded is not None:
                continue
            rss = resources.resident_memory(proc.process.pid)
            if rss is not None and rss > self.memory_limit:
                proc.memory_exceeded = (
                    f"its resident memory reached {rss / (1 << 20):.0f} MiB, over the hub's limit of "
                    f"{self.memory_limit / (1 << 20):.0f} MiB: it was killed and replaced (give the task "
                    "less data, or the hub a higher plb hub --memory-limit)"
                )
                log.warning("WKHUB - killing worker %s: %s", proc.id, proc.memory_exceeded)
                with contextlib.suppress(ProcessLookupError):
                    proc.process.kill()
        self._memory_check = self._loop.call_later(MEMORY_CHECK_INTERVAL, self._check_memory)

    # -- workers -------------------------------------------------------------------------------
    def _spawn(self, group: dict[str, Any]) -> None:
        assert self._info is not None and self._loop is not None
        worker_id = protocol.new_id("worker")
        read_fd, write_fd = os.pipe()
        config = WorkerConfig(
            url=self._info.worker_url,
            key=self._info.key_bytes,
            worker_id=worker_id,
            hub_id=self.id,
            min_p=float(group["minP"]),
            max_p=float(group["maxP"]),
            process_p=int(group.get("processP", 0)),
            routes=cloudpickle.dumps(self.tasks),
            control_fd=read_fd,
            max_message_size=self.params["LB_MAX_MESSAGE_SIZE"],
            max_tasks=self.max_tasks_per_worker,
            curve=self._curve,
            setup=self._setup,
            setup_name=self.setup_name,
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_COMMAND],
                stdin=subprocess.PIPE,
                pass_fds=(read_fd,),
                close_fds=True,
            )
        finally:
            os.close(read_fd)
        assert process.stdin is not None
        try:
            process.stdin.write(pickle.dumps(config))
            process.stdin.close()
        except BrokenPipeError:
            pass
        proc = _WorkerProcess(worker_id, group, process, write_fd, time.monotonic())
        self.workers[worker_id] = proc
        self._watch(proc)

    def _watch(self, proc: _WorkerProcess) -> None:
        """Call ``_on_exit`` when the process ends, without polling (pidfd, else a thread)."""
        assert self._loop is not None
        loop = self._loop
        try:
            pidfd = os.pidfd_open(proc.process.pid)
        except (AttributeError, OSError):
            def wait() -> None:
                proc.process.wait()
                loop.call_soon_threadsafe(self._on_exit, proc, -1)

            threading.Thread(target=wait, daemon=True, name=f"wait-{proc.id}").start()
            return
        loop.add_reader(pidfd, self._on_exit, proc, pidfd)

    def _on_exit(self, proc: _WorkerProcess, pidfd: int) -> None:
        assert self._loop is not None
        if pidfd >= 0:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        code = proc.process.wait()
        self._forget_worker(proc)
        if self._stopping:
            return
        if code == EXIT_SETUP_FAILED and self.state != "draining":
            self.setup_failed = True
            self.state = "unhealthy"
            log.error("WKHUB - worker %s: the setup hook %s failed (its traceback is above); not starting it "
                      "again. Fix the hook and restart the hub.", proc.id, self.setup_name)
            self._send({"type": "worker_lost", "hub": self.id, "worker": proc.id,
                        "reason": f"its setup hook {self.setup_name} failed"})
            return
        if code == EXIT_RETIRED:
            # It said worker_bye itself after its last results; this covers a lost goodbye.
            log.debug("WKHUB - worker %s retired", proc.id)
            self._send({"type": "worker_lost", "hub": self.id, "worker": proc.id,
                        "reason": "it retired", "retired": True})
        elif proc.memory_exceeded is not None:
            self._send({"type": "worker_lost", "hub": self.id, "worker": proc.id,
                        "reason": proc.memory_exceeded, "error": "WorkerMemoryExceeded"})
        else:
            if proc.kill_requested:
                reason = "killed at the balancer's request"
                log.info("WKHUB - worker %s %s", proc.id, reason)
            else:
                reason = self._exit_reason(code)
                log.warning("WKHUB - worker %s %s", proc.id, reason)
            self._send({"type": "worker_lost", "hub": self.id, "worker": proc.id, "reason": reason})
        if self.state == "draining":
            if not self.workers:
                log.info("WKHUB - every worker has finished: stopping")
                self._request_stop()
            return
        if code == EXIT_RETIRED:
            self._spawn(proc.group)
            return
        young = time.monotonic() - proc.started < CRASH_YOUNG
        delay = self._crash_delay() if young and not proc.kill_requested else 0.0
        if delay:
            log.warning("WKHUB - workers keep dying; next start in %.0f s", delay)
            self._loop.call_later(delay, self._respawn, proc.group)
        else:
            self._spawn(proc.group)

    def _exit_reason(self, code: int) -> str:
        if code >= 0:
            reason = f"exited with code {code}"
        else:
            try:
                reason = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                reason = f"killed by signal {-code}"
        if code == -signal.SIGKILL:
            reason += " (if nobody killed it, the system may have run out of memory)"
        return reason

    def _respawn(self, group: dict[str, Any]) -> None:
        if not self._stopping and self.state != "draining":
            self._spawn(group)

    def _crash_delay(self) -> float:
        now = time.monotonic()
        deaths = self._supervision.deaths
        deaths.append(now)
        while deaths and now - deaths[0] > CRASH_WINDOW:
            deaths.popleft()
        if len(deaths) >= CRASH_LIMIT:
            self.state = "unhealthy"
            current = self._supervision.respawn_delay
            self._supervision.respawn_delay = min(MAX_RESPAWN_DELAY, max(1.0, current * 2))
            return self._supervision.respawn_delay
        self.state = "ok"
        self._supervision.respawn_delay = 0.0
        return 0.0

    def _stop_worker(self, proc: _WorkerProcess) -> None:
        """SIGKILL: workers ignore SIGTERM (a batch job's SIGTERM is meant for the hub)."""
        with contextlib.suppress(ProcessLookupError):
            proc.process.kill()

    def _forget_worker(self, proc: _WorkerProcess) -> None:
        if self.workers.pop(proc.id, None) is not None:
            with contextlib.suppress(OSError):
                os.close(proc.control)


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
