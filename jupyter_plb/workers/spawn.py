"""Starting a hub as a child process and stopping a child process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


def start_local_hub(
    connection_file: str | Path,
    workers: int,
    *,
    name: str = "local",
    extra_args: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """``plb hub --connect FILE --workers N`` as a child process (ipykernel-free)."""
    command = [
        sys.executable, "-m", "jupyter_plb",
        "hub", "--connect", str(connection_file), "--workers", str(workers),
        "--name", name, "--local", *(extra_args or []),
    ]
    return subprocess.Popen(command, start_new_session=True)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, wait, then SIGKILL the whole process group if it is still there."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return process.wait()
