"""When to ask for hub jobs and when to give them back: the adaptive scaling policy.

Pure code: no clock, no socket, no scheduler command. :class:`AdaptPolicy` is told, at each tick,
the time, the balancer's queue (:class:`QueueView`) and the launcher's jobs (:class:`JobView`), and
answers with a :class:`Decision`: how many jobs to submit, which jobs to retire. The adapter
(:mod:`jupyter_plb.jobs.adapter`) does the I/O around it.

The rules:

* **Up**: when tasks are queued, the oldest has waited at least ``target_wait`` seconds and no
  worker slot is free, ask for enough jobs to give every queued task a slot, less the slots of the
  jobs already on their way (pending in the scheduler, or started but not registered yet).
* **Down**: a job whose hubs have run nothing, while nothing was queued, for ``idle_grace``
  seconds is retired (its hubs drain: nothing is lost); pending jobs go first.
* Never more than ``maximum`` jobs, counting the ones still leaving; never fewer than ``minimum``
  jobs that are not leaving.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


class JobState(enum.StrEnum):
    """Where a hub job is, in the scheduler's words."""

    PENDING = "pending"  # waiting in the scheduler's queue
    RUNNING = "running"  # started: its hubs register (or already did)
    ENDING = "ending"  # completing, or told to stop: leaving


@dataclass(frozen=True, slots=True)
class JobView:
    """One job of the launcher as seen now."""

    id: str
    state: JobState
    #: Worker slots of its registered hubs (0 before they register).
    slots: int = 0
    #: Of those, slots running a task.
    busy: int = 0

    @property
    def registered(self) -> bool:
        return self.slots > 0


@dataclass(frozen=True, slots=True)
class QueueView:
    """The balancer's queue as seen now (all hubs, not only the launcher's)."""

    queued: int = 0
    #: Seconds the oldest queued task has waited.
    oldest_wait: float = 0.0
    #: Idle worker slots on hubs that take tasks.
    free_slots: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now: submit this many jobs, retire these ones; ``reason`` says why."""

    submit: int = 0
    retire: tuple[str, ...] = ()
    reason: str = ""


@dataclass(slots=True)
class AdaptPolicy:
    """Adaptive scaling between ``minimum`` and ``maximum`` jobs of ``slots_per_job`` slots each."""

    minimum: int = 0
    maximum: int = 1
    slots_per_job: int = 1
    target_wait: float = 2.0
    idle_grace: float = 30.0
    #: Job id -> when it was first seen idle (no task running on it, nothing queued).
    _idle_since: dict[str, float] = field(default_factory=dict)
    #: Jobs this policy retired that the scheduler still lists.
    _retired: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.minimum < 0 or self.maximum < max(1, self.minimum):
            raise ValueError(f"need 0 <= minimum <= maximum and maximum >= 1, got "
                             f"minimum={self.minimum} maximum={self.maximum}")
        if self.slots_per_job < 1:
            raise ValueError(f"slots_per_job must be at least 1, got {self.slots_per_job}")
        if self.target_wait < 0 or self.idle_grace < 0:
            raise ValueError("target_wait and idle_grace cannot be negative")

    @property
    def retired(self) -> frozenset[str]:
        return frozenset(self._retired)

    def decide(self, now: float, queue: QueueView, jobs: Sequence[JobView]) -> Decision:
        """The decision for this tick; remembers idle times and retired jobs for the next ones."""
        listed = {job.id for job in jobs}
        self._retired &= listed
        for job_id in list(self._idle_since):
            if job_id not in listed:
                del self._idle_since[job_id]
        active = [j for j in jobs if j.state is not JobState.ENDING and j.id not in self._retired]
        room = self.maximum - len(jobs)

        wanted = self._wanted(queue, active)
        below_minimum = self.minimum - len(active)
        submit = max(0, min(room, max(wanted, below_minimum)))
        if submit or wanted:
            self._idle_since.clear()
            reason = (f"{queue.queued} task(s) waited {queue.oldest_wait:.1f} s with no free slot"
                      if wanted else f"below the minimum of {self.minimum} job(s)")
            if submit < max(wanted, below_minimum):
                reason += f"; capped by the maximum of {self.maximum} job(s)"
            return Decision(submit=submit, reason=reason)

        retire = self._idle_to_retire(now, queue, active)
        self._retired.update(retire)
        reason = f"idle for {self.idle_grace:g} s" if retire else ""
        return Decision(retire=tuple(retire), reason=reason)

    def _wanted(self, queue: QueueView, active: Sequence[JobView]) -> int:
        """Jobs to add so that every queued task gets a slot, counting the jobs on their way."""
        if queue.queued <= 0 or queue.oldest_wait < self.target_wait or queue.free_slots > 0:
            return 0
        coming = sum(1 for j in active if not j.registered) * self.slots_per_job
        missing = queue.queued - coming
        return math.ceil(missing / self.slots_per_job) if missing > 0 else 0

    def _idle_to_retire(self, now: float, queue: QueueView, active: Sequence[JobView]) -> list[str]:
        idle = [j for j in active if queue.queued == 0 and j.busy == 0]
        idle_ids = {j.id for j in idle}
        for job_id in list(self._idle_since):
            if job_id not in idle_ids:
                del self._idle_since[job_id]
        for job in idle:
            self._idle_since.setdefault(job.id, now)
        due = [j for j in idle if now - self._idle_since[j.id] >= self.idle_grace]
        # Pending jobs first (nothing runs there yet), then the longest idle.
        due.sort(key=lambda j: (j.state is not JobState.PENDING, self._idle_since[j.id], j.id))
        spare = max(0, len(active) - self.minimum)
        return [j.id for j in due[:spare]]
