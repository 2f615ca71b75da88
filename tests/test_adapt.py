"""The adaptive scaling policy, with no Slurm, no balancer and no clock: time is passed in."""

from __future__ import annotations

import pytest

from jupyter_plb.balancer.launcher_board import SILENCE, LauncherBoard
from jupyter_plb.errors import TaskRejected
from jupyter_plb.jobs.adapt import AdaptPolicy, Decision, JobState, JobView, QueueView
from jupyter_plb.jobs.adapter import hubs_by_job, queue_view
from jupyter_plb.jobs.slurm import parse_squeue

PENDING, RUNNING, ENDING = JobState.PENDING, JobState.RUNNING, JobState.ENDING


def waiting(queued: int, wait: float = 10.0, free: int = 0) -> QueueView:
    return QueueView(queued=queued, oldest_wait=wait, free_slots=free)


def idle_job(job_id: str, slots: int = 1) -> JobView:
    return JobView(job_id, RUNNING, slots=slots, busy=0)


def busy_job(job_id: str, slots: int = 1) -> JobView:
    return JobView(job_id, RUNNING, slots=slots, busy=slots)


# -- up -----------------------------------------------------------------------------------------
def test_asks_for_a_job_per_slot_needed_once_tasks_waited_past_the_target() -> None:
    policy = AdaptPolicy(maximum=20, slots_per_job=2, target_wait=2.0)
    decision = policy.decide(0.0, waiting(7, wait=2.5), [])
    assert decision.submit == 4  # 7 tasks, 2 slots per job
    assert "7 task(s) waited 2.5 s" in decision.reason


def test_waits_for_the_target_and_for_free_slots_to_be_used() -> None:
    policy = AdaptPolicy(maximum=20, target_wait=2.0)
    assert policy.decide(0.0, waiting(5, wait=1.9), []).submit == 0
    assert policy.decide(0.0, waiting(5, wait=9.0, free=1), [busy_job("1")]).submit == 0
    assert policy.decide(0.0, waiting(0, wait=0.0), []).submit == 0


def test_counts_pending_and_unregistered_jobs_so_it_does_not_over_ask() -> None:
    policy = AdaptPolicy(maximum=20, slots_per_job=1)
    jobs = [JobView("1", PENDING), JobView("2", RUNNING), busy_job("3")]
    # 5 queued, 2 slots on their way (a pending job, a started one not registered yet).
    assert policy.decide(0.0, waiting(5), jobs).submit == 3
    jobs += [JobView(str(i), PENDING) for i in (4, 5, 6)]
    assert policy.decide(1.0, waiting(5), jobs) == Decision()


def test_never_exceeds_the_maximum_counting_jobs_that_are_leaving() -> None:
    policy = AdaptPolicy(maximum=4)
    decision = policy.decide(0.0, waiting(100), [busy_job("1"), JobView("2", ENDING)])
    assert decision.submit == 2
    assert "capped by the maximum of 4" in decision.reason
    full = [busy_job(str(i)) for i in range(4)]
    assert policy.decide(1.0, waiting(100), full).submit == 0


def test_keeps_the_minimum_even_with_nothing_queued() -> None:
    policy = AdaptPolicy(minimum=2, maximum=5)
    decision = policy.decide(0.0, waiting(0, wait=0.0), [])
    assert decision.submit == 2 and "minimum of 2" in decision.reason
    assert policy.decide(1.0, waiting(0, wait=0.0), [JobView("1", ENDING), idle_job("2")]).submit == 1


# -- down ---------------------------------------------------------------------------------------
def test_retires_a_job_idle_for_the_grace_period_and_only_once() -> None:
    policy = AdaptPolicy(maximum=5, idle_grace=10.0)
    jobs = [idle_job("1"), busy_job("2")]
    assert policy.decide(0.0, waiting(0), jobs) == Decision()
    assert policy.decide(9.9, waiting(0), jobs) == Decision()
    decision = policy.decide(10.0, waiting(0), jobs)
    assert decision.retire == ("1",) and "idle" in decision.reason
    assert policy.decide(11.0, waiting(0), jobs) == Decision()  # already retired
    assert policy.retired == {"1"}
    assert policy.decide(12.0, waiting(0), [busy_job("2")]) == Decision()
    assert policy.retired == frozenset()  # forgotten once Slurm no longer lists it


def test_work_resets_the_idle_clock() -> None:
    policy = AdaptPolicy(maximum=5, idle_grace=10.0)
    policy.decide(0.0, waiting(0), [idle_job("1")])
    policy.decide(8.0, waiting(0), [busy_job("1")])
    assert policy.decide(15.0, waiting(0), [idle_job("1")]) == Decision()
    assert policy.decide(25.0, waiting(0), [idle_job("1")]).retire == ("1",)


def test_queued_tasks_keep_idle_jobs_alive() -> None:
    """A job with a free slot while tasks are queued is about to get one: not idle."""
    policy = AdaptPolicy(maximum=5, idle_grace=1.0, target_wait=100.0)
    for t in range(5):
        assert policy.decide(float(t), waiting(3, wait=0.5, free=1), [idle_job("1")]) == Decision()


def test_retires_down_to_the_minimum_pending_jobs_first() -> None:
    policy = AdaptPolicy(minimum=1, maximum=5, idle_grace=5.0)
    jobs = [idle_job("1"), JobView("2", PENDING), idle_job("3")]
    policy.decide(0.0, waiting(0), jobs[:1])
    policy.decide(1.0, waiting(0), jobs)
    decision = policy.decide(6.0, waiting(0), jobs)
    assert decision.retire == ("2", "1")  # the pending job, then the longest idle; "3" is the minimum
    assert policy.decide(7.0, waiting(0), jobs) == Decision()


def test_scales_down_to_zero() -> None:
    policy = AdaptPolicy(minimum=0, maximum=5, idle_grace=0.0)
    jobs = [idle_job(str(i)) for i in range(5)]
    assert sorted(policy.decide(0.0, waiting(0), jobs).retire) == ["0", "1", "2", "3", "4"]


def test_does_not_retire_while_it_scales_up() -> None:
    policy = AdaptPolicy(maximum=5, idle_grace=0.0)
    decision = policy.decide(0.0, waiting(4), [idle_job("1"), JobView("2", PENDING)])
    assert decision.retire == () and decision.submit == 3


def test_a_whole_day_never_goes_over_the_maximum() -> None:
    """Simulated: bursts of tasks, jobs that start late, finish, go idle; bounds always hold."""
    policy = AdaptPolicy(minimum=1, maximum=6, slots_per_job=2, target_wait=1.0, idle_grace=3.0)
    jobs: dict[str, tuple[float, JobState]] = {}
    queued, counter, peak = 0, 0, 0
    for step in range(400):
        now = step * 0.5
        if step % 80 == 0:
            queued += 30
        live = {i: s for i, (t, s) in jobs.items() if s is RUNNING or now - t < 2.0 or s is PENDING}
        views = [JobView(i, RUNNING if now - jobs[i][0] >= 2.0 and s is PENDING else s,
                         slots=2 if now - jobs[i][0] >= 2.0 and s is not ENDING else 0)
                 for i, s in live.items()]
        running_slots = sum(v.slots for v in views)
        queued = max(0, queued - running_slots)
        views = [JobView(v.id, v.state, v.slots, v.slots if queued else 0) for v in views]
        decision = policy.decide(now, waiting(queued, wait=5.0 if queued else 0.0), views)
        for _ in range(decision.submit):
            counter += 1
            jobs[str(counter)] = (now, PENDING)
        for job_id in decision.retire:
            del jobs[job_id]
        peak = max(peak, len(jobs))
        assert len(jobs) <= 6
        assert len(jobs) >= 1 or step == 0
    assert peak == 6 and len(jobs) == 1


@pytest.mark.parametrize("kwargs", [
    {"minimum": -1}, {"maximum": 0}, {"minimum": 3, "maximum": 2}, {"slots_per_job": 0},
    {"target_wait": -1.0}, {"idle_grace": -1.0},
])
def test_rejects_impossible_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptPolicy(**{"maximum": 1, **kwargs})  # type: ignore[arg-type]


# -- reading the balancer and Slurm ---------------------------------------------------------------
SNAPSHOT = {
    "totals": {"queued": 4},
    "queues": [{"name": "a", "queued": 3, "max_wait": 1.5}, {"name": "b", "queued": 1, "max_wait": 4.0}],
    "hubs": [
        {"state": "ok", "job": "7", "workers": [{"state": "busy"}, {"state": "idle"}]},
        {"state": "ok", "job": "7", "workers": [{"state": "busy"}]},
        {"state": "draining", "job": "8", "workers": [{"state": "idle"}]},
        {"state": "lost", "job": "9", "workers": [{"state": "idle"}]},
        {"state": "ok", "job": None, "workers": [{"state": "idle"}]},
    ],
}


def test_reads_the_queue_and_each_jobs_hubs_from_a_snapshot() -> None:
    assert queue_view(SNAPSHOT) == QueueView(queued=4, oldest_wait=4.0, free_slots=2)
    assert hubs_by_job(SNAPSHOT) == {"7": (2, 3, 2), "8": (1, 1, 0)}


def test_parses_squeue_states() -> None:
    output = "12 PENDING\n13 RUNNING\n14 COMPLETING\n15 COMPLETED\n16 CONFIGURING\nnoise\n"
    assert parse_squeue(output) == {"12": PENDING, "13": RUNNING, "14": ENDING, "16": PENDING}


# -- the balancer's board -------------------------------------------------------------------------
def report(**overrides: object) -> dict[str, object]:
    return {"id": "adapter-1", "name": "slurm", "kind": "slurm", "minimum": 0, "maximum": 3,
            "jobs": [{"id": "5", "state": "running", "hubs": 1, "slots": 2, "busy": 1},
                     {"id": "6", "state": "pending"}], **overrides}


def test_board_keeps_the_last_report_until_closed_or_silent() -> None:
    board = LauncherBoard()
    board.note(report(), now=100.0)
    (row,) = board.rows(now=101.0)
    assert row["counts"] == {"pending": 1, "running": 1, "ending": 0}
    assert row["jobs"][1] == {"id": "6", "state": "pending", "hubs": 0, "slots": 0, "busy": 0}
    assert board.rows(now=100.0 + SILENCE + 1) == []
    board.note(report(), now=200.0)
    board.note(report(closed=True), now=201.0)
    assert board.rows(now=201.0) == []


@pytest.mark.parametrize("bad", [
    None, report(id=""), report(jobs="x"), report(jobs=[{"id": "1", "state": "lost"}]),
    report(jobs=[{"id": 1, "state": "running"}]), report(maximum=-1), report(minimum=True),
    report(jobs=[{"id": "1", "state": "running", "busy": "2"}]),
])
def test_board_rejects_bad_reports_with_a_reason(bad: object) -> None:
    board = LauncherBoard()
    with pytest.raises(TaskRejected, match=r"launcher|job"):
        board.note(bad, now=0.0)
    assert board.rows(now=0.0) == []
