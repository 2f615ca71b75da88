"""A worker's cache of functions and broadcast objects, by digest, as its balancer mirrors it.

The balancer sends a function or object only to a worker that does not hold it, so both keep the
same FUNCTION_CACHE_SIZE entries: the same insertions, uses and evictions, in the same order.
"""

from __future__ import annotations

import socket
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cloudpickle

from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import FUNCTION_CACHE_SIZE, Buffer
from jupyter_plb.errors import DeserializationError, IntegrityError

#: This interpreter's versions, named when a pickle from a client cannot be loaded here.
VERSIONS = "Python {}.{}.{}, cloudpickle {}".format(*sys.version_info[:3], cloudpickle.__version__)


@dataclass(slots=True)
class Unloadable:
    """A cached pickle that could not be loaded: the error its tasks raise."""

    error: Exception


class FunctionCache:
    """Functions and broadcast objects by digest; the least recently used one leaves first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Any] = OrderedDict()
        #: Pickles received into the cache, by kind, and entries the balancer told it to forget.
        self.received = {"functions": 0, "objects": 0, "forgotten": 0}
        #: The versions each cached function's client runs (``VERSIONS`` there), by digest.
        self.origins: dict[str, str] = {}

    def unpack(self, spec: dict[str, Any], buffers: list[Buffer], digests: list[bytes], position: int) -> int:
        """Cache what a task brings along (from ``position`` in its message's buffers) and use
        what it names; put the broadcast objects it names in ``spec["objects"]``. Returns the
        position of the task's arguments."""
        entries = self.entries
        fn_count = int(spec.get("fnbuf", 0))
        if fn_count:
            end = position + fn_count
            self._add_function(spec["fn"], buffers[position:end], digests[position:end], spec.get("origin"))
            position = end
        elif spec.get("fn") in entries:
            entries.move_to_end(spec["fn"])
        objects: dict[str, Any] = {}
        for digest, count in spec.get("refs", []):
            if count:
                end = position + count
                self._add_object(digest, buffers[position:end], digests[position:end])
                position = end
            elif digest in entries:
                entries.move_to_end(digest)
            objects[digest] = entries.get(digest, Unloadable(LookupError(
                f"the broadcast object {digest} was not sent with the task that needs it"
            )))
        if objects:
            spec["objects"] = objects
        return position

    def forget(self, digests: list[str]) -> None:
        for digest in digests:
            if digest in self.entries:
                del self.entries[digest]
                self.received["forgotten"] += 1

    def versions_error(self, digest: Any, exc: DeserializationError) -> DeserializationError:
        """``exc`` with both sides' Python and cloudpickle versions, and what to do about them."""
        origin = self.origins.get(digest) if isinstance(digest, str) else None
        host = socket.gethostname()
        here = f"this worker (on {host}) runs {VERSIONS}"
        if origin is None:
            advice = f"{here}; the client did not say which versions it runs"
        elif origin == VERSIONS:
            advice = (f"the client and this worker (on {host}) both run {VERSIONS}, so a module "
                      "the task needs is probably not installed on this hub's machine")
        else:
            advice = (f"the client runs {origin} but {here}: run the hub with the client's Python "
                      "and cloudpickle versions")
        error = DeserializationError(f"{exc}; {advice}")
        error.__cause__ = exc.__cause__
        return error

    def _add_function(self, digest: str, buffers: list[Buffer], digests: list[bytes], origin: Any) -> None:
        """Keep a function; one that does not load is kept as the error its tasks raise."""
        if isinstance(origin, str):
            self.origins[digest] = origin[:200]
        try:
            protocol.verify(buffers, digests)
            fn: Any = protocol.loads(buffers)
        except IntegrityError as exc:
            fn = exc
        except DeserializationError as exc:
            fn = self.versions_error(digest, exc)
        except Exception as exc:
            fn = exc
        self.received["functions"] += 1
        self._remember(digest, fn)

    def _add_object(self, digest: str, buffers: list[Buffer], digests: list[bytes]) -> None:
        """Keep a broadcast object; one that does not load is kept as the error its tasks raise."""
        try:
            protocol.verify(buffers, digests)
            value: Any = protocol.loads(buffers)
        except Exception as exc:
            value = Unloadable(exc)
        self.received["objects"] += 1
        self._remember(digest, value)

    def _remember(self, digest: str, value: Any) -> None:
        """Cache an entry, evicting the least recently used one beyond the size (as the balancer does)."""
        self.entries[digest] = value
        if len(self.entries) > FUNCTION_CACHE_SIZE:
            evicted, _ = self.entries.popitem(last=False)
            self.origins.pop(evicted, None)
