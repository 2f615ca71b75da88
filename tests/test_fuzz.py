"""Random and hostile input at every port: the balancer answers or drops, never crashes, and a
good client beside the fuzzer keeps getting results."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_plb.client import Client
from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import Session

from .conftest import wait_for

TYPES = [
    "hello", "submit", "get", "cancel", "ack", "status", "tasks", "hub_hello", "heartbeat",
    "worker_ready", "results", "progress", "worker_lost", "hub_bye", "skipped", "health",
    "health_update", "nonsense",
]
FIELDS = [
    "req", "ids", "tasks", "fns", "id", "user", "priority", "nbuf", "fn", "route", "payload",
    "timeout", "retries", "worker", "hub", "min_p", "max_p", "routes", "results", "state",
    "value", "workers", "outstanding", "reply_to", "messages", "status", "offset", "limit", "chunk",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)
headers = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={field: json_values for field in FIELDS},
)
buffers = st.lists(st.binary(max_size=64), max_size=3)
raw_frames = st.lists(st.binary(max_size=64), min_size=0, max_size=6)


def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def fuzz_target(ready_client: Client, cluster, connection_file: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="jupyter_plb.balancer")
    info = ready_client.connection_info
    context = zmq.Context()
    peers = {}
    for port in ("client_port", "worker_port", "health_port"):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(info.url(getattr(info, port)))
        peers[port] = sock
    yield ready_client, peers, Session(info.key_bytes), caplog
    for sock in peers.values():
        sock.close()
    context.term()


def message(session: Session) -> st.SearchStrategy[tuple[str, list[bytes]]]:
    signed = st.builds(lambda h, b: session.serialize(h, b), headers, buffers)
    unsigned = raw_frames.map(lambda frames: frames or [b""])
    return st.tuples(st.sampled_from(["client_port", "worker_port", "health_port"]), signed | unsigned)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_messages_never_break_the_balancer(fuzz_target, data: st.DataObject) -> None:
    client, peers, session, caplog = fuzz_target
    for port, frames in data.draw(st.lists(message(session), min_size=1, max_size=25)):
        peers[port].send_multipart(frames)
    assert client.submit(double, 21).result(timeout=20) == 42
    unexpected = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not unexpected, unexpected


def test_after_fuzzing_the_good_client_is_still_served(fuzz_target) -> None:
    client, peers, session, caplog = fuzz_target
    hostile = (
        {"type": "submit", "tasks": [{"id": 1}] * 3},
        {"type": "results", "results": [{"nbuf": 10**9}]},
        {"type": "get", "ids": "x" * 10},
        {"type": "worker_ready", "worker": None},
    )
    for sock in peers.values():
        for header in hostile:
            sock.send_multipart(session.serialize(dict(header, req="f")))
        sock.send_multipart([protocol.VERSION + bytes(40) + b"{" * 50_000])
        sock.send_multipart([b"\xff" * 100_000])
    assert [f.result(timeout=30) for f in [client.submit(double, i) for i in range(20)]] == [2 * i for i in range(20)]
    wait_for(lambda: client.status()["totals"]["bad_messages"] > 0, what="bad messages counted")
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not unexpected, [r.getMessage() for r in unexpected]
