"""What the monitor, the health check and ``client.status()`` see: the snapshot and task queries."""

from __future__ import annotations

import itertools
import logging
import os
import socket as stdsocket
from typing import TYPE_CHECKING, Any

from jupyter_plb.balancer.state import search_fields
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

    def health_report(self) -> dict[str, Any]:
        now = self.lb.now()
        interval = self.lb.params["LB_HEARTBEAT_INTERVAL"]
        overdue = [
            t.id for s in self.lb.scheduler.slots.values() for t in list(s.assigned.values())[:1]
            if t.timeout and t.started and now - t.started > t.timeout
        ]
        return {
            "balancer": self.lb.id,
            "hubs": len(self.lb.hubs),
            "workers": len(self.lb.scheduler.slots),
            "queued": self.lb.scheduler.queued_count,
            "running": self.lb.scheduler.running_count,
            "silent_hubs": [
                h.name for h in self.lb.hubs.values() if now - h.last_seen > 2 * interval
            ],
            "unhealthy_hubs": [h.name for h in self.lb.hubs.values() if h.state == "unhealthy"],
            "overdue": overdue[:100],
            "unschedulable": len(self.lb.unschedulable),
        }

    def snapshot(self) -> dict[str, Any]:
        now = self.lb.now()
        info = self.lb.info
        queued_by_user = self.lb.scheduler.user_counts()
        users = []
        for user, counts in self.lb.stats.per_user.items():
            queued, running = queued_by_user.get(user, (0, 0))
            users.append({"user": user, "queued": queued, "running": running, **counts})
        hubs = []
        for hub in self.lb.hubs.values():
            workers = []
            for worker_id, winfo in hub.workers.items():
                slot = self.lb.scheduler.slot_of(worker_id)
                head = next(iter(slot.assigned.values()), None) if slot else None
                workers.append({
                    **winfo,
                    "state": "busy" if head is not None else "idle",
                    "task": {"id": head.id, "name": head.name, "user": head.user, "started": head.started}
                    if head is not None else None,
                })
            hubs.append({
                "id": hub.id, "name": hub.name, "host": hub.host, "pid": hub.pid,
                "state": hub.state, "last_seen": hub.last_seen, "tasks": sorted(hub.routes),
                "local": hub.local, "python": hub.python, "cloudpickle": hub.cloudpickle,
                "version_skew": versions.skew(self.lb.hub_desk.hub_versions(hub), here="this balancer"),
                "job": hub.job, "workers": workers,
            })
        queues: dict[str, dict[str, Any]] = {}
        for task in itertools.islice(self.lb.scheduler.iter_queued(), 100_000):
            entry = queues.setdefault(task.name, {"name": task.name, "queued": 0, "max_wait": 0.0})
            entry["queued"] += 1
            entry["max_wait"] = max(entry["max_wait"], now - task.submitted)
        return {
            "time": now,
            "balancer": {
                "id": self.lb.id,
                "version": versions.package_version(),
                "started": self.lb.started,
                "uptime": now - self.lb.started if self.lb.started else 0.0,
                "address": f"tcp://{info.address}" if info else None,
                "ports": {"clients": info.client_port, "workers": info.worker_port, "health": info.health_port}
                if info else {},
                "host": stdsocket.gethostname(),
                "pid": os.getpid(),
                **versions.LOCAL,
            },
            "health": self.lb.health,
            "totals": {
                "queued": self.lb.scheduler.queued_count,
                "running": self.lb.scheduler.running_count,
                **self.lb.stats.totals(),
                "bad_messages": self.lb.stats.bad_messages + sum(self.lb.session.rejected.values())
                if self.lb.session else self.lb.stats.bad_messages,
            },
            "rejected": dict(self.lb.session.rejected) if self.lb.session else {},
            "rates": self.lb.stats.rates(),
            "throughput": self.lb.stats.history(),
            "users": self.lb.fair_share.users_view(users),
            "share_window": self.lb.fair_share.window,
            "hubs": hubs,
            "launchers": self.lb.launchers.rows(now),
            "queues": sorted(queues.values(), key=lambda q: q["name"]),
            "stats": self.lb.stats.per_name_list(),
            "unschedulable": [
                {"id": t.id, "name": t.name, "user": t.user, "priority": t.priority, "reason": t.reason}
                for t in (self.lb.tasks.get(i) for i in list(self.lb.unschedulable)[:100]) if t is not None
            ],
            "recent_failures": list(self.lb.stats.failures),
            "timeline": list(self.lb.stats.timeline),
        }

    def list_tasks(
        self,
        state: str | None = None,
        user: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 100,
        query: str | None = None,
    ) -> dict[str, Any]:
        """Tasks matching ``query`` (:mod:`.taskquery`) and the exact filters: queued and running
        ones newest first, then finished ones from the history, most recently finished first."""
        wanted = taskquery.parse(query, state=state, user=user, name=name)
        limit = max(0, min(limit, 1000))
        offset = max(0, offset)
        everything = wanted == taskquery.TaskQuery()
        total = 0
        page: list[dict[str, Any]] = []
        if wanted.wants_live:
            for task in self.lb.tasks.unfinished_newest():
                if everything or wanted.matches(search_fields(task)):
                    if offset <= total < offset + limit:
                        page.append(task.summary())
                    total += 1
        if wanted.wants_finished:
            for kept in self.lb.history.newest():
                if everything or wanted.matches(taskquery.SearchFields(
                    kept.id, kept.name, kept.user, kept.state, kept.worker, kept.hub, kept.error, kept.args,
                )):
                    if offset <= total < offset + limit:
                        page.append(kept.summary())
                    total += 1
        return {"total": total, "tasks": page}

    def task_info(self, task_id: str) -> dict[str, Any] | None:
        """A task's full detail (arguments, timings, worker; traceback and output once finished),
        live or from the history; None if neither knows it."""
        task = self.lb.tasks.get(task_id)
        if task is not None and not task.state.finished:
            started = task.started
            now = self.lb.now()
            return {
                **task.summary(), "retries": task.retries, "args": task.args, "traceback": None,
                "stdout": None, "stderr": None,
                "wait_time": (started if started is not None else now) - task.submitted,
                "run_time": now - started if started is not None else None,
            }
        kept = self.lb.history.get(task_id)
        if kept is None and task is not None:
            kept = FinishedTask.of(task)
        return kept.detail() if kept is not None else None
