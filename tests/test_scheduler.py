"""The scheduling policy on its own: no sockets, no clock, no processes."""

from __future__ import annotations

import pytest

from jupyter_plb.errors import QueueFull, TaskRejected
from jupyter_plb.scheduler import Scheduler
from jupyter_plb.tasks import Task

ANY = frozenset()


def task(task_id: str, user: str, priority: float = 0, route: str | None = None) -> Task:
    return Task(id=task_id, user=user, priority=priority, name=route or "f", route=route)


def drain(scheduler: Scheduler, slot_id: str = "w1") -> list[str]:
    """Run a single slot to completion, one task at a time; return the order tasks ran in."""
    order = []
    while True:
        assignments = scheduler.dispatch()
        if not assignments:
            return order
        for slot, t in assignments:
            order.append(t.id)
            scheduler.release(slot.id, t.id)


def test_single_slot_alternates_between_users_fifo_within_a_user() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("w1", "hub", 0, 10, ANY)
    for i in range(4):
        s.submit(task(f"A{i}", "alice"))
    for i in range(2):
        s.submit(task(f"B{i}", "bob"))
    assert drain(s) == ["A0", "B0", "A1", "B1", "A2", "A3"]


def test_user_with_fewest_running_tasks_goes_first() -> None:
    s = Scheduler(max_queued_per_user=0)
    for i in range(3):
        s.add_slot(f"w{i}", "hub", 0, 10, ANY)
    for i in range(5):
        s.submit(task(f"A{i}", "alice"))
    first = s.dispatch()
    assert [t.id for _, t in first] == ["A0", "A1", "A2"]
    s.submit(task("B0", "bob"))
    s.release("w0", "A0")
    assert [t.id for _, t in s.dispatch()] == ["B0"], "bob has 0 running, alice 2"


def test_ties_go_to_the_user_served_least_recently() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("w1", "hub", 0, 10, ANY)
    s.submit(task("C0", "carol"))
    assert drain(s) == ["C0"]
    s.submit(task("C1", "carol"))
    s.submit(task("D0", "dave"))
    assert drain(s) == ["D0", "C1"], "carol was served already; dave never was"


def test_priority_ranges_route_tasks_to_worker_groups() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("low", "hub", 0, 9, ANY)
    s.add_slot("high", "hub", 10, 99, ANY)
    s.submit(task("p50", "u", priority=50))
    s.submit(task("p5", "u", priority=5))
    s.submit(task("p9", "u", priority=9))
    placed = {t.id: slot.id for slot, t in s.dispatch()}
    assert placed == {"p50": "high", "p5": "low"}
    s.release("low", "p5")
    assert [(slot.id, t.id) for slot, t in s.dispatch()] == [("low", "p9")]


def test_bounds_are_inclusive_and_unfit_tasks_are_explained() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("a", "hub", 0, 9, ANY)
    s.add_slot("b", "hub", 10, 99, ANY)
    edge = task("edge", "u", priority=99)
    gap = task("gap", "u", priority=9.5)
    assert s.unschedulable_reason(edge) is None
    reason = s.unschedulable_reason(gap)
    assert reason is not None and "priority 9.5" in reason and "0–9, 10–99" in reason


def test_named_tasks_only_go_to_slots_that_offer_them() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("plain", "hub1", 0, 10, ANY)
    s.add_slot("hello", "hub2", 0, 10, frozenset({"HELLO"}))
    s.submit(task("h", "u", route="HELLO"))
    s.submit(task("f", "u"))
    placed = {t.id: slot.id for slot, t in s.dispatch()}
    assert placed == {"h": "hello", "f": "plain"}
    reason = s.unschedulable_reason(task("x", "u", route="BYE"))
    assert reason is not None and "'BYE'" in reason and "HELLO" in reason


def test_per_user_queue_limit_counts_queued_not_running() -> None:
    s = Scheduler(max_queued_per_user=2)
    s.add_slot("w1", "hub", 0, 10, ANY)
    s.submit(task("A0", "alice"))
    s.dispatch()
    s.submit(task("A1", "alice"))
    s.submit(task("A2", "alice"))
    with pytest.raises(QueueFull, match="LB_QUEING_MAXPERUSER"):
        s.submit(task("A3", "alice"))
    s.submit(task("B0", "bob"))


def test_global_queue_limit_bounds_all_users_together() -> None:
    s = Scheduler(max_queued_per_user=0, max_queued=3)
    for i in range(3):
        s.submit(task(f"t{i}", f"user{i}"))
    with pytest.raises(QueueFull, match="LB_MAX_QUEUED"):
        s.submit(task("t3", "someone-new"))


def test_cancel_and_requeue_keep_order() -> None:
    s = Scheduler(max_queued_per_user=0, prefetch=1)
    s.add_slot("w1", "hub", 0, 10, ANY)
    for i in range(4):
        s.submit(task(f"A{i}", "alice"))
    assert s.cancel_queued("A3") is not None
    s.set_prefetch("w1", True)
    assigned = [t.id for _, t in s.dispatch()]
    assert assigned == ["A0", "A1"], "one running, one prefetched"
    lost = s.remove_slot("w1")
    assert [t.id for t in lost] == ["A0", "A1"]
    for t in lost:
        s.requeue(t)
    s.add_slot("w2", "hub", 0, 10, ANY)
    s.prefetch = 0
    assert drain(s, "w2") == ["A0", "A1", "A2"]


def test_invalid_priority_is_rejected() -> None:
    s = Scheduler()
    with pytest.raises(TaskRejected):
        s.submit(task("x", "u", priority=float("nan")))


def test_dispatch_cost_does_not_grow_with_queue_length() -> None:
    """Operation counts, not time: dispatch looks at class heads only, never at the queue."""
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("w1", "hub", 0, 10, ANY)
    for i in range(200_000):
        s.submit(task(f"t{i}", f"user{i % 10}"))
    assert len(s._fitting(s.slots["w1"])) == 1
    slot, first = s.dispatch()[0]
    s.release(slot.id, first.id)
    assert s.queued_count == 199_999
