"""The seed's user fairness, measured where it counts: the order in which tasks really start.

Real balancer, real hub with two workers; every task writes its start time in a file and the
test reads the start order from those files. Each scenario runs on fresh slots (no run-time
history: no prefetch) and on slots that just ran short tasks of the same name (they prefetch
provisional tasks, which the balancer must take back when another user's task arrives).
Durations are chosen so that two workers never free up within 100 ms of each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client, PlbFuture
from jupyter_plb.launch import LocalCluster

from .conftest import wait_for, worker_count


def timed(label: str, seconds: float, folder: str) -> str:
    """Record the start time under ``label``, then work for ``seconds``."""
    Path(folder, label).write_text(repr(time.time()))
    if seconds:
        time.sleep(seconds)
    return label


def start_order(folder: Path, labels: list[str]) -> list[str]:
    """Labels by start time; A0 and A1 start together on the two workers, so they come as "A*"."""
    order = sorted(labels, key=lambda label: float((folder / label).read_text()))
    assert sorted(order[:2]) == ["A0", "A1"], order
    return ["A*", *order[2:]]


def running(client: Client, user: str) -> int:
    return next((u["running"] for u in client.status()["users"] if u["user"] == user), 0)


@pytest.fixture
def pool(
    make_cluster: Callable[..., LocalCluster], start_hub: Callable[..., Any], connection_file: Path
) -> Iterator[Client]:
    make_cluster(LB_QUEING_MAXPERUSER=0)
    with Client(connection_file=connection_file, user="warmup") as client:
        start_hub(2)
        wait_for(lambda: worker_count(client) == 2, what="2 workers to register")
        yield client
        client.shutdown(wait=False, cancel_futures=True)


def submit(client: Client, folder: Path, user: str, tasks: list[tuple[str, float]]) -> list[PlbFuture]:
    view = client.options(user=user)
    futures = [view.submit(timed, label, seconds, str(folder)) for label, seconds in tasks]
    client.status()  # every submit has reached the balancer
    return futures


def prepare(client: Client, folder: Path, warm: bool) -> None:
    """Warm slots: both workers ran short tasks of this name (low run-time averages)."""
    if warm:
        warmup = submit(client, folder, "warmup", [(f"w{i}", 0) for i in range(40)])
        assert [f.result(timeout=30) for f in warmup] == [f"w{i}" for i in range(40)]


def start_two(client: Client, folder: Path) -> list[PlbFuture]:
    """User A starts two tasks (0.3 s and 0.45 s) and queues four more of 0.3 s."""
    first = submit(client, folder, "A", [("A0", 0.3), ("A1", 0.45)])
    wait_for(lambda: (folder / "A0").exists() and (folder / "A1").exists(), what="A0 and A1 to start")
    return first + submit(client, folder, "A", [(f"A{i}", 0.3) for i in range(2, 6)])


@pytest.mark.parametrize("warm", [False, True], ids=["fresh-slots", "slots-that-ran-short-tasks"])
def test_a_user_with_no_running_task_goes_first_when_a_worker_frees_up(
    pool: Client, tmp_path: Path, warm: bool
) -> None:
    prepare(pool, tmp_path, warm)
    futures = start_two(pool, tmp_path)
    if warm:
        wait_for(lambda: running(pool, "A") == 6, what="A's queued tasks to be prefetched on the slots")
    futures += submit(pool, tmp_path, "B", [("B0", 0.3), ("B1", 0.3)])
    labels = [f.result(timeout=30) for f in futures]
    assert start_order(tmp_path, labels) == ["A*", "B0", "A2", "B1", "A3", "A4", "A5"]


@pytest.mark.parametrize("warm", [False, True], ids=["fresh-slots", "slots-that-ran-short-tasks"])
def test_three_users_share_two_workers_by_running_count_then_least_recently_served(
    pool: Client, tmp_path: Path, warm: bool
) -> None:
    prepare(pool, tmp_path, warm)
    futures = start_two(pool, tmp_path)
    futures += submit(pool, tmp_path, "B", [("B0", 0.3), ("B1", 0.3)])
    futures += submit(pool, tmp_path, "C", [("C0", 0.3), ("C1", 0.3)])
    labels = [f.result(timeout=30) for f in futures]
    assert start_order(tmp_path, labels) == ["A*", "B0", "C0", "A2", "B1", "C1", "A3", "A4", "A5"]


@pytest.mark.parametrize("warm", [False, True], ids=["fresh-slots", "slots-that-ran-short-tasks"])
def test_a_user_arriving_behind_a_thousand_queued_tasks_starts_at_the_next_free_worker(
    pool: Client, tmp_path: Path, warm: bool
) -> None:
    prepare(pool, tmp_path, warm)
    futures = start_two(pool, tmp_path)
    futures += submit(pool, tmp_path, "A", [(f"A{i}", 0.3) for i in range(6, 1000)])
    if warm:
        wait_for(lambda: running(pool, "A") > 2, what="A's queued tasks to be prefetched on the slots")
    (late,) = submit(pool, tmp_path, "B", [("B0", 0.01)])
    assert late.result(timeout=30) == "B0"
    started = [label for label in (f"A{i}" for i in range(1000)) if (tmp_path / label).exists()]
    for future in futures:
        future.cancel()
    assert start_order(tmp_path, ["B0", *started])[:2] == ["A*", "B0"]
    assert started in (["A0", "A1"], ["A0", "A1", "A2"]), "only the other worker's next task may start meanwhile"
