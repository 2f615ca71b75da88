"""Start the balancer core in this process (``startAll``) and local hubs as child processes."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from jupyter_plb.balancer.healthcheck import HealthCheck
from jupyter_plb.balancer.service import Balancer
from jupyter_plb.cluster.console import show_on_console
from jupyter_plb.core import parameters
from jupyter_plb.transport.connection import ConnectionInfo
from jupyter_plb.workers.spawn import start_local_hub, stop_process

log = logging.getLogger(__name__)


class LocalCluster:
    """The balancer core (Balancer + HealthCheck, and the monitor when asked) on its own thread.

    Returned by :func:`startAll`; ``stop()`` stops everything it started, hubs included.
    """

    def __init__(
        self,
        params: parameters.Parameters | str | Path | None = None,
        *,
        monitor: bool = True,
        healthcheck: bool = True,
        connection_file: str | Path | None = None,
    ) -> None:
        self.params = parameters.load(params)
        self.balancer = Balancer(self.params, connection_file=connection_file)
        self.healthcheck = HealthCheck(self.params, connection_file=connection_file) if healthcheck else None
        self.with_monitor = monitor
        self.monitor: Any = None
        self.hubs: list[subprocess.Popen[bytes]] = []
        self.loop = asyncio.new_event_loop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plb-core", daemon=True)
        self._ready: Future[None] = Future()

    @property
    def info(self) -> ConnectionInfo:
        assert self.balancer.info is not None
        return self.balancer.info

    @property
    def connection_file(self) -> Path:
        assert self.balancer.connection_path is not None
        return self.balancer.connection_path

    @property
    def monitor_url(self) -> str | None:
        return self.monitor.url if self.monitor is not None else None

    def start(self, timeout: float = 30.0) -> LocalCluster:
        self._thread.start()
        self._ready.result(timeout)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:
            self._ready.set_exception(exc)
            self.loop.close()
            self._stopped.set()
            return
        self._ready.set_result(None)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self._stop())
            self.loop.close()
            self._stopped.set()

    async def _start(self) -> None:
        await self.balancer.start()
        if self.healthcheck is not None:
            self.healthcheck.start()
        if self.with_monitor:
            from jupyter_plb.monitor.standalone import StandaloneMonitor

            self.monitor = StandaloneMonitor(self.balancer, self.params)
            self.monitor.start()

    async def _stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.healthcheck is not None:
            await self.healthcheck.stop()
        await self.balancer.stop()

    def call(self, fn: Any, *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the core's loop and return its result (thread-safe)."""
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def start_hub(
        self, workers: int = 2, name: str = "local", extra_args: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a local WorkerHub child process connected to this balancer."""
        hub = start_local_hub(self.connection_file, workers, name=name, extra_args=extra_args)
        self.hubs.append(hub)
        return hub

    def stop(self) -> None:
        """Stop hubs started here, the monitor, the health check and the balancer."""
        for hub in self.hubs:
            stop_process(hub)
        self.hubs.clear()
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(15)

    def wait(self) -> None:
        """Block until stopped (Ctrl-C stops)."""
        try:
            while not self._stopped.wait(3600):
                pass
        except KeyboardInterrupt:
            self.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def startAll(
    params: parameters.Parameters | str | Path | None = None,
    *,
    monitor: bool = True,
    connection_file: str | Path | None = None,
) -> LocalCluster:
    """Seed API: start the Load Balancer, the Health Check and the Monitor; return their handle.

    A script that configured no logging sees the balancer's lines on its console, as with the seed.
    """
    show_on_console()
    return LocalCluster(params, monitor=monitor, connection_file=connection_file).start()
