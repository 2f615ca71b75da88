"""Chaos: 3 hubs, thousands of tasks, workers SIGKILLed at random, a hub killed and replaced, the
balancer killed and restarted once. Every task must end exactly once: done with the right result,
or failed with a reason. Small in CI; ``pytest tests/chaos --big`` runs 20,000 tasks."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from jupyter_plb.client import Client
from jupyter_plb.errors import WorkerLost
from jupyter_plb.workers.spawn import start_local_hub, stop_process

from ..conftest import wait_for, worker_count


def chaos_task(x: int) -> int:
    time.sleep(0.004)
    return 2 * x


def worker_pids(hub_pid: int) -> list[int]:
    try:
        with open(f"/proc/{hub_pid}/task/{hub_pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.mark.timeout(600)
def test_every_task_ends_exactly_once(balancer_process, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    total = 20_000 if request.config.getoption("--big") else int(os.environ.get("PLB_CHAOS_TASKS", 3_000))
    rng = random.Random(1234)
    lb = balancer_process(LB_QUEING_MAXPERUSER=0)
    hubs = [start_local_hub(lb.connection_file, 2, name=f"chaos-{i}") for i in range(3)]
    stop = threading.Event()
    events: Counter[str] = Counter()

    def monkey() -> None:
        """SIGKILL a random worker every 0.2-0.5 s until the run is over."""
        while not stop.wait(0.2 + rng.random() * 0.3):
            victims = [pid for hub in hubs for pid in worker_pids(hub.pid)]
            if victims:
                try:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    events["workers killed"] += 1
                except ProcessLookupError:
                    pass

    try:
        with Client(connection_file=lb.connection_file, user="chaos") as client:
            wait_for(lambda: worker_count(client) == 6, what="6 workers")
            futures = [client.options(retries=3).submit(chaos_task, i) for i in range(total)]
            thread = threading.Thread(target=monkey, daemon=True)
            thread.start()

            def settled() -> int:
                return sum(f.done() for f in futures)

            wait_for(lambda: settled() > total * 0.3, timeout=120, what="30 % of the tasks")
            victim = hubs.pop(0)
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            hubs.append(start_local_hub(lb.connection_file, 2, name="chaos-replacement"))
            events["hubs killed and replaced"] += 1
            wait_for(lambda: settled() > total * 0.5, timeout=120, what="50 % of the tasks")
            lb.kill()
            lb.start()
            events["balancer restarts"] += 1
            outcomes: Counter[str] = Counter()
            for i, fut in enumerate(futures):
                try:
                    assert fut.result(timeout=300) == 2 * i
                    outcomes["done"] += 1
                except WorkerLost as exc:
                    assert "was lost" in str(exc)
                    outcomes["failed (worker lost 4 times)"] += 1
            stop.set()
            thread.join(30)
            assert sum(outcomes.values()) == total
            assert events["balancer restarts"] == 1 and events["hubs killed and replaced"] == 1
            print(f"\nchaos: {total} tasks -> {dict(outcomes)}; chaos events {dict(events)}")
    finally:
        stop.set()
        for hub in hubs:
            stop_process(hub)
