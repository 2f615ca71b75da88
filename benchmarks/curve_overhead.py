"""What CurveZMQ costs: throughput and latency of no-op tasks with Curve off and on, same machine.

    python benchmarks/curve_overhead.py [--tasks 5000] [--repeats 5] [--workers 2]

Two balancers run, each in its own process (``plb start --workers 2``: it starts a local hub with
2 workers), on loopback with free ports: one with ``LB_CURVE`` false, one with true (certificates
made in a temporary security directory). The client runs here; the repeats alternate between them.
Figures are medians over the repeats; the ratio is Curve on / Curve off. HMAC signing is on in both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import workloads  # noqa: E402

from jupyter_plb.client import Client  # noqa: E402
from jupyter_plb.transport import security  # noqa: E402
from jupyter_plb.workers.spawn import stop_process  # noqa: E402


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


@contextmanager
def balancer(curve: bool, workers: int) -> Iterator[Client]:
    """``plb start`` in a child process with a local hub; yields a connected client."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = Path(tmp) / "plb-connection.json"
        params = Path(tmp) / "parameters.json"
        values = {"LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0, "LB_CURVE": curve}
        if curve:
            values["LB_SECURITY_DIR"] = str(Path(tmp) / "security")
            security.keygen(values["LB_SECURITY_DIR"], user="bench")
        params.write_text(json.dumps(values))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_plb", "start",
             "-p", str(params), "--connection-file", str(conn), "--no-monitor",
             "--workers", str(workers)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not conn.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the balancer process did not start")
                time.sleep(0.01)
            client = Client(connection_file=conn, user=None if curve else "bench")
            try:
                while sum(len(h["workers"]) for h in client.hubs()) < workers:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the workers did not register")
                    time.sleep(0.01)
                assert bool(client.connection_info.curve_serverkey) == curve
                list(client.map(workloads.noop, range(200)))  # warm up: functions cached
                client.cluster_pid = process.pid  # type: ignore[attr-defined]
                yield client
            finally:
                client.shutdown(wait=False, cancel_futures=True)
        finally:
            stop_process(process)


def throughput(client: Client, tasks: int) -> tuple[float, float]:
    """Tasks per second, and CPU µs per task (balancer + hub + workers + this client)."""
    cpu = tree_cpu(client.cluster_pid) + time.process_time()  # type: ignore[attr-defined]
    started = time.perf_counter()
    results = list(client.map(workloads.noop, range(tasks)))
    elapsed = time.perf_counter() - started
    cpu = tree_cpu(client.cluster_pid) + time.process_time() - cpu  # type: ignore[attr-defined]
    assert results[-1] == tasks - 1
    return tasks / elapsed, cpu / tasks * 1e6


def latency_p50(client: Client, tasks: int = 300) -> float:
    times = []
    for i in range(tasks):
        started = time.perf_counter()
        client.submit(workloads.noop, i).result(timeout=30)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    figures: dict[bool, dict[str, float]] = {}
    # Both balancers run at once and the repeats alternate, so background load hits both alike.
    with balancer(False, args.workers) as plain, balancer(True, args.workers) as curved:
        clients = {False: plain, True: curved}
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for curve, client in clients.items():
                rate, cpu = throughput(client, args.tasks)
                rates[curve].append(rate)
                cpus[curve].append(cpu)
        for curve, client in clients.items():
            figures[curve] = {
                "tasks_per_s": statistics.median(rates[curve]),
                "min": min(rates[curve]),
                "max": max(rates[curve]),
                "cpu_us": statistics.median(cpus[curve]),
                "latency_p50_us": latency_p50(client),
            }
    print(f"{args.tasks} no-op tasks, {args.workers} workers, median of {args.repeats} "
          f"(balancer in its own process, loopback, HMAC always on)")
    for curve, f in figures.items():
        print(f"  Curve {'on ' if curve else 'off'}: {f['tasks_per_s']:8.0f} tasks/s "
              f"(min {f['min']:.0f}, max {f['max']:.0f}); CPU {f['cpu_us']:.0f} µs/task "
              f"(all processes); sequential latency p50 {f['latency_p50_us']:.0f} µs")
    on, off = figures[True], figures[False]
    print(f"  ratio on/off: throughput {on['tasks_per_s'] / off['tasks_per_s']:.2f}, "
          f"CPU per task {on['cpu_us'] / off['cpu_us']:.2f}, "
          f"latency {on['latency_p50_us'] / off['latency_p50_us']:.2f}")


if __name__ == "__main__":
    main()
