"""A client lives as long as it or one of its pending futures is referenced, as an executor does."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_plb.client import Client, PlbFuture, as_completed

from .conftest import run_script, running_balancer, wait_for


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def connection_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with running_balancer(tmp_path_factory.mktemp("lifetime"), "lifetime-hub", workers=2) as path:
        yield path


def wait_for_gate(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.01)
    return "open"


def io_thread_alive(name: str) -> bool:
    return any(thread.name == name for thread in threading.enumerate())


def submit_unreferenced(connection_file: Path, *seconds: float) -> tuple[list[PlbFuture], str]:
    """Futures of a client nobody references any more, and the name of its I/O thread."""
    client = Client(connection_file=connection_file)
    futures = [client.submit(nap, s) for s in seconds]
    return futures, f"plb-{client._connection.id}"


def test_the_one_liner_in_a_fresh_interpreter(connection_file: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from jupyter_plb import Client\n"
        "print(Client(connection_file=sys.argv[1]).submit(pow, 12, 2).result(timeout=30))\n"
        "print(Client(connection_file=sys.argv[1]).options(priority=1).submit(pow, 2, 5).result(timeout=30))\n"
    )
    done = run_script(code, tmp_path, str(connection_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["144", "32"]
    assert done.stderr == ""


def map_unreferenced(connection_file: Path, chunksize: int) -> tuple[Iterator[int], str]:
    """A map's results over a client nobody references any more, and the name of its I/O thread."""
    client = Client(connection_file=connection_file)
    return client.map(pow, range(30), [2] * 30, chunksize=chunksize), f"plb-{client._connection.id}"


@pytest.mark.parametrize("chunksize", [1, 7])
def test_a_map_iterator_keeps_its_client(connection_file: Path, chunksize: int) -> None:
    results, thread = map_unreferenced(connection_file, chunksize)
    gc.collect()
    assert list(results) == [i * i for i in range(30)]
    del results
    wait_for(lambda: not io_thread_alive(thread), 10, "the client to close after its map")


def test_as_completed_over_futures_of_an_unreferenced_client(connection_file: Path) -> None:
    futures, thread = submit_unreferenced(connection_file, 0.3, 0.1, 0.2, 0.1)
    gc.collect()
    assert sorted(f.result() for f in as_completed(futures, timeout=30)) == [0.1, 0.1, 0.2, 0.3]
    wait_for(lambda: not io_thread_alive(thread), 10, "the client to close after its last future settled")
    assert [f.result() for f in futures] == [0.3, 0.1, 0.2, 0.1]  # settled futures outlive their client


def test_pending_futures_keep_the_client_until_they_settle(connection_file: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    client = Client(connection_file=connection_file)
    future, thread = client.submit(wait_for_gate, str(gate)), f"plb-{client._connection.id}"
    del client
    gc.collect()
    try:
        assert io_thread_alive(thread) and not future.done()
    finally:
        gate.touch()
    assert future.result(timeout=30) == "open"
    wait_for(lambda: not io_thread_alive(thread), 10, "the client to close after its last future settled")


def test_an_unreferenced_idle_client_closes(connection_file: Path) -> None:
    client = Client(connection_file=connection_file)
    assert client.submit(pow, 3, 2).result(timeout=30) == 9
    connection, thread = client._connection, f"plb-{client._connection.id}"
    del client
    gc.collect()
    wait_for(lambda: not io_thread_alive(thread), 10, "the unreferenced client's I/O thread to end")
    assert connection.closed and connection.socket.closed


def test_interpreter_exit_closes_clients_cleanly(connection_file: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    code = (
        "import os, sys, time\n"
        "from jupyter_plb import Client\n"
        "def wait_for_gate(path):\n"
        "    while not os.path.exists(path):\n"
        "        time.sleep(0.02)\n"
        "kept = Client(connection_file=sys.argv[1])\n"
        "kept.submit(wait_for_gate, sys.argv[2])\n"
        "Client(connection_file=sys.argv[1]).submit(wait_for_gate, sys.argv[2])\n"
        "print('submitted')\n"
    )
    try:
        done = run_script(code, tmp_path, str(connection_file), str(gate))
        assert not gate.exists()  # the exit did not wait for the tasks: they are the balancer's
    finally:
        gate.touch()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["submitted"]
    assert done.stderr == ""


def test_a_submit_after_the_exit_closed_the_clients_is_refused(connection_file: Path, tmp_path: Path) -> None:
    code = (
        "import atexit, sys\n"
        "@atexit.register\n"
        "def run_last():\n"
        "    try:\n"
        "        client.submit(id, None)\n"
        "    except RuntimeError:\n"
        "        print('runtime-error')\n"
        "        raise\n"
        "from jupyter_plb import Client\n"
        "client = Client(connection_file=sys.argv[1])\n"
        "client.submit(id, 42).result(timeout=30)\n"
    )
    done = run_script(code, tmp_path, str(connection_file))
    assert "ClientClosed: cannot schedule new futures after shutdown" in done.stderr
    assert done.stdout.split() == ["runtime-error"]
