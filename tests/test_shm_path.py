"""Large buffers through shared memory, end to end: a real balancer, real hubs, real /dev/shm.

A client on the balancer's machine puts arguments of at least ``shm.THRESHOLD`` bytes in segments;
a local hub's workers map them and put large results in segments the client maps. Every segment
is gone once its task ended, whatever the end; a hub on another machine gets the bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.core import shm
from jupyter_plb.errors import WorkerLost
from jupyter_plb.workers.spawn import stop_process

from .conftest import ROOT, wait_for, worker_count

pytestmark = pytest.mark.timeout(120)

BIG = shm.THRESHOLD * 2


def segments() -> set[str]:
    return {name for name in os.listdir(shm.DIRECTORY) if name.startswith(shm.PREFIX)}


def length(data: Any) -> int:
    return len(data)


def echo(data: Any) -> Any:
    return data


def fail(data: Any) -> None:
    raise ValueError(f"refused {len(data)} bytes")


def pid_after(seconds: float, data: Any) -> int:
    time.sleep(seconds)
    return os.getpid()


def pid_file_then_wait(path: str, data: Any) -> int:
    with open(path, "a") as pids:  # one line per attempt
        print(os.getpid(), file=pids)
    time.sleep(30)
    return len(data)


@pytest.fixture
def shm_client(
    make_cluster: Callable[..., Any], connection_file: Path, start_hub: Callable[..., Any]
) -> Any:
    """A client, a local hub with 2 workers, and results kept 1 s after collection (the seed's 60 s,
    shortened, so that the test sees the balancer remove a result's segment)."""
    make_cluster(LB_RESULT_RETENTION=1)
    start_hub(2)
    with Client(connection_file=connection_file, user="tester") as client:
        wait_for(lambda: worker_count(client) == 2, what="2 workers to register")
        yield client
        client.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def clean_shm() -> Any:
    before = segments()
    yield before
    wait_for(lambda: segments() <= before, what="every segment of the test to be removed")


def test_a_large_argument_travels_in_a_segment_that_is_gone_when_the_task_ends(
    shm_client: Client, clean_shm: set[str]
) -> None:
    data = os.urandom(BIG)
    fut = shm_client.submit(length, data)
    assert fut.result(timeout=30) == BIG
    segments_of_task = shm_client._connection.segments
    assert segments_of_task is not None, "a client beside its balancer uses shared memory"
    wait_for(lambda: fut.task_id not in segments_of_task, what="the task's segments to be released")


def test_a_large_result_comes_back_in_a_segment_kept_while_the_balancer_keeps_the_result(
    make_cluster: Callable[..., Any], connection_file: Path, start_hub: Callable[..., Any], clean_shm: set[str]
) -> None:
    make_cluster(LB_RESULT_RETENTION=1)  # the seed's 60 s after collection, shortened
    start_hub(1)
    data = bytearray(os.urandom(BIG))
    with Client(connection_file=connection_file) as client:
        wait_for(lambda: worker_count(client) == 1, what="a worker")
        fut = client.submit(echo, data)
        assert fut.result(timeout=30) == data
        with Client(connection_file=connection_file) as other:  # within the retention: read again
            again = other.getTask(fut.task_id)
            assert again["result"] == data


def test_segments_go_when_the_task_fails_or_is_cancelled(
    shm_client: Client, clean_shm: set[str]
) -> None:
    with pytest.raises(ValueError, match=f"refused {BIG} bytes"):
        shm_client.submit(fail, os.urandom(BIG)).result(timeout=30)
    busy = [shm_client.submit(pid_after, 3.0, b"") for _ in range(2)]
    queued = shm_client.submit(length, os.urandom(BIG))
    assert queued.cancel()
    for fut in busy:
        fut.result(timeout=30)


def test_a_worker_killed_mid_task_leaves_the_argument_for_the_retry(
    shm_client: Client, clean_shm: set[str], tmp_path: Path
) -> None:
    marker = tmp_path / "pids"
    marker.touch()
    fut = shm_client.options(retries=1).submit(pid_file_then_wait, str(marker), os.urandom(BIG))
    for attempt in ("the task", "its retry"):
        wait_for(lambda n=attempt: len(marker.read_text().split()) == (1 if n == "the task" else 2),
                 what=f"{attempt} to start")
        os.kill(int(marker.read_text().split()[-1]), signal.SIGKILL)
    with pytest.raises(WorkerLost):
        fut.result(timeout=30)


def test_a_hub_on_another_machine_gets_the_bytes_and_checks_their_digests(
    client: Client, connection_file: Path, clean_shm: set[str]
) -> None:
    hub = subprocess.Popen(  # no --local: the balancer treats it as a hub of another machine
        [sys.executable, "-m", "jupyter_plb", "hub", "--connect", str(connection_file), "--workers", "1",
         "--name", "far"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )
    try:
        wait_for(lambda: worker_count(client) == 1, what="the far hub's worker to register")
        data = os.urandom(BIG)
        assert client.submit(length, data).result(timeout=30) == BIG
        result = client.submit(echo, data).result(timeout=30)
        assert result == data, "its result came back as bytes, not a segment of its machine"
    finally:
        stop_process(hub)


def test_a_numpy_array_maps_onto_the_shared_pages(shm_client: Client, clean_shm: set[str]) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(4 << 20, dtype=np.float64)  # 32 MB
    back = shm_client.submit(echo, array).result(timeout=60)
    assert np.array_equal(back, array)
    assert back.flags.writeable, "a private copy-on-write mapping: writable as after a plain unpickle"
    assert not back.flags.owndata, "the array is a view of the mapped segment, not a copy of it"


def test_shared_memory_off_sends_the_bytes(
    make_cluster: Callable[..., Any], connection_file: Path, start_hub: Callable[..., Any], clean_shm: set[str]
) -> None:
    make_cluster(LB_SHARED_MEMORY=False)
    start_hub(1)
    with Client(connection_file=connection_file) as client:
        wait_for(lambda: worker_count(client) == 1, what="a worker")
        assert client.submit(length, os.urandom(BIG)).result(timeout=30) == BIG
        assert client._connection.segments is None
