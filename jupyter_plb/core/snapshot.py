"""The monitor's schema: the balancer's snapshot, its task rows and its websocket events, typed.

Defined once here, documented field by field in ``docs/monitor-api.md``, and mirrored for the
browser in ``labextension/src/schema.ts``. Everything the monitor page, the Lab panel, the
notebook :class:`~jupyter_plb.jupyter.widgets.Dashboard` and ``%plb status`` show comes in this
shape, with the values two of them would otherwise compute alike already computed here: rates,
per-user shares and the fair-share ranking, health wording, worker counts, ages and run times,
priority ranges, hub versions, task wait and run times, the team pool's sentences.

Pure: no I/O and no clock reads; every function that needs the time takes ``now``. A change of a
field's name, type or meaning bumps :data:`SCHEMA_VERSION` (the rule is in docs/monitor-api.md);
the UIs refuse a snapshot of another version with a message that says so.

:func:`problems` checks a value against these annotations (the tests run it on every snapshot a
real balancer makes).
"""

# No ``from __future__ import annotations``: TypedDict needs evaluated annotations to tell its
# NotRequired keys (Python 3.11).
import math
import time
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict, cast

#: The version of everything defined here, carried as ``schema`` in every snapshot, task list and
#: websocket message. Bump it when a field changes name, type or meaning, or goes away.
SCHEMA_VERSION = 1
#: Seconds of throughput the rates average over (the last whole seconds before ``now``).
RATE_WINDOW = 5
#: Hubs started with ``--workers N`` accept any priority: they report a range this wide.
ANY_PRIORITY = 1e9

HealthStatus = Literal["ok", "warning", "error", "unknown"]
HubState = Literal["ok", "lost", "unhealthy", "draining"]
WorkerState = Literal["idle", "busy", "starting"]
TaskState = Literal["queued", "running", "done", "failed", "cancelled"]
JobState = Literal["pending", "running", "ending"]

#: What every UI calls each health status.
HEALTH_LABELS: dict[str, str] = {"ok": "healthy", "warning": "warning", "error": "error", "unknown": "unknown"}
_HUB_ORDER = {"ok": 0, "draining": 1, "unhealthy": 2, "lost": 3}


# -- the snapshot ------------------------------------------------------------------------------------
class Ports(TypedDict):
    clients: int
    workers: int
    health: int


class BalancerInfo(TypedDict):
    id: str | None
    version: str | None
    started: float
    uptime: float
    address: str | None
    #: Empty before the balancer has bound its sockets.
    ports: Ports | dict[str, int]
    host: str | None
    pid: int | None
    python: NotRequired[str]
    cloudpickle: NotRequired[str]


class Health(TypedDict):
    status: HealthStatus
    #: The word every UI shows for ``status``: healthy, warning, error, unknown.
    label: str
    messages: list[str]
    checked: float | None


class Totals(TypedDict):
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    submitted: int
    bad_messages: int


class Rates(TypedDict):
    #: Tasks finished (done or failed) per second over the last ``window`` whole seconds.
    done_per_s: float
    submitted_per_s: float
    failed_per_s: float
    window: int


class ThroughputPoint(TypedDict):
    t: float
    done: int
    failed: int
    submitted: int
    queued: int


class User(TypedDict):
    user: str
    queued: int
    running: int
    done: NotRequired[int]
    failed: NotRequired[int]
    cancelled: NotRequired[int]
    #: Fraction (0–1) of the worker slot-seconds of the last ``share_window`` seconds it used.
    share: float
    #: ``share`` in whole percent.
    share_percent: int


class ShareRow(TypedDict):
    user: str
    share: float
    share_percent: int
    running: int
    queued: int


class FairShare(TypedDict):
    window: float
    #: "last 5 min"
    window_label: str
    #: Users that ran, queue or used a slot lately: the biggest share first.
    users: list[ShareRow]


class WorkerTask(TypedDict):
    #: Absent for another user's task in a team pool (as are their ids everywhere).
    id: NotRequired[str]
    name: str
    user: str
    started: float | None


class Worker(TypedDict):
    id: str
    state: WorkerState
    pid: int
    min_p: float
    max_p: float
    #: "any", "5" or "0–9".
    priorities: str
    process_p: int
    done: int
    cpu: float | None
    rss: int | None
    task: WorkerTask | None
    #: Seconds its current task has run (None when idle or not started).
    running_for: float | None


class Hub(TypedDict):
    id: str
    name: str
    host: str
    pid: int
    state: HubState
    last_seen: float
    #: Seconds since its last heartbeat.
    seen_ago: float
    tasks: list[str]
    local: bool
    python: str
    cloudpickle: str
    #: "Python 3.11.7 · cloudpickle 3.1.3", or "" when the hub did not say.
    versions: str
    version_skew: str | None
    job: str | None
    busy: int
    idle: int
    workers: list[Worker]


class WorkerCounts(TypedDict):
    hubs: int
    total: int
    busy: int
    idle: int


class LauncherJob(TypedDict):
    id: str
    state: JobState
    hubs: int
    slots: int
    busy: int


class JobCounts(TypedDict):
    pending: int
    running: int
    ending: int


class Launcher(TypedDict):
    id: str
    name: str
    kind: str
    minimum: int
    maximum: int
    slots_per_job: int
    reason: str
    jobs: list[LauncherJob]
    updated: float
    counts: JobCounts


class Queue(TypedDict):
    name: str
    queued: int
    max_wait: float


class NameStats(TypedDict):
    name: str
    count: int
    failed: int
    mean_run: float
    min_run: float
    max_run: float
    mean_wait: float
    max_wait: float


class Unschedulable(TypedDict):
    id: NotRequired[str]
    name: str
    user: str
    priority: float
    reason: NotRequired[str | None]


class Failure(TypedDict):
    id: NotRequired[str]
    name: str
    user: str
    time: float
    error: NotRequired[str]


class TimelineEntry(TypedDict):
    worker: str | None
    hub: str | None
    id: NotRequired[str]
    name: str
    user: str
    start: float
    end: float
    state: TaskState


class Viewer(TypedDict):
    user: str | None
    admin: bool
    team: bool


class Team(TypedDict):
    attached: str
    reachable: bool
    unreachable_since: float | None
    error: str | None
    #: "Team pool · you are bob (admin)", or "" before the team balancer said who.
    identity: str
    #: "Team balancer unreachable since 12:01:02: …", or "" while it answers.
    message: str


class Snapshot(TypedDict):
    schema: int
    time: float
    balancer: BalancerInfo
    health: Health
    totals: Totals
    rejected: dict[str, int]
    rates: Rates
    throughput: list[ThroughputPoint]
    users: list[User]
    share_window: float
    fair_share: FairShare
    workers: WorkerCounts
    hubs: list[Hub]
    launchers: list[Launcher]
    queues: list[Queue]
    stats: list[NameStats]
    unschedulable: list[Unschedulable]
    #: Newest first.
    recent_failures: list[Failure]
    timeline: list[TimelineEntry]
    #: Added by a team balancer (core/team.py) to the snapshot a client gets.
    viewer: NotRequired[Viewer]
    #: Added by a Jupyter server attached to a team balancer (monitor/remote.py).
    team: NotRequired[Team]


# -- tasks, the health check and the websocket -------------------------------------------------------
class TaskRow(TypedDict):
    id: str
    name: str
    user: str
    priority: float
    state: TaskState
    progress: float | None
    submitted: float
    started: float | None
    ended: float | None
    worker: str | None
    hub: str | None
    attempts: int
    error: str | None
    reason: str | None
    #: From submitted to started (to ``now`` while queued, to ended if it never started).
    wait_time: float | None
    #: From started to ended (to ``now`` while running); the worker's measure once finished.
    run_time: float | None


class TaskDetail(TaskRow):
    retries: int
    args: str | None
    traceback: str | None
    stdout: str | None
    stderr: str | None


class TaskList(TypedDict):
    schema: int
    total: int
    tasks: list[TaskRow]


class HealthReport(TypedDict):
    balancer: str
    hubs: int
    workers: int
    queued: int
    running: int
    silent_hubs: list[str]
    unhealthy_hubs: list[str]
    overdue: list[str]
    unschedulable: int


class SnapshotMessage(TypedDict):
    type: Literal["snapshot"]
    schema: int
    data: Snapshot


class TasksMessage(TypedDict):
    type: Literal["tasks"]
    schema: int
    #: Task rows (only ``id``, ``state`` and what changed are sure to be new).
    events: list[TaskRow]
    #: Events a slow listener missed since the last batch.
    dropped: NotRequired[int]


# -- shared derivations -----------------------------------------------------------------------------
def health(status: Any, messages: Iterable[Any] = (), checked: float | None = None) -> Health:
    """The health block: ``status`` normalised (anything else is "unknown"), its label."""
    normal = cast(HealthStatus, status if status in HEALTH_LABELS else "unknown")
    return {
        "status": normal, "label": HEALTH_LABELS[normal], "messages": [str(m) for m in messages],
        "checked": checked,
    }


def rates(throughput: Sequence[Mapping[str, Any]], now: float, window: int = RATE_WINDOW) -> Rates:
    """Per-second rates over the last ``window`` whole seconds the history covers, up to the last
    one closed before ``now`` (a second without a point counts as idle)."""
    newest = max((p["t"] for p in throughput), default=None)
    last = math.floor(now) - 1
    if newest is not None and newest >= last - 1:
        last = min(last, math.floor(newest))  # the second before now may not be closed yet
    first = last - window + 1
    recent = [p for p in throughput if first <= p["t"] <= last]
    oldest = min((p["t"] for p in throughput), default=last)
    seconds = max(1, min(window, int(last - math.floor(oldest)) + 1))
    return {
        "done_per_s": sum(p["done"] + p["failed"] for p in recent) / seconds,
        "submitted_per_s": sum(p["submitted"] for p in recent) / seconds,
        "failed_per_s": sum(p["failed"] for p in recent) / seconds,
        "window": window,
    }


def priority_range(min_p: float | None, max_p: float | None) -> str:
    """A worker's priority range as every UI writes it: "any", "5", "0–9", "?–9"."""
    if min_p is None and max_p is None:
        return "–"
    if min_p is not None and max_p is not None:
        if min_p <= -ANY_PRIORITY and max_p >= ANY_PRIORITY:
            return "any"
        if min_p == max_p:
            return f"{min_p:g}"
    low = "?" if min_p is None else f"{min_p:g}"
    high = "?" if max_p is None else f"{max_p:g}"
    return f"{low}–{high}"


def versions_text(python: str, cloudpickle: str) -> str:
    return " · ".join(t for t in (python and f"Python {python}", cloudpickle and f"cloudpickle {cloudpickle}") if t)


def window_label(seconds: float) -> str:
    """"last 5 min", or "last 30 s" below a minute."""
    return f"last {round(seconds / 60)} min" if seconds >= 60 else f"last {round(seconds)} s"


def share_percent(share: float) -> int:
    return round(min(1.0, max(0.0, share)) * 100)


def worker(info: Mapping[str, Any], task: Mapping[str, Any] | None, now: float) -> Worker:
    """A worker slot as the hub registered it, with its current task (None when idle)."""
    started = task.get("started") if task is not None else None
    return {
        "id": info["id"], "state": "busy" if task is not None else "idle", "pid": info["pid"],
        "min_p": info["min_p"], "max_p": info["max_p"],
        "priorities": priority_range(info["min_p"], info["max_p"]),
        "process_p": info["process_p"], "done": info["done"], "cpu": info["cpu"], "rss": info["rss"],
        "task": {"id": task["id"], "name": task["name"], "user": task["user"], "started": started}
        if task is not None else None,
        "running_for": max(0.0, now - started) if started is not None else None,
    }


def _worker_order(w: Worker) -> tuple[float, float, str]:
    return (w["min_p"], w["max_p"], w["id"])


def hub(raw: Mapping[str, Any], workers: Iterable[Worker], now: float) -> Hub:
    """A hub with its workers (by priority range, then id), their counts, its age and versions.

    ``raw`` holds the registration fields (id, name, host, pid, state, last_seen, tasks, local,
    python, cloudpickle, version_skew, job)."""
    rows = sorted(workers, key=_worker_order)
    busy = sum(1 for w in rows if w["state"] == "busy")
    return {
        "id": raw["id"], "name": raw["name"], "host": raw["host"], "pid": raw["pid"],
        "state": raw["state"], "last_seen": raw["last_seen"],
        "seen_ago": max(0.0, now - raw["last_seen"]),
        "tasks": list(raw["tasks"]), "local": raw["local"], "python": raw["python"],
        "cloudpickle": raw["cloudpickle"], "versions": versions_text(raw["python"], raw["cloudpickle"]),
        "version_skew": raw["version_skew"], "job": raw["job"],
        "busy": busy, "idle": len(rows) - busy, "workers": rows,
    }


def _hub_order(h: Hub) -> tuple[bool, int, str, str]:
    return (not h["local"], _HUB_ORDER.get(h["state"], 4), h["name"], h["id"])


def worker_counts(hubs: Sequence[Hub]) -> WorkerCounts:
    total = sum(len(h["workers"]) for h in hubs)
    busy = sum(h["busy"] for h in hubs)
    return {"hubs": len(hubs), "total": total, "busy": busy, "idle": total - busy}


def users(
    counts: Mapping[str, Mapping[str, int]],
    live: Mapping[str, tuple[int, int]],
    shares: Mapping[str, float],
) -> list[User]:
    """Each user's queued and running tasks (``live``), finished ones (``counts``) and share of
    the slots; a user with a share but nothing else appears too. By name."""
    rows: dict[str, User] = {}
    for name, finished in counts.items():
        queued, running = live.get(name, (0, 0))
        share = round(shares.get(name, 0.0), 4)
        rows[name] = {
            "user": name, "queued": queued, "running": running, "done": finished.get("done", 0),
            "failed": finished.get("failed", 0), "cancelled": finished.get("cancelled", 0),
            "share": share, "share_percent": share_percent(share),
        }
    for name, value in shares.items():
        if name not in rows and value > 0:
            share = round(value, 4)
            rows[name] = {
                "user": name, "queued": 0, "running": 0, "share": share, "share_percent": share_percent(share),
            }
    return [rows[name] for name in sorted(rows)]


def fair_share(rows: Sequence[Mapping[str, Any]], window: float) -> FairShare:
    """The users that ran, queue or used a slot lately, the biggest share first."""
    active = [
        ShareRow(user=u["user"], share=min(1.0, u.get("share", 0.0)), share_percent=share_percent(u.get("share", 0.0)),
                 running=u["running"], queued=u["queued"])
        for u in rows if u["running"] or u["queued"] or u.get("share", 0.0) > 0
    ]
    active.sort(key=lambda r: (-r["share"], -r["running"], r["user"]))
    return {"window": window, "window_label": window_label(window), "users": active}


def launcher(entry: Mapping[str, Any]) -> Launcher:
    """A launcher's last report (balancer/launcher_board.py) with its jobs counted by state."""
    jobs: list[LauncherJob] = [
        {"id": j["id"], "state": j["state"], "hubs": j["hubs"], "slots": j["slots"], "busy": j["busy"]}
        for j in entry["jobs"]
    ]
    counts: JobCounts = {"pending": 0, "running": 0, "ending": 0}
    for job in jobs:
        counts[job["state"]] += 1
    return {
        "id": entry["id"], "name": entry["name"], "kind": entry["kind"], "minimum": entry["minimum"],
        "maximum": entry["maximum"], "slots_per_job": entry["slots_per_job"], "reason": entry["reason"],
        "jobs": jobs, "updated": entry["updated"], "counts": counts,
    }


def build(
    *,
    now: float,
    balancer: BalancerInfo,
    health: Health,
    totals: Totals,
    rejected: Mapping[str, int],
    throughput: Sequence[ThroughputPoint],
    users: list[User],
    share_window: float,
    hubs: Iterable[Hub],
    launchers: Iterable[Mapping[str, Any]],
    queues: Iterable[Queue],
    stats: Sequence[NameStats],
    unschedulable: Sequence[Unschedulable],
    failures: Iterable[Failure],
    timeline: Sequence[TimelineEntry],
) -> Snapshot:
    """The snapshot: the balancer's parts, ordered, with the derived fields filled in."""
    hub_rows = sorted(hubs, key=_hub_order)
    return {
        "schema": SCHEMA_VERSION,
        "time": now,
        "balancer": balancer,
        "health": health,
        "totals": totals,
        "rejected": dict(rejected),
        "rates": rates(throughput, now),
        "throughput": list(throughput),
        "users": users,
        "share_window": share_window,
        "fair_share": fair_share(users, share_window),
        "workers": worker_counts(hub_rows),
        "hubs": hub_rows,
        "launchers": [launcher(entry) for entry in launchers],
        "queues": sorted(queues, key=lambda q: q["name"]),
        "stats": list(stats),
        "unschedulable": list(unschedulable),
        "recent_failures": sorted(failures, key=lambda f: f["time"], reverse=True),
        "timeline": list(timeline),
    }


def empty(now: float) -> Snapshot:
    """A snapshot of nothing (an attached server before the team balancer's first answer)."""
    return build(
        now=now,
        balancer={"id": None, "version": None, "started": 0.0, "uptime": 0.0, "address": None, "ports": {},
                  "host": None, "pid": None},
        health=health("unknown"),
        totals={"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0, "submitted": 0,
                "bad_messages": 0},
        rejected={}, throughput=[], users=[], share_window=300, hubs=[], launchers=[], queues=[], stats=[],
        unschedulable=[], failures=[], timeline=[],
    )


def task_times(
    submitted: float, started: float | None, ended: float | None, now: float
) -> tuple[float | None, float | None]:
    """``(wait_time, run_time)`` of a task: waiting until it started (or ended unstarted, or
    ``now``); running from then until it ended (or ``now``). None for what has not begun."""
    waited_until = started if started is not None else ended if ended is not None else now
    wait = max(0.0, waited_until - submitted)
    run = max(0.0, (ended if ended is not None else now) - started) if started is not None else None
    return wait, run


def task_row(summary: Mapping[str, Any], now: float, run_time: float | None = None) -> TaskRow:
    """A task summary (``Task.summary()``) with its wait and run times; ``run_time`` is the
    worker's measure of a finished task, when known."""
    wait, run = task_times(summary["submitted"], summary["started"], summary["ended"], now)
    return cast(TaskRow, {**summary, "wait_time": wait, "run_time": run if run_time is None else run_time})


def task_list(total: int, rows: list[TaskRow]) -> TaskList:
    return {"schema": SCHEMA_VERSION, "total": total, "tasks": rows}


def health_report(
    *,
    balancer: str,
    hubs: Sequence[Mapping[str, Any]],
    workers: int,
    queued: int,
    running: int,
    overdue: Sequence[str],
    unschedulable: int,
    now: float,
    heartbeat: float,
) -> HealthReport:
    """What the health check judges: hubs silent for two heartbeats, unhealthy hubs, tasks past
    their timeout. ``hubs`` are ``{"name", "last_seen", "state"}``."""
    return {
        "balancer": balancer,
        "hubs": len(hubs),
        "workers": workers,
        "queued": queued,
        "running": running,
        "silent_hubs": [h["name"] for h in hubs if now - h["last_seen"] > 2 * heartbeat],
        "unhealthy_hubs": [h["name"] for h in hubs if h["state"] == "unhealthy"],
        "overdue": list(overdue[:100]),
        "unschedulable": unschedulable,
    }


def unreachable_message(since: float, error: str) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(since))
    return f"team balancer unreachable since {when}: {error}"


def attached(
    data: Snapshot,
    *,
    path: str,
    reachable: bool,
    unreachable_since: float | None,
    error: str | None,
    now: float,
) -> Snapshot:
    """The snapshot a team balancer sent, as a server attached to it shows it: with ``team``
    (whether it answers, who this server is there) and, while it does not answer, health error."""
    view: Snapshot = {**data}
    viewer = data.get("viewer")
    identity = ""
    if viewer is not None and viewer["team"]:
        identity = f"Team pool · you are {viewer['user'] or 'the balancer'}{' (admin)' if viewer['admin'] else ''}"
    message = ""
    if not reachable and error is not None:
        text = unreachable_message(unreachable_since or now, error)
        message = text[0].upper() + text[1:]
        view["health"] = health("error", [text], now)
    view["team"] = {
        "attached": path, "reachable": reachable, "unreachable_since": unreachable_since, "error": error,
        "identity": identity, "message": message,
    }
    return view


def snapshot_message(data: Snapshot | dict[str, Any]) -> SnapshotMessage:
    return {"type": "snapshot", "schema": SCHEMA_VERSION, "data": cast(Snapshot, data)}


def tasks_message(events: list[TaskRow], dropped: int = 0) -> TasksMessage:
    message: TasksMessage = {"type": "tasks", "schema": SCHEMA_VERSION, "events": events}
    if dropped:
        message["dropped"] = dropped
    return message


def version_problem(data: Any) -> str | None:
    """None when ``data`` is of this schema; else the sentence a UI shows instead of it."""
    found = data.get("schema") if isinstance(data, dict) else None
    if found == SCHEMA_VERSION:
        return None
    said = "no schema version" if found is None else f"snapshot schema {found}"
    return (
        f"the balancer speaks {said}, this view understands schema {SCHEMA_VERSION}: "
        "install the same jupyter_plb version on both sides"
    )


# -- checking a value against the annotations -------------------------------------------------------
def problems(value: Any, kind: Any = Snapshot, where: str = "snapshot") -> list[str]:
    """What in ``value`` does not fit ``kind`` (a TypedDict above, or an annotation), as
    ``"where.field: why"`` lines; [] when it fits. Unknown keys are problems too."""
    found: list[str] = []
    _check(value, kind, where, found)
    return found


def _check(value: Any, kind: Any, where: str, found: list[str]) -> None:
    if kind is Any:
        return
    if typing.is_typeddict(kind):
        _check_dict(value, kind, where, found)
        return
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        trials = [problems(value, option, where) for option in options]
        if not any(not t for t in trials):
            closest = min(trials, key=lambda t: len(t))
            found.extend(closest if value is not None else [f"{where}: None, not {kind}"])
        return
    if origin is Literal:
        if value not in typing.get_args(kind):
            found.append(f"{where}: {value!r} is not one of {typing.get_args(kind)}")
        return
    if origin is list:
        if not isinstance(value, list):
            found.append(f"{where}: {type(value).__name__}, not a list")
            return
        (item,) = typing.get_args(kind)
        for index, entry in enumerate(value):
            _check(entry, item, f"{where}[{index}]", found)
        return
    if origin is dict:
        if not isinstance(value, dict):
            found.append(f"{where}: {type(value).__name__}, not a mapping")
            return
        key_kind, item = typing.get_args(kind)
        for key, entry in value.items():
            _check(key, key_kind, f"{where} key", found)
            _check(entry, item, f"{where}.{key}", found)
        return
    if kind is None or kind is type(None):
        if value is not None:
            found.append(f"{where}: {value!r}, not None")
        return
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        found.append(f"{where}: {value!r} is not {getattr(kind, '__name__', kind)}")


def _check_dict(value: Any, kind: Any, where: str, found: list[str]) -> None:
    if not isinstance(value, dict):
        found.append(f"{where}: {type(value).__name__}, not a {kind.__name__}")
        return
    hints = typing.get_type_hints(kind)
    for key in sorted(kind.__required_keys__ - value.keys()):
        found.append(f"{where}.{key}: missing")
    for key in sorted(value.keys() - hints.keys()):
        found.append(f"{where}.{key}: not in {kind.__name__}")
    for key, entry in value.items():
        if key in hints:
            _check(entry, hints[key], f"{where}.{key}", found)


def fields(kind: Any) -> dict[str, bool]:
    """``{field: required}`` of a TypedDict (the TypeScript mirror is checked against it)."""
    return {key: key in kind.__required_keys__ for key in typing.get_type_hints(kind)}


#: The TypedDicts of the schema, by name (labextension/src/schema.ts has one interface of each).
TYPES: dict[str, Any] = {
    name: value for name, value in list(globals().items()) if isinstance(value, type) and typing.is_typeddict(value)
}
