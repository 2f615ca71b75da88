"""``run.py --profile``: where a W2 round trip's time goes, per process and stage, beside the floor.

Each repeat measures, one after the other on this machine, sequential submit → result round trips
(W2) of:

* the floor (floor.py): a bare pyzmq broker between this process and one worker process, waiting
  in ``zmq.Poller`` or in an asyncio loop, echoing bytes or calling a pickled function;
* ProcessPoolExecutor with 2 workers;
* jupyter_plb (balancer process + local hub, 2 workers, journal on), as run.py measures it;
* the same with the stage probes of probes.py in every process (client, balancer, workers).

From the probed run it prints the critical path of a round trip — milestones from the client's
``submit()`` to ``result()`` returning, through the balancer and the worker, with the gaps between
processes (ZeroMQ's I/O threads, the loopback, the receiver's wake-up) — and each process's CPU per
round trip by stage (self time: time in a stage not spent in a stage nested in it).
"""

from __future__ import annotations

import bisect
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import floor
import probes
import workloads

#: (name, process that owns it, milestone it ends at)
SEGMENTS = (
    "client: submit() until the submit is sent",
    "wire + wake-up: client → balancer",
    "balancer: submit received until tasks sent",
    "wire + wake-up: balancer → worker",
    "worker: tasks received until results sent",
    "wire + wake-up: worker → balancer",
    "balancer: results received until sent on",
    "wire + wake-up: balancer → client",
    "client I/O thread: results received until future set",
    "client: future set until result() returns",
)
_OWNER = ("client", None, "balancer", None, "worker", None, "balancer", None, "client", "client")
WAITS = ("idle: epoll", "idle: zmq poll", "result() (waits)", "next task (waits)")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _p50_p99(seconds: list[float]) -> dict[str, float]:
    return {"p50": percentile(seconds, 0.5) * 1e6, "p99": percentile(seconds, 0.99) * 1e6}


# -- the systems -----------------------------------------------------------------------------------
def measure_floor(n: int) -> dict[str, dict[str, float]]:
    out = {}
    for mode in ("poll", "asyncio"):
        with floor.floor_system(mode) as sock:
            floor.round_trips(sock, 200, workloads.noop)
            out[f"floor {mode}, echo"] = _p50_p99(floor.round_trips(sock, n))
            out[f"floor {mode}, call"] = _p50_p99(floor.round_trips(sock, n, workloads.noop))
    return out


def w2(executor: Any, n: int, mark: Any = None) -> list[float]:
    times = []
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        executor.submit(workloads.noop, i).result()
        end = clock()
        if mark is not None:
            mark(start, end)
        times.append((end - start) / 1e9)
    return times


def measure_probed(run: ModuleType, n: int, folder: str) -> dict[str, float]:
    with run.plb_system(2, probe_dir=folder) as (client, _first, _pids):
        w2(client, 50)
        probes.install("client", folder)
        try:
            times = w2(client, n, probes.marker("round trip"))
        finally:
            probes.uninstall()
    return _p50_p99(times)


# -- analysis --------------------------------------------------------------------------------------
def _thread_label(name: str) -> str:
    if name in ("MainThread", "plb-core"):
        return "main"
    if name.startswith(("plb-client", "plb-worker-io")):
        return "I/O thread"
    return name.removeprefix("plb-")


def _role(process: str) -> str:
    return process.rsplit("-", 1)[0]


class _Index:
    """Spans by (role, stage, type), sorted by start, for finding the next one after a time."""

    def __init__(self, spans: list[probes.Span]) -> None:
        self.lists: dict[tuple[str, str, str], list[probes.Span]] = defaultdict(list)
        for s in spans:
            self.lists[(_role(s.process), s.stage, s.kind)].append(s)
            self.lists[(_role(s.process), s.stage, "*")].append(s)
        for group in self.lists.values():
            group.sort(key=lambda s: s.start)
        self.starts = {key: [s.start for s in group] for key, group in self.lists.items()}

    def next(self, role: str, stage: str, kind: str, after: int) -> probes.Span | None:
        key = (role, stage, kind)
        group = self.lists.get(key)
        if not group:
            return None
        i = bisect.bisect_left(self.starts[key], after)
        return group[i] if i < len(group) else None


def milestones(index: _Index, rt: probes.Span) -> list[int] | None:
    """Eleven times from submit() to result() returning, or None when one is missing."""
    steps = (
        ("client", "zmq send", "submit"),
        ("balancer", "verify+parse (deserialize)", "submit"),
        ("balancer", "zmq send", "tasks"),
        ("worker", "verify+parse (deserialize)", "tasks"),
        ("worker", "zmq send", "results"),
        ("balancer", "verify+parse (deserialize)", "results"),
        ("balancer", "zmq send", "results"),
        ("client", "verify+parse (deserialize)", "results"),
        ("client", "I/O thread: settle future", "*"),
    )
    times = [rt.start]
    after = rt.start
    for role, stage, kind in steps:
        found = index.next(role, stage, kind, after)
        if found is None or found.start > rt.end:
            return None
        # a send ends its segment; a receive (deserialize) begins the next one
        mark = found.end if stage in ("zmq send", "I/O thread: settle future") else found.start
        times.append(mark)
        after = found.start
    times.append(rt.end)
    return times


def analyse(spans: list[probes.Span]) -> dict[str, Any]:
    probes.with_self_times(spans)
    rts = sorted((s for s in spans if s.stage == "round trip"), key=lambda s: s.start)
    others = sorted((s for s in spans if s.stage != "round trip"), key=lambda s: s.start)
    starts = [s.start for s in others]
    index = _Index(others)
    segments: list[list[float]] = [[] for _ in SEGMENTS]
    cpu: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    inside: dict[tuple[int, str], list[float]] = defaultdict(list)
    used = 0
    for rt in rts:
        marks = milestones(index, rt)
        if marks is None:
            continue
        used += 1
        for i in range(len(SEGMENTS)):
            segments[i].append((marks[i + 1] - marks[i]) / 1e3)
        totals: dict[tuple[str, str, str], float] = defaultdict(float)
        owned: dict[tuple[int, str], float] = defaultdict(float)
        lo, hi = bisect.bisect_left(starts, rt.start), bisect.bisect_right(starts, rt.end)
        for s in others[lo:hi]:
            role = _role(s.process)
            thread = _thread_label(s.thread)
            totals[(role, thread, s.stage)] += s.self_ns / 1e3
            segment = bisect.bisect_right(marks, s.start) - 1
            if 0 <= segment < len(SEGMENTS) and _OWNER[segment] == role and s.stage not in WAITS:
                owned[(segment, s.stage)] += s.self_ns / 1e3
        keys = set(cpu) | set(totals)
        for key in keys:
            cpu[key].append(totals.get(key, 0.0))
        for key in set(inside) | set(owned):
            inside[key].append(owned.get(key, 0.0))
    return {
        "round_trips": len(rts),
        "analysed": used,
        "segments": [
            {"segment": name, "p50": statistics.median(v), "mean": statistics.fmean(v)}
            for name, v in zip(SEGMENTS, segments, strict=True) if v
        ],
        "total_p50": statistics.median([sum(x) for x in zip(*segments, strict=True)]) if used else 0.0,
        "cpu": sorted(
            ({"process": k[0], "thread": k[1], "stage": k[2], "mean": statistics.fmean(v + [0.0] * (used - len(v))),
              "p50": statistics.median(v + [0.0] * (used - len(v)))} for k, v in cpu.items()),
            key=lambda r: (r["process"], -r["mean"]),
        ),
        "inside": {
            SEGMENTS[seg]: sorted(
                ((stage, statistics.fmean(v + [0.0] * (used - len(v)))) for (s2, stage), v in inside.items()
                 if s2 == seg),
                key=lambda x: -x[1],
            )
            for seg in range(len(SEGMENTS)) if _OWNER[seg]
        },
    }


# -- report ----------------------------------------------------------------------------------------
def report(latency: dict[str, list[dict[str, float]]], analysis: dict[str, Any]) -> None:
    print("\nW2 round trip (sequential submit -> result), µs, median over repeats")
    print(f"{'system':<34}{'p50':>10}{'p99':>10}")
    for name, runs in latency.items():
        p50 = statistics.median(r["p50"] for r in runs)
        p99 = statistics.median(r["p99"] for r in runs)
        print(f"{name:<34}{p50:>10.1f}{p99:>10.1f}")
    print(f"\ncritical path of a jupyter_plb round trip (probed; {analysis['analysed']} of "
          f"{analysis['round_trips']} round trips analysed), µs")
    print(f"{'segment':<56}{'p50':>9}{'mean':>9}")
    for row in analysis["segments"]:
        print(f"{row['segment']:<56}{row['p50']:>9.1f}{row['mean']:>9.1f}")
    print(f"{'sum of the medians':<56}{sum(r['p50'] for r in analysis['segments']):>9.1f}")
    print("\nwhere the owning process spends each of its segments (self time, mean µs; >= 2 µs)")
    for segment, stages_ in analysis["inside"].items():
        shown = [f"{stage} {us:.0f}" for stage, us in stages_ if us >= 2]
        print(f"  {segment}:\n      " + ", ".join(shown))
    print("\nCPU per round trip by process, thread and stage (self time, µs; waits are waiting; >= 1 µs)")
    print(f"{'process':<10}{'thread':<14}{'stage':<40}{'mean':>9}{'p50':>9}")
    for row in analysis["cpu"]:
        if row["mean"] >= 1:
            print(f"{row['process']:<10}{row['thread']:<14}{row['stage']:<40}{row['mean']:>9.1f}{row['p50']:>9.1f}")
    busy: dict[str, float] = defaultdict(float)
    for row in analysis["cpu"]:
        if row["stage"] not in WAITS:
            busy[row["process"]] += row["mean"]
    print("busy (not waiting) per round trip: " + ", ".join(f"{p} {us:.0f} µs" for p, us in sorted(busy.items())))


def main(run: ModuleType, round_trips: int = 1000, repeats: int = 3, json_path: str | None = None) -> None:
    import sys

    latency: dict[str, list[dict[str, float]]] = defaultdict(list)
    spans: list[probes.Span] = []
    for repeat in range(repeats):
        print(f"repeat {repeat + 1}/{repeats} ...", file=sys.stderr, flush=True)
        for name, figures in measure_floor(round_trips).items():
            latency[name].append(figures)
        with run.ppe_system(2) as (executor, _first, _pids):
            latency["ProcessPoolExecutor"].append(_p50_p99(w2(executor, round_trips)))
        with run.plb_system(2) as (client, _first, _pids):
            latency["jupyter_plb"].append(_p50_p99(w2(client, round_trips)))
        with tempfile.TemporaryDirectory() as folder:
            latency["jupyter_plb, probed"].append(measure_probed(run, round_trips, folder))
            found = list(probes.read(folder))
            # each repeat's processes are new; keep their spans apart by renaming nothing: times differ
            spans.extend(found)
    analysis = analyse(spans)
    report(latency, analysis)
    if json_path:
        Path(json_path).write_text(json.dumps({"latency": latency, "stages": analysis}, indent=2))
