"""The balancer's records and limits: hubs, cached pickles, ``client.run`` calls, and helpers
every part of the balancer shares."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from jupyter_plb.core import protocol, taskquery
from jupyter_plb.core.protocol import Buffer
from jupyter_plb.core.shm import Segment
from jupyter_plb.core.tasks import Task

#: Messages handled per socket, and seconds spent on it, before the next socket (and the loop)
#: gets a turn: a burst of submits must not keep finished workers waiting for new tasks.
DRAIN_BUDGET = 2000
DRAIN_SECONDS = 0.002
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_RETRIES = 100
#: After a restart, tasks that were running wait this many heartbeats for their worker to
#: re-announce them before they are queued again.
ORPHAN_GRACE = 3
#: Slots whose tasks take less than this on average get prefetched tasks.
PREFETCH_BELOW = 0.005
#: Clients told when a hub joins (so that they can warn of version skew), most recent hellos.
MAX_HUB_LISTENERS = 10_000


@dataclass(slots=True, eq=False)
class Hub:
    id: str
    name: str
    host: str
    pid: int
    routes: frozenset[str]
    local: bool = False
    python: str = ""
    cloudpickle: str = ""
    #: The batch job (Slurm or PBS job id) the hub runs in, if any.
    job: str | None = None
    last_seen: float = 0.0
    state: str = "ok"
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    #: With CurveZMQ, the User-Id of the certificate that registered it (only it may speak for it).
    cert: str | None = None


@dataclass(slots=True, eq=False)
class StoredFunction:
    """A pickle workers cache by digest: a task's function, or a broadcast object."""

    buffers: Sequence[Buffer]
    digests: list[bytes]
    refs: int = 0
    #: Broadcast objects: references clients hold (``Client.broadcast``) and have not released.
    pins: int = 0
    #: The submitting client's "Python x.y.z, cloudpickle v", passed on to workers with the pickle.
    origin: str | None = None


@dataclass(slots=True, eq=False)
class Run:
    """A ``client.run`` in flight: who asked, and the workers that have not answered yet."""

    client: bytes
    req: Any
    waiting: set[str]
    results: list[tuple[dict[str, Any], Sequence[Buffer], Sequence[bytes]]] = field(default_factory=list)


def function_digest(digests: list[bytes]) -> str:
    """The id of a pickled function: a hash over the digests of its buffers."""
    return hashlib.sha256(b"".join(digests)).hexdigest()[:32]


#: Results waiting for their batch to be durable, by client: (info, buffers, digests).
PendingResults = dict[bytes, list[tuple[dict[str, Any], Sequence[Buffer], Sequence[bytes]]]]


def retained(buffers: Sequence[Buffer]) -> tuple[Buffer, ...]:
    """Result buffers to keep until collected: small ones as bytes, so that the thousands of
    finished tasks a fast map leaves behind add no objects for the garbage collector to visit
    (a memoryview of a received frame is one; bytes are not)."""
    return tuple(
        bytes(protocol.buffer_view(buf))
        if protocol.buffer_size(buf) < protocol.ZERO_COPY_THRESHOLD and not isinstance(buf, Segment) else buf
        for buf in buffers
    )


def finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)



def search_fields(task: Task) -> taskquery.SearchFields:
    return taskquery.SearchFields(
        task.id, task.name, task.user, task.state.value, task.worker, task.hub, None, task.args,
    )
