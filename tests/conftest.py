"""Shared fixtures: a real balancer on free loopback ports, real hub processes, deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core import parameters
from jupyter_plb.workers.spawn import start_local_hub, stop_process

pytest_plugins = ("pytest_jupyter.jupyter_server",)

ROOT = Path(__file__).resolve().parent.parent


_PAUSE = threading.Event()


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Return the first truthy value of ``condition()`` or fail the test at the deadline.

    For state owned by another process (a hub registering, a worker replaced): the condition is
    re-checked with a growing pause (5 ms to 100 ms), never past ``timeout``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        _PAUSE.wait(delay)
        delay = min(delay * 2, 0.1)


def free_params(**overrides: Any) -> parameters.Parameters:
    """Parameters with every port chosen by the OS (never the seed's fixed ports)."""
    return parameters.load(
        LB_CLIENTPULLPORT=0,
        LB_WKPULLPORT=0,
        LB_HCREPPORT=0,
        MONITOR_PORT=0,
        HC_INTERVAL=0.2,
        LB_HEARTBEAT_INTERVAL=0.3,
        **overrides,
    )


@contextlib.contextmanager
def running_balancer(folder: Path, hub_name: str, workers: int = 2) -> Iterator[Path]:
    """A balancer and one registered hub for a whole module; yields the connection file."""
    connection_file = folder / "plb-connection.json"
    cluster = LocalCluster(free_params(), monitor=False, connection_file=connection_file).start()
    hub = start_local_hub(connection_file, workers, name=hub_name)
    try:
        with Client(connection_file=connection_file) as client:
            wait_for(lambda: worker_count(client) == workers, what=f"{workers} workers to register")
        yield connection_file
    finally:
        stop_process(hub)
        cluster.stop()


@pytest.fixture
def connection_file(tmp_path: Path) -> Path:
    return tmp_path / "plb-connection.json"


@pytest.fixture
def make_cluster(connection_file: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start a LocalCluster (balancer + health check) with chosen parameters; stopped afterwards."""
    started: list[LocalCluster] = []

    def make(monitor: bool = False, **overrides: Any) -> LocalCluster:
        cluster = LocalCluster(free_params(**overrides), monitor=monitor, connection_file=connection_file)
        cluster.start()
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster()


@pytest.fixture
def start_hub(connection_file: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``plb hub`` child processes; every one is stopped (group killed) at teardown."""
    hubs: list[subprocess.Popen[bytes]] = []

    def start(workers: int = 2, *extra: str, name: str = "test-hub") -> subprocess.Popen[bytes]:
        hub = start_local_hub(connection_file, workers, name=name, extra_args=list(extra))
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        stop_process(hub)


def worker_count(client: Client) -> int:
    return sum(len(h["workers"]) for h in client.status()["hubs"] if h["state"] == "ok")


@pytest.fixture
def client(cluster: LocalCluster, connection_file: Path) -> Iterator[Client]:
    with Client(connection_file=connection_file, user="tester") as c:
        yield c
        c.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def ready_client(client: Client, start_hub: Callable[..., Any]) -> Client:
    """A client whose balancer has a hub with 2 workers registered."""
    start_hub(2)
    wait_for(lambda: worker_count(client) == 2, what="2 workers to register")
    return client


def run_script(
    code: str, tmp_path: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as ``__main__`` of a fresh interpreter."""
    script = tmp_path / "script.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


class BalancerProcess:
    """``plb start`` in its own process, so the test can SIGKILL it and start it again."""

    def __init__(self, folder: Path, **params: object) -> None:
        self.folder = folder
        self.connection_file = folder / "plb-connection.json"
        self.params = folder / "parameters.json"
        self.params.write_text(json.dumps({
            "LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0,
            "LB_HEARTBEAT_INTERVAL": 0.3, "HC_INTERVAL": 0.5, **params,
        }))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        stamp = self.connection_file.stat().st_mtime_ns if self.connection_file.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_plb", "start", "-p", str(self.params),
             "--connection-file", str(self.connection_file), "--no-monitor"],
            start_new_session=True,
        )
        wait_for(
            lambda: self.connection_file.exists() and self.connection_file.stat().st_mtime_ns != stamp,
            what="the balancer to write its connection file",
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
def balancer_process(tmp_path: Path) -> Iterator[Callable[..., BalancerProcess]]:
    made: list[BalancerProcess] = []

    def make(**params: object) -> BalancerProcess:
        process = BalancerProcess(tmp_path, **params)
        process.start()
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--big", action="store_true", help="chaos test at full size (20,000 tasks)")
