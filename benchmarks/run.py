"""Benchmarks: jupyter_plb against concurrent.futures.ProcessPoolExecutor on this machine, same run.

    python benchmarks/run.py [--repeats 3] [--quick] [--json out.json]

Each system runs in turn in this process tree with the same number of workers; figures are
medians over the repeats and ratios are to ProcessPoolExecutor measured in the same run. The
jupyter_plb balancer runs in its own process (as it does inside Jupyter) with a local hub.

W1  10,000 no-op tasks through map                      tasks/s
W2  1,000 sequential submit -> result                    p50 / p99 latency
W3  400 x sleep(10 ms) on 8 workers                      makespan / ideal
W4  200 tasks with a 1 MB bytes argument                 MB/s
W5  start balancer + hub with 2 workers -> first result  seconds
RSS idle memory of balancer + hub + 2 workers            MB
S   scheduler submit + dispatch cost per task, 1,000,000 queued vs 1,000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import probes  # noqa: E402
import workloads  # noqa: E402

from jupyter_plb.client import Client  # noqa: E402
from jupyter_plb.workers.spawn import start_local_hub, stop_process  # noqa: E402

MB = 1 << 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]
    return []


def warm_up(executor: Any, workers: int) -> None:
    """The same for every system: a few tasks on every worker, then a few one at a time."""
    list(executor.map(workloads.noop, range(workers * 4)))
    for _ in range(workers * 4):
        executor.submit(workloads.noop, 1).result()


# -- systems --------------------------------------------------------------------------------------
def _hub_process(conn: Path, workers: int, probe_dir: str | None) -> subprocess.Popen[bytes]:
    """The local hub, as ``start_local_hub`` starts it; through probed.py with ``probe_dir``."""
    if probe_dir is None:
        return start_local_hub(conn, workers, name="bench")
    return subprocess.Popen(
        [sys.executable, str(HERE / "probed.py"), "hub", "hub", "--connect", str(conn), "--workers", str(workers),
         "--name", "bench", "--local"],
        start_new_session=True,
    )


@contextlib.contextmanager
def plb_system(
    workers: int, journal: bool = True, probe_dir: str | None = None
) -> Iterator[tuple[Client, float, list[int]]]:
    """Balancer process + local hub; yields (client, seconds to first result, pids).

    With ``probe_dir``, the balancer, the hub and its workers record stage timings there (probes.py).
    """
    with tempfile.TemporaryDirectory() as tmp:
        conn = Path(tmp) / "plb-connection.json"
        params = Path(tmp) / "parameters.json"
        params.write_text(json.dumps({
            "LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0, "LB_JOURNAL": "auto" if journal else False,
        }))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
        command = [sys.executable, "-m", "jupyter_plb"]
        if probe_dir is not None:
            env[probes.ENV] = probe_dir
            command = [sys.executable, str(HERE / "probed.py"), "balancer"]
        started = time.perf_counter()
        balancer = subprocess.Popen(
            [*command, "start",
             "-p", str(params), "--connection-file", str(conn), "--no-monitor"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        hub = None
        try:
            while not conn.exists():
                if balancer.poll() is not None:
                    raise RuntimeError("the balancer process exited")
                time.sleep(0.005)
            saved = {key: os.environ.get(key) for key in ("PYTHONPATH", probes.ENV)}
            os.environ.update({key: env[key] for key in saved if key in env})
            hub = _hub_process(conn, workers, probe_dir)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            client = Client(connection_file=conn, user="bench")
            client.submit(workloads.noop, 1).result(timeout=60)
            first = time.perf_counter() - started
            while sum(len(h["workers"]) for h in client.hubs()) < workers:
                time.sleep(0.01)
            warm_up(client, workers)
            pids = [balancer.pid, hub.pid, *children(hub.pid)]
            yield client, first, pids
            client.shutdown()
        finally:
            if hub is not None:
                stop_process(hub)
            stop_process(balancer)


@contextlib.contextmanager
def ppe_system(workers: int) -> Iterator[tuple[concurrent.futures.ProcessPoolExecutor, float, list[int]]]:
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(workers) as executor:
        executor.submit(workloads.noop, 1).result()
        first = time.perf_counter() - started
        warm_up(executor, workers)
        pids = [os.getpid(), *(p.pid for p in executor._processes.values())]
        yield executor, first, pids


# -- workloads -----------------------------------------------------------------------------------
def w1_map(executor: Any, n: int) -> float:
    started = time.perf_counter()
    results = list(executor.map(workloads.noop, range(n)))
    elapsed = time.perf_counter() - started
    assert results[-1] == n - 1
    return n / elapsed


def w2_latency(executor: Any, n: int) -> tuple[float, float]:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        executor.submit(workloads.noop, i).result()
        latencies.append(time.perf_counter() - started)
    return percentile(latencies, 0.5) * 1e6, percentile(latencies, 0.99) * 1e6


def w3_makespan(executor: Any, n: int, workers: int) -> float:
    started = time.perf_counter()
    futures = [executor.submit(workloads.sleep_10ms) for _ in range(n)]
    for f in futures:
        f.result()
    return (time.perf_counter() - started) / (n * 0.01 / workers)


def w4_bandwidth(executor: Any, n: int) -> float:
    payload = os.urandom(MB)
    started = time.perf_counter()
    futures = [executor.submit(workloads.size_of, payload) for _ in range(n)]
    assert all(f.result() == MB for f in futures)
    return n / (time.perf_counter() - started)


def scheduler_cost(queued: int, measured: int = 20_000, rounds: int = 3) -> tuple[float, float]:
    """µs per submit and per dispatch (+release) of the pure policy with ``queued`` tasks waiting.

    Each is the best of ``rounds`` rounds of ``measured`` operations (as ``timeit`` does), so a
    burst of other work on the machine does not decide the ratio.
    """
    from jupyter_plb.core.scheduler import Scheduler
    from jupyter_plb.core.tasks import Task

    scheduler = Scheduler(max_queued_per_user=0)
    for i in range(queued):
        scheduler.submit(Task(id=f"q{i}", user=f"u{i % 8}", priority=0, name="f", route=None))
    scheduler.add_slot("w", "hub", 0, 10, frozenset())
    submit = dispatch = float("inf")
    for round_ in range(rounds):
        extra = [Task(id=f"m{round_}-{i}", user=f"u{i % 8}", priority=0, name="f", route=None) for i in range(measured)]
        gc.collect()
        started = time.perf_counter()
        for task in extra:
            scheduler.submit(task)
        submit = min(submit, (time.perf_counter() - started) / measured)
        started = time.perf_counter()
        for _ in range(measured):
            (slot, task), = scheduler.dispatch()
            scheduler.release(slot.id, task.id)
        dispatch = min(dispatch, (time.perf_counter() - started) / measured)
    return submit * 1e6, dispatch * 1e6


# -- driver --------------------------------------------------------------------------------------
def measure(system: Callable[[int], Any], sizes: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    with system(2) as (executor, first, pids):
        out["W5 first result s"] = first
        gc.collect()
        out["RSS idle MB"] = rss_mb(pids)
        out["W1 map tasks/s"] = w1_map(executor, sizes["w1"])
        p50, p99 = w2_latency(executor, sizes["w2"])
        out["W2 p50 us"], out["W2 p99 us"] = p50, p99
        out["W4 MB/s"] = w4_bandwidth(executor, sizes["w4"])
    with system(8) as (executor, _first, _pids):
        out["W3 makespan/ideal"] = w3_makespan(executor, sizes["w3"], 8)
    if system is plb_system:
        with plb_system(2, journal=False) as (executor, _first, _pids):
            out["W1 no journal tasks/s"] = w1_map(executor, sizes["w1"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--profile", action="store_true",
                        help="W2 only: where a round trip's time goes, per process and stage (stages.py)")
    args = parser.parse_args()
    if args.profile:
        import stages

        stages.main(sys.modules[__name__], round_trips=100 if args.quick else 1000, repeats=args.repeats,
                    json_path=args.json)
        return
    sizes = {"w1": 10_000, "w2": 1_000, "w3": 400, "w4": 200}
    if args.quick:
        sizes = {"w1": 1_000, "w2": 100, "w3": 80, "w4": 20}
    systems = {"jupyter_plb": plb_system, "ProcessPoolExecutor": ppe_system}
    raw: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    for repeat in range(args.repeats):
        for name, system in systems.items():
            print(f"repeat {repeat + 1}/{args.repeats}: {name} ...", file=sys.stderr, flush=True)
            raw[name].append(measure(system, sizes))
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in raw.items()}
    plb, ppe = medians["jupyter_plb"], medians["ProcessPoolExecutor"]
    higher_is_better = {"W1 map tasks/s", "W4 MB/s"}
    print(f"\nmedians of {args.repeats} repeats, 2 workers (W3: 8), {os.cpu_count()} cores")
    print(f"{'metric':<22}{'jupyter_plb':>14}{'PPE':>14}{'ratio':>10}")
    for key in ppe:
        ratio = plb[key] / ppe[key] if ppe[key] else float("nan")
        note = " (higher is better)" if key in higher_is_better else ""
        print(f"{key:<22}{plb[key]:>14.2f}{ppe[key]:>14.2f}{ratio:>9.2f}x{note}")
    journal_cost = plb["W1 map tasks/s"] / plb["W1 no journal tasks/s"]
    print(f"journal: W1 with the SQLite journal runs at {journal_cost:.2f}x the speed without it")
    small = scheduler_cost(1_000)
    large = scheduler_cost(1_000_000)
    print(f"\nscheduler cost per task (µs), 1,000 queued: submit {small[0]:.2f}, dispatch {small[1]:.2f}")
    print(f"scheduler cost per task (µs), 1,000,000 queued: submit {large[0]:.2f}, dispatch {large[1]:.2f}")
    print(f"ratio 1M / 1k: submit {large[0] / small[0]:.2f}x, dispatch {large[1] / small[1]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"raw": raw, "medians": medians,
                                               "scheduler": {"1k": small, "1M": large}}, indent=2))


if __name__ == "__main__":
    main()
