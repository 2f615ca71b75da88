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

from jupyter_plb.core import parameters
from jupyter_plb.core.versions import package_version
from jupyter_plb.errors import PlbError


def _parameters(args: argparse.Namespace) -> parameters.Parameters:
    return parameters.load(args.parameters) if args.parameters else parameters.load()


#: ``--workers`` without a number, or ``--workers auto``: one worker per CPU this process may use.
AUTO = "auto"


def _worker_count(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of workers or 'auto' is needed, got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError("the number of workers must be >= 0")
    return count


def _workers(value: int | str | None) -> int | None:
    """A ``--workers`` value as a count: ``auto`` is the CPUs this process may use (resources.py)."""
    from jupyter_plb.workers.resources import usable_cpus

    if value == AUTO:
        return usable_cpus()
    return value if isinstance(value, int) else None


def cmd_start(args: argparse.Namespace) -> int:
    from jupyter_plb.cluster.launch import startAll

    params = _parameters(args)
    addresses = {"LB_BIND_IP": args.bind, "LB_IP": args.advertise}
    if any(addresses.values()):
        params = parameters.validate(
            {**params, **{k: v for k, v in addresses.items() if v}}, "plb start"
        )
    if args.team:
        admins = sorted({*params["LB_TEAM_ADMINS"], *args.admin})
        params = parameters.validate({**params, "LB_TEAM": True, "LB_TEAM_ADMINS": admins}, "plb start --team")
    cluster = startAll(params, monitor=not args.no_monitor, connection_file=args.connection_file)
    print(f"balancer {cluster.balancer.id} running; connection file: {cluster.connection_file}")
    print(f"start hubs elsewhere with: plb hub --connect {cluster.connection_file}")
    workers = _workers(args.workers)
    if workers:
        cluster.start_hub(workers)
    sys.stdout.flush()
    cluster.wait()
    return 0


def cmd_hub(args: argparse.Namespace) -> int:
    from jupyter_plb.workers.hub import WorkerHub, load_tasks, parse_size

    params = _parameters(args)
    hub = WorkerHub(
        params if args.parameters else None,
        connection_file=args.connect,
        workers=_workers(args.workers),
        name=args.name,
        local=args.local,
        max_tasks_per_worker=args.max_tasks_per_worker,
        memory_limit=parse_size(args.memory_limit) if args.memory_limit else 0,
        grace=args.grace,
        exit_with_stdin=args.exit_with_stdin,
        setup=args.setup,
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
    from jupyter_plb.client.display import ProgressLine
    from jupyter_plb.client.executor import Client
    from jupyter_plb.cluster.launch import startAll

    os.environ.setdefault("PLB_USER", "demo")
    params = _parameters(args) if args.parameters else parameters.load(
        LB_CLIENTPULLPORT=0, LB_WKPULLPORT=0, LB_HCREPPORT=0, MONITOR_PORT=0
    )
    runtime = Path(args.connection_file) if args.connection_file else None
    started = time.perf_counter()
    with startAll(params, connection_file=runtime) as cluster:
        print(f"balancer {cluster.balancer.id} started; connection file {cluster.connection_file}")
        cluster.start_hub(_workers(args.workers) or 1, name="demo-hub")
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
    import warnings

    from jupyter_plb.client.executor import Client
    from jupyter_plb.core.versions import skew
    from jupyter_plb.errors import VersionSkewWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VersionSkewWarning)  # said below, next to the hub
        client = Client(connection_file=args.connect)
    with client:
        status: dict[str, Any] = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    totals = status["totals"]
    print(f"balancer {status['balancer']['id']} up {status['balancer']['uptime']:.0f} s, "
          f"health {status['health']['status']}")
    print("  " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    for hub in status["hubs"]:
        print(f"  hub {hub['name']} ({hub['host']}) {hub['state']}: {len(hub['workers'])} workers, {hub['busy']} busy")
        if (difference := skew(hub)) is not None:
            print(f"    warning: {difference}")
    for user in status["users"]:
        print(f"  user {user['user']}: queued {user['queued']}, running {user['running']}, done {user['done']}")
    return 0


def _connection_path(args: argparse.Namespace) -> Path:
    from jupyter_plb.transport.connection import resolve_path

    return Path(args.connect) if args.connect else resolve_path(parameters.load())


def _hub_options(args: argparse.Namespace) -> Any:
    from jupyter_plb.jobs.batch import HubOptions

    return HubOptions(
        workers=getattr(args, "workers", None), tasks=args.tasks, grace=args.grace,
        memory_limit=args.memory_limit, max_tasks_per_worker=args.max_tasks_per_worker,
        setup=args.setup,
    )


def cmd_ssh(args: argparse.Namespace) -> int:
    """Start a hub on each host over ssh; stream their output; Ctrl-C drains and stops them."""
    import signal

    from jupyter_plb.cluster.ssh import SSHLauncher

    ssh_options = [part for option in args.ssh_option for part in ("-o", option)]
    if args.ssh_config:
        ssh_options += ["-F", args.ssh_config]
    launcher = SSHLauncher(
        args.hosts, _connection_path(args), _hub_options(args),
        ssh_options=ssh_options, remote_command=args.remote_command, remote_dir=args.remote_dir,
    )

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    failures = 0
    try:
        launcher.start()
        if args.register_timeout > 0:
            try:
                launcher.wait_registered(args.register_timeout)
            except PlbError as exc:
                print(f"plb ssh: cannot ask the balancer which hubs registered: {exc}", file=sys.stderr)
        failures = launcher.wait()
    except KeyboardInterrupt:
        print("plb ssh: stopping the hubs: running tasks finish first (Ctrl-C again to cut them)",
              flush=True)
        try:
            launcher.stop()
        except KeyboardInterrupt:
            launcher.stop(timeout=0)
    finally:
        launcher.stop(timeout=0)
    return 1 if failures else 0


def _batch_job(args: argparse.Namespace) -> Any:
    from jupyter_plb.jobs.batch import BatchJob

    return BatchJob(
        connection_file=_connection_path(args), nodes=args.nodes,
        workers_per_node=args.workers_per_node, time=args.time, queue=args.queue,
        account=args.account, job_name=args.job_name, plb_command=args.plb_command,
        options=_hub_options(args), directives=args.directive,
    )


def cmd_slurm(args: argparse.Namespace) -> int:
    from jupyter_plb.jobs.batch import slurm_script, submit_slurm

    job = _batch_job(args)
    if args.dry_run:
        print(slurm_script(job), end="")
        return 0
    if args.adapt:
        return _adapt_slurm(args, job)
    job_id = submit_slurm(job)
    print(f"submitted Slurm job {job_id}: {job.nodes} hub(s) of {job.workers_per_node} worker(s); "
          f"`scancel {job_id}` drains and stops them")
    return 0


def _adapt_slurm(args: argparse.Namespace, job: Any) -> int:
    """Run the adapter in the foreground; Ctrl-C or SIGTERM drains every job it started."""
    import signal

    from jupyter_plb.client.executor import Client
    from jupyter_plb.jobs.adapt import AdaptPolicy
    from jupyter_plb.jobs.adapter import Adapter
    from jupyter_plb.jobs.slurm import SlurmJobs

    source = SlurmJobs(job)
    try:
        policy = AdaptPolicy(args.minimum, args.maximum, source.slots_per_job, args.target_wait, args.idle_grace)
    except ValueError as exc:
        raise PlbError(f"--minimum/--maximum/--target-wait/--idle-grace: {exc}") from None

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with Client(connection_file=job.connection_file, user="plb-adapt") as client:
        adapter = Adapter(client, source, policy, interval=args.interval, out=sys.stdout)
        print(f"plb adapt: {args.minimum} to {args.maximum} Slurm job(s) of {job.nodes} hub(s) x "
              f"{job.workers_per_node} worker(s); Ctrl-C drains them and stops", flush=True)
        try:
            adapter.run()
        except KeyboardInterrupt:
            print("plb adapt: stopping: draining every job (running tasks finish first)", flush=True)
        finally:
            adapter.stop(timeout=job.grace + 30)
    return 0


def cmd_pbs(args: argparse.Namespace) -> int:
    from jupyter_plb.jobs.batch import pbs_script, submit_pbs

    job = _batch_job(args)
    if args.dry_run:
        print(pbs_script(job, args.flavor), end="")
        return 0
    job_id = submit_pbs(job, args.flavor)
    print(f"submitted PBS job {job_id}: {job.nodes} hub(s) of {job.workers_per_node} worker(s); "
          f"`qdel {job_id}` drains and stops them")
    return 0


def _add_remote_hub_options(p: argparse.ArgumentParser) -> None:
    """The ``plb hub`` options a launcher passes on to the hubs it starts."""
    p.add_argument("--connect", "-c",
                   help="the balancer's plb-connection.json (default: $PLB_CONNECTION_FILE or "
                        "the Jupyter runtime dir)")
    p.add_argument("--tasks", "-t", action="append", default=[], metavar="MODULE:ATTR",
                   help="named tasks the hubs offer (importable on the remote side)")
    p.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                   help="seconds running tasks get when a hub is stopped (default 30)")
    p.add_argument("--memory-limit", metavar="SIZE", help="resident memory per worker, e.g. 2G")
    p.add_argument("--max-tasks-per-worker", type=int, default=0, metavar="N",
                   help="replace a worker after N tasks")
    p.add_argument("--setup", metavar="MODULE:FUNCTION",
                   help="call FUNCTION() in each new worker of the hubs before it takes tasks "
                        "(importable on the remote side)")


def _add_batch_options(p: argparse.ArgumentParser, queue_flag: str, time_flag: str) -> None:
    _add_remote_hub_options(p)
    p.add_argument("--nodes", type=int, default=1, help="nodes, one hub on each (default 1)")
    p.add_argument("--workers-per-node", type=int, default=1, metavar="N",
                   help="workers per hub (default 1)")
    p.add_argument(time_flag, "--time", dest="time", metavar="HH:MM:SS", help="time limit")
    p.add_argument(queue_flag, dest="queue", help="queue (partition) to submit to")
    p.add_argument("--account", help="account to charge")
    p.add_argument("--job-name", default="plb-hubs", help="job name (default plb-hubs)")
    p.add_argument("--plb-command", default="plb",
                   help="how the nodes run plb, e.g. ~/venv/bin/plb (default plb)")
    p.add_argument("--directive", action="append", default=[], metavar="TEXT",
                   help="an extra scheduler directive line, e.g. --directive=--qos=long")
    p.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")


def cmd_keygen(args: argparse.Namespace) -> int:
    """CurveZMQ certificates: the balancer's, this machine's client and hub, and named ones."""
    from jupyter_plb.transport.security import keygen, resolve_dir

    params = _parameters(args)
    directory = Path(args.dir).expanduser() if args.dir else resolve_dir(params)
    report = keygen(directory, clients=args.client, hubs=args.hub, user=args.user, force=args.force)
    print("\n".join(report.lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plb", description="jupyter_plb: a load balancer for Python tasks.")
    parser.add_argument("--version", action="version", version=f"jupyter_plb {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="run the balancer, the health check and the monitor")
    start.add_argument("--parameters", "-p", help="parameters.json (seed keys)")
    start.add_argument("--connection-file", help="where to write plb-connection.json")
    start.add_argument("--no-monitor", action="store_true", help="do not serve the monitor page")
    start.add_argument("--workers", type=_worker_count, nargs="?", const=AUTO, default=0, metavar="N",
                       help="also start a local hub with N workers (without N: one per CPU this "
                            "process may use, counting its CPU affinity and cgroup quota)")
    start.add_argument("--team", action="store_true",
                       help="a team pool: CurveZMQ on, each user known by their certificate "
                       "(plb keygen --client NAME) and limited to their own tasks (docs/team.md)")
    start.add_argument("--admin", action="append", default=[], metavar="USER",
                       help="with --team: a user who sees and cancels every task (LB_TEAM_ADMINS)")
    start.add_argument("--bind", metavar="ADDRESS",
                       help="interface the balancer listens on, e.g. 0.0.0.0 (LB_BIND_IP; "
                            "default: the advertised address)")
    start.add_argument("--advertise", metavar="HOST",
                       help="address hubs and clients on other machines use to reach the balancer, "
                            "written to the connection file (LB_IP)")
    start.set_defaults(func=cmd_start)

    hub = sub.add_parser("hub", help="run a worker hub (on this or another machine)")
    hub.add_argument("--connect", "-c", help="the balancer's plb-connection.json")
    hub.add_argument("--parameters", "-p", help="parameters.json: WKHUB_WORKERS groups, LB_IP, ports")
    hub.add_argument("--workers", "-n", type=_worker_count, nargs="?", const=AUTO, metavar="N",
                     help="N workers taking any priority; without N (or 'auto'): one per CPU this "
                          "process may use (affinity, cgroup quota) (default: WKHUB_WORKERS)")
    hub.add_argument("--tasks", "-t", action="append", default=[], metavar="MODULE:ATTR",
                     help="named tasks to offer: a dict name -> function, or a function")
    hub.add_argument("--name", help="hub name shown in the monitor (default host:pid)")
    hub.add_argument("--max-tasks-per-worker", type=int, default=0, metavar="N",
                     help="replace a worker by a fresh one after N tasks (default: never)")
    hub.add_argument("--memory-limit", metavar="SIZE",
                     help="resident memory per worker, e.g. 2G; a worker over it is killed and replaced, "
                          "its task fails with WorkerMemoryExceeded")
    hub.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                     help="on SIGTERM or Ctrl-C, running tasks get this long to finish before they "
                          "are handed back (default 30; a second signal stops at once)")
    hub.add_argument("--exit-with-stdin", action="store_true",
                     help="drain and exit when standard input closes (used by plb ssh)")
    hub.add_argument("--setup", metavar="MODULE:FUNCTION",
                     help="call FUNCTION() in each new worker before it takes tasks (imports, data)")
    hub.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    hub.set_defaults(func=cmd_hub)

    demo = sub.add_parser("demo", help="start everything locally and run tasks")
    demo.add_argument("--parameters", "-p", help="parameters.json")
    demo.add_argument("--connection-file", help="where to write plb-connection.json")
    demo.add_argument("--tasks", type=int, default=400, help="how many tasks (default 400)")
    demo.add_argument("--workers", type=_worker_count, default=AUTO, metavar="N",
                      help="local workers (default: one per CPU this process may use)")
    demo.add_argument("--keep-running", action="store_true", help="keep serving the monitor afterwards")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="show the balancer's state")
    status.add_argument(
        "--connect", "-c", help="plb-connection.json (default: $PLB_CONNECTION_FILE or the runtime dir)"
    )
    status.add_argument("--json", action="store_true", help="print the raw snapshot")
    status.set_defaults(func=cmd_status)

    ssh = sub.add_parser("ssh", help="start hubs on other machines over ssh (Ctrl-C stops them)")
    ssh.add_argument("hosts", nargs="+", metavar="HOST", help="[user@]host, one hub on each")
    ssh.add_argument("--workers", "-n", type=int, help="workers per hub (default: WKHUB_WORKERS there)")
    _add_remote_hub_options(ssh)
    ssh.add_argument("--ssh-option", "-o", action="append", default=[], metavar="OPTION",
                     help="an ssh -o option for ssh and scp, e.g. -o Port=2222 (repeatable)")
    ssh.add_argument("--ssh-config", "-F", metavar="FILE", help="ssh configuration file")
    ssh.add_argument("--remote-command", default="plb",
                     help="how the hosts run plb, e.g. ~/venv/bin/plb (default plb)")
    ssh.add_argument("--remote-dir", default=".plb",
                     help="private directory for the connection file's copy on each host "
                          "(default ~/.plb)")
    ssh.add_argument("--register-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="warn about hubs not registered by then (0: do not check)")
    ssh.set_defaults(func=cmd_ssh)

    slurm = sub.add_parser("slurm", help="submit a Slurm job of hubs (--dry-run prints it)")
    _add_batch_options(slurm, "--partition", "--time-limit")
    scaling = slurm.add_argument_group("adaptive scaling (--adapt)")
    scaling.add_argument("--adapt", action="store_true",
                         help="stay in the foreground and submit or retire jobs as the queue needs")
    scaling.add_argument("--minimum", type=int, default=0, help="jobs kept at least (default 0)")
    scaling.add_argument("--maximum", type=int, default=1, help="jobs at most, pending ones included (default 1)")
    scaling.add_argument("--target-wait", type=float, default=2.0, metavar="SECONDS",
                         help="ask for jobs once a task waited this long with no free slot (default 2)")
    scaling.add_argument("--idle-grace", type=float, default=30.0, metavar="SECONDS",
                         help="retire a job whose hubs were idle this long (default 30)")
    scaling.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                         help="seconds between looks at the queue (default 1)")
    slurm.set_defaults(func=cmd_slurm)

    pbs = sub.add_parser("pbs", help="submit a PBS job of hubs (--dry-run prints it)")
    _add_batch_options(pbs, "--queue", "--walltime")
    pbs.add_argument("--flavor", choices=("pro", "torque"), default="pro",
                     help="PBS Pro / OpenPBS (select=, pbs_tmrsh) or Torque (nodes=, pbsdsh)")
    pbs.set_defaults(func=cmd_pbs)

    keys = sub.add_parser("keygen", help="make CurveZMQ certificates (server, clients, hubs)")
    keys.add_argument("--parameters", "-p", help="parameters.json (its LB_SECURITY_DIR)")
    keys.add_argument("--dir", help="security directory (default: LB_SECURITY_DIR, "
                                    "$PLB_SECURITY_DIR or the Jupyter data dir's plb_security)")
    keys.add_argument("--client", action="append", default=[], metavar="USER",
                      help="also make a certificate for client USER (its fairness user id)")
    keys.add_argument("--hub", action="append", default=[], metavar="NAME",
                      help="also make a certificate for a hub on another machine")
    keys.add_argument("--user", help="user id of this machine's client certificate (default: "
                                     "$PLB_USER, $JUPYTERHUB_USER or the login name)")
    keys.add_argument("--force", action="store_true",
                      help="replace existing certificates (the old keys stop working)")
    keys.set_defaults(func=cmd_keygen)
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
