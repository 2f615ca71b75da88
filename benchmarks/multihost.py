"""Throughput with 2 hubs x 2 workers: on loopback vs across network namespaces ("machines").

    python benchmarks/multihost.py [--tasks 20000] [--repeats 3] [--json out.json]

Three set-ups, each a fresh balancer (``plb start``), two ``plb hub --workers 2`` and a client
process, every one its own process:

loopback    everything on 127.0.0.1 in this namespace (CurveZMQ off: loopback)
netns       balancer, hub 1 and hub 2 in three namespaces on a bridge (10.200.0.1/.2/.3),
            client beside the balancer; without CurveZMQ (LB_ALLOW_INSECURE), like loopback
netns+curve the same with CurveZMQ, as a balancer beyond loopback runs by default

The client runs ``map`` over no-op tasks (chunksize 1: one task per item) after a warm-up and
reports tasks/s; figures are medians over the repeats, ratios to loopback in the same run.
Needs root for the namespaces; without them only loopback is measured.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_plb.transport import security  # noqa: E402
from jupyter_plb.workers.spawn import stop_process  # noqa: E402
from tests.netns import NetnsUnavailable, Network  # noqa: E402

PLB = [sys.executable, "-m", "jupyter_plb"]

CLIENT = r'''
import json, sys, threading, time
from jupyter_plb.client import Client

def noop(x):
    return x

path, n = sys.argv[1], int(sys.argv[2])
pause = threading.Event()
with Client(connection_file=path) as c:
    deadline = time.monotonic() + 60
    while sum(len(h["workers"]) for h in c.status()["hubs"] if h["state"] == "ok") < 4:
        if time.monotonic() > deadline:
            raise SystemExit("4 workers did not register in 60 s")
        pause.wait(0.05)
    assert list(c.map(noop, range(500), timeout=120)) == list(range(500))  # warm-up
    started = time.perf_counter()
    assert list(c.map(noop, range(n), timeout=600)) == list(range(n))
    elapsed = time.perf_counter() - started
print(json.dumps({"tasks": n, "seconds": elapsed, "rate": n / elapsed}))
'''


def run_once(setup: str, tasks: int, folder: Path) -> float:
    """One measurement: start everything for ``setup``, run the client, stop everything."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLB_USER": "bench"}
    params: dict[str, Any] = {
        "LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0,
        "LB_QUEING_MAXPERUSER": 0, "LB_JOURNAL": False,
    }
    network = None
    if setup != "loopback":
        network = Network(["lb", "hub1", "hub2"])
        params["LB_IP"] = network["lb"].address
        if setup == "netns+curve":
            security.keygen(folder / "security", user="bench")
            params["LB_SECURITY_DIR"] = str(folder / "security")
        else:
            params.update(LB_CURVE=False, LB_ALLOW_INSECURE=True)
    (folder / "parameters.json").write_text(json.dumps(params))
    connection_file = folder / "plb-connection.json"
    connection_file.unlink(missing_ok=True)
    (folder / "client.py").write_text(CLIENT)
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(host: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        if network is not None:
            return network.spawn(host, argv, env=env, **kw)
        process = subprocess.Popen(argv, env=env, start_new_session=True, **kw)
        processes.append(process)
        return process

    log = open(folder / f"{setup}.log", "ab")  # noqa: SIM115
    try:
        spawn("lb", [*PLB, "start", "-p", str(folder / "parameters.json"), "--connection-file",
                     str(connection_file), "--no-monitor"], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not connection_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the balancer did not start; see {folder / (setup + '.log')}")
            time.sleep(0.05)
        for n in (1, 2):
            spawn(f"hub{n}", [*PLB, "hub", "--connect", str(connection_file), "--workers", "2",
                              "--name", f"hub-{n}", "--grace", "0"], stdout=log, stderr=log)
        client = spawn("lb", [sys.executable, str(folder / "client.py"), str(connection_file),
                              str(tasks)], stdout=subprocess.PIPE, stderr=log)
        out, _ = client.communicate(timeout=900)
        if client.returncode != 0:
            raise RuntimeError(f"the client failed; see {folder / (setup + '.log')}")
        return float(json.loads(out.decode().strip().splitlines()[-1])["rate"])
    finally:
        if network is not None:
            network.close()
        for process in processes:
            stop_process(process, timeout=10)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    setups = ["loopback", "netns", "netns+curve"]
    try:
        Network([]).close()
    except NetnsUnavailable as exc:
        print(f"network namespaces cannot be made here ({exc}): loopback only")
        setups = ["loopback"]
    rates: dict[str, list[float]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="plb-multihost-") as tmp:
        for repeat in range(args.repeats):
            for setup in setups:  # interleaved, so drift on a busy machine hits every set-up
                folder = Path(tmp) / f"{setup}-{repeat}"
                folder.mkdir()
                rates[setup].append(run_once(setup, args.tasks, folder))
    base = statistics.median(rates["loopback"])
    print(f"{args.tasks} no-op tasks, map(chunksize=1), 2 hubs x 2 workers, "
          f"{os.cpu_count()} cores, median of {args.repeats}")
    print(f"{'set-up':<12} {'tasks/s':>9} {'vs loopback':>12}   runs")
    report = {}
    for setup, values in rates.items():
        median = statistics.median(values)
        report[setup] = {"median": median, "runs": values, "ratio": median / base}
        runs = " ".join(f"{v:.0f}" for v in values)
        print(f"{setup:<12} {median:>9.0f} {median / base:>11.2f}x   {runs}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
