"""What the balancer does on its timer: heartbeats missed, timeouts, expiry, orphans, fair share."""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from jupyter_plb.core import shm
from jupyter_plb.core.scheduler import unschedulable_reason
from jupyter_plb.core.shm import Segment
from jupyter_plb.core.tasks import TaskState

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


#: Seconds between sweeps of the shared-memory segments of dead processes.
SWEEP_INTERVAL = 5.0

class Housekeeping:
    """What the balancer does on its timer: heartbeats missed, timeouts, expiry, orphans, fair share."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb
        self.next_sweep = 0.0

    def tick(self) -> None:
        try:
            now = self.lb.now()
            self._check_hubs(now)
            self._check_timeouts(now)
            self._expire(now)
            self.lb.stats.roll(now, self.lb.scheduler.queued_count)
            self._sample_fair_share(now)
            self._requeue_orphans(now)
            self._sweep_segments(now)
            self.lb.dispatcher.dispatch()
            self.lb.journal.commit()
            self.lb.results.flush()
        except Exception:
            log.exception("LB - periodic check failed")
        finally:
            if self.lb.loop is not None and self.lb.sockets:
                self.lb.timer = self.lb.loop.call_later(self.lb.tick_interval, self.tick)

    def _sweep_segments(self, now: float) -> None:
        """Every SWEEP_INTERVAL: remove the shared-memory segments of processes that died (a
        client or worker killed), except those a task it holds still names."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_INTERVAL
        if self.lb.params["LB_SHARED_MEMORY"]:
            shm.sweep(keep=self._named_segments)

    def _named_segments(self) -> set[str]:
        names = set()
        for task in self.lb.tasks.values():
            for buf in (*getattr(task, "buffers", ()), *getattr(task, "result_buffers", ())):
                if isinstance(buf, Segment):
                    names.add(buf.info.name)
        return names

    def _requeue_orphans(self, now: float) -> None:
        """Tasks running before a restart whose worker did not come back: their run was lost."""
        if not self.lb.orphans or now < self.lb.orphans_deadline:
            return
        alive = {w for hub in self.lb.hubs.values() if hub.state != "lost" for w in hub.alive}
        lost = {tid: t for tid, t in self.lb.orphans.items() if t.worker not in alive}
        if not lost:
            return
        for task_id in lost:
            del self.lb.orphans[task_id]
        log.warning("LB - %d task(s) running before the restart were not reclaimed; queued again", len(lost))
        for task in lost.values():
            self.lb.hub_desk.requeue(task)

    def _check_hubs(self, now: float) -> None:
        limit = 3 * self.lb.params["LB_HEARTBEAT_INTERVAL"]
        for hub in list(self.lb.hubs.values()):
            if hub.state != "lost" and now - hub.last_seen > limit:
                hub.state = "lost"
                log.warning("LB - HUB LOST (%s): no heartbeat for %.1f s", hub.name, now - hub.last_seen)
                for worker_id in list(hub.workers):
                    self.lb.hub_desk.lose_worker(worker_id, f"hub {hub.name} stopped answering", count_attempt=False)
            if hub.state == "lost" and now - hub.last_seen > max(60.0, 10 * limit):
                del self.lb.hubs[hub.id]

    def _check_timeouts(self, now: float) -> None:
        for slot in list(self.lb.scheduler.slots.values()):
            head = next(iter(slot.assigned.values()), None)
            if head is None or not head.timeout or head.started is None:
                continue
            if now - head.started > head.timeout:
                self.lb.scheduler.release(slot.id, head.id)
                self.lb.results.finish(head, TaskState.FAILED, now, {"error": {
                    "type": "TaskTimeout",
                    "message": f"task ran longer than its timeout of {head.timeout:g} s; its worker was killed",
                    "traceback": "",
                }})
                self.lb.hub_desk.kill_worker(slot.id, f"task {head.id} timed out")
        for task_id, _reason in list(self.lb.unschedulable.items()):
            task = self.lb.tasks.get(task_id)
            if task is not None and task.timeout and now - task.submitted > task.timeout:
                self.lb.scheduler.cancel_queued(task)
                reason = f"no worker could take it within {task.timeout:g} s: {task.reason}"
                self.lb.results.fail(task, "TaskRejected", reason, now)

    def _expire(self, now: float) -> None:
        self.lb.history.expire(now)
        while self.lb.retention and self.lb.retention[0][0] <= now:
            _, task_id = self.lb.retention.popleft()
            task = self.lb.tasks.get(task_id)
            if task is not None:
                self.lb.results.forget(task)
        ttl = self.lb.params["LB_RESULT_TTL"]
        while self.lb.finished and self.lb.finished[0][0] + ttl <= now:
            _, task_id = self.lb.finished.popleft()
            task = self.lb.tasks.get(task_id)
            if task is not None and task.collected is None:
                self.lb.results.forget(task)

    def recheck_unschedulable(self) -> None:
        for task in self.lb.scheduler.iter_queued() if self.lb.unschedulable or self.lb.scheduler.slots else []:
            reason = unschedulable_reason(task, self.lb.scheduler.slots.values())
            if reason and task.id not in self.lb.unschedulable:
                task.reason = reason
                self.lb.unschedulable[task.id] = reason
                if task.client is not None:
                    self.lb.send("clients", task.client, {"type": "warning", "id": task.id, "reason": reason})
            elif not reason and task.id in self.lb.unschedulable:
                task.reason = None
                del self.lb.unschedulable[task.id]

    def _sample_fair_share(self, now: float) -> None:
        slots = self.lb.scheduler.slots
        heads = (next(iter(s.assigned.values()), None) for s in slots.values() if s.assigned)
        self.lb.fair_share.sample(now, collections.Counter(t.user for t in heads if t is not None), len(slots))
