"""Hubs as Slurm and PBS batch jobs: the hub options every launcher shares, job scripts, submission.

Every launcher runs the same thing on the far side, ``plb hub --connect FILE``: a hub dials out to
the balancer's one worker port, registers, heartbeats, and drains on SIGTERM. So a hub started by
hand, by ``plb ssh`` or by a batch job behaves the same, and the monitor tells them apart by name
and host.

* :class:`~jupyter_plb.cluster.ssh.SSHLauncher` (``plb ssh HOST…``) starts the same hubs over SSH;
* :func:`slurm_script` and :func:`pbs_script` write a job script that starts one hub per node;
  :func:`submit` hands it to ``sbatch`` or ``qsub`` and returns the job id.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_plb.errors import PlbError
from jupyter_plb.transport import connection

log = logging.getLogger(__name__)

#: How ``plb`` is run on the far side unless told otherwise.
DEFAULT_PLB = "plb"


class LaunchError(PlbError):
    """A launcher could not start (or submit) hubs; the message says where and why."""


@dataclass(slots=True)
class HubOptions:
    """The ``plb hub`` options a launcher passes on to every hub it starts."""

    workers: int | None = None
    tasks: Sequence[str] = ()
    grace: float | None = None
    memory_limit: str | None = None
    max_tasks_per_worker: int | None = None
    #: ``MODULE:FUNCTION`` each new worker calls before it takes tasks (importable on the far side).
    setup: str | None = None

    def arguments(self) -> list[str]:
        args: list[str] = []
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        for spec in self.tasks:
            args += ["--tasks", spec]
        if self.grace is not None:
            args += ["--grace", f"{self.grace:g}"]
        if self.memory_limit:
            args += ["--memory-limit", str(self.memory_limit)]
        if self.max_tasks_per_worker:
            args += ["--max-tasks-per-worker", str(self.max_tasks_per_worker)]
        if self.setup:
            args += ["--setup", self.setup]
        return args


def loopback_warning(info: connection.ConnectionInfo, where: str) -> str | None:
    """A sentence when the connection file names an address other machines cannot reach."""
    try:
        loopback = ipaddress.ip_address(info.address).is_loopback
    except ValueError:
        loopback = info.address == "localhost"
    if not loopback:
        return None
    return (
        f"the connection file gives the balancer's address as {info.address}, which {where} "
        "cannot reach: start the balancer with `plb start --advertise HOST` (parameter LB_IP, "
        "with LB_BIND_IP for the interface it listens on)"
    )


# -- SSH -------------------------------------------------------------------------------------------


# -- batch schedulers ------------------------------------------------------------------------------
@dataclass(slots=True)
class BatchJob:
    """What a batch job of hubs needs: its shape, its limits, and the hubs' options."""

    connection_file: Path
    nodes: int = 1
    workers_per_node: int = 1
    time: str | None = None
    queue: str | None = None
    account: str | None = None
    job_name: str = "plb-hubs"
    plb_command: str = DEFAULT_PLB
    options: HubOptions = field(default_factory=HubOptions)
    directives: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.connection_file = Path(self.connection_file).expanduser().resolve()
        if self.nodes < 1 or self.workers_per_node < 1:
            raise LaunchError("--nodes and --workers-per-node must be at least 1")
        if self.time is not None and not re.fullmatch(r"[0-9:-]+", self.time):
            raise LaunchError(f"--time must look like 1:00:00 or 2-00:00:00, got {self.time!r}")
        named = ((self.queue, "queue"), (self.account, "account"), (self.job_name, "job name"))
        for value, what in named:
            if value is not None and not re.fullmatch(r"[\w.@+-]+", value):
                raise LaunchError(f"the {what} {value!r} has characters a job script cannot take")

    def hub_command(self, name: str) -> str:
        """The per-node ``plb hub`` command; ``name`` may hold shell variables (double-quoted)."""
        options = HubOptions(
            workers=self.workers_per_node,
            tasks=self.options.tasks,
            grace=self.options.grace,
            memory_limit=self.options.memory_limit,
            max_tasks_per_worker=self.options.max_tasks_per_worker,
            setup=self.options.setup,
        )
        args = shlex.join(["hub", "--connect", str(self.connection_file), *options.arguments()])
        return f'exec {self.plb_command} {args} --name "{name}"'

    @property
    def grace(self) -> float:
        return self.options.grace if self.options.grace is not None else 30.0

    def preamble(self) -> list[str]:
        path = shlex.quote(str(self.connection_file))
        return [
            "set -eu",
            f"if [ ! -r {path} ]; then",
            f'    echo "plb: {self.connection_file} is not readable on $(hostname): put the '
            'connection file on a filesystem the nodes share (it must stay mode 0600)" >&2',
            "    exit 1",
            "fi",
        ]


def _header(job: BatchJob, scheduler: str) -> list[str]:
    info = connection.read(job.connection_file)
    lines = [
        "#!/bin/bash",
        f"# jupyter_plb: one `plb hub` with {job.workers_per_node} worker(s) on each of "
        f"{job.nodes} node(s), for the balancer at {info.worker_url}.",
        f"# Written by `plb {scheduler}`; the hubs drain on SIGTERM (grace {job.grace:g} s).",
    ]
    warning = loopback_warning(info, "the compute nodes")
    if warning:
        lines.append(f"# WARNING: {warning}.")
    return lines


def slurm_script(job: BatchJob) -> str:
    """An ``sbatch`` script: one task per node, each a hub with ``workers_per_node`` workers.

    Slurm sends SIGTERM to the job steps ``grace + 30`` seconds before the time limit, so the hubs
    drain (finish running tasks, hand back the rest) before the job is killed.
    """
    directives = [
        f"--job-name={job.job_name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={job.workers_per_node}",
        f"--output={job.job_name}-%j.out",
        f"--signal=TERM@{int(job.grace) + 30}",
    ]
    if job.time:
        directives.append(f"--time={job.time}")
    if job.queue:
        directives.append(f"--partition={job.queue}")
    if job.account:
        directives.append(f"--account={job.account}")
    directives += list(job.directives)
    inner = job.hub_command("slurm-${SLURM_JOB_ID}-${SLURMD_NODENAME}")
    lines = [
        *_header(job, "slurm"),
        *(f"#SBATCH {d}" for d in directives),
        "",
        *job.preamble(),
        "",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=0 \\",
        f"    bash -c {shlex.quote(inner)}",
        "",
    ]
    return "\n".join(lines)


def pbs_script(job: BatchJob, flavor: str = "pro") -> str:
    """A ``qsub`` script: one hub per node. ``flavor``: ``pro`` (PBS Pro, OpenPBS) or ``torque``."""
    if flavor not in ("pro", "torque"):
        raise LaunchError(f"--flavor must be pro (PBS Pro, OpenPBS) or torque, got {flavor!r}")
    directives = [f"-N {job.job_name}", "-j oe"]
    if flavor == "pro":
        directives += [f"-l select={job.nodes}:ncpus={job.workers_per_node}", "-l place=scatter"]
    else:
        directives.append(f"-l nodes={job.nodes}:ppn={job.workers_per_node}")
    if job.time:
        directives.append(f"-l walltime={job.time}")
    if job.queue:
        directives.append(f"-q {job.queue}")
    if job.account:
        directives.append(f"-A {job.account}")
    directives += list(job.directives)
    inner = job.hub_command("pbs-${PBS_JOBID%%.*}-$(hostname -s)")
    if flavor == "pro":
        start = [
            'for node in $(sort -u "$PBS_NODEFILE"); do',
            f"    pbs_tmrsh \"$node\" /bin/bash -c {shlex.quote(inner)} &",
            "done",
        ]
    else:
        start = [f"pbsdsh -u /bin/bash -c {shlex.quote(inner)} &"]
    lines = [
        *_header(job, "pbs"),
        *(f"#PBS {d}" for d in directives),
        "",
        *job.preamble(),
        "",
        "# On qdel or at the walltime, PBS signals every task; pass SIGTERM on so the hubs drain.",
        "trap 'kill -TERM $(jobs -p) 2>/dev/null; wait' TERM",
        *start,
        "wait",
        "",
    ]
    return "\n".join(lines)


def submit(script: str, command: Sequence[str]) -> str:
    """Submit ``script`` on standard input with ``command`` (``sbatch``…); return the job id."""
    tool = command[0]
    if shutil.which(tool) is None:
        raise LaunchError(
            f"`{tool}` was not found on PATH: run this on the cluster's login node, or use "
            "--dry-run to print the script and submit it yourself"
        )
    try:
        done = subprocess.run(
            list(command), input=script, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`{tool}` did not answer within 120 s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise LaunchError(f"`{shlex.join(command)}` refused the job: {detail}")
    output = done.stdout.strip()
    match = re.search(r"(\d+(?:\.[\w.-]+)?)", output.split(";")[0]) if output else None
    if match is None:
        raise LaunchError(f"`{tool}` printed no job id: {output!r}")
    return match.group(1)


def submit_slurm(job: BatchJob, extra: Sequence[str] = ()) -> str:
    return submit(slurm_script(job), ["sbatch", "--parsable", *extra])


def submit_pbs(job: BatchJob, flavor: str = "pro", extra: Sequence[str] = ()) -> str:
    return submit(pbs_script(job, flavor), ["qsub", *extra])
