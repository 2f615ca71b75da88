"""The embedded local hub: one ``plb hub`` child process the host starts and stops on request."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from typing import Any

from jupyter_plb.workers.spawn import start_local_hub, stop_process

log = logging.getLogger(__name__)

#: The most workers ``POST /plb/api/hub/local`` may ask for.
MAX_WORKERS = 1024


class LocalHub:
    """A WorkerHub child process (its own process group) with ``workers`` worker processes."""

    def __init__(self, connection_file: Path, workers: int, *, name: str = "local") -> None:
        self.connection_file = connection_file
        self.workers = workers
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def state(self) -> dict[str, Any]:
        """``{"running", "workers", "pid"}`` as ``POST /plb/api/hub/local`` answers."""
        running = self.running
        return {
            "running": running,
            "workers": self.workers if running else 0,
            "pid": self.process.pid if running and self.process else None,
        }

    async def start(self, workers: int | None = None) -> dict[str, Any]:
        """Start the hub unless it runs (a running hub keeps its worker count)."""
        async with self._lock:
            if not self.running:
                if workers is not None:
                    self.workers = workers
                self.process = await asyncio.to_thread(
                    start_local_hub, self.connection_file, self.workers, name=self.name
                )
                log.info(
                    "PLB - local hub started (pid %d, %d workers)", self.process.pid, self.workers
                )
            return self.state()

    async def stop(self) -> dict[str, Any]:
        """Stop the hub and its workers (SIGTERM, then SIGKILL to the process group)."""
        async with self._lock:
            await asyncio.to_thread(self.terminate)
            return self.state()

    def terminate(self) -> None:
        """Blocking stop, for hosts that stop synchronously."""
        process, self.process = self.process, None
        if process is not None:
            code = stop_process(process)
            log.info("PLB - local hub stopped (pid %d, exit code %s)", process.pid, code)
