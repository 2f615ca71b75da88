"""Does the Jupyter server stay responsive while the balancer it hosts is busy?

Starts a real ``jupyter server`` (the jupyter_plb extension, a local hub of 2 workers), sends
10,000 tasks through its balancer from a Client in this process, and meanwhile measures the
server's ``GET /api/status`` latency every few milliseconds. Prints p50/p99 (target p99 ≤ 100 ms)
and the task throughput. Run: ``python benchmarks/server_responsiveness.py [--tasks N]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_plb.client import Client  # noqa: E402

T = TypeVar("T")
TARGET_P99_MS = 100.0
PACE_S = 0.002


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Sampler(threading.Thread):
    """``GET /api/status`` on one keep-alive connection, every PACE_S, until stopped."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.headers = {"Authorization": f"token {token}"}
        self.latencies: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop_event.is_set():
            start = time.perf_counter()
            conn.request("GET", "/api/status", headers=self.headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            self.latencies.append(time.perf_counter() - start)
            self.stop_event.wait(PACE_S)
        conn.close()

    def measure(self) -> list[float]:
        self.stop_event.set()
        self.join()
        return self.latencies


def start_server(tmp: Path, port: int, token: str, workers: int) -> subprocess.Popen[bytes]:
    config_dir = tmp / "config"
    config_dir.mkdir()
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "ServerApp": {"jpserver_extensions": {"jupyter_plb": True}},
                "PlbExtension": {
                    "local_workers": workers,
                    "connection_file": str(tmp / "plb.json"),
                },
            }
        )
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(tmp / "server.log", "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--allow-root",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={tmp}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_until(condition: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except (OSError, http.client.HTTPException):
            pass
        threading.Event().wait(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def server_up(port: int, token: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    conn.request("GET", "/api/status", headers={"Authorization": f"token {token}"})
    return conn.getresponse().status == 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-samples", type=int, default=200)
    args = parser.parse_args()

    port, token = free_port(), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="plb-bench-") as name:
        tmp = Path(name)
        server = start_server(tmp, port, token, args.workers)
        try:
            wait_until(lambda: server_up(port, token), "the Jupyter server")
            connection_file = tmp / "plb.json"
            wait_until(connection_file.exists, "the connection file")
            with Client(connection_file=connection_file, user="bench") as client:
                wait_until(
                    lambda: sum(len(h["workers"]) for h in client.status()["hubs"]) == args.workers,
                    "the local hub's workers",
                )
                client.submit(abs, -1).result(60)

                idle = Sampler(port, token)
                idle.start()
                threading.Event().wait(1.0)
                idle_latencies = idle.measure()

                busy = Sampler(port, token)
                busy.start()
                done, rounds, elapsed = 0, 0, 0.0
                while rounds == 0 or len(busy.latencies) < args.min_samples:
                    start = time.perf_counter()
                    results = list(client.map(abs, range(-args.tasks, 0)))
                    elapsed += time.perf_counter() - start
                    assert results == list(range(args.tasks, 0, -1))
                    done += len(results)
                    rounds += 1
                latencies = busy.measure()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)

    ms = [x * 1000 for x in latencies]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    print(
        f"tasks: {done} in {elapsed:.2f} s ({rounds} round(s) of {args.tasks}) -> "
        f"{done / elapsed:,.0f} tasks/s with {args.workers} workers"
    )
    print(
        f"GET /api/status idle:  n={len(idle_latencies)} "
        f"p50={percentile([x * 1000 for x in idle_latencies], 50):.2f} ms"
    )
    print(
        f"GET /api/status busy:  n={len(ms)} p50={p50:.2f} ms p99={p99:.2f} ms "
        f"max={max(ms):.2f} ms mean={statistics.fmean(ms):.2f} ms"
    )
    verdict = "OK" if p99 <= TARGET_P99_MS else "ABOVE TARGET"
    print(f"p99 target {TARGET_P99_MS:.0f} ms: {verdict}")
    return 0 if p99 <= TARGET_P99_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
