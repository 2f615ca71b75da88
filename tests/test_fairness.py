"""The seed's user fairness, measured where it counts: the order in which tasks really start.

Real balancer, real hub with two workers. Every task writes a start marker and then runs until
the test opens its gate, so the test decides when each worker frees up and reads which task
starts next. Each scenario runs on fresh slots (no run-time history yet) and on slots that just
ran short tasks of the same kind (they prefetch provisional tasks, which the balancer must take
back when another user's task arrives).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client, PlbFuture
from jupyter_plb.cluster.launch import LocalCluster

from .conftest import wait_for, worker_count


def gated(label: str, folder: str) -> str:
    """Mark the start, then work until the test opens this task's gate."""
    mark = Path(folder, f".{label}")
    mark.write_text(repr(time.time()))
    mark.rename(Path(folder, label))
    gate = Path(folder, f"{label}.go")
    while not gate.exists():
        time.sleep(0.002)
    return label


class TwoWorkers:
    """A balancer with one hub of two workers, driven gate by gate."""

    def __init__(self, client: Client, folder: Path, warm: bool) -> None:
        self.client = client
        self.folder = folder
        self.warm = warm
        self.futures: list[PlbFuture] = []

    def submit(self, user: str, *labels: str) -> None:
        view = self.client.options(user=user)
        self.futures += [view.submit(gated, label, str(self.folder)) for label in labels]
        self.client.status()  # every submit has reached the balancer

    def started(self) -> list[str]:
        marks = [p for p in self.folder.iterdir() if p.name[0] in "ABC" and "." not in p.name]
        return [p.name for p in sorted(marks, key=lambda p: float(p.read_text()))]

    def running(self, user: str) -> int:
        return next((u["running"] for u in self.client.status()["users"] if u["user"] == user), 0)

    def finish(self, label: str) -> str:
        """Let ``label`` end; return the task that starts on the worker it frees."""
        before = set(self.started())
        (self.folder / f"{label}.go").touch()
        new = wait_for(lambda: set(self.started()) - before, what=f"a task to start after {label}")
        assert len(new) == 1, new
        return new.pop()

    def warm_up(self) -> None:
        """Both workers run short tasks of this kind: they prefetch, and it counts as short."""
        labels = [f"w{i}" for i in range(40)]
        for label in labels:
            (self.folder / f"{label}.go").touch()
        view = self.client.options(user="warmup")
        futures = [view.submit(gated, label, str(self.folder)) for label in labels]
        assert [f.result(timeout=30) for f in futures] == labels

    def start_a(self, queued: int) -> None:
        """User A starts A0 and A1, then queues ``queued`` more (prefetched on warm slots)."""
        self.submit("A", "A0", "A1")
        wait_for(lambda: len(self.started()) == 2, what="A0 and A1 to start")
        self.submit("A", *(f"A{i}" for i in range(2, 2 + queued)))
        if self.warm:
            wait_for(lambda: self.running("A") > 2, what="A's queued tasks to be prefetched on the slots")

    def others_arrive(self, *users: tuple[str, ...]) -> None:
        """Other users submit; A's prefetched tasks are taken back (handed back before A0 or A1
        ends, or when they end if they run on the worker's own thread as short tasks do)."""
        for user, *labels in users:
            self.submit(user, *labels)


@pytest.fixture(params=[False, True], ids=["fresh-slots", "slots-that-ran-short-tasks"])
def pool(
    request: pytest.FixtureRequest, make_cluster: Callable[..., LocalCluster],
    start_hub: Callable[..., Any], connection_file: Path, tmp_path: Path,
) -> Iterator[TwoWorkers]:
    make_cluster(LB_QUEING_MAXPERUSER=0)
    with Client(connection_file=connection_file, user="warmup") as client:
        start_hub(2)
        wait_for(lambda: worker_count(client) == 2, what="2 workers to register")
        marks = tmp_path / "marks"
        marks.mkdir()
        workers = TwoWorkers(client, marks, warm=request.param)
        if workers.warm:
            workers.warm_up()
        yield workers
        for future in workers.futures:
            future.cancel()
        for gate in {f"{label}.go" for label in workers.started()}:
            (marks / gate).touch()


def test_a_user_with_no_running_task_goes_first_when_a_worker_frees_up(pool: TwoWorkers) -> None:
    pool.start_a(4)
    pool.others_arrive(("B", "B0", "B1"))
    order = [pool.finish(label) for label in ("A0", "A1", "B0", "A2", "B1", "A3")]
    assert order == ["B0", "A2", "B1", "A3", "A4", "A5"]
    assert pool.started()[2:] == ["B0", "A2", "B1", "A3", "A4", "A5"]


def test_three_users_share_two_workers_by_running_count_then_least_recently_served(pool: TwoWorkers) -> None:
    pool.start_a(4)
    pool.others_arrive(("B", "B0", "B1"), ("C", "C0", "C1"))
    order = [pool.finish(label) for label in ("A0", "A1", "B0", "C0", "A2", "B1", "C1")]
    assert order == ["B0", "C0", "A2", "B1", "C1", "A3", "A4"]


def test_a_user_arriving_behind_a_thousand_queued_tasks_starts_at_the_next_free_worker(pool: TwoWorkers) -> None:
    pool.start_a(998)
    pool.others_arrive(("B", "B0"))
    assert pool.finish("A0") == "B0"
    assert pool.finish("A1") == "A2"
