"""The wire format: the one place that knows frame layouts, signatures and pickling.

A message is ``[routing id] envelope large-buffer*``. The envelope is one frame::

    VERSION | signature | header length, buffer count | buffer sizes | header | digests | small buffers

* ``header`` is compact JSON (a dict with at least ``type``, ``msg`` and ``ts``);
* buffers are raw bytes (pickles, pickle protocol 5 out-of-band buffers). Those under
  ``ZERO_COPY_THRESHOLD`` travel inside the envelope (one frame costs a few µs at every hop, so a
  message is one or two frames, not one per buffer); larger ones are frames of their own (size
  ``0xFFFFFFFF`` in the table), sent and received without a copy;
* ``digests`` is the SHA-256 digest of every buffer, concatenated, as the sender computed them;
* ``signature`` is HMAC-SHA256, keyed by the connection key, over the version and everything in the
  envelope up to the small buffers. A receiver checks it before it parses anything else, then
  checks each buffer against its signed digest before that buffer is unpickled, so every byte is
  authenticated.

A buffer of at least ``shm.THRESHOLD`` bytes between processes of one machine may instead live in
a shared-memory segment (shm.py): the envelope then carries a small :class:`~.shm.Segment`
buffer describing it (its size flagged with ``_SEGMENT``), signed and digested like any other, and
:func:`loads` maps the segment where it unpickles.

The balancer never unpickles what it forwards (task arguments, results), so it checks only the
signature and passes the signed digests on (``verify=False``): a large buffer is hashed by its
sender and by the process that unpickles it, never by the hops in between.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import json
import os
import pickle
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import zmq

from jupyter_plb.core import shm
from jupyter_plb.core.shm import Segment
from jupyter_plb.errors import DeserializationError, IntegrityError, ProtocolError, SerializationError

VERSION = b"plb/3"
DIGEST_SIZE = 32
#: Functions and broadcast objects a worker keeps unpickled, by digest; the balancer mirrors this
#: cache exactly (same insertions, uses and evictions, in the same order).
FUNCTION_CACHE_SIZE = 256
#: Header length and buffer count, after the version and the signature.
_COUNTS = struct.Struct(">II")
_SIGNED = len(VERSION) + DIGEST_SIZE
_FIXED = _SIGNED + _COUNTS.size
#: The size of a buffer that travels as its own frame rather than inside the first one.
_EXTERNAL = 0xFFFFFFFF
#: Set in the size of an inline buffer that describes a shared-memory segment (shm.Segment).
_SEGMENT = 0x80000000
MAX_BUFFERS = 1 << 20
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

    def _sign(self, signed: bytes | memoryview) -> bytes:
        return hmac.digest(self.key, VERSION + signed, "sha256")

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
        declared = b"".join(digests if digests is not None else [digest(b) for b in buffers])
        sizes: list[int] = []
        inline: list[bytes | memoryview] = []
        external: list[Buffer] = []
        for buf in buffers:
            size = buffer_size(buf)
            if isinstance(buf, Segment):
                sizes.append(_SEGMENT | size)
                inline.append(buf)
            elif size >= ZERO_COPY_THRESHOLD:
                sizes.append(_EXTERNAL)
                external.append(buf)
            else:
                sizes.append(size)
                inline.append(buffer_view(buf))
        counts = _COUNTS.pack(len(head), len(sizes))
        signed = b"".join([counts, struct.pack(f">{len(sizes)}I", *sizes), head, declared])
        return [b"".join([VERSION, self._sign(signed), signed, *inline]), *external]

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

    def deserialize(self, frames: Sequence[Buffer], *, routed: bool = False, verify: bool = True) -> Message:
        """Verify and parse ``frames`` (with a leading routing id when ``routed``).

        With ``verify=False`` the buffers are not hashed: the caller must :func:`verify` any buffer
        before it unpickles it (the balancer only forwards them).
        """
        identity = None
        if routed:
            if not frames:
                raise self._refuse("empty")
            identity = bytes(buffer_view(frames[0]))
            frames = frames[1:]
        if not frames:
            raise self._refuse("truncated", "no frames")
        envelope = buffer_view(frames[0])
        if len(envelope) < _FIXED:
            raise self._refuse("truncated", f"{len(envelope)} bytes")
        if bytes(envelope[: len(VERSION)]) != VERSION:
            raise self._refuse(
                "version", f"not a {VERSION.decode()} message (is the sender another jupyter_plb version?)"
            )
        size = sum(buffer_size(f) for f in frames)
        if size > self.max_message_size:
            raise self._refuse("too-large", f"{size} bytes > {self.max_message_size}")
        head_length, count = _COUNTS.unpack_from(envelope, _SIGNED)
        sizes_end = _FIXED + 4 * count
        head_end = sizes_end + head_length
        signed_end = head_end + DIGEST_SIZE * count
        if count > MAX_BUFFERS or signed_end > len(envelope):
            raise self._refuse("layout", f"{count} buffers and a {head_length}-byte header do not fit")
        signature = bytes(envelope[len(VERSION) : _SIGNED])
        if not hmac.compare_digest(signature, self._sign(envelope[_SIGNED:signed_end])):
            raise self._refuse("signature", "bad or missing HMAC signature")
        head = bytes(envelope[sizes_end:head_end])
        digests = [bytes(envelope[i : i + DIGEST_SIZE]) for i in range(head_end, signed_end, DIGEST_SIZE)]
        buffers: list[Buffer] = []
        external = frames[1:]
        used = 0
        position = signed_end
        for length in struct.unpack_from(f">{count}I", envelope, _FIXED):
            if length == _EXTERNAL:
                if used < len(external):
                    buffers.append(external[used])
                used += 1
            elif length & _SEGMENT:
                length &= ~_SEGMENT
                buffers.append(Segment(envelope[position : position + length]))
                position += length
            else:
                buffers.append(envelope[position : position + length])
                position += length
        if position != len(envelope) or used != len(external):
            raise self._refuse("layout", "the buffers do not match their signed sizes")
        if verify and not matches(buffers, digests):
            raise self._refuse("signature", "a buffer does not match its signed digest")
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


def matches(buffers: Sequence[Buffer], digests: Sequence[bytes]) -> bool:
    """Whether every buffer hashes to its signed digest."""
    return len(buffers) == len(digests) and all(
        hmac.compare_digest(digest(b), d) for b, d in zip(buffers, digests, strict=True)
    )


def verify(buffers: Sequence[Buffer], digests: Sequence[bytes]) -> None:
    """Raise IntegrityError unless every buffer hashes to its signed digest."""
    if not matches(buffers, digests):
        raise IntegrityError(
            "a buffer does not match the digest its signed header names: it was altered in transit"
        )


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


class _Blob:
    """A large bytes value pickled out-of-band: sent without a copy, unpickled as bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[type[bytes], tuple[pickle.PickleBuffer]]:
        return bytes, (pickle.PickleBuffer(self.data),)


def blob(value: Any) -> Any:
    """``value``, marked to travel as its own frame when it is a large bytes object."""
    if type(value) is bytes and len(value) >= ZERO_COPY_THRESHOLD:
        return _Blob(value)
    return value


def call_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A task's ``(args, kwargs)`` with large bytes arguments marked by :func:`blob`."""
    return tuple(blob(a) for a in args), {k: blob(v) for k, v in kwargs.items()}


_ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None), _Blob})


def _plain(obj: Any, depth: int = 2) -> bool:
    """Whether the standard pickler is enough: atoms, or small tuples, lists, dicts of them."""
    kind = type(obj)
    if kind in _ATOMS:
        return True
    if depth and (kind is tuple or kind is list) and len(obj) <= 32:
        return all(_plain(item, depth - 1) for item in obj)
    if depth and kind is dict and len(obj) <= 32:
        return all(type(key) is str and _plain(value, depth - 1) for key, value in obj.items())
    return False


def dumps(obj: Any) -> list[Buffer]:
    """Pickle ``obj`` (protocol 5): the pickle first, then out-of-band buffers.

    Plain data (numbers, strings, bytes and small containers of them) takes the standard pickler,
    everything else cloudpickle (functions and classes from ``__main__`` travel by value).
    """
    extra: list[pickle.PickleBuffer] = []
    try:
        if _plain(obj):
            main = pickle.dumps(obj, protocol=5, buffer_callback=extra.append)
        else:
            main = cloudpickle.dumps(obj, protocol=5, buffer_callback=extra.append)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle {type(obj).__name__}: {exc}. Define it at module level or in the "
            "notebook, and avoid open files, sockets, locks and generators in task arguments."
        ) from exc
    return [main, *(b.raw() for b in extra)]


def share(buffers: Sequence[Buffer], write: Callable[[Buffer], shm.SegmentInfo]) -> list[Buffer]:
    """``buffers`` with each one of at least ``shm.THRESHOLD`` bytes written by ``write`` to a
    shared-memory segment and replaced by the segment's description."""
    return [
        Segment.describing(write(b)) if not isinstance(b, Segment) and buffer_size(b) >= shm.THRESHOLD else b
        for b in buffers
    ]


def mapped(buf: Buffer) -> memoryview | bytes:
    """A buffer's bytes: a segment mapped (checked for owner and mode, and against its digest when
    its description carries one), any other buffer as it is. Segments are removed by whoever made
    them: a client when its task settles, the balancer when it drops a result."""
    if not isinstance(buf, Segment):
        return buffer_view(buf)
    info = buf.info
    return shm.open_segment(info, verify=info.digest is not None, unlink=False, writable=True)


def loads(buffers: Sequence[Buffer]) -> Any:
    """Unpickle what :func:`dumps` produced, segments mapped rather than copied; call only on
    buffers of a verified message."""
    if not buffers:
        raise DeserializationError("no pickle buffer in the message")
    views = [mapped(b) for b in buffers]
    try:
        return pickle.loads(views[0], buffers=views[1:])
    except Exception as exc:
        raise DeserializationError(
            f"cannot unpickle ({type(exc).__name__}: {exc}); the sender may use another Python "
            "or cloudpickle version, or a module that is not installed here"
        ) from exc


class _IdSource:
    """Unique ids: a random per-process prefix and a counter (reset in a forked child)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)


_ids = _IdSource()
os.register_at_fork(after_in_child=_ids.reset)


def new_id(prefix: str) -> str:
    return f"{prefix}_{_ids.prefix}{next(_ids.counter):x}"
