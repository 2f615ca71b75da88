"""References to objects the balancer keeps for tasks to take as an argument (``Client.broadcast``),
and their release when they are dropped."""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jupyter_plb.client.pickling import named_broadcasts
from jupyter_plb.errors import PlbError
from jupyter_plb.workers.worker import broadcast_value

if TYPE_CHECKING:
    from jupyter_plb.client.connection import Connection


class Broadcast:
    """A reference to an object the balancer keeps (``Client.broadcast``); pass it as a task argument.

    Each worker receives the object once, with the first task that names it, and keeps it by
    digest; a task gets the object itself in place of the reference, anywhere in its arguments.
    ``release()`` (or ``with``, or letting the reference be garbage collected, or closing the
    client) lets the balancer and the workers drop it once no queued or running task needs it.
    """

    __slots__ = ("__weakref__", "_connection", "_finalizer", "digest", "nbytes", "type_name")

    def __init__(self, conn: Connection, digest: str, nbytes: int, type_name: str) -> None:
        self._connection = conn
        self.digest = digest
        self.nbytes = nbytes
        self.type_name = type_name
        self._finalizer = weakref.finalize(self, conn.references.collected, digest)
        conn.references.add(self)

    @property
    def released(self) -> bool:
        return not self._finalizer.alive

    def release(self) -> None:
        """Let the balancer and the workers drop the object (after the tasks that name it)."""
        if self._finalizer.detach() is not None and not self._connection.closed:
            self._connection.send({"type": "release", "digests": [self.digest]})

    def __enter__(self) -> Broadcast:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Callable[[str], Any], tuple[str]]:
        if self.released:
            raise PlbError(f"the broadcast object {self.digest} was released; broadcast it again")
        naming = named_broadcasts.get()
        if naming is None:
            raise TypeError(
                "a broadcast reference travels only as an argument of submit() or map(), "
                "not inside a function (closure, default) or a run() call"
            )
        naming.append(self.digest)
        return broadcast_value, (self.digest,)

    def __repr__(self) -> str:
        state = " released" if self.released else ""
        return f"<Broadcast {self.digest} {self.type_name} {self.nbytes} bytes{state}>"


class References:
    """The broadcast references made through one connection, and the digests to release: those of
    references garbage collected, and, when the connection closes, of all still held."""

    def __init__(self, conn: Connection) -> None:
        self._connection = conn
        self._made: weakref.WeakSet[Broadcast] = weakref.WeakSet()
        #: Digests the I/O thread is to tell the balancer to release.
        self.to_release: collections.deque[str] = collections.deque()

    def add(self, reference: Broadcast) -> None:
        self._made.add(reference)

    def collected(self, digest: str) -> None:
        """A reference was garbage collected: the I/O thread tells the balancer (no blocking here,
        as the garbage collector may run this in any thread, even one holding a lock of ours)."""
        if self._connection.closed:
            return
        self.to_release.append(digest)
        self._connection.wake(b"release", block=False)

    def release_all(self) -> None:
        """Closing: the references still held are released (the I/O thread sends it before it ends)."""
        for reference in list(self._made):
            if reference._finalizer.detach() is not None:
                self.to_release.append(reference.digest)

    def send_releases(self) -> None:
        """Tell the balancer the digests to release (on the I/O thread)."""
        digests: list[str] = []
        while self.to_release:
            digests.append(self.to_release.popleft())
        if digests:
            self._connection.send({"type": "release", "digests": digests})
