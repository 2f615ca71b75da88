"""A hand-made protocol peer: a real DEALER on loopback that signs what the test chooses to say."""

from __future__ import annotations

import time
from typing import Any

import zmq

from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import Message, Session
from jupyter_plb.transport import sockets
from jupyter_plb.transport.security import PeerKeys

#: How long a hand-made peer listens for an answer that must not come.
SILENCE = 0.5


class Peer:
    """A DEALER with the keys we choose, signing with the key we choose; reads what comes back."""

    def __init__(
        self, url: str, key: bytes, curve: PeerKeys | None = None, identity: str | None = None
    ):
        self.context = zmq.Context()
        self.identity = identity or protocol.new_id("peer")
        self.socket = sockets.connect_dealer(
            self.context, url, self.identity, linger_ms=0, curve=curve
        )
        self.session = Session(key)
        self.reader = Session(key)

    def send(self, header: dict[str, Any], buffers: list[Any] | None = None) -> list[Any]:
        frames = self.session.serialize(header, buffers or [])
        self.send_frames(frames)
        return frames

    def send_frames(self, frames: list[Any]) -> None:
        protocol.send(self.socket, frames)

    def replies(self, wait: float = SILENCE) -> list[Message]:
        """Every verified message that arrives within ``wait`` seconds of silence."""
        out = []
        while self.socket.poll(wait * 1000):
            frames = self.socket.recv_multipart()
            out.append(self.reader.deserialize(frames))
        return out

    def wait_for(self, kind: str, timeout: float = 20) -> Message:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if self.socket.poll(left * 1000):
                msg = self.reader.deserialize(self.socket.recv_multipart())
                if msg.type == kind:
                    return msg
        raise AssertionError(f"no {kind!r} message within {timeout} s")

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
