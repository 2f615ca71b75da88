"""What hubs and workers say: registration, heartbeats, readiness, results, departures."""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any

from jupyter_plb.balancer.state import MAX_ID_LENGTH, MAX_NAME_LENGTH, PREFETCH_BELOW, Hub, finite
from jupyter_plb.core import versions
from jupyter_plb.core.protocol import Buffer, Message
from jupyter_plb.core.tasks import Task, TaskState
from jupyter_plb.errors import TaskRejected

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


class HubDesk:
    """What hubs and workers say: registration, heartbeats, readiness, results, departures."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb

    def _check_hub_sender(self, msg: Message) -> None:
        """With Curve, a hub (and its workers) speaks only for the hub its certificate made."""
        h = msg.header
        ident = msg.identity.decode(errors="replace") if msg.identity else ""
        named = (self.lb.hubs.get(str(h.get("hub"))), self.hub_of(str(h.get("worker"))))
        for hub in (*named, self.hub_of(ident)):
            if hub is not None and hub.cert is not None and hub.cert != self.lb.sender:
                raise TaskRejected(f"hub {hub.name} belongs to another certificate")

    def on_worker_message(self, msg: Message) -> None:
        handler = self.lb.worker_handlers.get(msg.type)
        if handler is None:
            raise TaskRejected(f"unknown message type {msg.type!r}")
        if self.lb.sender is not None:
            self._check_hub_sender(msg)
        handler(msg)

    def on_hub_hello(self, msg: Message) -> None:
        h = msg.header
        hub_id = str(h["hub"])[:MAX_ID_LENGTH]
        if hub_id not in self.lb.hubs and len(self.lb.hubs) >= self.lb.params["LB_MAX_PEERS"]:
            raise TaskRejected("too many hubs connected (LB_MAX_PEERS)")
        routes = frozenset(str(r)[:MAX_NAME_LENGTH] for r in h.get("routes", [])[:10_000])
        hub = self.lb.hubs.get(hub_id)
        joined = hub is None or hub.state == "lost"
        if hub is None:
            hub = self.lb.hubs[hub_id] = Hub(hub_id, "", "", 0, routes, cert=self.lb.sender)
            log.info("LB - ADDING HUB (%s) from %s", hub_id, h.get("host"))
        known_versions = (hub.python, hub.cloudpickle)
        hub.name = str(h.get("name") or hub_id)[:MAX_NAME_LENGTH]
        hub.host = str(h.get("host", ""))[:MAX_NAME_LENGTH]
        hub.pid = int(h.get("pid", 0))
        hub.job = str(h["job"])[:MAX_ID_LENGTH] if h.get("job") else None
        hub.routes = routes
        hub.local = bool(h.get("local", False))
        hub.python = str(h.get("python", ""))[:32]
        hub.cloudpickle = str(h.get("cloudpickle", ""))[:32]
        hub.last_seen = self.lb.now()
        hub.state = "ok"
        if h.get("state") == "draining":
            self._drain_hub(hub)
        if joined or known_versions != (hub.python, hub.cloudpickle):
            self._announce_hub(hub)
        assert msg.identity is not None
        self.lb.send("workers", msg.identity, {
            "type": "hub_welcome",
            "balancer": self.lb.id,
            "heartbeat": self.lb.params["LB_HEARTBEAT_INTERVAL"],
        })

    @staticmethod
    def hub_versions(hub: Hub) -> dict[str, Any]:
        return {"id": hub.id, "name": hub.name, "host": hub.host, "python": hub.python,
                "cloudpickle": hub.cloudpickle}

    def _announce_hub(self, hub: Hub) -> None:
        """Tell the clients that said hello of a hub that joined, with its versions."""
        skew = versions.skew(self.hub_versions(hub), here="this balancer")
        if skew:
            log.warning("LB - VERSION SKEW: %s", skew)
        header = {"type": "hub_joined", "hub": self.hub_versions(hub)}
        for identity in list(self.lb.hub_listeners):
            if not self.lb.send("clients", identity, header):
                del self.lb.hub_listeners[identity]  # gone (the socket is ROUTER_MANDATORY)

    def on_heartbeat(self, msg: Message) -> None:
        hub = self.lb.hubs.get(str(msg.header.get("hub")))
        assert msg.identity is not None
        if hub is None:
            self.lb.send("workers", msg.identity, {"type": "reregister", "balancer": self.lb.id})
            return
        if hub.state == "lost":
            self.lb.send("workers", msg.identity, {"type": "reregister", "balancer": self.lb.id})
            return
        hub.last_seen = self.lb.now()
        workers = msg.header.get("workers")
        if isinstance(workers, list):
            hub.alive = {str(w) for w in workers[:100_000]}
        usage = msg.header.get("usage")
        if isinstance(usage, dict):
            self._record_usage(hub, usage)
        state = msg.header.get("state")
        if state == "draining":
            self._drain_hub(hub)
        elif state in ("ok", "unhealthy") and hub.state != "draining" and state != hub.state:
            hub.state = state
            for worker_id in hub.workers:
                slot = self.lb.scheduler.slot_of(worker_id)
                if slot is not None:
                    slot.accepting = state == "ok"
            if state == "unhealthy":
                log.warning("LB - HUB UNHEALTHY (%s): its workers keep dying; it gets no new tasks", hub.name)
        self.lb.send("workers", msg.identity, {
            "type": "heartbeat_ack",
            "balancer": self.lb.id,
            "heartbeat": self.lb.params["LB_HEARTBEAT_INTERVAL"],
        })

    @staticmethod
    def _record_usage(hub: Hub, usage: dict[str, Any]) -> None:
        """A heartbeat's CPU percent and resident bytes per worker, shown in the snapshot."""
        for worker_id, winfo in hub.workers.items():
            sample = usage.get(worker_id)
            if isinstance(sample, dict):
                for key in ("cpu", "rss"):
                    value = sample.get(key)
                    winfo[key] = value if finite(value) and value >= 0 else None

    def on_worker_ready(self, msg: Message) -> None:
        h = msg.header
        worker_id = str(h["worker"])[:MAX_ID_LENGTH]
        hub_id = str(h["hub"])[:MAX_ID_LENGTH]
        if msg.identity != worker_id.encode():
            raise TaskRejected("a worker must announce itself from its own connection")
        min_p, max_p = h["min_p"], h["max_p"]
        if not (finite(min_p) and finite(max_p) and min_p <= max_p):
            raise TaskRejected("worker priority range must be two numbers with min_p <= max_p")
        hub = self.lb.hubs.get(hub_id)
        if hub is None:
            hub = self.lb.hubs[hub_id] = Hub(
                hub_id, hub_id, "", 0, frozenset(), last_seen=self.lb.now(), cert=self.lb.sender
            )
        if worker_id in self.lb.scheduler.slots:
            return
        if sum(len(x.workers) for x in self.lb.hubs.values()) >= self.lb.params["LB_MAX_PEERS"]:
            raise TaskRejected("too many workers connected (LB_MAX_PEERS)")
        routes = frozenset(str(r)[:MAX_NAME_LENGTH] for r in h.get("routes", [])[:10_000])
        slot = self.lb.scheduler.add_slot(worker_id, hub_id, float(min_p), float(max_p), routes)
        slot.accepting = hub.state == "ok"
        self.lb.worker_functions[worker_id] = collections.OrderedDict()
        hub.workers[worker_id] = {
            "id": worker_id,
            "pid": int(h.get("pid", 0)),
            "min_p": min_p,
            "max_p": max_p,
            "process_p": int(h.get("process_p", 0)),
            "done": 0,
            "cpu": None,
            "rss": None,
        }
        log.info("LB - ADDING WORKER (%s)", worker_id)
        self._reclaim(worker_id, hub_id, h)
        self.lb.housekeeping.recheck_unschedulable()

    def _reclaim(self, worker_id: str, hub_id: str, announced: dict[str, Any]) -> None:
        """A worker announcing itself to a restarted balancer names what it holds (workers/worker.py):
        the task it runs and those behind it take its slot again; the tasks whose results it has not
        sent stay orphans until those results come (or, if it dies first, the grace period ends).
        Every other task the journal left running on it was lost with the old connection (its
        ``tasks`` message, or its result): queued again now, since the worker is back without it.

        At most ``1 + LB_PREFETCH`` claims count: all a worker holds was on its slot at once (a
        slot lets a task go only when its result arrives).
        """
        room = 1 + self.lb.params["LB_PREFETCH"]
        running = announced.get("running")
        running_ids = [running] if isinstance(running, str) else []
        waiting = _ids(announced.get("tasks"), room - len(running_ids))
        finished = _ids(announced.get("finished"), room - len(running_ids) - len(waiting))
        for task_id in running_ids + waiting:
            task = self.lb.orphans.pop(task_id, None)
            if task is not None:
                self.lb.scheduler.attach(worker_id, task)
                task.worker, task.hub = worker_id, hub_id
                if task_id in running_ids and task.started is None:
                    task.started = self.lb.now()
            elif task_id in waiting and (task_id not in self.lb.tasks or self.lb.tasks[task_id].state.finished):
                self.lb.send("workers", worker_id.encode(), {"type": "skip", "id": task_id})
        for task_id in finished:
            task = self.lb.orphans.get(task_id)
            if task is not None:
                task.worker = worker_id
        held = {*running_ids, *waiting, *finished}
        lost = [t for t in self.lb.orphans.values() if t.worker == worker_id and t.id not in held]
        if lost:
            log.warning("LB - %d task(s) running on %s before the restart were lost with its connection; "
                        "queued again", len(lost), worker_id)
        for task in lost:
            del self.lb.orphans[task.id]
            self.requeue(task)

    def on_results(self, msg: Message) -> None:
        worker_id = msg.identity.decode(errors="replace") if msg.identity else ""
        now = self.lb.now()
        hub = self.hub_of(worker_id)
        if hub is not None and hub.state != "lost":
            hub.last_seen = now
        position = 0
        for info in msg.header.get("results", []):
            count = int(info.get("nbuf", 0))
            if count < 0 or position + count > len(msg.buffers):
                raise TaskRejected("result buffers missing from the message")
            buffers = msg.buffers[position : position + count]
            digests = msg.digests[position : position + count]
            position += count
            self.on_result(worker_id, hub, info, buffers, digests, now)

    def on_result(
        self,
        worker_id: str,
        hub: Hub | None,
        info: dict[str, Any],
        buffers: list[Buffer],
        digests: list[bytes],
        now: float,
    ) -> None:
        task_id: Any = info.get("id")
        self.lb.stealing.pop(task_id, None)
        released = self.lb.scheduler.release(worker_id, task_id) if isinstance(task_id, str) else None
        slot = self.lb.scheduler.slot_of(worker_id)
        if released is not None and slot is not None and not slot.assigned:
            self.lb.went_idle.add(worker_id)
        if released is not None and slot is not None and slot.assigned:
            following = next(iter(slot.assigned.values()))
            if following.started is None:
                following.started = now
                self.lb.scheduler.started(following)
        task = self.lb.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None or task.state.finished:
            return
        if task.state is TaskState.QUEUED:
            self.lb.scheduler.cancel_queued(task)
        elif task.worker != worker_id and task.worker is not None:
            self.skip_on_worker(task)
        state = TaskState.DONE if info.get("state") == "done" else TaskState.FAILED
        result: dict[str, Any] = {
            key: info[key]
            for key in ("error", "stdout", "stderr")
            if key in info and info[key] is not None
        }
        started = info.get("started")
        ended = info.get("ended")
        if finite(started):
            task.started = float(started)
        task.worker = worker_id
        if hub is not None and worker_id in hub.workers:
            task.hub = hub.id
            hub.workers[worker_id]["done"] += 1
        span = (float(started), float(ended)) if finite(started) and finite(ended) else None
        self.lb.results.finish(task, state, now, result, buffers, digests, run_time=span[1] - span[0] if span else None)
        if span is not None:
            self.lb.stats.ran(task, *span)
            self._learn_run_time(worker_id, span[1] - span[0])

    def _learn_run_time(self, worker_id: str, seconds: float) -> None:
        """Keep a moving average of a slot's task run time; prefetch only for short tasks."""
        previous = self.lb.run_times.get(worker_id, seconds)
        average = 0.8 * previous + 0.2 * seconds
        self.lb.run_times[worker_id] = average
        self.lb.scheduler.set_prefetch(worker_id, average < PREFETCH_BELOW)

    def on_progress(self, msg: Message) -> None:
        task = self.lb.tasks.get(str(msg.header.get("id")))
        value = msg.header.get("value")
        if task is None or task.state is not TaskState.RUNNING or not finite(value):
            return
        task.progress = max(1, min(99, int(value)))
        if task.client is not None:
            self.lb.send("clients", task.client, {
                "type": "progress", "id": task.id, "progress": task.progress,
            })
        self.lb.results.event(task)

    def on_worker_lost(self, msg: Message) -> None:
        worker_id = str(msg.header.get("worker"))
        reason = str(msg.header.get("reason", "the worker process died"))[:1000]
        retired = bool(msg.header.get("retired"))
        error = "WorkerMemoryExceeded" if msg.header.get("error") == "WorkerMemoryExceeded" else "WorkerLost"
        self.lose_worker(worker_id, reason, count_attempt=not retired, retired=retired, error=error)

    def on_worker_bye(self, msg: Message) -> None:
        """A worker retires (task quota reached, hub draining): after its last results, in order."""
        worker_id = str(msg.header.get("worker"))
        if msg.identity != worker_id.encode():
            raise TaskRejected("a worker must say goodbye from its own connection")
        reason = str(msg.header.get("reason", "it retired"))[:1000]
        self.lose_worker(worker_id, reason, count_attempt=False, retired=True)

    def on_hub_drain(self, msg: Message) -> None:
        """A hub is stopping: no new tasks for its workers; its prefetched tasks come back."""
        hub = self.lb.hubs.get(str(msg.header.get("hub")))
        assert msg.identity is not None
        if hub is None:
            self.lb.send("workers", msg.identity, {"type": "reregister", "balancer": self.lb.id})
            return
        hub.last_seen = self.lb.now()
        self._drain_hub(hub)
        self.lb.send("workers", msg.identity, {"type": "drain_ack", "balancer": self.lb.id})

    def _drain_hub(self, hub: Hub) -> None:
        if hub.state != "draining":
            log.info("LB - HUB DRAINING (%s)", hub.name)
        hub.state = "draining"
        for worker_id in list(hub.workers):
            slot = self.lb.scheduler.slot_of(worker_id)
            if slot is None:
                continue
            slot.accepting = False
            for task in list(slot.assigned.values())[1:]:
                # The worker hands back what it has not started ("skipped"), or runs it and reports.
                skip = {"type": "skip", "id": task.id, "reply": True}
                self.lb.send("workers", worker_id.encode(), skip)

    def on_hub_bye(self, msg: Message) -> None:
        hub = self.lb.hubs.pop(str(msg.header.get("hub")), None)
        if hub is not None:
            log.info("LB - HUB LEFT (%s)", hub.id)
            for worker_id in list(hub.workers):
                self.lose_worker(worker_id, f"hub {hub.name} stopped", count_attempt=False)

    def on_skipped(self, msg: Message) -> None:
        """A worker handed back a task it had not started: queue it again, first in line."""
        task_id = str(msg.header.get("id"))
        worker_id = msg.identity.decode(errors="replace") if msg.identity else ""
        self.lb.stealing.pop(task_id, None)
        task = self.lb.scheduler.release(worker_id, task_id)
        if task is not None and task.state is TaskState.RUNNING:
            self.requeue(task)

    def hub_of(self, worker_id: str) -> Hub | None:
        slot = self.lb.scheduler.slot_of(worker_id)
        if slot is not None:
            return self.lb.hubs.get(slot.group)
        return next((h for h in self.lb.hubs.values() if worker_id in h.workers), None)

    def lose_worker(
        self, worker_id: str, reason: str, *, count_attempt: bool, retired: bool = False,
        error: str = "WorkerLost",
    ) -> None:
        """A worker is gone: its running task is retried or fails, its prefetched ones requeue.

        ``retired``: it left cleanly (recycled, drained); its tasks requeue, nothing is "lost".
        ``error``: the failed task's error type (``WorkerMemoryExceeded`` when its hub killed it).
        """
        hub = self.hub_of(worker_id)
        if hub is not None:
            hub.workers.pop(worker_id, None)
        self.lb.worker_functions.pop(worker_id, None)
        self.lb.shared.run_lost(worker_id, reason)
        self.lb.run_times.pop(worker_id, None)
        tasks = self.lb.scheduler.remove_slot(worker_id)
        for task in tasks:
            self.lb.stealing.pop(task.id, None)
        if retired:
            if hub is not None:
                log.info("LB - WORKER LEFT (%s): %s", worker_id, reason)
        elif tasks or hub is not None:
            log.warning("LB - WORKER LOST (%s): %s", worker_id, reason)
        now = self.lb.now()
        for index, task in enumerate(tasks):
            if task.state is not TaskState.RUNNING:
                continue
            if index == 0 and count_attempt:
                task.attempts += 1
                if task.attempts > task.retries:
                    self.lb.results.fail(task, error, f"worker {worker_id} was lost: {reason}", now)
                    continue
            self.requeue(task)
        self.lb.housekeeping.recheck_unschedulable()

    def requeue(self, task: Task) -> None:
        task.state = TaskState.QUEUED
        task.worker = None
        task.started = None
        task.progress = 0
        self.lb.scheduler.requeue(task)
        self.lb.store.state(task)
        self.lb.results.event(task)

    def kill_worker(self, worker_id: str, reason: str) -> None:
        """Ask the worker's hub to kill it (it is replaced at once); its tasks are settled now."""
        hub = self.hub_of(worker_id)
        if hub is not None:
            self.lb.send("workers", hub.id.encode(), {
                "type": "kill_worker", "worker": worker_id, "reason": reason,
            })
        self.lose_worker(worker_id, reason, count_attempt=False)

    def skip_on_worker(self, task: Task) -> None:
        if task.worker is not None:
            self.lb.send("workers", task.worker.encode(), {"type": "skip", "id": task.id})


def _ids(value: Any, limit: int) -> list[str]:
    """Up to ``limit`` task ids from an announcement's list (anything else: none)."""
    return [str(i) for i in value[: max(0, limit)]] if isinstance(value, list) else []
