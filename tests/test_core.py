"""The core engine end to end: a real balancer, real hub and worker processes, real sockets."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jupyter_plb import report_progress
from jupyter_plb.client import Client, PlbFuture, as_completed
from jupyter_plb.core.tasks import KeptTask, TaskState
from jupyter_plb.errors import (
    DeserializationError,
    QueueFull,
    RemoteTraceback,
    SerializationError,
    TaskTimeout,
    WorkerLost,
)
from jupyter_plb.workers.spawn import stop_process

from .conftest import wait_for, worker_count


def divide(a: float, b: float) -> float:
    return a / b


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def whoami() -> int:
    return os.getpid()


def kill_self_once(marker: str) -> str:
    """SIGKILL the worker the first time (leaving a marker), succeed the second time."""
    if not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def die_hard(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        import ctypes

        ctypes.string_at(0)
    else:
        os._exit(3)


def with_progress(steps: int, gate: str) -> str:
    report_progress(50)
    while not os.path.exists(gate):
        time.sleep(0.01)
    return "finished"


def test_submit_returns_result_and_futures_api(ready_client: Client) -> None:
    fut = ready_client.submit(divide, 1, b=4)
    assert fut.result(timeout=20) == 0.25
    assert fut.state == "done" and fut.progress == 100 and fut.worker.startswith("worker_")
    assert list(ready_client.map(divide, range(10), [2] * 10)) == [i / 2 for i in range(10)]
    assert list(ready_client.map(divide, range(7), [1] * 7, chunksize=3)) == list(range(7))
    futures = [ready_client.submit(divide, i, 1) for i in range(5)]
    assert sorted(f.result() for f in as_completed(futures, timeout=20)) == list(range(5))


def test_futures_are_awaitable(ready_client: Client) -> None:
    import asyncio

    async def main() -> float:
        return await ready_client.submit(divide, 3, 2)

    assert asyncio.run(asyncio.wait_for(main(), 20)) == 1.5


def test_remote_exception_carries_the_traceback_and_the_worker_survives(ready_client: Client) -> None:
    before = ready_client.submit(whoami).result(timeout=20)
    fut = ready_client.submit(divide, 1, 0)
    with pytest.raises(ZeroDivisionError) as info:
        fut.result(timeout=20)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in divide" in cause.tb and "return a / b" in cause.tb
    assert fut.state == "failed"
    pids = {ready_client.submit(whoami).result(timeout=20) for _ in range(6)}
    assert before in pids, "the worker process that ran the failing task is still serving"


class ExitsWhenUnpickled:
    """A result whose unpickling calls sys.exit (its ``__reduce__`` says so)."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return sys.exit, (1,)


def exits_when_unpickled() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def test_what_does_not_pickle_fails_its_own_future_only(ready_client: Client) -> None:
    lock = threading.Lock()
    fut = ready_client.submit(divide, lock, 1)  # as an executor: the future carries the error
    with pytest.raises(SerializationError) as info:
        fut.result(timeout=20)
    assert isinstance(info.value, pickle.PicklingError) and fut.state == "failed"
    results = ready_client.map(divide, [1, lock, 3], [1, 1, 1])
    assert next(results) == 1
    with pytest.raises(SerializationError):
        next(results)
    assert list(ready_client.map(divide, [4, 6], [2, 2])) == [2, 3]


def test_a_result_whose_unpickling_exits_fails_alone(ready_client: Client) -> None:
    with pytest.raises(DeserializationError, match="SystemExit"):
        ready_client.submit(exits_when_unpickled).result(timeout=20)
    assert ready_client.submit(divide, 1, 2).result(timeout=20) == 0.5  # the I/O thread goes on


def test_large_bytes_and_numpy_round_trip(ready_client: Client) -> None:
    payload = os.urandom(1 << 20)
    digest = ready_client.submit(lambda b: hashlib.sha256(b).hexdigest(), payload).result(timeout=30)
    assert digest == hashlib.sha256(payload).hexdigest()
    echoed = ready_client.submit(lambda b: b, payload).result(timeout=30)
    assert echoed == payload
    array = np.arange(250_000, dtype=np.float64).reshape(500, 500)
    doubled = ready_client.submit(lambda a: a * 2, array).result(timeout=30)
    np.testing.assert_array_equal(doubled, array * 2)


def test_cancel_queued_and_running(cluster, connection_file: Path, start_hub) -> None:
    with Client(connection_file=connection_file, user="canceller") as client:
        start_hub(1)
        wait_for(lambda: worker_count(client) == 1, what="1 worker")
        old_worker = client.hubs()[0]["workers"][0]["id"]
        running = client.submit(slow, 60)
        queued = client.submit(slow, 60)
        wait_for(lambda: client.status()["totals"]["running"] >= 1, what="the task to run")
        assert queued.cancel() is True
        assert queued.cancelled() and queued.state == "cancelled"
        assert running.cancel() is True
        assert running.cancelled()
        new_worker = wait_for(
            lambda: [w["id"] for h in client.hubs() for w in h["workers"] if w["id"] != old_worker],
            what="the killed worker to be replaced",
        )
        assert new_worker
        assert client.submit(divide, 6, 3).result(timeout=20) == 2


@pytest.mark.parametrize("how", ["sigkill", "segfault", "exit"])
def test_a_dead_worker_fails_its_task_with_worker_lost_and_is_replaced(ready_client: Client, how: str) -> None:
    fut = ready_client.submit(die_hard, how)
    with pytest.raises(WorkerLost, match="was lost"):
        fut.result(timeout=30)
    wait_for(lambda: worker_count(ready_client) == 2, what="the hub to replace the worker")
    assert ready_client.submit(divide, 1, 1).result(timeout=20) == 1


def test_retries_rerun_a_task_whose_worker_died(ready_client: Client, tmp_path: Path) -> None:
    marker = str(tmp_path / "killed")
    fut = ready_client.options(retries=1).submit(kill_self_once, marker)
    assert fut.result(timeout=30) == "survived"


def test_timeout_kills_the_worker_and_fails_the_task(ready_client: Client) -> None:
    fut = ready_client.options(timeout=0.5).submit(slow, 60)
    with pytest.raises(TaskTimeout, match=r"timeout of 0\.5 s"):
        fut.result(timeout=30)
    wait_for(lambda: worker_count(ready_client) == 2, what="the worker to be replaced")


def test_progress_is_reported_then_100(ready_client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    fut = ready_client.submit(with_progress, 2, str(gate))
    wait_for(lambda: fut.progress == 50, what="progress 50")
    seed = ready_client.getTask(fut.task_id)
    assert seed["progress"] == 50
    gate.write_text("go")
    assert fut.result(timeout=20) == "finished"
    assert fut.progress == 100


def sleep_for(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_an_idle_worker_takes_back_a_task_waiting_behind_a_long_one(ready_client: Client, tmp_path: Path) -> None:
    assert len(set(ready_client.map(sleep_for, [0.03] * 12))) == 2  # long tasks: one may wait per slot
    gates = [tmp_path / "gate-0", tmp_path / "gate-1"]
    blocked = [ready_client.submit(with_progress, 1, str(gate)) for gate in gates]
    wait_for(lambda: all(f.progress == 50 for f in blocked), what="both workers to be blocked")
    waiting = ready_client.submit(sleep_for, 0)

    def worker_of(fut: PlbFuture) -> str | None:
        info = ready_client.tasks(name=fut.name)["tasks"]
        return next((t["worker"] for t in info if t["id"] == fut.task_id), None)

    holder = wait_for(lambda: worker_of(waiting), what="the task to wait on a busy worker")
    assert worker_of(blocked[0]) != worker_of(blocked[1])
    other = 0 if worker_of(blocked[1]) == holder else 1
    gates[other].touch()  # the other worker goes idle; the task still waits behind a blocked one
    waiting.result(timeout=20)
    assert waiting.worker != holder and waiting.worker == blocked[other].worker
    assert not blocked[1 - other].done(), "it ran while its first holder was still blocked"
    gates[1 - other].touch()
    assert [f.result(timeout=20) for f in blocked] == ["finished", "finished"]


def test_printed_output_comes_back(ready_client: Client) -> None:
    def chatty() -> int:
        import sys

        print("hello from the worker")
        print("oops", file=sys.stderr)
        return 1

    fut = ready_client.submit(chatty)
    assert fut.result(timeout=20) == 1
    assert fut.stdout == "hello from the worker\n" and fut.stderr == "oops\n"


def test_per_user_queue_limit(make_cluster, connection_file: Path) -> None:
    make_cluster(LB_QUEING_MAXPERUSER=3)
    with Client(connection_file=connection_file, user="alice") as alice:
        futures = [alice.submit(divide, 1, 1) for _ in range(4)]
        with pytest.raises(QueueFull, match="LB_QUEING_MAXPERUSER"):
            futures[3].result(timeout=20)
        answer = alice.sendTask("HELLO", {"x": 1}, userid="alice")
        assert "error" in answer and "limit" in answer["error"]
        assert "taskid" in alice.sendTask("HELLO", {"x": 1}, userid="bob")
        alice.shutdown(wait=False, cancel_futures=True)


def test_map_stays_under_the_per_user_limit(make_cluster, connection_file: Path, start_hub) -> None:
    make_cluster(LB_QUEING_MAXPERUSER=20)
    with Client(connection_file=connection_file, user="mapper") as client:
        start_hub(2)
        assert list(client.map(divide, range(200), [1] * 200)) == list(range(200))


def test_fair_share_between_two_users(make_cluster, connection_file: Path, start_hub, tmp_path: Path) -> None:
    make_cluster(LB_PREFETCH=0)
    gate = tmp_path / "gate"
    with Client(connection_file=connection_file, user="alice") as alice, \
            Client(connection_file=connection_file, user="bob") as bob:
        start_hub(1)
        wait_for(lambda: worker_count(alice) == 1, what="1 worker")
        blocker = alice.options(user="gatekeeper").submit(with_progress, 1, str(gate))
        wait_for(lambda: blocker.progress == 50, what="the gate task to run")
        a = [alice.submit(time.time) for _ in range(4)]
        wait_for(lambda: alice.status()["totals"]["queued"] == 4, what="alice's 4 tasks queued first")
        b = [bob.submit(time.time) for _ in range(2)]
        wait_for(lambda: alice.status()["totals"]["queued"] == 6, what="6 queued tasks")
        gate.write_text("go")
        order = sorted([(f.result(timeout=20), "A") for f in a] + [(f.result(timeout=20), "B") for f in b])
        assert "".join(user for _, user in order) == "ABABAA"


def test_priority_routes_tasks_to_worker_groups(make_cluster, connection_file: Path, start_hub, tmp_path: Path) -> None:
    groups = [
        {"nWorkers": 1, "minP": 0, "maxP": 9, "processP": 5},
        {"nWorkers": 1, "minP": 10, "maxP": 99, "processP": 0},
    ]
    cluster = make_cluster(WKHUB_WORKERS=groups)
    params = tmp_path / "parameters.json"
    params.write_text(json.dumps({
        "WKHUB_WORKERS": groups, "LB_CONNECTION_FILE": str(connection_file),
        "LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0,
    }))
    with Client(connection_file=connection_file) as client:
        hub = subprocess.Popen(
            [sys.executable, "-m", "jupyter_plb",
             "hub", "--parameters", str(params)], start_new_session=True)
        try:
            wait_for(lambda: worker_count(client) == 2, what="2 workers")
            ranges = {w["id"]: (w["min_p"], w["max_p"]) for h in client.hubs() for w in h["workers"]}
            low = [client.options(priority=5).submit(whoami) for _ in range(4)]
            high = [client.options(priority=50).submit(whoami) for _ in range(4)]
            for f in low + high:
                f.result(timeout=20)
            assert {ranges[f.worker] for f in low} == {(0, 9)}
            assert {ranges[f.worker] for f in high} == {(10, 99)}
            nice_of = {f.worker: os.getpriority(os.PRIO_PROCESS, f.result()) for f in low + high}
            assert sorted(set(nice_of.values())) == [0, 5], "processP is the workers' nice value"
            stranded = client.options(priority=500).submit(whoami)
            wait_for(lambda: stranded.warning, what="a warning for priority 500")
            assert "no connected worker accepts priority 500" in stranded.warning
            assert "0–9, 10–99" in stranded.warning
            listed = cluster.balancer.snapshot()["unschedulable"]
            assert [t["id"] for t in listed] == [stranded.task_id]
            assert stranded.cancel()
        finally:
            stop_process(hub)


def test_unknown_named_task_is_reported_and_times_out(ready_client: Client) -> None:
    fut_id = ready_client.options(timeout=0.5).sendTask("NOPE", {"a": 1})["taskid"]
    answer = wait_for(
        lambda: (a := ready_client.getTask(fut_id))["state"] == "failed" and a,
        what="the unschedulable task to fail",
    )
    assert answer["progress"] is None
    assert "no connected hub offers the task 'NOPE'" in answer["error"]


def test_results_are_dropped_after_the_retention(make_cluster, connection_file: Path, start_hub) -> None:
    make_cluster(LB_RESULT_RETENTION=0.3)
    with Client(connection_file=connection_file) as client:
        start_hub(1)
        fut = client.submit(divide, 4, 2)
        assert fut.result(timeout=20) == 2
        with Client(connection_file=connection_file) as other:
            wait_for(lambda: other.getTask(fut.task_id)["progress"] is None, what="the result to expire")


def test_healthcheck_warns_while_there_are_no_workers(cluster, caplog: pytest.LogCaptureFixture, start_hub) -> None:
    def logged() -> bool:
        records = caplog.get_records("setup") + caplog.get_records("call")
        return any(r.getMessage() == "HC - WARNING : LB HAS NO WORKERS." for r in records)

    wait_for(logged, what="the HC warning in the log")
    wait_for(
        lambda: cluster.balancer.snapshot()["health"]["messages"] == ["HC - WARNING : LB HAS NO WORKERS."],
        what="the warning in the balancer's status",
    )
    start_hub(1)
    wait_for(lambda: cluster.balancer.snapshot()["health"]["status"] == "ok", what="health ok")


def test_collected_tasks_are_kept_as_plain_tuples_the_gc_skips(cluster, ready_client: Client) -> None:
    futures = [ready_client.submit(abs, -i) for i in range(20)]
    assert [f.result(timeout=20) for f in futures] == list(range(20))
    tasks = cluster.balancer.tasks
    wait_for(lambda: all(isinstance(tasks.get(f.task_id), KeptTask) for f in futures), what="the acks")
    stored = dict.get(tasks, futures[3].task_id)
    assert type(stored) is tuple
    gc.collect()
    gc.collect()  # a tuple holding a tuple is let go one collection after the inner one
    assert not gc.is_tracked(stored), "a kept task adds nothing for the garbage collector to visit"
    kept = tasks[futures[3].task_id]
    assert kept.state is TaskState.DONE and kept.summary()["state"] == "done"
    assert ready_client.getTask(futures[3].task_id)["progress"] == 100
    assert ready_client.tasks(state="done")["total"] >= 20
