"""``plb slurm`` against a real one-node Slurm cluster (``tests/slurm_cluster.py``).

Hubs are submitted with ``plb slurm`` (once, or adaptively with ``--adapt``), register with a real
balancer from inside their job, run tasks, and go away: by ``scancel``, at their time limit, or
retired when idle. Their running tasks are handed back and finish elsewhere, each exactly once.
The timings (submit -> first result, scale-up to 5 hubs, scale-down to 0) are printed and written
to ``test-artifacts/slurm-timings.json``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.workers.spawn import start_local_hub, stop_process

from .conftest import ROOT, free_params, wait_for
from .slurm_cluster import SlurmCluster, SlurmUnavailable, unavailable

PLB = [sys.executable, "-m", "jupyter_plb"]
#: How the job scripts run plb: this interpreter and this checkout.
JOB_PLB = (f"env PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} "
           "-m jupyter_plb")
TIMINGS: dict[str, float] = {}

pytestmark = pytest.mark.timeout(180)


def record(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 2)
    print(f"\nTIMING {name}: {seconds:.2f} s")
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    (folder / "slurm-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


def square(x: int) -> int:
    return x * x


def job_of_worker(seconds: float) -> str | None:
    """Sleep, then say which Slurm job ran this (None: a hub outside Slurm)."""
    time.sleep(seconds)
    return os.environ.get("SLURM_JOB_ID")


def held_until(flag: str) -> str | None:
    """Run until ``flag`` exists (a task that cannot finish inside its job), then say where it ran."""
    while not os.path.exists(flag):
        time.sleep(0.05)
    return os.environ.get("SLURM_JOB_ID")


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    started = time.monotonic()
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        cluster.stop()
        pytest.skip(f"Slurm is installed but cannot start here: {exc}")
    record("slurm cluster start", time.monotonic() - started)
    os.environ["SLURM_CONF"] = str(cluster.conf)  # for the adapter's sbatch/squeue/scancel
    try:
        yield cluster
    finally:
        del os.environ["SLURM_CONF"]
        cluster.stop()


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    folder = tmp_path_factory.mktemp("balancer")
    cluster = LocalCluster(free_params(), monitor=False, connection_file=folder / "plb-connection.json")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def client(balancer: LocalCluster) -> Iterator[Client]:
    c = Client(connection_file=balancer.connection_file)
    yield c
    c.shutdown(wait=False, cancel_futures=True)  # a failed test may leave held tasks behind


@pytest.fixture
def no_jobs_left(slurm: SlurmCluster) -> Iterator[None]:
    yield
    slurm.run("scancel", "--user=root")
    wait_for(lambda: not slurm.jobs(), timeout=30, what="Slurm to list no job")


def plb_slurm(balancer: LocalCluster, folder: Path, *args: str) -> list[str]:
    return [*PLB, "slurm", "--connect", str(balancer.connection_file), "--plb-command", JOB_PLB, *args]


def submit_hub(balancer: LocalCluster, folder: Path, *args: str) -> str:
    done = subprocess.run(plb_slurm(balancer, folder, *args), capture_output=True, text=True,
                          timeout=60, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("submitted Slurm job "), done.stdout
    return done.stdout.split()[3].rstrip(":")


def job_hubs(client: Client, job_id: str) -> list[dict[str, Any]]:
    return [h for h in client.status()["hubs"] if h.get("job") == job_id and h["state"] == "ok"]


def slurm_hubs(client: Client) -> list[dict[str, Any]]:
    return [h for h in client.status()["hubs"] if h.get("job") and h["state"] != "lost"]


# -- one job ---------------------------------------------------------------------------------------
def test_a_submitted_hub_registers_runs_tasks_and_scancel_hands_back_its_running_tasks(
    slurm: SlurmCluster, balancer: LocalCluster, client: Client, tmp_path: Path, no_jobs_left: None,
) -> None:
    started = time.monotonic()
    job_id = submit_hub(balancer, tmp_path, "--workers-per-node", "2", "--grace", "1", "--job-name", "plb-once")
    assert client.submit(square, 7).result(timeout=60) == 49
    record("submit -> first task", time.monotonic() - started)
    (hub,) = job_hubs(client, job_id)
    assert hub["name"] == f"slurm-{job_id}-{slurm.node}" and len(hub["workers"]) == 2
    assert list(client.map(square, range(50))) == [x * x for x in range(50)]

    flag = tmp_path / "release"
    held = [client.submit(held_until, str(flag)) for _ in range(2)]
    wait_for(lambda: client.status()["totals"]["running"] == 2, what="both tasks to run in the job")
    assert slurm.run("scancel", job_id).returncode == 0
    wait_for(lambda: not slurm.jobs(), timeout=60, what=f"job {job_id} to end after scancel")
    wait_for(lambda: client.status()["totals"]["queued"] == 2, what="the held tasks to be queued again")
    local = start_local_hub(balancer.connection_file, 2, name="outside-slurm")
    try:
        flag.touch()
        assert [f.result(timeout=60) for f in held] == [None, None]  # finished outside the job
    finally:
        stop_process(local)
    assert "slurm-" + job_id in (tmp_path / f"plb-once-{job_id}.out").read_text()


def test_at_the_time_limit_a_hub_drains_and_its_running_tasks_finish_elsewhere(
    slurm: SlurmCluster, balancer: LocalCluster, client: Client, tmp_path: Path, no_jobs_left: None,
) -> None:
    flag = tmp_path / "release"
    job_id = submit_hub(balancer, tmp_path, "--workers-per-node", "2", "--grace", "1", "--time", "1",
                        "--job-name", "plb-walltime")
    wait_for(lambda: job_hubs(client, job_id), timeout=60, what="the hub to register")
    held = [client.submit(held_until, str(flag)) for _ in range(3)]
    wait_for(lambda: client.status()["totals"]["running"] == 2, what="two tasks to run in the job")
    started = time.monotonic()
    # Slurm sends the hubs SIGTERM (--signal=TERM@31) ahead of the 1-minute limit.
    wait_for(lambda: not slurm.jobs(), timeout=120, what=f"job {job_id} to end at its time limit")
    record("time limit: job start -> job gone", time.monotonic() - started)
    wait_for(lambda: client.status()["totals"]["queued"] == 3, what="the running tasks to be queued again")
    log = (tmp_path / f"plb-walltime-{job_id}.out").read_text()
    assert "drain" in log.lower(), log
    local = start_local_hub(balancer.connection_file, 3, name="outside-slurm")
    try:
        flag.touch()
        assert [f.result(timeout=60) for f in held] == [None] * 3
    finally:
        stop_process(local)


# -- adaptive --------------------------------------------------------------------------------------
def test_plb_slurm_adapt_scales_up_to_the_maximum_and_back_to_zero(
    slurm: SlurmCluster, balancer: LocalCluster, client: Client, tmp_path: Path, no_jobs_left: None,
) -> None:
    adapter = subprocess.Popen(
        plb_slurm(balancer, tmp_path, "--adapt", "--minimum", "0", "--maximum", "5", "--target-wait", "0.3",
                  "--idle-grace", "1.5", "--interval", "0.3", "--grace", "1", "--job-name", "plb-adapt"),
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_for(lambda: client.status()["launchers"], timeout=30, what="the adapter to report")
        assert not slurm.jobs()
        most = 0

        def five_hubs() -> bool:
            nonlocal most
            most = max(most, len(slurm.jobs()))
            return len(slurm_hubs(client)) == 5

        started = time.monotonic()
        futures = [client.submit(job_of_worker, 1.0) for _ in range(25)]
        wait_for(five_hubs, timeout=90, what="5 Slurm hubs to register")
        record("scale-up 0 -> 5 hubs", time.monotonic() - started)
        (launcher,) = client.status()["launchers"]
        assert launcher["maximum"] == 5 and len(launcher["jobs"]) == 5
        assert {j["id"] for j in launcher["jobs"]} == {h["job"] for h in slurm_hubs(client)}
        ran_in = [f.result(timeout=90) for f in futures]
        assert all(ran_in) and len(set(ran_in)) > 1  # every task ran in a Slurm job, over several
        idle = time.monotonic()

        def none_left() -> bool:
            nonlocal most
            jobs = slurm.jobs()
            most = max(most, len(jobs))
            return not jobs and not slurm_hubs(client)

        wait_for(none_left, timeout=90, what="the adapter to retire every job")
        record("scale-down 5 -> 0 (after 1.5 s idle grace)", time.monotonic() - idle)
        assert most <= 5
        wait_for(lambda: client.status()["launchers"][0]["jobs"] == [], what="an empty job table")
    finally:
        adapter.send_signal(signal.SIGTERM)
        output, _ = adapter.communicate(timeout=60)
    assert adapter.returncode == 0, output
    assert output.count("submitted job") == 5 and output.count("retiring job") == 5, output
    wait_for(lambda: not client.status()["launchers"], what="the adapter to close its entry")


def test_client_adapt_keeps_the_minimum_and_stop_drains_it(
    slurm: SlurmCluster, balancer: LocalCluster, client: Client, tmp_path: Path, no_jobs_left: None,
) -> None:
    adapter = client.adapt(minimum=1, maximum=2, connection_file=balancer.connection_file, interval=0.3,
                           idle_grace=60, plb_command=JOB_PLB, job_name="plb-client-adapt",
                           sbatch_options=[f"--chdir={tmp_path}"], options=_grace(1))
    try:
        wait_for(lambda: len(slurm_hubs(client)) == 1, timeout=60, what="the minimum's hub to register")
        assert client.submit(square, 9).result(timeout=30) == 81
        (job_id,) = slurm.jobs()
        (launcher,) = client.status()["launchers"]
        assert launcher["jobs"][0]["id"] == job_id and launcher["counts"]["running"] == 1
    finally:
        adapter.stop(timeout=60)
    assert not slurm.jobs() and not adapter.jobs
    wait_for(lambda: not slurm_hubs(client), what="the hub to leave")


def _grace(seconds: float) -> Any:
    from jupyter_plb.jobs.batch import HubOptions

    return HubOptions(grace=seconds)
