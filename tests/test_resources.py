"""Right-sized workers: CPUs from affinity and cgroup quotas, not the host's core count.

Real processes pinned with ``os.sched_setaffinity``; the cgroup readers on sample file contents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jupyter_plb.client import Client
from jupyter_plb.workers import resources
from jupyter_plb.workers.spawn import stop_process

from .conftest import ROOT, run_script, wait_for, worker_count

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and at least 2 CPUs",
)


@pytest.mark.parametrize(("text", "cpus"), [
    ("max 100000\n", None),
    ("150000 100000\n", 1.5),
    ("50000 100000", 0.5),
    ("200000", 2.0),
    ("", None),
    ("garbage here", None),
])
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert resources.parse_cpu_max(text) == cpus


@pytest.mark.parametrize(("quota", "period", "cpus"), [
    ("-1\n", "100000\n", None),
    ("250000\n", "100000\n", 2.5),
    ("0", "100000", None),
    ("x", "100000", None),
])
def test_parse_cfs(quota: str, period: str, cpus: float | None) -> None:
    assert resources.parse_cfs(quota, period) == cpus


def _fake_proc(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    proc_self = tmp_path / "proc-self"
    proc_self.mkdir()
    (proc_self / "cgroup").write_text(cgroup)
    (proc_self / "mountinfo").write_text("".join(f"{i} 1 0:{i} {m}\n" for i, m in enumerate(mounts, 30)))
    return proc_self


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    user = root / "user.slice" / "jupyter-ada"
    user.mkdir(parents=True)
    (root / "user.slice" / "cpu.max").write_text("400000 100000\n")
    (user / "cpu.max").write_text("150000 100000\n")
    proc_self = _fake_proc(tmp_path, "0::/user.slice/jupyter-ada\n", [
        f"/ {root} rw,nosuid - cgroup2 cgroup2 rw",
    ])
    assert resources.cgroup_cpu_quota(proc_self) == 1.5
    (user / "cpu.max").write_text("max 100000\n")
    assert resources.cgroup_cpu_quota(proc_self) == 4.0


def test_cgroup_v1_quota_and_a_container_seeing_its_cgroup_as_root(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("200000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    # Inside a container /proc/self/cgroup names the host's path, the mount shows only its own.
    proc_self = _fake_proc(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n", [
        f"/docker/abc {cpu} rw - cgroup cgroup rw,cpu,cpuacct",
        f"/docker/abc {tmp_path / 'memory'} rw - cgroup cgroup rw,memory",
    ])
    assert resources.cgroup_cpu_quota(proc_self) == 2.0


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert resources.cgroup_cpu_quota(tmp_path / "missing") is None
    proc_self = _fake_proc(tmp_path, "0::/\n", [f"/ {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw"])
    assert resources.cgroup_cpu_quota(proc_self) is None


def _pin_to_cpu0() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def test_usable_cpus_follows_the_affinity_mask(tmp_path: Path) -> None:
    code = ("import os; from jupyter_plb.workers.resources import usable_cpus; "
            "print(usable_cpus()); os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cpus())")
    done = run_script(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(os.sched_getaffinity(0))), "1"]


def test_the_extension_default_local_workers_follows_the_affinity_mask(tmp_path: Path) -> None:
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from jupyter_plb.jupyter.extension import PlbExtension; print(PlbExtension().local_workers)")
    done = run_script(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]


@pytest.fixture
def pinned_balancer(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``plb start --workers`` (no count) in a process allowed one CPU."""
    params = tmp_path / "parameters.json"
    params.write_text(json.dumps({"LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0,
                                  "LB_HEARTBEAT_INTERVAL": 0.3}))
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_plb", "start", "-p", str(params),
         "--connection-file", str(tmp_path / "plb-connection.json"), "--no-monitor", "--workers"],
        preexec_fn=_pin_to_cpu0, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    yield process
    stop_process(process)


def test_plb_start_workers_in_a_pinned_process_starts_one_worker(
    pinned_balancer: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    connection_file = tmp_path / "plb-connection.json"
    wait_for(connection_file.exists, what="the connection file")
    with Client(connection_file=connection_file) as client:
        wait_for(lambda: worker_count(client) >= 1, what="the local hub's workers")
        assert client.submit(os.getpid).result(timeout=30) > 0
    # The balancer's children: the hub, and the workers it spawned at once, before any registered.
    (hub,) = psutil.Process(pinned_balancer.pid).children()
    assert len(hub.children()) == 1


def test_plb_hub_workers_auto_in_a_pinned_process(tmp_path: Path, cluster: object, connection_file: Path) -> None:
    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyter_plb", "hub",
         "--connect", str(connection_file), "--workers", "--local"],
        preexec_fn=_pin_to_cpu0, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        with Client(connection_file=connection_file) as client:
            wait_for(lambda: worker_count(client) >= 1, what="the hub's workers")
            assert client.submit(os.getpid).result(timeout=30) > 0
        assert len(psutil.Process(hub.pid).children()) == 1
    finally:
        stop_process(hub)


def spin_until(gate: str) -> int:
    import time

    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        pass
    return os.getpid()


def test_heartbeats_carry_each_workers_cpu_and_resident_memory(
    ready_client: Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    busy = ready_client.submit(spin_until, str(gate))

    def sampled() -> list[dict[str, object]] | None:
        workers = [w for h in ready_client.status()["hubs"] for w in h["workers"]]
        spinning = [w for w in workers if w["state"] == "busy" and (w["cpu"] or 0) >= 20]
        return workers if spinning and all((w["rss"] or 0) > 5 << 20 for w in workers) else None

    try:
        workers = wait_for(sampled, what="a heartbeat showing the spinning worker's CPU and every RSS")
    finally:
        gate.touch()
    pid = busy.result(timeout=30)
    (spinner,) = [w for w in workers if w["pid"] == pid]
    assert 20 <= spinner["cpu"] <= 150
    assert all(w["rss"] < 1 << 30 for w in workers)
