"""What the monitor, the health check and ``client.status()`` see: the snapshot and task queries."""

from __future__ import annotations

import itertools
import logging
import os
import socket as stdsocket
from typing import TYPE_CHECKING, Any, cast

from jupyter_plb.balancer.state import search_fields
from jupyter_plb.core import snapshot as snap
from jupyter_plb.core import taskquery, versions
from jupyter_plb.core.history import FinishedTask
from jupyter_plb.core.protocol import Message
from jupyter_plb.errors import TaskRejected

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


class Views:
    """What the monitor, the health check and ``client.status()`` see: the snapshot and task queries."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb

    def on_health_message(self, msg: Message) -> None:
        if msg.type == "health":
            self.lb.reply("health", msg, {"type": "health_report", **self.health_report()})
        elif msg.type == "health_update":
            status = msg.header.get("status")
            messages = msg.header.get("messages", [])
            if status in ("ok", "warning", "error") and isinstance(messages, list):
                self.lb.health = {
                    "status": status,
                    "messages": [str(m)[:1000] for m in messages[:100]],
                    "checked": self.lb.now(),
                }
        elif msg.type == "status":
            self.lb.reply("health", msg, {"type": "snapshot", "data": self.snapshot()})
        else:
            raise TaskRejected(f"unknown message type {msg.type!r}")

    def health_report(self) -> snap.HealthReport:
        now = self.lb.now()
        overdue = [
            t.id for s in self.lb.scheduler.slots.values() for t in list(s.assigned.values())[:1]
            if t.timeout and t.started and now - t.started > t.timeout
        ]
        return snap.health_report(
            balancer=self.lb.id,
            hubs=[{"name": h.name, "last_seen": h.last_seen, "state": h.state} for h in self.lb.hubs.values()],
            workers=len(self.lb.scheduler.slots),
            queued=self.lb.scheduler.queued_count,
            running=self.lb.scheduler.running_count,
            overdue=overdue,
            unschedulable=len(self.lb.unschedulable),
            now=now,
            heartbeat=self.lb.params["LB_HEARTBEAT_INTERVAL"],
        )

    def snapshot(self) -> dict[str, Any]:
        """The balancer's state: a :class:`jupyter_plb.core.snapshot.Snapshot` (docs/monitor-api.md)."""
        now = self.lb.now()
        info = self.lb.info
        hubs = []
        for hub in self.lb.hubs.values():
            workers = []
            for worker_id, winfo in hub.workers.items():
                slot = self.lb.scheduler.slot_of(worker_id)
                head = next(iter(slot.assigned.values()), None) if slot else None
                current = None if head is None else {
                    "id": head.id, "name": head.name, "user": head.user, "started": head.started,
                }
                workers.append(snap.worker(winfo, current, now))
            hubs.append(snap.hub({
                "id": hub.id, "name": hub.name, "host": hub.host, "pid": hub.pid, "state": hub.state,
                "last_seen": hub.last_seen, "tasks": sorted(hub.routes), "local": hub.local,
                "python": hub.python, "cloudpickle": hub.cloudpickle, "job": hub.job,
                "version_skew": versions.skew(self.lb.hub_desk.hub_versions(hub), here="this balancer"),
            }, workers, now))
        queues: dict[str, snap.Queue] = {}
        for task in itertools.islice(self.lb.scheduler.iter_queued(), 100_000):
            entry = queues.setdefault(task.name, {"name": task.name, "queued": 0, "max_wait": 0.0})
            entry["queued"] += 1
            entry["max_wait"] = max(entry["max_wait"], now - task.submitted)
        rejected = self.lb.session.rejected if self.lb.session else {}
        return cast(dict[str, Any], snap.build(
            now=now,
            balancer={
                "id": self.lb.id,
                "version": versions.package_version(),
                "started": self.lb.started,
                "uptime": now - self.lb.started if self.lb.started else 0.0,
                "address": f"tcp://{info.address}" if info else None,
                "ports": {"clients": info.client_port, "workers": info.worker_port, "health": info.health_port}
                if info else {},
                "host": stdsocket.gethostname(),
                "pid": os.getpid(),
                "python": versions.LOCAL["python"],
                "cloudpickle": versions.LOCAL["cloudpickle"],
            },
            health=snap.health(self.lb.health["status"], self.lb.health["messages"], self.lb.health["checked"]),
            totals={
                "queued": self.lb.scheduler.queued_count,
                "running": self.lb.scheduler.running_count,
                **self.lb.stats.totals(),  # type: ignore[typeddict-item]
                "bad_messages": self.lb.stats.bad_messages + sum(rejected.values()),
            },
            rejected=rejected,
            throughput=self.lb.stats.history(),  # type: ignore[arg-type]
            users=snap.users(self.lb.stats.per_user, self.lb.scheduler.user_counts(), self.lb.fair_share.shares()),
            share_window=self.lb.fair_share.window,
            hubs=hubs,
            launchers=self.lb.launchers.rows(now),
            queues=queues.values(),
            stats=self.lb.stats.per_name_list(),  # type: ignore[arg-type]
            unschedulable=[
                {"id": t.id, "name": t.name, "user": t.user, "priority": t.priority, "reason": t.reason}
                for t in (self.lb.tasks.get(i) for i in list(self.lb.unschedulable)[:100]) if t is not None
            ],
            failures=self.lb.stats.failures,  # type: ignore[arg-type]
            timeline=list(self.lb.stats.timeline),  # type: ignore[arg-type]
        ))

    def list_tasks(
        self,
        state: str | None = None,
        user: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 100,
        query: str | None = None,
    ) -> snap.TaskList:
        """Tasks matching ``query`` (:mod:`.taskquery`) and the exact filters: queued and running
        ones newest first, then finished ones from the history, most recently finished first."""
        wanted = taskquery.parse(query, state=state, user=user, name=name)
        limit = max(0, min(limit, 1000))
        offset = max(0, offset)
        everything = wanted == taskquery.TaskQuery()
        now = self.lb.now()
        total = 0
        page: list[snap.TaskRow] = []
        if wanted.wants_live:
            for task in self.lb.tasks.unfinished_newest():
                if everything or wanted.matches(search_fields(task)):
                    if offset <= total < offset + limit:
                        page.append(snap.task_row(task.summary(), now))
                    total += 1
        if wanted.wants_finished:
            for kept in self.lb.history.newest():
                if everything or wanted.matches(taskquery.SearchFields(
                    kept.id, kept.name, kept.user, kept.state, kept.worker, kept.hub, kept.error, kept.args,
                )):
                    if offset <= total < offset + limit:
                        page.append(snap.task_row(kept.summary(), now, kept.run_time))
                    total += 1
        return snap.task_list(total, page)

    def task_info(self, task_id: str) -> snap.TaskDetail | None:
        """A task's full detail (arguments, timings, worker; traceback and output once finished),
        live or from the history; None if neither knows it."""
        task = self.lb.tasks.get(task_id)
        if task is not None and not task.state.finished:
            return {
                **snap.task_row(task.summary(), self.lb.now()), "retries": task.retries, "args": task.args,
                "traceback": None, "stdout": None, "stderr": None,
            }
        kept = self.lb.history.get(task_id)
        if kept is None and task is not None:
            kept = FinishedTask.of(task)
        if kept is None:
            return None
        return cast(snap.TaskDetail, snap.task_row(kept.detail(), self.lb.now(), kept.run_time))
