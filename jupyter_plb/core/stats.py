"""Counters the monitor shows: totals, per user, per task name, throughput history, task stream."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from jupyter_plb.core.tasks import Task, TaskState

HISTORY_SECONDS = 120
TIMELINE_LENGTH = 500
FAILURES_KEPT = 20
#: A task name counts as short once SHORT_AFTER of its runs averaged under SHORT_RUN seconds.
SHORT_AFTER = 5
SHORT_RUN = 0.001


@dataclass(slots=True)
class NameStats:
    count: int = 0
    failed: int = 0
    run_total: float = 0.0
    run_min: float = float("inf")
    run_max: float = 0.0
    waits: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0

    def as_dict(self, name: str) -> dict[str, Any]:
        runs = max(self.count - self.failed, 0) or self.count
        return {
            "name": name,
            "count": self.count,
            "failed": self.failed,
            "mean_run": self.run_total / runs if runs else 0.0,
            "min_run": self.run_min if self.run_min != float("inf") else 0.0,
            "max_run": self.run_max,
            "mean_wait": self.wait_total / self.waits if self.waits else 0.0,
            "max_wait": self.wait_max,
        }


class Stats:
    """Cumulative counters since the balancer started; O(1) per task."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.per_user: dict[str, dict[str, int]] = {}
        self.per_name: dict[str, NameStats] = {}
        self.bad_messages = 0
        self.failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=FAILURES_KEPT)
        self.timeline: collections.deque[dict[str, Any]] = collections.deque(maxlen=TIMELINE_LENGTH)
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_SECONDS)
        self._second: dict[str, Any] | None = None

    def _user(self, user: str) -> dict[str, int]:
        entry = self.per_user.get(user)
        if entry is None:
            entry = self.per_user[user] = {"done": 0, "failed": 0, "cancelled": 0}
        return entry

    def _name(self, name: str) -> NameStats:
        entry = self.per_name.get(name)
        if entry is None:
            entry = self.per_name[name] = NameStats()
        return entry

    def _bucket(self, now: float) -> dict[str, Any]:
        second = float(int(now))
        if self._second is None or self._second["t"] != second:
            if self._second is not None:
                self._history.append(self._second)
            self._second = {"t": second, "done": 0, "failed": 0, "submitted": 0, "queued": 0}
        return self._second

    def submitted(self, task: Task, now: float) -> None:
        self.counts["submitted"] += 1
        self._user(task.user)
        self._bucket(now)["submitted"] += 1

    def dispatched(self, task: Task, now: float) -> None:
        wait = max(0.0, now - task.submitted)
        entry = self._name(task.name)
        entry.waits += 1
        entry.wait_total += wait
        entry.wait_max = max(entry.wait_max, wait)

    def ran(self, task: Task, started: float, ended: float) -> None:
        run = max(0.0, ended - started)
        entry = self._name(task.name)
        entry.run_total += run
        entry.run_min = min(entry.run_min, run)
        entry.run_max = max(entry.run_max, run)
        self.timeline.append({
            "worker": task.worker, "hub": task.hub, "id": task.id, "name": task.name,
            "user": task.user, "start": started, "end": ended, "state": task.state.value,
        })

    def finished(self, task: Task, now: float) -> None:
        state = task.state.value
        self.counts[state] += 1
        self._user(task.user)[state] += 1
        if task.state is TaskState.CANCELLED:
            return
        entry = self._name(task.name)
        entry.count += 1
        bucket = self._bucket(now)
        if task.state is TaskState.FAILED:
            entry.failed += 1
            bucket["failed"] += 1
            error = (task.result or {}).get("error") or {}
            self.failures.append({
                "id": task.id, "name": task.name, "user": task.user, "time": now,
                "error": f"{error.get('type', 'Error')}: {error.get('message', '')}"[:500],
            })
        else:
            bucket["done"] += 1

    def is_short(self, name: str) -> bool:
        """Tasks of this name have run, on average, well under a millisecond."""
        entry = self.per_name.get(name)
        return entry is not None and entry.count >= SHORT_AFTER and entry.run_total < SHORT_RUN * entry.count

    def runs_shorter_than(self, name: str, seconds: float) -> bool:
        """Tasks of this name have run at least twice, under ``seconds`` on average."""
        entry = self.per_name.get(name)
        return entry is not None and entry.count >= 2 and entry.run_total < seconds * entry.count

    def roll(self, now: float, queued: int) -> None:
        self._bucket(now)["queued"] = queued

    def totals(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("done", "failed", "cancelled", "submitted")}

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    def per_name_list(self) -> list[dict[str, Any]]:
        return [s.as_dict(name) for name, s in sorted(self.per_name.items())]
