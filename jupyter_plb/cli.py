"""The ``plb`` command: start a balancer, a hub, the demo; show status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, parameters
from .errors import PlbError


def _parameters(args: argparse.Namespace) -> parameters.Parameters:
    return parameters.load(args.parameters) if args.parameters else parameters.load()


def cmd_start(args: argparse.Namespace) -> int:
    from .launch import startAll

    params = _parameters(args)
    cluster = startAll(params, monitor=not args.no_monitor, connection_file=args.connection_file)
    print(f"balancer {cluster.balancer.id} running; connection file: {cluster.connection_file}")
    print(f"start hubs elsewhere with: plb hub --connect {cluster.connection_file}")
    if cluster.monitor_url:
        print(f"monitor: {cluster.monitor_url}")
    if args.workers:
        cluster.start_hub(args.workers)
    sys.stdout.flush()
    cluster.wait()
    return 0


def cmd_hub(args: argparse.Namespace) -> int:
    from .hub import WorkerHub, load_tasks

    params = _parameters(args)
    hub = WorkerHub(
        params if args.parameters else None,
        connection_file=args.connect,
        workers=args.workers,
        name=args.name,
        local=args.local,
    )
    for spec in args.tasks:
        for name, fn in load_tasks(spec).items():
            hub.addTask(name, fn)
    hub.startWKHUB()
    return 0


def _square(x: float) -> float:
    return x * x


def cmd_demo(args: argparse.Namespace) -> int:
    """Balancer + health check + monitor + a local hub, then a few hundred tasks with a progress bar."""
    from .client import Client
    from .display import ProgressLine
    from .launch import startAll

    os.environ.setdefault("PLB_USER", "demo")
    params = _parameters(args) if args.parameters else parameters.load(
        LB_CLIENTPULLPORT=0, LB_WKPULLPORT=0, LB_HCREPPORT=0, MONITOR_PORT=0
    )
    runtime = Path(args.connection_file) if args.connection_file else None
    started = time.perf_counter()
    with startAll(params, connection_file=runtime) as cluster:
        print(f"balancer {cluster.balancer.id} started; connection file {cluster.connection_file}")
        if cluster.monitor_url:
            print(f"monitor: {cluster.monitor_url}")
        cluster.start_hub(args.workers, name="demo-hub")
        with Client(connection_file=cluster.connection_file) as client:
            first = client.submit(_square, 3).result(timeout=60)
            print(f"first result {first} after {time.perf_counter() - started:.2f} s")
            futures = list(client.map_futures(_square, range(args.tasks)))
            ProgressLine(futures, label=f"{args.tasks} tasks").run()
            results = [f.result() for f in futures]
            print(f"sum of squares 0..{args.tasks - 1} = {sum(results)} (expected "
                  f"{sum(i * i for i in range(args.tasks))})")
            status = client.status()
            print(f"done {status['totals']['done']}, failed {status['totals']['failed']}, "
                  f"workers {sum(len(h['workers']) for h in status['hubs'])}")
            if args.keep_running:
                print("running; Ctrl-C stops")
                cluster.wait()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .client import Client

    with Client(connection_file=args.connect) as client:
        status: dict[str, Any] = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    totals = status["totals"]
    print(f"balancer {status['balancer']['id']} up {status['balancer']['uptime']:.0f} s, "
          f"health {status['health']['status']}")
    print("  " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    for hub in status["hubs"]:
        busy = sum(w["state"] == "busy" for w in hub["workers"])
        print(f"  hub {hub['name']} ({hub['host']}) {hub['state']}: {len(hub['workers'])} workers, {busy} busy")
    for user in status["users"]:
        print(f"  user {user['user']}: queued {user['queued']}, running {user['running']}, done {user['done']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plb", description="jupyter_plb: a load balancer for Python tasks.")
    parser.add_argument("--version", action="version", version=f"jupyter_plb {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="run the balancer, the health check and the monitor")
    start.add_argument("--parameters", "-p", help="parameters.json (seed keys)")
    start.add_argument("--connection-file", help="where to write plb-connection.json")
    start.add_argument("--no-monitor", action="store_true", help="do not serve the monitor page")
    start.add_argument("--workers", type=int, default=0, help="also start a local hub with N workers")
    start.set_defaults(func=cmd_start)

    hub = sub.add_parser("hub", help="run a worker hub (on this or another machine)")
    hub.add_argument("--connect", "-c", help="the balancer's plb-connection.json")
    hub.add_argument("--parameters", "-p", help="parameters.json: WKHUB_WORKERS groups, LB_IP, ports")
    hub.add_argument("--workers", "-n", type=int, help="N workers taking any priority (default: WKHUB_WORKERS)")
    hub.add_argument("--tasks", "-t", action="append", default=[], metavar="MODULE:ATTR",
                     help="named tasks to offer: a dict name -> function, or a function")
    hub.add_argument("--name", help="hub name shown in the monitor (default host:pid)")
    hub.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    hub.set_defaults(func=cmd_hub)

    demo = sub.add_parser("demo", help="start everything locally and run tasks")
    demo.add_argument("--parameters", "-p", help="parameters.json")
    demo.add_argument("--connection-file", help="where to write plb-connection.json")
    demo.add_argument("--tasks", type=int, default=400, help="how many tasks (default 400)")
    demo.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    demo.add_argument("--keep-running", action="store_true", help="keep serving the monitor afterwards")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="show the balancer's state")
    status.add_argument("--connect", "-c", help="plb-connection.json (default: $PLB_CONNECTION_FILE or the runtime dir)")
    status.add_argument("--json", action="store_true", help="print the raw snapshot")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        code = args.func(args)
    except PlbError as exc:
        print(f"plb: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
