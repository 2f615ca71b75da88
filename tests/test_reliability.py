"""No task lost: a journal across balancer crashes, lost hubs, stopped networks, crash loops."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

from jupyter_plb.client import Client
from jupyter_plb.core import protocol
from jupyter_plb.core.store import SqliteStore, pack_buffers, unpack_buffers
from jupyter_plb.core.tasks import Task, TaskState
from jupyter_plb.workers.spawn import start_local_hub, stop_process

from .conftest import wait_for, worker_count


def record_run(folder: str, key: int, seconds: float) -> int:
    """Append this run to ``folder/key`` (to count executions), sleep, return key."""
    with open(os.path.join(folder, str(key)), "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return key


def crash(_: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def double(x: int) -> int:
    return 2 * x


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_store_round_trip(tmp_path: Path) -> None:
    assert unpack_buffers(pack_buffers([b"ab", memoryview(b""), b"xyz"])) == [b"ab", b"", b"xyz"]
    store = SqliteStore(tmp_path / "j.sqlite")
    store.forget(Task(id="nothing", user="u", priority=0, name="f", route="f", seq=99))
    store.commit()
    assert (tmp_path / "j.sqlite-wal").exists(), "WAL mode"
    queued = Task(id="t1", user="u", priority=1.5, name="f", route=None, seq=7, fn="abc",
                  buffers=[b"args"], submitted=1.0)
    done = Task(id="t2", user="u", priority=0, name="HELLO", route="HELLO", seq=8, payload={"a": 1})
    store.function("abc", [b"fn"])
    store.submitted(queued)
    store.submitted(done)
    done.state, done.result, done.result_buffers, done.ended = TaskState.DONE, {"stdout": "x"}, [b"r"], 2.0
    store.finished(done)
    gone = Task(id="t3", user="u", priority=0, name="f", route="f", seq=9)
    store.submitted(gone)
    store.state(gone)
    store.forget(gone)
    store.close()
    loaded = {s.task.id: s for s in SqliteStore(tmp_path / "j.sqlite").load()}
    assert set(loaded) == {"t1", "t2"}
    assert loaded["t1"].task.buffers == [b"args"] and loaded["t1"].fn_buffers == [b"fn"]
    assert loaded["t1"].task.seq == 7 and loaded["t1"].task.priority == 1.5
    assert loaded["t2"].task.state is TaskState.DONE and loaded["t2"].task.result_buffers == [b"r"]
    assert loaded["t2"].task.payload == {"a": 1} and loaded["t2"].task.progress == 100
    for name in ("j.sqlite", "j.sqlite-wal", "j.sqlite-shm"):
        path = tmp_path / name
        assert not path.exists() or oct(path.stat().st_mode & 0o777) == "0o600", name


def test_large_pickles_are_journaled_in_files_that_go_with_their_task(tmp_path: Path) -> None:
    big_args, big_result = os.urandom(300_000), os.urandom(200_000)
    store = SqliteStore(tmp_path / "j.sqlite")
    running = Task(id="../../etc/big", user="u", priority=0, name="f", route="f", seq=1,
                   buffers=[b"head", big_args])
    done = Task(id="t2", user="u", priority=0, name="f", route="f", seq=2, buffers=[big_args])
    gone = Task(id="t3", user="u", priority=0, name="f", route="f", seq=3, buffers=[big_args])
    for task in (running, done, gone):
        store.submitted(task)
    done.state, done.result_buffers, done.ended = TaskState.DONE, [big_result], 2.0
    store.finished(done)
    store.forget(gone)
    written = threading.Event()
    store.commit(written.set)  # a large batch: the writer thread writes it
    assert written.wait(20)
    files = sorted(store.blobs.iterdir())
    assert len(files) == 3, "two payloads and a result, the forgotten task's payload unlinked"
    assert all(f.parent == store.blobs and oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    assert oct(store.blobs.stat().st_mode & 0o777) == "0o700"
    assert store.result_buffers("t2") == [big_result]
    store.close()
    (store.blobs / "payloads-left-by-a-crash").write_bytes(b"x")
    reopened = SqliteStore(tmp_path / "j.sqlite")
    loaded = {s.task.id: s.task for s in reopened.load()}
    assert loaded["../../etc/big"].buffers == [b"head", big_args]
    assert loaded["t2"].result_buffers == [big_result] and set(loaded) == {"../../etc/big", "t2"}
    assert len(list(reopened.blobs.iterdir())) == 3, "a file no row names is removed at load"
    reopened.forget(loaded["t2"])
    written.clear()
    reopened.commit(written.set)
    assert written.wait(20)
    assert len(list(reopened.blobs.iterdir())) == 1
    reopened.close()


def test_balancer_killed_and_restarted_loses_nothing(balancer_process, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    lb = balancer_process()
    hub = start_local_hub(lb.connection_file, 2, name="survivor")
    try:
        with Client(connection_file=lb.connection_file, user="journal") as client:
            wait_for(lambda: worker_count(client) == 2, what="2 workers")
            finished = client.submit(double, 21)
            assert finished.result(timeout=20) == 42
            slow = [client.submit(record_run, str(runs), i, 1.5) for i in range(2)]
            queued = [client.submit(record_run, str(runs), i, 0.0) for i in range(2, 8)]
            large = os.urandom(300_000)  # journaled in a file of its own
            digest = client.submit(sha256_hex, large)
            wait_for(lambda: all((runs / str(i)).exists() for i in range(2)), what="the slow tasks to start")
            lb.kill()
            lb.start()
            assert sorted(f.result(timeout=40) for f in slow + queued) == list(range(8))
            assert digest.result(timeout=40) == hashlib.sha256(large).hexdigest()
            for i in range(8):
                assert len((runs / str(i)).read_text().split()) == 1, f"task {i} ran more than once"
            after = client.submit(double, 5)
            assert after.result(timeout=20) == 10
        with Client(connection_file=lb.connection_file) as other:
            assert other.getTask(finished.task_id)["progress"] in (100, None)
    finally:
        stop_process(hub)


def test_finished_results_survive_a_restart(balancer_process) -> None:
    lb = balancer_process()
    hub = start_local_hub(lb.connection_file, 1, name="results")
    try:
        with Client(connection_file=lb.connection_file) as client:
            taskid = client.sendTask("NOPE", {"x": 1})["taskid"]
            fut = client.submit(double, 4)
            assert fut.result(timeout=20) == 8
        lb.kill()
        lb.start()
        with Client(connection_file=lb.connection_file) as client:
            assert client.getTask(taskid)["progress"] == 0, "still queued after the restart"
            assert client.getTask(fut.task_id)["progress"] in (100, None)
    finally:
        stop_process(hub)


def test_a_hub_that_stops_answering_has_its_tasks_requeued(
    make_cluster, connection_file: Path, start_hub, tmp_path: Path
) -> None:
    make_cluster(LB_PREFETCH=0)
    runs = tmp_path / "runs"
    runs.mkdir()
    with Client(connection_file=connection_file) as client:
        frozen = start_hub(1, name="frozen")
        wait_for(lambda: worker_count(client) == 1, what="the first hub")
        fut = client.submit(record_run, str(runs), 1, 30.0)
        wait_for(lambda: (runs / "1").exists(), what="the task to start on the first hub")
        os.killpg(frozen.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            start_hub(1, name="healthy")
            wait_for(lambda: len((runs / "1").read_text().split()) == 2, timeout=30, what="the task to run again")
            assert time.monotonic() - started < 3 * 0.3 + 5
            hubs = {h["name"]: h["state"] for h in client.hubs()}
            assert hubs["frozen"] == "lost"
            fut.cancel()
        finally:
            os.killpg(frozen.pid, signal.SIGCONT)


def test_a_crash_looping_hub_is_marked_unhealthy(cluster, connection_file: Path, start_hub) -> None:
    with Client(connection_file=connection_file) as client:
        start_hub(1, name="crashy")
        wait_for(lambda: worker_count(client) == 1, what="1 worker")
        futures = [client.submit(crash, i) for i in range(6)]
        wait_for(lambda: any(h["state"] == "unhealthy" for h in client.hubs()), timeout=30, what="unhealthy")
        snapshot = client.status()
        assert snapshot["hubs"][0]["state"] == "unhealthy"
        client.cancel([f.task_id for f in futures if not f.done()])


def test_clients_reconnect_and_resubmit_after_a_restart(balancer_process) -> None:
    lb = balancer_process()
    with Client(connection_file=lb.connection_file) as client:
        lb.kill()
        futures = [client.submit(double, i) for i in range(5)]
        lb.start()
        hub = start_local_hub(lb.connection_file, 1, name="late")
        try:
            assert [f.result(timeout=30) for f in futures] == [0, 2, 4, 6, 8]
        finally:
            stop_process(hub)


def test_results_beyond_the_memory_budget_go_to_the_journal(make_cluster, connection_file: Path, start_hub) -> None:
    cluster = make_cluster(LB_RESULT_MEMORY=3 << 20)
    with Client(connection_file=connection_file) as client:
        start_hub(1)
        futures = [client.submit(os.urandom, 1 << 20) for _ in range(8)]
        blobs = [f.result(timeout=30) for f in futures]
        held = cluster.call(lambda: cluster.balancer.result_bytes)
        assert held <= 3 << 20
        with Client(connection_file=connection_file) as other:
            first = other._connection.request({"type": "get", "ids": [futures[0].task_id]})
            assert first.header["tasks"][futures[0].task_id]["state"] == "done"
            assert protocol.loads(first.buffers) == blobs[0], "read back from the journal"


def test_without_a_journal_results_beyond_the_budget_are_dropped(
    make_cluster, connection_file: Path, start_hub
) -> None:
    cluster = make_cluster(LB_RESULT_MEMORY=2 << 20, LB_JOURNAL=False)
    with Client(connection_file=connection_file) as client:
        start_hub(1)
        futures = [client.submit(os.urandom, 1 << 20) for _ in range(5)]
        assert all(len(f.result(timeout=30)) == 1 << 20 for f in futures), "pushed before being dropped"
        assert cluster.call(lambda: cluster.balancer.result_bytes) <= 2 << 20
