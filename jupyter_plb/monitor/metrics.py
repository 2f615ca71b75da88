"""``/plb/metrics``: the balancer's snapshot in the Prometheus text format.

A custom collector reads one snapshot per scrape into a registry owned by the monitor (never
prometheus_client's global one, so two balancers in one process do not collide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jupyter_plb.core.snapshot import version_problem

#: Label values per user / task name exported at most (users and names come from clients).
MAX_LABEL_VALUES = 200
HEALTH_STATES = ("ok", "warning", "error", "unknown")


class SnapshotCollector:
    """Turns ``snapshot()`` (docs/monitor-api.md) into metric families."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        found = s.get("schema")
        yield GaugeMetricFamily(
            "plb_snapshot_schema", "The schema version of the balancer's snapshot.",
            value=found if isinstance(found, int) else 0,
        )
        if version_problem(s) is not None:
            return  # another jupyter_plb release (an attached team balancer): nothing else is read
        totals = s["totals"]
        balancer = s["balancer"]

        current = GaugeMetricFamily("plb_tasks", "Tasks queued or running now.", labels=["state"])
        for state in ("queued", "running"):
            current.add_metric([state], totals[state])
        yield current
        finished = CounterMetricFamily(
            "plb_tasks_finished", "Tasks finished, by end state.", labels=["state"]
        )
        for state in ("done", "failed", "cancelled"):
            finished.add_metric([state], totals[state])
        yield finished
        yield CounterMetricFamily(
            "plb_tasks_submitted", "Tasks accepted.", value=totals["submitted"]
        )
        yield CounterMetricFamily(
            "plb_bad_messages",
            "Messages dropped: bad signature, replay, malformed.",
            value=totals["bad_messages"],
        )
        yield GaugeMetricFamily(
            "plb_uptime_seconds", "Seconds since the balancer started.", value=balancer["uptime"]
        )

        health = GaugeMetricFamily(
            "plb_health", "1 for the health check's current status.", labels=["status"]
        )
        for status in HEALTH_STATES:
            health.add_metric([status], float(s["health"]["status"] == status))
        yield health

        hubs = GaugeMetricFamily("plb_hubs", "Connected hubs, by state.", labels=["state"])
        workers = GaugeMetricFamily("plb_workers", "Worker slots, by state.", labels=["state"])
        hub_states: dict[str, int] = {}
        for hub in s["hubs"]:
            hub_states[hub["state"]] = hub_states.get(hub["state"], 0) + 1
        worker_states = {"idle": s["workers"]["idle"], "busy": s["workers"]["busy"]}
        for state, count in sorted(hub_states.items()):
            hubs.add_metric([state], count)
        for state, count in sorted(worker_states.items()):
            workers.add_metric([state], count)
        yield hubs
        yield workers

        users = GaugeMetricFamily(
            "plb_user_tasks", "Tasks queued or running per user.", labels=["user", "state"]
        )
        for user in s["users"][:MAX_LABEL_VALUES]:
            users.add_metric([user["user"], "queued"], user["queued"])
            users.add_metric([user["user"], "running"], user["running"])
        yield users

        queued = GaugeMetricFamily(
            "plb_queue_length", "Queued tasks per task name.", labels=["name"]
        )
        waiting = GaugeMetricFamily(
            "plb_queue_max_wait_seconds",
            "Longest wait of a queued task, per task name.",
            labels=["name"],
        )
        for queue in s["queues"][:MAX_LABEL_VALUES]:
            queued.add_metric([queue["name"]], queue["queued"])
            waiting.add_metric([queue["name"]], queue["max_wait"])
        yield queued
        yield waiting

        runs = CounterMetricFamily(
            "plb_task_runs", "Tasks finished per task name.", labels=["name"]
        )
        failed = CounterMetricFamily(
            "plb_task_failures", "Tasks failed per task name.", labels=["name"]
        )
        mean_run = GaugeMetricFamily(
            "plb_task_mean_run_seconds", "Mean run time per task name.", labels=["name"]
        )
        for entry in s["stats"][:MAX_LABEL_VALUES]:
            runs.add_metric([entry["name"]], entry["count"])
            failed.add_metric([entry["name"]], entry["failed"])
            mean_run.add_metric([entry["name"]], entry["mean_run"])
        yield runs
        yield failed
        yield mean_run


class MetricsExporter:
    """One private registry holding one :class:`SnapshotCollector`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
