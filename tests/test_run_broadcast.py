"""Code and data on every worker: ``client.run``, ``client.broadcast`` and the hub's setup hook."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jupyter_plb.client import Broadcast, Client
from jupyter_plb.errors import PlbError, RemoteTraceback, SerializationError, TaskRejected, WorkerLost
from jupyter_plb.workers.spawn import start_local_hub, stop_process
from jupyter_plb.workers.worker import cache_info

from .conftest import ROOT, wait_for, worker_count


def connected_workers(client: Client) -> set[str]:
    return {w["id"] for h in client.status()["hubs"] for w in h["workers"]}


@pytest.fixture
def three_workers(client: Client, start_hub: Callable[..., Any]) -> Client:
    start_hub(3)
    wait_for(lambda: worker_count(client) == 3, what="3 workers to register")
    return client


def kaput(word: str) -> None:
    raise ValueError(f"kaput {word}")


def total(data: np.ndarray, offset: int) -> float:
    return float(data.sum()) + offset


def nested_len(arguments: dict[str, Any]) -> int:
    return len(arguments["items"][0])


def test_run_calls_every_connected_worker_once(three_workers: Client) -> None:
    pids = three_workers.run(os.getpid)
    assert set(pids) == connected_workers(three_workers)
    assert len(set(pids.values())) == 3 and os.getpid() not in pids.values()
    assert three_workers.run(lambda a, b=0: a + b, 40, b=2) == dict.fromkeys(pids, 42)
    one = sorted(pids)[0]
    assert three_workers.run(os.getpid, workers=[one]) == {one: pids[one]}


def test_run_raises_the_remote_exception_or_returns_it(three_workers: Client) -> None:
    with pytest.raises(ValueError, match="kaput there") as caught:
        three_workers.run(kaput, "there")
    assert isinstance(caught.value.__cause__, RemoteTraceback) and "in kaput" in caught.value.__cause__.tb
    returned = three_workers.run(kaput, "again", on_error="return")
    assert len(returned) == 3 and all(isinstance(e, ValueError) for e in returned.values())
    assert three_workers.run(kaput, "quiet", on_error="ignore") == {}
    assert len(three_workers.run(os.getpid)) == 3  # the workers survived


def sleep_marked(folder: str, seconds: float) -> None:
    Path(folder, str(os.getpid())).touch()
    time.sleep(seconds)


def test_run_does_not_wait_behind_running_or_queued_tasks(ready_client: Client, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    busy = [ready_client.submit(sleep_marked, str(marks), 6) for _ in range(4)]
    wait_for(lambda: len(list(marks.iterdir())) == 2, what="both workers to be sleeping")
    started = time.monotonic()
    pids = ready_client.run(os.getpid)
    assert time.monotonic() - started < 4  # the sleeps hold both workers for 6 s, then 6 s more
    assert sorted(pids.values()) == sorted(int(p.name) for p in marks.iterdir())
    ready_client.cancel([f.task_id for f in busy])


def test_a_broadcast_object_reaches_each_worker_once_across_100_tasks(three_workers: Client) -> None:
    data = np.arange(250_000, dtype=np.float64)  # 2 MB
    before = three_workers.run(cache_info)
    ref = three_workers.broadcast(data)
    assert ref.nbytes >= data.nbytes and "ndarray" in repr(ref)
    futures = [three_workers.submit(total, ref, i) for i in range(100)]
    assert [f.result(timeout=60) for f in futures] == [float(data.sum()) + i for i in range(100)]
    used = {f.worker for f in futures}
    after = three_workers.run(cache_info)
    received = {w: after[w]["objects"] - before[w]["objects"] for w in after}
    assert all(count <= 1 for count in received.values()), received
    assert sum(received.values()) == len(used) >= 2, (received, used)
    # the same reference in a map, and nested in a container, is still sent no more
    assert list(three_workers.map(total, [ref] * 30, range(30))) == [float(data.sum()) + i for i in range(30)]
    assert three_workers.submit(nested_len, {"items": [ref]}).result(timeout=30) == len(data)
    again = three_workers.run(cache_info)
    assert all(again[w]["objects"] - before[w]["objects"] <= 1 for w in again)


def forgotten(client: Client) -> int:
    return sum(info["forgotten"] for info in client.run(cache_info).values())


def test_released_objects_are_dropped_by_the_workers(three_workers: Client, connection_file: Path) -> None:
    ref = three_workers.broadcast(b"x" * 100_000)
    assert [f.result(timeout=30) for f in [three_workers.submit(len, ref) for _ in range(20)]] == [100_000] * 20
    holding = {w for w, info in three_workers.run(cache_info).items() if info["objects"]}
    assert holding and forgotten(three_workers) == 0
    ref.release()
    assert ref.released
    with pytest.raises(PlbError, match="released"):  # like any argument that cannot be pickled
        three_workers.submit(len, ref).result(timeout=30)
    wait_for(lambda: forgotten(three_workers) == len(holding), what="workers to forget the released object")
    # a reference nobody holds any more is released when it is garbage collected
    other = three_workers.broadcast([1, 2, 3])
    assert three_workers.submit(sum, other).result(timeout=30) == 6
    del other
    gc.collect()
    wait_for(lambda: forgotten(three_workers) == len(holding) + 1,
             what="the collected reference's object to be forgotten")
    # a client that closes releases the references it still holds
    with Client(connection_file=connection_file) as other_client:
        kept = other_client.broadcast({"k": 1})
        assert other_client.submit(len, kept).result(timeout=30) == 1
    assert kept.released
    wait_for(lambda: forgotten(three_workers) == len(holding) + 2,
             what="the closed client's object to be forgotten")


def test_a_task_naming_an_unknown_object_is_rejected(ready_client: Client) -> None:
    forged = Broadcast(ready_client._connection, "0" * 32, 1, "int")  # one the balancer never had
    with pytest.raises(TaskRejected, match="not on the balancer"):
        ready_client.submit(lambda x: x + 1, forged).result(timeout=30)
    with pytest.raises(SerializationError, match="only as an argument"):
        ready_client.run(lambda r: r, forged)
    with pytest.raises(SerializationError, match="only as an argument"):
        ready_client.submit(lambda: forged).result(timeout=30)


def test_setup_hook_runs_in_every_new_worker_including_replacements(
    client: Client, start_hub: Callable[..., Any], tmp_path: Path
) -> None:
    os.environ["PLB_TEST_SETUP_LOG"] = str(tmp_path / "setup.log")
    try:
        start_hub(3, "--setup", "tests.setup_hooks:mark_worker")
    finally:
        del os.environ["PLB_TEST_SETUP_LOG"]
    wait_for(lambda: worker_count(client) == 3, what="3 workers to register")
    marks = client.run(lambda: (os.environ.get("PLB_SETUP_MARK"), os.getpid()))
    assert all(mark == str(pid) for mark, pid in marks.values()), marks
    victim = next(iter(marks))
    os.kill(marks[victim][1], signal.SIGKILL)
    def replaced_and_ready() -> bool:
        # A replacement is listed by its hub as soon as it starts, but runs only once its setup ran;
        # a run that still reached the killed worker fails with WorkerLost.
        try:
            ready = client.run(os.getpid)
        except WorkerLost:
            return False
        return len(ready) == 3 and victim not in ready

    wait_for(replaced_and_ready, what="the killed worker's replacement to be ready")
    replaced = client.run(lambda: (os.environ.get("PLB_SETUP_MARK"), os.getpid()))
    assert victim not in replaced and len(replaced) == 3
    assert all(mark == str(pid) for mark, pid in replaced.values()), replaced
    assert len((tmp_path / "setup.log").read_text().split()) == 4


def test_a_failing_setup_hook_is_reported_and_not_restarted(
    client: Client, connection_file: Path, tmp_path: Path
) -> None:
    log = tmp_path / "setup.log"
    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyter_plb", "hub", "--connect", str(connection_file),
         "--workers", "2", "--name", "broken", "--setup", "tests.setup_hooks:fail"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "PLB_TEST_SETUP_LOG": str(log)},
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        wait_for(lambda: [h["state"] for h in client.status()["hubs"]] == ["unhealthy"],
                 what="the hub to say it is unhealthy")
        assert worker_count(client) == 0
        wait_for(lambda: log.exists() and len(log.read_text().split()) == 2, what="both workers to try")
    finally:
        stop_process(hub)
    stderr = hub.stderr.read() if hub.stderr else ""
    assert "RuntimeError: no licence server" in stderr
    assert stderr.count("setup hook tests.setup_hooks:fail failed, so this worker does not start") == 2, stderr
    assert stderr.count("not starting it again") == 2, stderr
    assert len(log.read_text().split()) == 2  # tried once per worker, no crash loop


def test_queued_tasks_naming_a_broadcast_object_survive_a_balancer_restart(balancer_process) -> None:
    lb = balancer_process()
    with Client(connection_file=lb.connection_file, user="journal") as client:
        data = client.broadcast(np.arange(1000.0))
        futures = [client.submit(total, data, i) for i in range(5)]  # no hub yet: they wait
        outbox = client._connection.outbox
        wait_for(lambda: not outbox.unacked and not outbox.waiting, what="the submits to be journaled")
        lb.kill()
        lb.start()
        hub = start_local_hub(lb.connection_file, 2, name="after-restart")
        try:
            assert [f.result(timeout=40) for f in futures] == [499500.0 + i for i in range(5)]
        finally:
            stop_process(hub)
        assert client.status()["totals"]["failed"] == 0
