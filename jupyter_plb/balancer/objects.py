"""Pickles workers cache by digest (functions, broadcast objects) and ``client.run`` calls."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from jupyter_plb.balancer.state import Run, StoredFunction, function_digest
from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import FUNCTION_CACHE_SIZE, Message
from jupyter_plb.errors import TaskRejected

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


class SharedObjects:
    """Pickles workers cache by digest (functions, broadcast objects) and ``client.run`` calls."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb

    def object_refs(self, spec: dict[str, Any]) -> tuple[str, ...] | str:
        """The broadcast objects a task spec names, or why the task cannot have them."""
        refs = spec.get("refs") or []
        if not isinstance(refs, list) or len(refs) > FUNCTION_CACHE_SIZE // 2:
            return f"refs must be a list of at most {FUNCTION_CACHE_SIZE // 2} broadcast digests"
        for digest in refs:
            if not isinstance(digest, str) or digest not in self.lb.objects:
                return (f"the broadcast object {str(digest)[:40]} is not on the balancer (released, or the "
                        "balancer restarted): broadcast it again")
        return tuple(dict.fromkeys(refs))

    def on_broadcast(self, msg: Message) -> None:
        """Keep an object the client's tasks will name; workers get it with the first task that does."""
        count = msg.header.get("nbuf")
        if not isinstance(count, int) or count < 1 or count != len(msg.buffers):
            raise TaskRejected("a broadcast message carries its object's buffers")
        digests = list(msg.digests)
        digest = function_digest(digests)
        if msg.header.get("digest") != digest or not protocol.matches(msg.buffers, digests):
            raise TaskRejected("the broadcast object does not match its digest")
        stored = self.lb.objects.get(digest)
        if stored is None:
            stored = self.lb.objects[digest] = StoredFunction(list(msg.buffers), digests)
            self.lb.store.function(digest, msg.buffers)  # journaled: queued tasks that name it survive a restart
        stored.pins += 1
        self.lb.reply("clients", msg, {"type": "broadcasted", "digest": digest})

    def on_release(self, msg: Message) -> None:
        for digest in msg.header.get("digests", [])[:10_000]:
            stored = self.lb.objects.get(digest) if isinstance(digest, str) else None
            if stored is not None:
                stored.pins = max(0, stored.pins - 1)
                self.drop_unused_object(digest)

    def drop_unused_object(self, digest: str) -> None:
        """Forget a broadcast object no reference and no task needs, here and on the workers."""
        stored = self.lb.objects.get(digest)
        if stored is None or stored.pins > 0 or stored.refs > 0:
            return
        del self.lb.objects[digest]
        self.lb.store.drop_function(digest)
        for worker_id, cache in self.lb.worker_functions.items():
            if digest in cache:
                del cache[digest]
                self.lb.send("workers", worker_id.encode(), {"type": "forget", "digests": [digest]})

    def on_run(self, msg: Message) -> None:
        """``client.run``: the function goes to every connected worker now, outside the queues."""
        count = msg.header.get("nbuf")
        if not isinstance(count, int) or count < 1 or count != len(msg.buffers):
            raise TaskRejected("a run message carries its function's buffers")
        targets = list(self.lb.scheduler.slots)
        wanted = msg.header.get("workers")
        if isinstance(wanted, list):
            targets = [w for w in targets if w in set(wanted)]
        assert msg.identity is not None
        run_id = protocol.new_id("run")
        run = self.lb.runs[run_id] = Run(msg.identity, msg.header.get("req"), set())
        for worker_id in targets:
            if self.lb.send("workers", worker_id.encode(), {"type": "run", "id": run_id},
                          list(msg.buffers), list(msg.digests)):
                run.waiting.add(worker_id)
        self._answer_run(run_id)

    def on_ran(self, msg: Message) -> None:
        worker_id = msg.identity.decode(errors="replace") if msg.identity else ""
        run = self.lb.runs.get(str(msg.header.get("id")))
        if run is None or worker_id not in run.waiting:
            return
        count = int(msg.header.get("nbuf", 0))
        if count != len(msg.buffers):
            raise TaskRejected("run result buffers missing from the message")
        info: dict[str, Any] = {k: msg.header.get(k) for k in ("state", "error") if k in msg.header}
        run.results.append(({**info, "worker": worker_id, "nbuf": count}, msg.buffers, msg.digests))
        run.waiting.discard(worker_id)
        self._answer_run(str(msg.header.get("id")))

    def run_lost(self, worker_id: str, reason: str) -> None:
        """A worker gone while a ``client.run`` waits for it answers with WorkerLost."""
        for run_id, run in list(self.lb.runs.items()):
            if worker_id in run.waiting:
                run.waiting.discard(worker_id)
                error = {"type": "WorkerLost", "message": f"worker {worker_id} was lost: {reason}", "traceback": ""}
                run.results.append(({"worker": worker_id, "state": "failed", "error": error, "nbuf": 0}, (), ()))
                self._answer_run(run_id)

    def _answer_run(self, run_id: str) -> None:
        run = self.lb.runs[run_id]
        if run.waiting:
            return
        del self.lb.runs[run_id]
        self.lb.send("clients", run.client, {
            "type": "ran", "req": run.req, "results": [info for info, _, _ in run.results],
        }, [b for _, bufs, _ in run.results for b in bufs], [d for _, _, ds in run.results for d in ds])

    def drop_unused_functions(self, fn_ids: dict[str, str]) -> None:
        for fn_id in fn_ids:
            stored = self.lb.functions.get(fn_id)
            if stored is not None and stored.refs <= 0:
                del self.lb.functions[fn_id]
