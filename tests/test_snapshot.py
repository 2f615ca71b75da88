"""The monitor's schema (core/snapshot.py): its derivations, its checker, and every snapshot, task
list, task detail, health report and websocket message a real balancer makes fitting it. The
TypeScript mirror (labextension/src/schema.ts) and the monitor page's version are checked here too."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core import snapshot as snap
from jupyter_plb.core.team import TeamPolicy
from jupyter_plb.monitor.events import EventStream
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(120)


def fits(value: Any, kind: Any = snap.Snapshot) -> None:
    assert snap.problems(value, kind) == [], json.dumps(value, indent=1)[:4000]


# -- the derivations -------------------------------------------------------------------------------
def test_health_has_one_wording_and_unknown_for_anything_else() -> None:
    assert snap.health("ok")["label"] == "healthy"
    assert snap.health("warning", ["HC - WARNING : LB HAS NO WORKERS."], 5.0) == {
        "status": "warning", "label": "warning", "messages": ["HC - WARNING : LB HAS NO WORKERS."], "checked": 5.0,
    }
    assert snap.health("error")["label"] == "error"
    assert snap.health("PANIC") == {"status": "unknown", "label": "unknown", "messages": [], "checked": None}


def point(t: float, done: int = 0, failed: int = 0, submitted: int = 0) -> snap.ThroughputPoint:
    return {"t": t, "done": done, "failed": failed, "submitted": submitted, "queued": 0}


def test_rates_average_the_last_whole_seconds_and_count_silent_seconds_as_idle() -> None:
    history = [point(t, done=10, failed=2, submitted=20) for t in range(90, 100)]
    rates = snap.rates(history, now=100.4)
    assert rates == {"done_per_s": 12.0, "submitted_per_s": 20.0, "failed_per_s": 2.0, "window": 5}
    # the second before now is not closed yet: the window ends at the newest point
    assert snap.rates(history[:-1], now=100.1)["done_per_s"] == 12.0
    # a balancer that has been idle for ten seconds has no rate left
    assert snap.rates(history, now=110.5)["done_per_s"] == 0.0
    # two seconds of history are two seconds, not five
    assert snap.rates([point(98, done=4), point(99, done=6)], now=100.2)["done_per_s"] == 5.0
    assert snap.rates([], now=5.0)["done_per_s"] == 0.0


@pytest.mark.parametrize(("low", "high", "text"), [
    (-1e9, 1e9, "any"), (-5e9, 5e9, "any"), (0, 9, "0–9"), (5, 5, "5"), (0.5, 2, "0.5–2"),
    (None, 9, "?–9"), (10, None, "10–?"), (None, None, "–"), (-1e9, 9, "-1e+09–9"),
])
def test_priority_ranges_read_the_same_everywhere(low: Any, high: Any, text: str) -> None:
    assert snap.priority_range(low, high) == text


def test_task_times_wait_until_started_and_run_until_ended() -> None:
    assert snap.task_times(10.0, None, None, now=13.0) == (3.0, None)  # queued
    assert snap.task_times(10.0, 12.0, None, now=15.0) == (2.0, 3.0)  # running
    assert snap.task_times(10.0, 12.0, 12.5, now=99.0) == (2.0, 0.5)  # finished
    assert snap.task_times(10.0, None, 11.0, now=99.0) == (1.0, None)  # cancelled while queued
    row = snap.task_row({"submitted": 1.0, "started": 2.0, "ended": 4.0}, now=9.0, run_time=1.5)
    assert (row["wait_time"], row["run_time"]) == (1.0, 1.5), "the worker's measure wins once finished"


def raw_hub(**fields: Any) -> dict[str, Any]:
    return {"id": "h", "name": "h", "host": "box", "pid": 1, "state": "ok", "last_seen": 99.0, "tasks": [],
            "local": False, "python": "", "cloudpickle": "", "version_skew": None, "job": None, **fields}


def raw_worker(worker_id: str, low: float = 0, high: float = 9) -> dict[str, Any]:
    return {"id": worker_id, "pid": 2, "min_p": low, "max_p": high, "process_p": 0, "done": 0, "cpu": None,
            "rss": None}


def test_hubs_and_workers_come_ordered_counted_and_aged() -> None:
    task = {"id": "t1", "name": "f", "user": "alice", "started": 97.5}
    workers = [snap.worker(raw_worker("w3", 10, 99), None, 100.0), snap.worker(raw_worker("w1"), task, 100.0),
               snap.worker(raw_worker("w0", 0, 0), None, 100.0)]
    hub = snap.hub(raw_hub(python="3.11.7", cloudpickle="3.1.3"), workers, now=100.0)
    assert [w["id"] for w in hub["workers"]] == ["w0", "w1", "w3"]
    assert (hub["busy"], hub["idle"], hub["seen_ago"]) == (1, 2, 1.0)
    assert hub["versions"] == "Python 3.11.7 · cloudpickle 3.1.3"
    assert hub["workers"][1]["running_for"] == 2.5 and hub["workers"][1]["priorities"] == "0–9"
    assert hub["workers"][0]["running_for"] is None and hub["workers"][0]["state"] == "idle"
    assert snap.hub(raw_hub(), [], 100.0)["versions"] == ""

    others = [snap.hub(raw_hub(id=i, name=n, state=s, local=local), [], 100.0) for i, n, s, local in (
        ("h3", "zeta", "ok", False), ("h2", "alpha", "lost", False), ("h1", "beta", "ok", False),
        ("h4", "gamma", "ok", True), ("h5", "delta", "draining", False))]
    built = snap.build(**{**parts(), "hubs": [hub, *others]})
    assert [h["id"] for h in built["hubs"]] == ["h4", "h1", "h", "h3", "h5", "h2"]
    assert built["workers"] == {"hubs": 6, "total": 3, "busy": 1, "idle": 2}
    fits(built)


def test_users_shares_and_the_fair_share_ranking() -> None:
    rows = snap.users(
        {"alice": {"done": 3, "failed": 1, "cancelled": 0}, "bob": {"done": 0, "failed": 0, "cancelled": 0},
         "idle": {"done": 9, "failed": 0, "cancelled": 0}},
        {"alice": (4, 1), "bob": (2, 1)},
        {"alice": 0.5, "bob": 0.25, "gone": 0.123456},
    )
    assert [u["user"] for u in rows] == ["alice", "bob", "gone", "idle"]
    assert rows[0] == {"user": "alice", "queued": 4, "running": 1, "done": 3, "failed": 1, "cancelled": 0,
                       "share": 0.5, "share_percent": 50}
    assert rows[2] == {"user": "gone", "queued": 0, "running": 0, "share": 0.1235, "share_percent": 12}
    view = snap.fair_share(rows, 300)
    assert view["window_label"] == "last 5 min"
    assert [(r["user"], r["share_percent"]) for r in view["users"]] == [("alice", 50), ("bob", 25), ("gone", 12)]
    assert snap.window_label(30) == "last 30 s" and snap.window_label(600) == "last 10 min"


def test_failures_come_newest_first_and_launchers_with_their_counts() -> None:
    failures = [{"id": f"t{i}", "name": "f", "user": "u", "time": float(i), "error": "E: x"} for i in range(3)]
    launcher = {"id": "l1", "name": "slurm", "kind": "slurm", "minimum": 0, "maximum": 4, "slots_per_job": 2,
                "reason": "", "updated": 5.0, "counts": {"pending": 9},
                "jobs": [{"id": "1", "state": "running", "hubs": 1, "slots": 2, "busy": 1},
                         {"id": "2", "state": "pending", "hubs": 0, "slots": 0, "busy": 0}]}
    built = snap.build(**{**parts(), "failures": failures, "launchers": [launcher]})
    assert [f["id"] for f in built["recent_failures"]] == ["t2", "t1", "t0"]
    assert built["launchers"][0]["counts"] == {"pending": 1, "running": 1, "ending": 0}
    fits(built)


def test_an_attached_server_says_who_it_is_and_whether_the_team_balancer_answers() -> None:
    data = TeamPolicy(["boss"]).redact(snap.empty(1.0), "bob")  # type: ignore[arg-type]
    view = snap.attached(data, path="/srv/team.json", reachable=True, unreachable_since=None, error=None, now=2.0)  # type: ignore[arg-type]
    assert view["team"]["identity"] == "Team pool · you are bob" and view["team"]["message"] == ""
    fits(view)
    lost = snap.attached(view, path="/srv/team.json", reachable=False, unreachable_since=1.0, error="no answer",
                         now=3.0)
    assert re.fullmatch(r"Team balancer unreachable since \d\d:\d\d:\d\d: no answer", lost["team"]["message"])
    assert lost["health"]["status"] == "error" and lost["health"]["label"] == "error"
    assert lost["health"]["messages"][0].startswith("team balancer unreachable since ")
    fits(lost)
    admin = TeamPolicy(["boss"]).redact(snap.empty(1.0), "boss")  # type: ignore[arg-type]
    assert snap.attached(admin, path="p", reachable=True, unreachable_since=None, error=None,  # type: ignore[arg-type]
                         now=2.0)["team"]["identity"] == "Team pool · you are boss (admin)"


def test_another_version_is_refused_with_a_sentence() -> None:
    assert snap.version_problem(snap.empty(1.0)) is None
    assert "speaks snapshot schema 99" in (snap.version_problem({"schema": 99}) or "")
    assert "no schema version" in (snap.version_problem({"time": 1}) or "")
    assert snap.version_problem(None) is not None


# -- the checker ------------------------------------------------------------------------------------
def parts() -> dict[str, Any]:
    empty = snap.empty(100.0)
    return {
        "now": 100.0, "balancer": empty["balancer"], "health": empty["health"], "totals": empty["totals"],
        "rejected": {}, "throughput": [], "users": [], "share_window": 300, "hubs": [], "launchers": [],
        "queues": [], "stats": [], "unschedulable": [], "failures": [], "timeline": [],
    }


def test_the_checker_names_what_is_missing_unknown_or_of_the_wrong_type() -> None:
    good = snap.empty(1.0)
    fits(good)
    bad: Any = json.loads(json.dumps(good))
    del bad["totals"]["done"]
    bad["totals"]["queued"] = "7"
    bad["health"]["status"] = "PANIC"
    bad["hubs"] = [{"id": 1}]
    bad["surprise"] = True
    bad["rates"]["done_per_s"] = True
    found = snap.problems(bad)
    for expected in ("snapshot.totals.done: missing", "snapshot.totals.queued: '7' is not int",
                     "snapshot.health.status: 'PANIC' is not one of", "snapshot.hubs[0].name: missing",
                     "snapshot.hubs[0].id: 1 is not str", "snapshot.surprise: not in Snapshot",
                     "snapshot.rates.done_per_s: True is not float"):
        assert any(line.startswith(expected) for line in found), (expected, found)
    assert snap.problems(float("nan"), float) != []


# -- a real balancer ------------------------------------------------------------------------------
def collect_events(cluster: LocalCluster) -> tuple[list[dict[str, Any]], threading.Event]:
    """A listener on the monitor's event stream of ``cluster``'s balancer, as the websocket is."""
    received: list[dict[str, Any]] = []
    got_tasks = threading.Event()

    def send(text: str) -> asyncio.Future[None]:
        message = json.loads(text)
        received.append(message)
        if message["type"] == "tasks":
            got_tasks.set()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def connect() -> None:
        EventStream(cluster.balancer).connect(send)

    cluster.call(connect)
    return received, got_tasks


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def test_every_view_of_a_busy_balancer_fits_the_schema(
    ready_client: Client, cluster: LocalCluster, connection_file: Path
) -> None:
    events, got_tasks = collect_events(cluster)
    cluster.call(cluster.balancer.launchers.note, {
        "id": "adapt-1", "name": "slurm", "kind": "slurm", "minimum": 0, "maximum": 2,
        "jobs": [{"id": "42", "state": "running", "hubs": 1, "slots": 2, "busy": 1}],
    }, time.time())
    with Client(connection_file=connection_file, user="bob") as bob:
        done = [ready_client.submit(pow, 2, i) for i in range(6)]
        failed = bob.submit(fail, 1)
        for fut in done:
            fut.result(30)
        with pytest.raises(Exception, match="bad 1"):
            failed.result(30)
        sleeping = [bob.submit(time.sleep, 5) for _ in range(6)]  # two run, two are prefetched, two wait
        status = wait_for(lambda: (s := ready_client.status())["totals"]["running"] >= 2 and s, what="busy workers")
        wait_for(got_tasks.is_set, what="a batch of task events")

        fits(status)
        assert status["schema"] == snap.SCHEMA_VERSION
        assert status["workers"]["busy"] == 2 and status["workers"]["total"] == 2
        assert {u["user"] for u in status["users"]} == {"tester", "bob"}
        assert status["recent_failures"][0]["error"].startswith("ValueError")
        assert status["launchers"][0]["counts"]["running"] == 1
        busy = [w for h in status["hubs"] for w in h["workers"] if w["state"] == "busy"]
        assert all(w["running_for"] is not None and w["priorities"] == "any" for w in busy)

        fits(cluster.call(cluster.balancer.snapshot))
        for viewer in ("tester", "boss", None):  # what a team balancer gives each user
            fits(TeamPolicy(["boss"]).redact(status, viewer))  # type: ignore[arg-type]
        listing = ready_client.tasks(limit=1000)
        fits({k: listing[k] for k in ("schema", "total", "tasks")}, snap.TaskList)
        assert listing["total"] == 13 and {t["state"] for t in listing["tasks"]} >= {"queued", "running", "done"}
        for task_id in (sleeping[0].task_id, sleeping[5].task_id, done[0].task_id, failed.task_id):
            fits(cluster.call(cluster.balancer.task_info, task_id), snap.TaskDetail)
        fits(cluster.call(cluster.balancer.views.health_report), snap.HealthReport)
        for message in list(events):
            fits(message, snap.SnapshotMessage if message["type"] == "snapshot" else snap.TasksMessage)
        bob.cancel([f.task_id for f in sleeping])


# -- the mirrors in the browser ---------------------------------------------------------------------
def typescript_interfaces(text: str) -> dict[str, dict[str, bool]]:
    found = {}
    for name, extends, body in re.findall(r"export interface (\w+)(?: extends (\w+))? \{\n(.*?)\n\}", text, re.S):
        fields = dict(found.get(extends, {}))
        fields.update({key: not optional for key, optional in re.findall(r"^  (\w+)(\?)?:", body, re.M)})
        found[name] = fields
    return found


def test_the_typescript_mirror_has_every_type_and_field_of_the_schema() -> None:
    text = (ROOT / "labextension" / "src" / "schema.ts").read_text()
    assert re.search(rf"export const SCHEMA_VERSION = {snap.SCHEMA_VERSION};", text)
    mirror = typescript_interfaces(text)
    for name, kind in snap.TYPES.items():
        assert name in mirror, f"schema.ts has no interface {name}"
        assert mirror[name] == snap.fields(kind), f"schema.ts's {name} differs from core/snapshot.py's"


def test_the_documented_sample_and_the_panels_sample_fit_the_schema() -> None:
    page = (ROOT / "docs" / "monitor-api.md").read_text()
    documented = page.split("## Snapshot (", 1)[1].split("```json\n", 1)[1].split("\n```", 1)[0]
    fits(json.loads(documented))
    assert f"**Version: `SCHEMA_VERSION = {snap.SCHEMA_VERSION}`.**" in page
    fits(json.loads((ROOT / "labextension" / "test" / "sample-snapshot.json").read_text()))


def test_the_monitor_page_knows_the_schema_version() -> None:
    page = (ROOT / "jupyter_plb" / "monitor" / "static" / "monitor.js").read_text()
    assert f"const SCHEMA_VERSION = {snap.SCHEMA_VERSION};" in page
