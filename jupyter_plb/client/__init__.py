"""The Client: sends tasks, gets :class:`PlbFuture` results, shows their progress.

``from jupyter_plb.client import Client`` is the public face; the modules behind it split the work:
:mod:`.executor` (the ``concurrent.futures``-style API and the seed's ``sendTask``/``getTask``),
:mod:`.batches` (``map`` in flight), :mod:`.futures` (task futures and their results),
:mod:`.broadcast` (objects the balancer keeps), :mod:`.pickling` (what a task carries),
:mod:`.connection` (the socket and its I/O thread), :mod:`.outbox` (submits on their way),
:mod:`.seed_results` (``getTask``'s results), :mod:`.display` (text and HTML views) and
:mod:`.progress` (live bars).
"""

from jupyter_plb.client.batches import MapIterator
from jupyter_plb.client.broadcast import Broadcast
from jupyter_plb.client.executor import Client, ClientView
from jupyter_plb.client.futures import PlbFuture, as_completed
from jupyter_plb.core.team import default_user

__all__ = ["Broadcast", "Client", "ClientView", "MapIterator", "PlbFuture", "as_completed", "default_user"]
