"""No task lost: a journal across balancer crashes, lost hubs, stopped networks, crash loops."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jupyter_plb.client import Client
from jupyter_plb.core import protocol
from jupyter_plb.core.store import SqliteStore, pack_buffers, unpack_buffers
from jupyter_plb.core.tasks import Task, TaskState
from jupyter_plb.errors import BalancerUnreachable
from jupyter_plb.transport import connection
from jupyter_plb.workers.spawn import start_local_hub, stop_process

from .conftest import BalancerProcess, wait_for, worker_count
from .peers import Peer

T = TypeVar("T")


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


def journaled_state(lb: BalancerProcess, task_id: str) -> str | None:
    """The state the balancer's journal holds for a task (read-only, beside the running balancer)."""
    path = lb.connection_file.with_name(lb.connection_file.stem + ".journal.sqlite")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return row[0] if row else None


class HandMadeHub:
    """A hub made by hand: hello, then a heartbeat every 0.1 s naming ``workers`` alive, and a
    hello again when a new balancer asks (``reregister``). Its socket lives in its own thread."""

    def __init__(self, info: connection.ConnectionInfo, workers: list[str]) -> None:
        self.info = info
        self.workers = workers
        self.state = "ok"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hand-made-hub", daemon=True)
        self.thread.start()

    def _hello(self, peer: Peer) -> None:
        peer.send({"type": "hub_hello", "hub": "hub_hand", "name": "hand", "routes": [], "state": self.state})

    def _run(self) -> None:
        peer = Peer(self.info.worker_url, self.info.key_bytes, identity="hub_hand")
        try:
            self._hello(peer)
            while not self.stopping.wait(0.1):
                peer.send({"type": "heartbeat", "hub": "hub_hand", "state": self.state, "workers": self.workers})
                if any(msg.type == "reregister" for msg in peer.replies(wait=0)):
                    self._hello(peer)
        finally:
            peer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


def worker_ready(worker: str, **held: Any) -> dict[str, Any]:
    """A hand-made worker's announcement; ``held``: what it still holds (``running``, ``finished``)."""
    return {"type": "worker_ready", "worker": worker, "hub": "hub_hand", "pid": 0,
            "min_p": -1000, "max_p": 1000, "process_p": 0, "routes": [], "tasks": [], **held}


def answered(query: Callable[[], T]) -> T | None:
    """``query()``, or None while the balancer is away: a query sent into the dead connection is
    not sent again (the client says BalancerUnreachable), so a condition must ask again."""
    try:
        return query()
    except BalancerUnreachable:
        return None


def hub_state(client: Client, name: str) -> str | None:
    return answered(lambda: next((h["state"] for h in client.hubs() if h["name"] == name), None))


def test_a_task_lost_with_the_dead_connection_runs_again_though_its_worker_comes_back(
    balancer_process, tmp_path: Path
) -> None:
    """Two workers each hold a task the journal says runs when the balancer is killed; their hub
    heartbeats both alive throughout. One lost its task (its result, or the ``tasks`` message,
    died with the connection): it comes back holding nothing, and the task runs again elsewhere.
    The other still holds a finished, unsent result: it says so, and that result is the one kept."""
    runs = tmp_path / "runs"
    runs.mkdir()
    lb = balancer_process()
    info = connection.read(lb.connection_file)
    lost, kept = (Peer(info.worker_url, info.key_bytes, identity=w) for w in ("w_lost", "w_kept"))
    hub = HandMadeHub(info, [lost.identity, kept.identity])
    real = None
    try:
        with Client(connection_file=lb.connection_file, user="orphans") as client:
            wait_for(lambda: hub_state(client, "hand") == "ok", what="the hand-made hub")
            for peer in (lost, kept):
                peer.send(worker_ready(peer.identity))
            wait_for(lambda: worker_count(client) == 2, what="the hand-made workers")
            submitted = [client.submit(record_run, str(runs), i, 0.0) for i in range(2)]
            futures = {f.task_id: (i, f) for i, f in enumerate(submitted)}
            held = {peer.identity: peer.wait_for("tasks").header["tasks"][0]["id"] for peer in (lost, kept)}
            wait_for(lambda: all(journaled_state(lb, t) == "running" for t in held.values()), what="the journal")
            hub.state = "draining"  # so the task that runs again goes to the real hub below
            lb.kill()
            lb.start()
            wait_for(lambda: hub_state(client, "hand") == "draining", what="the hub to register again")
            lost.send(worker_ready(lost.identity))
            kept_index = futures[held["w_kept"]][0]
            kept.send(worker_ready(kept.identity, finished=[held["w_kept"]]))
            real = start_local_hub(lb.connection_file, 1, name="real")
            lost_index, lost_future = futures[held["w_lost"]]
            assert lost_future.result(timeout=30) == lost_index
            assert len((runs / str(lost_index)).read_text().split()) == 1
            row = next(t for t in client.tasks(limit=100)["tasks"] if t["id"] == held["w_kept"])
            assert (row["state"], row["worker"]) == ("running", "w_kept"), "it waits for the result its worker holds"
            now = time.time()
            result_buffers = protocol.dumps(kept_index)
            kept.send({"type": "results", "worker": kept.identity, "results": [{
                "id": held["w_kept"], "state": "done", "started": now, "ended": now, "nbuf": len(result_buffers),
            }]}, result_buffers)
            assert futures[held["w_kept"]][1].result(timeout=30) == kept_index
            assert not (runs / str(kept_index)).exists(), "the result the worker still held was run again"
    finally:
        hub.stop()
        for peer in (lost, kept):
            peer.close()
        if real is not None:
            stop_process(real)


def test_a_task_running_across_a_restart_stays_on_its_worker_and_runs_once(
    balancer_process, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    lb = balancer_process()
    hub = start_local_hub(lb.connection_file, 2, name="steady")
    try:
        with Client(connection_file=lb.connection_file, user="steady") as client:
            wait_for(lambda: worker_count(client) == 2, what="2 workers")
            long = client.submit(record_run, str(runs), 0, 8.0)
            wait_for(lambda: (runs / "0").exists(), what="the long task to start")
            wait_for(lambda: journaled_state(lb, long.task_id) == "running", what="the journal")
            lb.kill()
            lb.start()
            wait_for(lambda: answered(lambda: worker_count(client)) == 2, what="the workers to register again")
            busy = [w["task"]["id"] for h in client.status()["hubs"] for w in h["workers"] if w["task"]]
            assert busy == [long.task_id], "the running task occupies its worker's slot"
            assert [f.result(timeout=30) for f in [client.submit(double, i) for i in range(4)]] == [0, 2, 4, 6]
            assert long.result(timeout=30) == 0
            assert len((runs / "0").read_text().split()) == 1, "the running task ran twice"
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
