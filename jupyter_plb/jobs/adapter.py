"""The adapter: every ``interval`` seconds, look at the balancer and the scheduler, apply the policy.

One tick (:meth:`Adapter.step`) reads the balancer's snapshot (queue, hubs and the batch job each
hub runs in, from ``SLURM_JOB_ID``), asks the scheduler which of its jobs it still lists, lets
:class:`jupyter_plb.jobs.adapt.AdaptPolicy` decide, submits or retires jobs, and reports its job table
to the balancer, which shows it in the monitor and the Lab panel. ``plb slurm --adapt`` runs it in
the foreground; ``Client.adapt`` in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from jupyter_plb.errors import PlbError
from jupyter_plb.jobs.adapt import AdaptPolicy, Decision, JobState, JobView, QueueView

log = logging.getLogger(__name__)

#: Seconds a submitted job may be missing from the scheduler's list before it is forgotten.
SUBMIT_LAG = 15.0


class BalancerClient(Protocol):
    """What the adapter needs of a :class:`~jupyter_plb.client.Client`: the snapshot, and a way to
    report its job table (so the jobs layer never imports the client layer above it)."""

    def status(self) -> dict[str, Any]: ...

    def report_jobs(self, launcher: dict[str, Any]) -> None: ...


class JobSource(Protocol):
    """A batch scheduler the adapter takes hub jobs from (:class:`jupyter_plb.jobs.slurm.SlurmJobs`)."""

    kind: str

    @property
    def slots_per_job(self) -> int: ...

    def submit(self) -> str: ...

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState]: ...

    def retire(self, job_id: str, drain: bool) -> None: ...


@dataclass(slots=True)
class TrackedJob:
    """One job the adapter submitted, as last seen."""

    id: str
    submitted: float
    state: JobState = JobState.PENDING
    hubs: int = 0
    slots: int = 0
    busy: int = 0

    def view(self) -> JobView:
        return JobView(self.id, self.state, self.slots, self.busy)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state.value, "hubs": self.hubs, "slots": self.slots,
                "busy": self.busy}


def queue_view(snapshot: Mapping[str, Any]) -> QueueView:
    """The queue part of a balancer snapshot: queued tasks, the oldest wait, idle slots."""
    free = sum(
        1 for hub in snapshot.get("hubs", []) if hub.get("state") == "ok"
        for worker in hub.get("workers", []) if worker.get("state") == "idle"
    )
    oldest = max((q.get("max_wait", 0.0) for q in snapshot.get("queues", [])), default=0.0)
    return QueueView(int(snapshot.get("totals", {}).get("queued", 0)), float(oldest), free)


def hubs_by_job(snapshot: Mapping[str, Any]) -> dict[str, tuple[int, int, int]]:
    """Batch job id -> (hubs, worker slots, busy slots) of the hubs registered from it."""
    seen: dict[str, tuple[int, int, int]] = {}
    for hub in snapshot.get("hubs", []):
        job = hub.get("job")
        if not job or hub.get("state") == "lost":
            continue
        workers = hub.get("workers", [])
        busy = sum(1 for w in workers if w.get("state") == "busy")
        hubs, slots, running = seen.get(str(job), (0, 0, 0))
        seen[str(job)] = (hubs + 1, slots + len(workers), running + busy)
    return seen


class Adapter:
    """Scale a :class:`JobSource`'s hub jobs to the balancer's queue with an :class:`AdaptPolicy`."""

    def __init__(
        self,
        client: BalancerClient,
        source: JobSource,
        policy: AdaptPolicy,
        *,
        interval: float = 1.0,
        name: str | None = None,
        out: IO[str] | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.policy = policy
        self.interval = interval
        self.id = f"adapter-{secrets.token_hex(4)}"
        self.name = name or source.kind
        self.out = out
        self.jobs: dict[str, TrackedJob] = {}
        self.last: Decision = Decision()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- one tick --------------------------------------------------------------------------------
    def step(self, now: float | None = None) -> Decision:
        """Look, decide, act, report; returns what was decided."""
        with self._lock:
            now = time.monotonic() if now is None else now
            snapshot = self.client.status()
            self._refresh(now, snapshot)
            decision = self.policy.decide(now, queue_view(snapshot), [j.view() for j in self.jobs.values()])
            self._act(now, decision)
            self.last = decision
            self._report()
            return decision

    def _refresh(self, now: float, snapshot: Mapping[str, Any]) -> None:
        states = self.source.states(list(self.jobs))
        hubs = hubs_by_job(snapshot)
        for job in list(self.jobs.values()):
            state = states.get(job.id)
            if state is None:
                if now - job.submitted > SUBMIT_LAG or job.state is not JobState.PENDING:
                    self._say(f"job {job.id} ended")
                    del self.jobs[job.id]
                continue
            job.state = JobState.ENDING if job.id in self.policy.retired else state
            job.hubs, job.slots, job.busy = hubs.get(job.id, (0, 0, 0))

    def _act(self, now: float, decision: Decision) -> None:
        for _ in range(decision.submit):
            job_id = self.source.submit()
            self.jobs[job_id] = TrackedJob(job_id, now)
            self._say(f"submitted job {job_id} ({decision.reason})")
        for job_id in decision.retire:
            job = self.jobs[job_id]
            self.source.retire(job_id, drain=job.hubs > 0)
            job.state = JobState.ENDING
            self._say(f"retiring job {job_id} ({decision.reason})")

    # -- the balancer's view ---------------------------------------------------------------------
    def table(self, closed: bool = False) -> dict[str, Any]:
        """What the balancer shows: this launcher, its bounds and its jobs."""
        return {
            "id": self.id, "name": self.name, "kind": self.source.kind, "closed": closed,
            "minimum": self.policy.minimum, "maximum": self.policy.maximum,
            "slots_per_job": self.source.slots_per_job, "reason": self.last.reason,
            "jobs": [job.row() for job in self.jobs.values()],
        }

    def _report(self, closed: bool = False) -> None:
        with contextlib.suppress(PlbError):
            self.client.report_jobs(self.table(closed))

    def _say(self, text: str) -> None:
        if self.out is None:
            log.info("plb adapt: %s", text)
            return
        with contextlib.suppress(ValueError, OSError):
            print(f"plb adapt: {text}", file=self.out, flush=True)

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Tick every ``interval`` seconds until :meth:`stop`; a failed tick is logged, not fatal."""
        while not self._stop.is_set():
            try:
                self.step()
            except PlbError as exc:
                self._say(f"warning: {exc}")
            self._stop.wait(self.interval)

    def start(self) -> Adapter:
        """Run in a background thread; returns self."""
        self._thread = threading.Thread(target=self.run, name=self.id, daemon=True)
        self._thread.start()
        return self

    def stop(self, retire: bool = True, timeout: float = 60.0) -> None:
        """Stop ticking; with ``retire``, drain every job and wait (``timeout``) until Slurm lets them go."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            if retire:
                for job in self.jobs.values():
                    if job.state is not JobState.ENDING:
                        self.source.retire(job.id, drain=job.hubs > 0)
                        job.state = JobState.ENDING
                deadline = time.monotonic() + timeout
                while self.jobs and time.monotonic() < deadline:
                    states = self.source.states(list(self.jobs))
                    for job_id in [i for i in self.jobs if i not in states]:
                        del self.jobs[job_id]
                    self._report()
                    if self.jobs:
                        time.sleep(0.5)
                if self.jobs:
                    self._say(f"jobs {', '.join(self.jobs)} still listed after {timeout:g} s")
            self._report(closed=True)

    def __enter__(self) -> Adapter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def adapt_slurm(
    client: BalancerClient,
    minimum: int = 0,
    maximum: int = 1,
    *,
    connection_file: str | Path | None = None,
    target_wait: float = 2.0,
    idle_grace: float = 30.0,
    interval: float = 1.0,
    sbatch_options: Sequence[str] = (),
    out: IO[str] | None = None,
    **job: Any,
) -> Adapter:
    """Start an adapter of Slurm hub jobs in a thread; ``job`` holds :class:`BatchJob` fields."""
    from jupyter_plb.core import parameters
    from jupyter_plb.jobs.batch import BatchJob
    from jupyter_plb.jobs.slurm import SlurmJobs
    from jupyter_plb.transport import connection

    path = Path(connection_file) if connection_file else connection.resolve_path(parameters.load())
    source = SlurmJobs(BatchJob(connection_file=path, **job), sbatch_options)
    policy = AdaptPolicy(minimum, maximum, source.slots_per_job, target_wait, idle_grace)
    return Adapter(client, source, policy, interval=interval, out=out or sys.stdout).start()
