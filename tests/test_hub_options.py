"""`plb hub` options for hubs on other machines: recycling, memory limits, draining, reconnecting.

Real balancer, real hub and worker processes, real sockets; every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jupyter_plb.client import Client, outbox
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.errors import DeserializationError, TaskFailed, WorkerLost, WorkerMemoryExceeded
from jupyter_plb.workers.spawn import stop_process

from .conftest import ROOT, wait_for, worker_count


def whoami(i: int) -> tuple[int, int]:
    return i, os.getpid()


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes << 20))


def hold_resident(megabytes: int, first_only: str = "") -> int:
    """Fill ``megabytes`` of memory (resident: every page written) and keep it for up to 60 s;
    with ``first_only`` (a file path), only the first attempt does, a retry returns at once."""
    if first_only:
        if os.path.exists(first_only):
            return os.getpid()
        Path(first_only).touch()
    data = b"x" * (megabytes << 20)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return len(data)


def reserve_virtual(gigabytes: int) -> tuple[int, int]:
    """Map ``gigabytes`` of address space without touching it (as BLAS or CUDA reserve it)."""
    import mmap

    region = mmap.mmap(-1, gigabytes << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    time.sleep(1.0)  # several of the hub's memory checks see the mapping
    size = len(region)
    region.close()
    return size, os.getpid()


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_gate(gate: str, value: int) -> int:
    Path(f"{gate}.started-{value}").touch()
    while not os.path.exists(gate):
        time.sleep(0.01)
    return value


def hub_states(client: Client) -> dict[str, str]:
    return {h["name"]: h["state"] for h in client.status()["hubs"]}


@pytest.fixture
def hub_process(
    connection_file: Path, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``plb hub`` as a child process (not --local: it must survive its balancer), log in a file."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, name: str = "remote", log: str = "hub.log") -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "wb") as out:
            hub = subprocess.Popen(
                [sys.executable, "-m", "jupyter_plb", "hub",
                 "--connect", str(connection_file), "--name", name, *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        started.append(hub)
        return hub

    yield start
    for hub in started:
        stop_process(hub, timeout=5)


def test_max_tasks_per_worker_recycles_without_losing_or_failing(
    client: Client, start_hub: Callable[..., subprocess.Popen[bytes]]
) -> None:
    start_hub(1, "--max-tasks-per-worker", "3")
    wait_for(lambda: worker_count(client) == 1, what="the worker to register")
    results = list(client.map(whoami, range(20), timeout=60))
    assert [i for i, _ in results] == list(range(20))
    per_worker: dict[int, int] = {}
    for _, pid in results:
        per_worker[pid] = per_worker.get(pid, 0) + 1
    assert len(per_worker) >= 7, "a worker retires after its 3rd task: 20 tasks need 7 workers"
    assert max(per_worker.values()) <= 3
    status = client.status()
    assert status["totals"]["failed"] == 0
    assert [h["state"] for h in status["hubs"]] == ["ok"], "recycling is not crashing"
    wait_for(lambda: worker_count(client) == 1, what="the last retired worker to be replaced")


def worker_pids(client: Client) -> set[int]:
    return {w["pid"] for h in client.status()["hubs"] for w in h["workers"]}


def test_memory_limit_kills_and_replaces_a_worker_over_it(
    client: Client, start_hub: Callable[..., subprocess.Popen[bytes]]
) -> None:
    start_hub(1, "--memory-limit", "100M")
    wait_for(lambda: worker_count(client) == 1, what="the worker to register")
    pid_before = client.submit(os.getpid).result(timeout=20)
    started = time.monotonic()
    with pytest.raises(WorkerMemoryExceeded) as exceeded:
        client.submit(hold_resident, 200).result(timeout=30)
    assert time.monotonic() - started < 30, "killed at once, not when the task ended"
    assert isinstance(exceeded.value, WorkerLost) and isinstance(exceeded.value, MemoryError)
    assert "over the hub's limit of 100 MiB" in str(exceeded.value)
    assert "killed and replaced" in str(exceeded.value)
    wait_for(lambda: worker_count(client) == 1 and pid_before not in worker_pids(client),
             what="a fresh worker in place of the killed one")
    pid_after = client.submit(os.getpid).result(timeout=20)
    assert pid_after != pid_before
    assert client.submit(allocate, 16).result(timeout=20) == 16 << 20, "tasks under the limit run"
    assert client.submit(os.getpid).result(timeout=20) == pid_after, "and do not cost a worker"
    with pytest.raises(WorkerLost) as lost:
        client.submit(kill_self).result(timeout=20)
    assert "killed by SIGKILL" in str(lost.value) and not isinstance(lost.value, WorkerMemoryExceeded)


def test_memory_limit_retries_a_task_whose_worker_was_killed(
    client: Client, start_hub: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    start_hub(1, "--memory-limit", "100M")
    wait_for(lambda: worker_count(client) == 1, what="the worker to register")
    pid_before = client.submit(os.getpid).result(timeout=20)
    retried = client.options(retries=1).submit(hold_resident, 200, str(tmp_path / "first-attempt"))
    assert retried.result(timeout=30) not in (pid_before, 200 << 20), "the retry ran on a fresh worker"


def test_memory_limit_counts_resident_memory_not_address_space(
    client: Client, start_hub: Callable[..., subprocess.Popen[bytes]]
) -> None:
    start_hub(1, "--memory-limit", "100M")
    wait_for(lambda: worker_count(client) == 1, what="the worker to register")
    pid_before = client.submit(os.getpid).result(timeout=20)
    assert client.submit(reserve_virtual, 2).result(timeout=30) == (2 << 30, pid_before)


def test_sigterm_drains_running_tasks_then_exits_0(
    client: Client,
    hub_process: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    gate = str(tmp_path / "gate")
    hub = hub_process("--workers", "2", "--grace", "30", name="leaving")
    wait_for(lambda: worker_count(client) == 2, what="2 workers to register")
    slow = [client.submit(wait_for_gate, gate, i) for i in range(2)]
    wait_for(lambda: all(Path(f"{gate}.started-{i}").exists() for i in range(2)), what="both workers to be busy")
    queued = [client.submit(whoami, i) for i in range(6)]
    hub.send_signal(signal.SIGTERM)
    wait_for(lambda: hub_states(client).get("leaving") == "draining", what="the hub to drain")
    assert hub.poll() is None, "running tasks keep the hub alive"
    Path(gate).touch()
    assert [f.result(timeout=30) for f in slow] == [0, 1], "running tasks finished"
    assert hub.wait(30) == 0
    wait_for(lambda: "leaving" not in hub_states(client), what="the hub to leave")
    assert not any(f.done() for f in queued), "nothing new went to the draining hub"
    hub_process("--workers", "1", name="next", log="next.log")
    assert sorted(f.result(timeout=30)[0] for f in queued) == list(range(6))
    totals = client.status()["totals"]
    assert totals["failed"] == 0 and totals["done"] == 8
    log = (tmp_path / "hub.log").read_text()
    assert "draining leaving" in log and "WorkerLost" not in log


def test_grace_period_over_hands_running_tasks_back(
    client: Client,
    hub_process: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    gate = str(tmp_path / "gate")
    hub = hub_process("--workers", "1", "--grace", "0.5", name="short-grace")
    wait_for(lambda: worker_count(client) == 1, what="the worker to register")
    stuck = client.submit(wait_for_gate, gate, 7)
    wait_for(lambda: Path(f"{gate}.started-7").exists(), what="the task to start")
    hub.send_signal(signal.SIGTERM)
    assert hub.wait(20) == 0
    assert not stuck.done(), "handed back, not failed"
    Path(gate).touch()
    hub_process("--workers", "1", name="second", log="second.log")
    assert stuck.result(timeout=30) == 7
    assert client.status()["totals"]["failed"] == 0
    assert "grace period of 0.5 s is over" in (tmp_path / "hub.log").read_text()


def test_hub_waits_out_a_balancer_restart_and_registers_again(
    make_cluster: Callable[..., LocalCluster],
    connection_file: Path,
    hub_process: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    cluster = make_cluster()
    hub = hub_process("--workers", "2", name="patient")
    with Client(connection_file=connection_file, user="tester") as c:
        wait_for(lambda: worker_count(c) == 2, what="2 workers to register")
        assert c.submit(whoami, 1).result(timeout=20)[0] == 1
    cluster.stop()
    log = tmp_path / "hub.log"
    wait_for(lambda: "has not answered" in log.read_text(), what="the hub to notice", timeout=30)
    assert hub.poll() is None, "the hub waits for the balancer"
    make_cluster()
    with Client(connection_file=connection_file, user="tester") as c:
        wait_for(lambda: worker_count(c) == 2, what="hub and workers to register again", timeout=40)
        assert sorted(i for i, _ in c.map(whoami, range(10), timeout=30)) == list(range(10))
        assert [h["name"] for h in c.status()["hubs"]] == ["patient"]
    assert "answers again" in log.read_text()


def test_hub_identity_and_version_mismatch_are_named(
    ready_client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub = ready_client.status()["hubs"][0]
    assert hub["name"] == "test-hub" and hub["host"] and hub["python"] and hub["cloudpickle"]
    module = tmp_path / "only_on_the_client.py"
    module.write_text("def double(x):\n    return 2 * x\n\n\ndef triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_the_client  # type: ignore[import-not-found]

    with pytest.raises((DeserializationError, TaskFailed)) as same:
        ready_client.submit(only_on_the_client.double, 2).result(timeout=20)
    assert "both run Python" in str(same.value) and "not installed" in str(same.value)
    monkeypatch.setattr(outbox, "VERSIONS", "Python 3.99.0, cloudpickle 0.1.0")
    with pytest.raises((DeserializationError, TaskFailed)) as other:
        ready_client.submit(only_on_the_client.triple, 3).result(timeout=20)
    message = str(other.value)
    assert "the client runs Python 3.99.0, cloudpickle 0.1.0" in message
    assert f"runs Python {sys.version_info.major}.{sys.version_info.minor}" in message


def test_start_listens_on_one_address_and_advertises_another(tmp_path: Path) -> None:
    import json

    import psutil

    from jupyter_plb.transport import security

    security.keygen(tmp_path / "security", user="tester")
    params = tmp_path / "parameters.json"
    params.write_text(json.dumps({
        "LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0,
        "LB_SECURITY_DIR": str(tmp_path / "security"), "LB_JOURNAL": False,
    }))
    connection_file = tmp_path / "plb-connection.json"
    balancer = subprocess.Popen(
        [sys.executable, "-m", "jupyter_plb", "start",
         "-p", str(params), "--connection-file", str(connection_file), "--no-monitor",
         "--bind", "0.0.0.0", "--advertise", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for(connection_file.exists, what="the connection file")
        written = json.loads(connection_file.read_text())
        assert written["address"] == "127.0.0.1", "others are told the advertised address"
        assert written.get("curve_serverkey"), "beyond loopback, CurveZMQ is on by default"
        ports = {written["client_port"], written["worker_port"], written["health_port"]}
        process = psutil.Process(balancer.pid)
        connections = getattr(process, "net_connections", process.connections)("tcp")
        listening = {
            (c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN
        }
        assert {("0.0.0.0", port) for port in ports} <= listening, "bound on every interface"
        with Client(connection_file=connection_file) as c:
            assert c.status()["balancer"]["address"] == "tcp://127.0.0.1"
    finally:
        stop_process(balancer)
