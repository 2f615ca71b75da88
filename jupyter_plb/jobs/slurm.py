"""Slurm as a source of hub jobs for the adapter: ``sbatch`` to ask, ``squeue`` to look, ``scancel`` to give back.

Each job is the script of :func:`jupyter_plb.jobs.batch.slurm_script`: one hub per node. Retiring a
started job sends SIGTERM to its job steps only (``scancel --signal=TERM``), so its hubs drain
(running tasks finish within ``--grace``, the rest go back to the queue) and the job ends when they
exit; a pending job is simply cancelled.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from jupyter_plb.jobs.adapt import JobState
from jupyter_plb.jobs.batch import BatchJob, LaunchError, submit_slurm

log = logging.getLogger(__name__)

#: squeue's %T states, as the adapter sees them (anything else: ending).
STATES = {
    "PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING, "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING, "REQUEUE_FED": JobState.PENDING, "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING, "SUSPENDED": JobState.RUNNING, "RESIZING": JobState.RUNNING,
}
#: States in which a job no longer holds anything: the adapter forgets it.
GONE = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}


def _run(command: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise LaunchError(f"`{command[0]}` was not found on PATH: run this on the cluster's login node")
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`{command[0]}` did not answer within {timeout:g} s") from None


def parse_squeue(output: str) -> dict[str, JobState]:
    """``squeue -h -o '%i %T'`` lines -> job id -> state (finished jobs left out)."""
    states: dict[str, JobState] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] not in GONE:
            states[parts[0]] = STATES.get(parts[1], JobState.ENDING)
    return states


class SlurmJobs:
    """Submit, look at and retire jobs of hubs on a Slurm cluster."""

    kind = "slurm"

    def __init__(self, job: BatchJob, sbatch_options: Sequence[str] = ()) -> None:
        self.job = job
        self.sbatch_options = list(sbatch_options)
        self.user = pwd.getpwuid(os.getuid()).pw_name

    @property
    def slots_per_job(self) -> int:
        return self.job.nodes * self.job.workers_per_node

    def submit(self) -> str:
        return submit_slurm(self.job, self.sbatch_options)

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """The state of each of ``job_ids`` Slurm still lists (this user's jobs of this name)."""
        wanted = set(job_ids)
        if not wanted:
            return {}
        done = _run(["squeue", "-h", "-u", self.user, "-n", self.job.job_name, "-o", "%i %T"])
        if done.returncode != 0:
            raise LaunchError(f"squeue failed: {(done.stderr or done.stdout).strip()}")
        return {i: s for i, s in parse_squeue(done.stdout).items() if i in wanted}

    def retire(self, job_id: str, drain: bool) -> None:
        """Drain a job's registered hubs (SIGTERM to its steps), or cancel a job with none yet."""
        command = ["scancel", "--signal=TERM", job_id] if drain else ["scancel", job_id]
        done = _run(command)
        if done.returncode != 0:
            log.warning("plb adapt: %s failed: %s", " ".join(command), (done.stderr or done.stdout).strip())
