"""The floor: a brokered pyzmq round trip with as little Python per hop as it takes.

client DEALER → broker ROUTER → worker DEALER → broker ROUTER → client: four hops, separate
processes (the client is the calling process), what a jupyter_plb round trip does without
signing, JSON, scheduling or journaling. The broker waits in ``zmq.Poller.poll`` (``poll``) or,
as the balancer does, in an asyncio loop with ``add_reader`` callbacks that drain the sockets
(``asyncio``). A message is a pickle of ``(function, args)`` the worker unpickles and calls,
pickling the result (``call``), or bytes it sends back as they are (``echo``).

    python floor.py broker poll|asyncio     (prints its two ports, then serves)
    python floor.py worker PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

READY = b"ready"


def _bind(context: zmq.Context) -> tuple[zmq.Socket, int]:
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, port


def broker(mode: str) -> None:
    context = zmq.Context()
    clients, client_port = _bind(context)
    workers, worker_port = _bind(context)
    print(client_port, worker_port, flush=True)
    idle: list[bytes] = []

    def from_client() -> None:
        client, payload = clients.recv_multipart(zmq.NOBLOCK, copy=False)
        if idle:  # before the worker said ready, a request is dropped (the client asks again)
            workers.send_multipart([idle[0], client.bytes, payload], copy=False)

    def from_worker() -> None:
        frames = workers.recv_multipart(zmq.NOBLOCK, copy=False)
        if len(frames) == 2:  # [worker, READY]
            idle.append(frames[0].bytes)
            return
        _worker, client, payload = frames
        clients.send_multipart([client, payload], copy=False)

    if mode == "poll":
        poller = zmq.Poller()
        poller.register(clients, zmq.POLLIN)
        poller.register(workers, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                (from_client if sock is clients else from_worker)()
    loop = asyncio.new_event_loop()

    def drain(sock: zmq.Socket, handle: Callable[[], None]) -> None:
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            handle()

    loop.add_reader(clients.fileno(), drain, clients, from_client)
    loop.add_reader(workers.fileno(), drain, workers, from_worker)
    loop.run_forever()


def worker(port: int) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send(READY)
    while True:
        client, payload = sock.recv_multipart()
        if payload[:1] == b"c":
            fn, args = pickle.loads(payload[1:])
            payload = b"c" + pickle.dumps(fn(*args), protocol=5)
        sock.send_multipart([client, payload])


@contextlib.contextmanager
def floor_system(mode: str) -> Iterator[zmq.Socket]:
    """A broker (``poll`` or ``asyncio``) and one worker; yields the client's DEALER socket."""
    command = [sys.executable, __file__]
    broker_process = subprocess.Popen([*command, "broker", mode], stdout=subprocess.PIPE, text=True)
    worker_process = None
    context = zmq.Context()
    try:
        assert broker_process.stdout is not None
        client_port, worker_port = broker_process.stdout.readline().split()
        worker_process = subprocess.Popen([*command, "worker", worker_port])
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{client_port}")
        sock.RCVTIMEO = 200
        deadline = time.monotonic() + 30
        attempt = 0
        while True:  # until the worker said ready: a request is answered
            if broker_process.poll() is not None or worker_process.poll() is not None:
                raise RuntimeError("a floor process exited")
            if time.monotonic() > deadline:
                raise RuntimeError("the floor broker did not answer within 30 s")
            attempt += 1
            probe = b"e%d" % attempt
            sock.send(probe)
            with contextlib.suppress(zmq.Again):
                while sock.recv() != probe:  # replies come in order: earlier probes' first
                    pass
                break
        sock.RCVTIMEO = 10_000
        yield sock
        sock.close()
    finally:
        for process in (worker_process, broker_process):
            if process is not None:
                process.kill()
                process.wait()
        context.term()


def round_trips(sock: zmq.Socket, n: int, fn: Callable[..., Any] | None = None) -> list[float]:
    """Seconds of ``n`` sequential round trips: ``fn(i)`` called on the worker, or an echo."""
    times = []
    for i in range(n):
        started = time.perf_counter()
        if fn is None:
            sock.send(b"e")
            sock.recv()
        else:
            sock.send(b"c" + pickle.dumps((fn, (i,)), protocol=5))
            assert pickle.loads(sock.recv()[1:]) == i
        times.append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    if sys.argv[1] == "broker":
        broker(sys.argv[2])
    else:
        worker(int(sys.argv[2]))
