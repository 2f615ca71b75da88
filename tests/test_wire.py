"""The wire: signatures, replays and garbage at every port, with a good client served throughout."""

from __future__ import annotations

import hashlib

import pytest
import zmq

from jupyter_plb.client import Client
from jupyter_plb.client.pickling import pickle_function
from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import Session
from jupyter_plb.errors import DeserializationError, IntegrityError, ProtocolError

from .conftest import wait_for


def add(a: int, b: int) -> int:
    return a + b


def test_session_round_trip_and_refusals() -> None:
    sender, receiver = Session(b"secret-key"), Session(b"secret-key")
    large = bytes(range(256)) * 512
    frames = sender.serialize({"type": "x", "n": 1}, [b"payload", memoryview(b"more"), large])
    assert len(frames) == 2 and frames[1] is large, "small buffers ride in the envelope, large ones alone"
    msg = receiver.deserialize(frames)
    assert msg.header["n"] == 1 and [bytes(b) for b in msg.buffers] == [b"payload", b"more", large]
    assert msg.digests == [hashlib.sha256(b).digest() for b in (b"payload", b"more", large)]
    with pytest.raises(ProtocolError, match="replay"):
        receiver.deserialize(frames)
    envelope = frames[0]
    for tampered in ([envelope[:-1] + b"X", large], [envelope, b"X" + large[1:]]):
        with pytest.raises(ProtocolError, match="signature"):
            Session(b"secret-key").deserialize(tampered)
        forwarded = Session(b"secret-key").deserialize(tampered, verify=False)
        assert not protocol.matches(forwarded.buffers, forwarded.digests)
        with pytest.raises(IntegrityError, match="altered in transit"):
            protocol.verify(forwarded.buffers, forwarded.digests)
    sizes_at = len(protocol.VERSION) + 32 + 8
    resized = envelope[:sizes_at] + (6).to_bytes(4, "big") + envelope[sizes_at + 4 :]
    with pytest.raises(ProtocolError, match="signature"):
        Session(b"secret-key").deserialize([resized, large])
    for missing_or_extra in ([envelope], [envelope, large, large], [envelope + b"!", large]):
        with pytest.raises(ProtocolError, match="layout"):
            Session(b"secret-key").deserialize(missing_or_extra)
    with pytest.raises(ProtocolError, match="layout"):
        Session(b"secret-key").deserialize([envelope[:60]])
    with pytest.raises(ProtocolError, match="signature"):
        Session(b"other-key").deserialize(sender.serialize({"type": "x"}))
    with pytest.raises(ProtocolError, match="truncated"):
        receiver.deserialize([protocol.VERSION])
    with pytest.raises(ProtocolError, match="version"):
        receiver.deserialize([b"http/1.1 " * 10])
    assert receiver.rejected == {"replay": 1, "truncated": 1, "version": 1}


def test_unpickling_needs_valid_pickle() -> None:
    assert protocol.loads(protocol.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(DeserializationError, match="cannot unpickle"):
        protocol.loads([b"not a pickle"])


def _attacker_frames(good: Session) -> list[tuple[str, list[bytes]]]:
    valid = good.serialize({"type": "status", "req": "attacker"})
    unsigned = Session(b"wrong-key-wrong-key").serialize({"type": "submit", "tasks": []})
    return [
        ("garbage", [b"\x00\xff" * 10]),
        ("truncated", [protocol.VERSION, b"sig"]),
        ("unsigned", unsigned),
        ("replayed", valid),
        ("replayed", valid),
        ("oversized-json", good.serialize({"type": "submit", "tasks": [{"id": "x" * 10_000}]})),
        ("nested", [protocol.VERSION + bytes(32) + (100_000).to_bytes(4, "big") + bytes(4) + b"[" * 100_000]),
    ]


@pytest.mark.parametrize("port", ["client_port", "worker_port", "health_port"])
def test_bad_messages_are_dropped_and_counted_while_a_good_client_is_served(
    ready_client: Client, connection_file, port: str
) -> None:
    info = ready_client.connection_info
    assert ready_client.submit(add, 1, 2).result(timeout=20) == 3
    before = ready_client.status()["totals"]["bad_messages"]
    context = zmq.Context()
    attacker = context.socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    attacker.connect(info.url(getattr(info, port)))
    sent = 0
    try:
        for _name, frames in _attacker_frames(Session(info.key_bytes)):
            attacker.send_multipart(frames)
            sent += 1
        futures = [ready_client.submit(add, i, i) for i in range(50)]
        assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(50)]
        status = wait_for(
            lambda: (s := ready_client.status())["totals"]["bad_messages"] - before >= 4 and s,
            what="the bad messages to be counted",
        )
        rejected = status["rejected"]
        assert rejected.get("signature", 0) >= 2 and rejected.get("replay", 0) >= 1
        assert rejected.get("truncated", 0) >= 1
    finally:
        attacker.close()
        context.term()
    assert ready_client.submit(add, 20, 22).result(timeout=20) == 42


def test_large_bytes_travel_out_of_band_and_come_back_as_bytes() -> None:
    blob = bytes(range(256)) * 1024
    buffers = protocol.dumps(protocol.call_payload((blob, 1), {"k": blob, "small": b"x"}))
    assert len(buffers) == 3 and all(protocol.buffer_size(b) == len(blob) for b in buffers[1:])
    args, kwargs = protocol.loads([bytes(b) for b in buffers])
    assert args == (blob, 1) and type(args[0]) is bytes and kwargs == {"k": blob, "small": b"x"}
    assert len(protocol.dumps(protocol.call_payload((b"small",), {}))) == 1


def test_functions_pickled_by_name_are_pickled_once(ready_client: Client) -> None:
    assert pickle_function(add) is pickle_function(add)
    closure_value = 5

    def closure(x: int) -> int:
        return x + closure_value

    first, second = pickle_function(closure), pickle_function(closure)
    assert first is not second and first[1] == second[1]
    assert ready_client.submit(closure, 1).result(timeout=20) == 6
    assert ready_client.submit(add, 1, 2).result(timeout=20) == 3


def test_a_quick_run_of_submits_travels_together_and_result_sends_it(
    ready_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_plb.client import outbox

    monkeypatch.setattr(outbox, "COALESCE_DELAY", 60.0)  # only a flush sends them
    monkeypatch.setattr(outbox, "COALESCE_WINDOW", 60.0)
    ready_client.submit(add, 0, 0).result(timeout=20)
    futures = [ready_client.submit(add, i, 1) for i in range(5)]
    assert sum(len(tasks) for tasks, _, _ in ready_client._connection.outbox.waiting) == 5
    assert futures[2].result(timeout=20) == 3, "asking for a result sends what waits"
    assert ready_client._connection.outbox.waiting == []
    assert [f.result(timeout=20) for f in futures] == [1, 2, 3, 4, 5]
    waiting = ready_client.submit(add, 40, 2)
    assert ready_client._connection.outbox.waiting, "it waits for the submits that may follow"
    assert ready_client.status()["totals"]["submitted"] >= 7, "any other request sends it first"
    assert waiting.result(timeout=20) == 42
