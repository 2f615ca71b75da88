"""The wire format: the one place that knows frame layouts, signatures and pickling.

A message is ``[routing id] VERSION signature header buffer*``:

* ``header`` is compact JSON (a dict with at least ``type``, ``msg`` and ``ts``);
* ``buffer``\\ s are raw bytes (pickles, pickle protocol 5 out-of-band buffers);
* ``signature`` is HMAC-SHA256, keyed by the connection key, over the version, the header and the
  SHA-256 digest of every buffer. A receiver checks it before it parses anything else, so every
  frame is authenticated. A forwarder re-signs a new header over the digests it already verified,
  so a large buffer is hashed once per hop, never re-encoded.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import zmq

from .errors import DeserializationError, ProtocolError, SerializationError

VERSION = b"plb/1"
#: Buffers at least this large are sent and received without copying.
ZERO_COPY_THRESHOLD = 64 * 1024
#: Messages older than this (by their sender's clock) are refused as stale.
REPLAY_WINDOW = 300.0
#: How many recent signatures are remembered to refuse replays.
REPLAY_HISTORY = 1 << 16

Buffer = bytes | memoryview | zmq.Frame


def buffer_view(buf: Buffer) -> memoryview | bytes:
    """A bytes-like view of a buffer (zmq frames expose ``.buffer``)."""
    return buf.buffer if isinstance(buf, zmq.Frame) else buf


def buffer_size(buf: Buffer) -> int:
    if isinstance(buf, memoryview):
        return buf.nbytes
    return len(buf)


def digest(buf: Buffer) -> bytes:
    return hashlib.sha256(buffer_view(buf)).digest()


@dataclass(slots=True)
class Message:
    """A verified message: its header, its buffers and their digests (reused when forwarding)."""

    header: dict[str, Any]
    buffers: list[Buffer] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    identity: bytes | None = None

    @property
    def type(self) -> str:
        return self.header.get("type", "")


class Session:
    """Signs outgoing and verifies incoming messages with one key; counts what it refused."""

    def __init__(self, key: bytes, *, max_message_size: int = 256 << 20) -> None:
        if not key:
            raise ValueError("a non-empty key is required to sign messages")
        self.key = key
        self.max_message_size = max_message_size
        self._seen: set[bytes] = set()
        self._order: collections.deque[bytes] = collections.deque()
        self._counter = 0
        self._prefix = os.urandom(6).hex()
        self.rejected: collections.Counter[str] = collections.Counter()

    def _sign(self, header: bytes, digests: Sequence[bytes]) -> bytes:
        return hmac.digest(self.key, VERSION + header + b"".join(digests), "sha256")

    def serialize(
        self,
        header: dict[str, Any],
        buffers: Sequence[Buffer] = (),
        digests: Sequence[bytes] | None = None,
    ) -> list[Buffer]:
        """Frames for ``header`` and ``buffers``; pass ``digests`` when they are already known."""
        self._counter += 1
        header["msg"] = f"{self._prefix}{self._counter:x}"
        header["ts"] = time.time()
        head = json.dumps(header, separators=(",", ":")).encode()
        if digests is None:
            digests = [digest(b) for b in buffers]
        return [VERSION, self._sign(head, digests), head, *buffers]

    def _remember(self, signature: bytes) -> bool:
        if signature in self._seen:
            return False
        self._seen.add(signature)
        self._order.append(signature)
        if len(self._order) > REPLAY_HISTORY:
            self._seen.discard(self._order.popleft())
        return True

    def _refuse(self, reason: str, detail: str = "") -> ProtocolError:
        self.rejected[reason] += 1
        return ProtocolError(reason, detail)

    def deserialize(self, frames: Sequence[Buffer], *, routed: bool = False) -> Message:
        """Verify and parse ``frames`` (with a leading routing id when ``routed``)."""
        identity = None
        if routed:
            if not frames:
                raise self._refuse("empty")
            identity = bytes(buffer_view(frames[0]))
            frames = frames[1:]
        if len(frames) < 3:
            raise self._refuse("truncated", f"{len(frames)} frames")
        if bytes(buffer_view(frames[0])) != VERSION:
            raise self._refuse("version", "not a plb/1 message")
        size = sum(buffer_size(f) for f in frames)
        if size > self.max_message_size:
            raise self._refuse("too-large", f"{size} bytes > {self.max_message_size}")
        signature = bytes(buffer_view(frames[1]))
        head = bytes(buffer_view(frames[2]))
        buffers = list(frames[3:])
        digests = [digest(b) for b in buffers]
        if not hmac.compare_digest(signature, self._sign(head, digests)):
            raise self._refuse("signature", "bad or missing HMAC signature")
        try:
            header = json.loads(head)
        except (ValueError, RecursionError):
            raise self._refuse("header", "header is not JSON") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise self._refuse("header", "header is not an object with a 'type'")
        ts = header.get("ts")
        if not isinstance(ts, int | float) or abs(time.time() - ts) > REPLAY_WINDOW:
            raise self._refuse("stale", "timestamp missing or outside the replay window")
        if not self._remember(signature):
            raise self._refuse("replay", "message was already received")
        return Message(header, buffers, digests, identity)


_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)


def send(socket: zmq.Socket, frames: Sequence[Buffer], identity: bytes | None = None) -> None:
    """Send frames without blocking, large buffers without a copy."""
    parts: list[Buffer] = [identity, *frames] if identity is not None else list(frames)
    last = len(parts) - 1
    for index, part in enumerate(parts):
        copy = isinstance(part, bytes) or buffer_size(part) < ZERO_COPY_THRESHOLD
        socket.send(part, _MORE if index < last else _LAST, copy=copy)


def recv_ready(socket: zmq.Socket) -> list[zmq.Frame] | None:
    """One pending multipart message without blocking, or None when nothing is waiting."""
    try:
        return socket.recv_multipart(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None


def dumps(obj: Any) -> list[bytes | memoryview]:
    """Pickle ``obj`` (cloudpickle, protocol 5): the pickle first, then out-of-band buffers."""
    extra: list[pickle.PickleBuffer] = []
    try:
        main = cloudpickle.dumps(obj, protocol=5, buffer_callback=extra.append)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle {type(obj).__name__}: {exc}. Define it at module level or in the "
            "notebook, and avoid open files, sockets, locks and generators in task arguments."
        ) from exc
    return [main, *(b.raw() for b in extra)]


def loads(buffers: Sequence[Buffer]) -> Any:
    """Unpickle what :func:`dumps` produced; call only on buffers of a verified message."""
    if not buffers:
        raise DeserializationError("no pickle buffer in the message")
    try:
        return pickle.loads(buffer_view(buffers[0]), buffers=[buffer_view(b) for b in buffers[1:]])
    except Exception as exc:
        raise DeserializationError(
            f"cannot unpickle ({type(exc).__name__}: {exc}); the sender may use another Python "
            "or cloudpickle version, or a module that is not installed here"
        ) from exc


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(8).hex()}"
