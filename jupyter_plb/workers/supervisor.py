"""A hub's worker processes: starting them, noticing when they exit, replacing them, limiting their memory.

Each exit is reported to the balancer (``worker_lost``, with its reason) and the worker is replaced
at once, unless workers keep crashing young: CRASH_LIMIT such deaths within CRASH_WINDOW seconds mark
the hub unhealthy and space the next starts out. A worker whose setup hook raised is not started again.

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
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from jupyter_plb.core import protocol
from jupyter_plb.workers import resources
from jupyter_plb.workers.worker import EXIT_RETIRED, EXIT_SETUP_FAILED, WorkerConfig

if TYPE_CHECKING:
    from jupyter_plb.transport.security import PeerKeys

log = logging.getLogger(__name__)

#: Worker deaths within CRASH_WINDOW seconds that mark the hub unhealthy and slow respawns.
CRASH_LIMIT = 5
CRASH_WINDOW = 30.0
#: Only workers dying younger than this count towards a crash loop (a worker that fails to start
#: or dies on its first task), not long-lived workers killed from outside.
CRASH_YOUNG = 1.0
MAX_RESPAWN_DELAY = 30.0
#: Seconds between two reads of the workers' resident memory when a memory limit is set.
MEMORY_CHECK_INTERVAL = 0.25

_WORKER_COMMAND = "from jupyter_plb.workers.worker import run_from_stdin; run_from_stdin()"

#: A hub's named tasks (``addTask``): name → (function, its keyword arguments).
Routes = dict[str, tuple[Callable[..., Any], dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    """What every worker of a hub starts with; each also gets its own id, priorities and pipe."""

    hub_id: str
    url: str
    key: bytes
    curve: PeerKeys | None
    max_message_size: int
    #: Pickled afresh for each worker.
    routes: Routes
    max_tasks: int
    setup: bytes
    setup_name: str
    #: Large results in shared memory (a local hub, LB_SHARED_MEMORY), with digests (LB_SHM_DIGESTS).
    shared_memory: bool = False
    shm_digests: bool = False

    def config(self, worker_id: str, group: dict[str, Any], control_fd: int) -> WorkerConfig:
        return WorkerConfig(
            url=self.url,
            key=self.key,
            worker_id=worker_id,
            hub_id=self.hub_id,
            min_p=float(group["minP"]),
            max_p=float(group["maxP"]),
            process_p=int(group.get("processP", 0)),
            routes=cloudpickle.dumps(self.routes),
            control_fd=control_fd,
            max_message_size=self.max_message_size,
            max_tasks=self.max_tasks,
            curve=self.curve,
            setup=self.setup,
            setup_name=self.setup_name,
            shared_memory=self.shared_memory,
            shm_digests=self.shm_digests,
        )


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


def exit_reason(code: int) -> str:
    """How a worker's exit code reads in a ``worker_lost`` message."""
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


class Supervisor:
    """Keeps a hub's workers running; ``report`` tells the balancer of each one lost, and
    ``on_drained`` is called when the last one of a draining hub has exited."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        launch: WorkerLaunch,
        *,
        memory_limit: int,
        report: Callable[[dict[str, Any]], None],
        on_drained: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.launch = launch
        self.memory_limit = memory_limit
        self.report = report
        self.on_drained = on_drained
        self.workers: dict[str, _WorkerProcess] = {}
        #: The hub's state for the balancer: "ok", "unhealthy" or "draining".
        self.state = "ok"
        #: Set when a worker's setup hook raised: the hub stays unhealthy and starts no more workers.
        self.setup_failed = False
        #: Set when the hub stops: workers that exit now are neither reported nor replaced.
        self.stopping = False
        self._deaths: collections.deque[float] = collections.deque()
        self._respawn_delay = 0.0
        self._retiring = False
        self._memory_check: asyncio.TimerHandle | None = None

    def start(self, groups: list[dict[str, Any]]) -> None:
        """Start each group's workers, and watch their memory if there is a limit."""
        for group in groups:
            for _ in range(group["nWorkers"]):
                self._spawn(group)
        if self.memory_limit:
            self._check_memory()

    def drain(self) -> None:
        """Replace no worker any more; the last one to exit calls ``on_drained``."""
        self.state = "draining"

    def retire(self) -> None:
        """Each worker leaves after its running task (the control pipe's ``D``)."""
        if self._retiring:
            return
        self._retiring = True
        for proc in self.workers.values():
            with contextlib.suppress(OSError):
                os.write(proc.control, b"D")

    def announce(self) -> None:
        """Each worker tells the balancer about itself again (the control pipe's ``A``)."""
        for proc in self.workers.values():
            with contextlib.suppress(OSError):
                os.write(proc.control, b"A")

    def kill(self, worker_id: str, reason: Any) -> None:
        """Kill a worker at the balancer's request; it is replaced without counting a crash."""
        proc = self.workers.get(worker_id)
        if proc is not None:
            log.info("WKHUB - killing %s: %s", proc.id, reason)
            proc.kill_requested = True
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()

    def stop(self) -> None:
        """Kill every worker and wait for them (SIGKILL: workers ignore SIGTERM, which a batch
        job's processes all get and which is meant for the hub)."""
        self.stopping = True
        if self._memory_check is not None:
            self._memory_check.cancel()
        for proc in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
        deadline = time.monotonic() + 5
        for proc in list(self.workers.values()):
            try:
                proc.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
            self._forget(proc)

    def forgive_crashes(self) -> None:
        """Healthy again once no young worker has died for CRASH_WINDOW seconds (unless a setup hook failed)."""
        calm = not self._deaths or time.monotonic() - self._deaths[-1] > CRASH_WINDOW
        if self.state == "unhealthy" and calm and not self.setup_failed:
            self.state = "ok"
            self._respawn_delay = 0.0

    def usage(self) -> dict[str, dict[str, float | int | None]]:
        """Each worker's CPU percent since the last call and its resident memory in bytes."""
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
        self._memory_check = self.loop.call_later(MEMORY_CHECK_INTERVAL, self._check_memory)

    def _spawn(self, group: dict[str, Any]) -> None:
        worker_id = protocol.new_id("worker")
        read_fd, write_fd = os.pipe()
        config = self.launch.config(worker_id, group, read_fd)
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
        loop = self.loop
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
        if pidfd >= 0:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
        code = proc.process.wait()
        self._forget(proc)
        if self.stopping:
            return
        setup_name = self.launch.setup_name
        if code == EXIT_SETUP_FAILED and self.state != "draining":
            self.setup_failed = True
            self.state = "unhealthy"
            log.error("WKHUB - worker %s: the setup hook %s failed (its traceback is above); not starting it "
                      "again. Fix the hook and restart the hub.", proc.id, setup_name)
            self._lost(proc, f"its setup hook {setup_name} failed")
            return
        if code == EXIT_RETIRED:
            # It said worker_bye itself after its last results; this covers a lost goodbye.
            log.debug("WKHUB - worker %s retired", proc.id)
            self._lost(proc, "it retired", retired=True)
        elif proc.memory_exceeded is not None:
            self._lost(proc, proc.memory_exceeded, error="WorkerMemoryExceeded")
        else:
            if proc.kill_requested:
                reason = "killed at the balancer's request"
                log.info("WKHUB - worker %s %s", proc.id, reason)
            else:
                reason = exit_reason(code)
                log.warning("WKHUB - worker %s %s", proc.id, reason)
            self._lost(proc, reason)
        if self.state == "draining":
            if not self.workers:
                log.info("WKHUB - every worker has finished: stopping")
                self.on_drained()
            return
        if code == EXIT_RETIRED:
            self._spawn(proc.group)
            return
        young = time.monotonic() - proc.started < CRASH_YOUNG
        delay = self._crash_delay() if young and not proc.kill_requested else 0.0
        if delay:
            log.warning("WKHUB - workers keep dying; next start in %.0f s", delay)
            self.loop.call_later(delay, self._respawn, proc.group)
        else:
            self._spawn(proc.group)

    def _lost(self, proc: _WorkerProcess, reason: str, **details: Any) -> None:
        self.report({"type": "worker_lost", "hub": self.launch.hub_id, "worker": proc.id, "reason": reason, **details})

    def _respawn(self, group: dict[str, Any]) -> None:
        if not self.stopping and self.state != "draining":
            self._spawn(group)

    def _crash_delay(self) -> float:
        now = time.monotonic()
        deaths = self._deaths
        deaths.append(now)
        while deaths and now - deaths[0] > CRASH_WINDOW:
            deaths.popleft()
        if len(deaths) >= CRASH_LIMIT:
            self.state = "unhealthy"
            self._respawn_delay = min(MAX_RESPAWN_DELAY, max(1.0, self._respawn_delay * 2))
            return self._respawn_delay
        self.state = "ok"
        self._respawn_delay = 0.0
        return 0.0

    def _forget(self, proc: _WorkerProcess) -> None:
        if self.workers.pop(proc.id, None) is not None:
            with contextlib.suppress(OSError):
                os.close(proc.control)
