"""A reference to an object the balancer keeps for tasks to take as an argument (``Client.broadcast``)."""

from __future__ import annotations

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
        self._finalizer = weakref.finalize(self, conn.release_later, digest)
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
