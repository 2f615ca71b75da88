"""The scheduling policy on its own: no sockets, no clock, no processes."""

from __future__ import annotations

import pytest

from jupyter_plb.core.scheduler import _COMPACT_SLACK, Scheduler, Slot, unschedulable_reason
from jupyter_plb.core.tasks import Task
from jupyter_plb.errors import QueueFull, TaskRejected

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
    assert unschedulable_reason(edge, s.slots.values()) is None
    reason = unschedulable_reason(gap, s.slots.values())
    assert reason is not None and "priority 9.5" in reason and "0–9, 10–99" in reason


def test_named_tasks_only_go_to_slots_that_offer_them() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("plain", "hub1", 0, 10, ANY)
    s.add_slot("hello", "hub2", 0, 10, frozenset({"HELLO"}))
    s.submit(task("h", "u", route="HELLO"))
    s.submit(task("f", "u"))
    placed = {t.id: slot.id for slot, t in s.dispatch()}
    assert placed == {"h": "hello", "f": "plain"}
    reason = unschedulable_reason(task("x", "u", route="BYE"), s.slots.values())
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
    tasks = [task(f"A{i}", "alice") for i in range(4)]
    for t in tasks:
        s.submit(t)
    assert s.cancel_queued(tasks[3])
    assert not s.cancel_queued(tasks[3]), "already out of the queue"
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


def queued_ids(scheduler: Scheduler, user: str | None = None) -> list[str]:
    return [t.id for t in scheduler.iter_queued(user)]


def test_cancelled_tasks_are_skipped_and_uncounted() -> None:
    s = Scheduler(max_queued_per_user=0)
    tasks = {t.id: t for t in (task(f"A{i}", "alice") for i in range(5))}
    for t in tasks.values():
        s.submit(t)
    assert s.cancel_queued(tasks["A0"]), "the head"
    assert s.cancel_queued(tasks["A2"]), "behind the head: only marked"
    assert s.cancel_queued(tasks["A3"])
    assert not s.is_queued(tasks["A2"]) and s.is_queued(tasks["A1"])
    assert s.queued_count == 2
    assert s.user_counts() == {"alice": (2, 0)}
    assert queued_ids(s) == ["A1", "A4"]
    s.add_slot("w1", "hub", 0, 10, ANY)
    assert drain(s) == ["A1", "A4"]
    assert s.queued_count == 0 and s.user_counts() == {"alice": (0, 0)}
    assert s.dispatch() == []
    assert [t.queue_mark for t in tasks.values()] == [0] * 5, "no entry is left behind"


def test_cancelling_the_last_task_of_a_class_forgets_the_class() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("low", "hub", 0, 5, ANY)
    high = task("H", "u", priority=9)
    s.submit(high)
    s.submit(task("L", "u", priority=1))
    assert s.cancel_queued(high)
    assert s._class_queues.keys() == {(1, None)}
    assert [t.id for _, t in s.dispatch()] == ["L"]
    assert s._class_queues == {}


def test_per_user_cap_counts_drop_on_cancel() -> None:
    s = Scheduler(max_queued_per_user=3)
    tasks = [task(f"A{i}", "alice") for i in range(3)]
    for t in tasks:
        s.submit(t)
    with pytest.raises(QueueFull, match="already has 3 queued task"):
        s.submit(task("A3", "alice"))
    s.cancel_queued(tasks[1])
    s.submit(task("A4", "alice"))
    with pytest.raises(QueueFull, match="already has 3 queued task"):
        s.submit(task("A5", "alice"))
    assert queued_ids(s) == ["A0", "A2", "A4"]


def test_global_cap_counts_drop_on_cancel() -> None:
    s = Scheduler(max_queued_per_user=0, max_queued=2)
    first, second = task("t0", "u0"), task("t1", "u1")
    s.submit(first)
    s.submit(second)
    with pytest.raises(QueueFull, match="already holds 2 queued tasks"):
        s.submit(task("t2", "u2"))
    s.cancel_queued(second)
    s.submit(task("t3", "u2"))
    assert s.queued_count == 2 and queued_ids(s) == ["t0", "t3"]


def test_requeued_tasks_go_back_in_sequence_order_after_cancels() -> None:
    s = Scheduler(max_queued_per_user=0, prefetch=2)
    s.add_slot("w1", "hub", 0, 10, ANY)
    tasks = {t.id: t for t in (task(f"A{i}", "alice") for i in range(8))}
    for t in tasks.values():
        s.submit(t)
    s.set_prefetch("w1", True)
    assert [t.id for _, t in s.dispatch()] == ["A0", "A1", "A2"]
    s.cancel_queued(tasks["A3"])
    s.cancel_queued(tasks["A5"])
    lost = s.remove_slot("w1")
    for t in reversed(lost):
        s.requeue(t)
    assert queued_ids(s) == ["A0", "A1", "A2", "A4", "A6", "A7"]
    s.cancel_queued(tasks["A1"])
    s.submit(task("A8", "alice"))
    assert queued_ids(s) == ["A0", "A2", "A4", "A6", "A7", "A8"]
    s.add_slot("w2", "hub", 0, 10, ANY)
    s.prefetch = 0
    assert drain(s, "w2") == ["A0", "A2", "A4", "A6", "A7", "A8"]


def test_requeue_revives_a_cancelled_entry_in_place() -> None:
    s = Scheduler(max_queued_per_user=0)
    tasks = [task(f"A{i}", "alice") for i in range(3)]
    for t in tasks:
        s.submit(t)
    s.cancel_queued(tasks[1])
    s.requeue(tasks[1])
    s.requeue(tasks[1])
    assert s.queued_count == 3 and queued_ids(s) == ["A0", "A1", "A2"]
    s.add_slot("w1", "hub", 0, 10, ANY)
    assert drain(s) == ["A0", "A1", "A2"]
    assert s.queued_count == 0


def test_cancelled_entries_are_compacted_when_they_outnumber_live_ones() -> None:
    s = Scheduler(max_queued_per_user=0)
    tasks = [task(f"t{i}", "u") for i in range(1000)]
    for t in tasks:
        s.submit(t)
    for t in tasks[1:-1]:
        s.cancel_queued(t)
    queue = s._users["u"].queues[(0, None)]
    assert len(queue.fifo) <= 2 * queue.live + _COMPACT_SLACK, "instead of 1000 entries"
    assert queued_ids(s) == ["t0", "t999"]
    assert sum(t.queue_mark == 2 for t in tasks) == len(queue.fifo) - 2


def test_queued_tasks_iterate_in_sequence_order_across_users_and_classes() -> None:
    s = Scheduler(max_queued_per_user=0)
    s.add_slot("w1", "hub", 0, 10, ANY)
    s.add_slot("w2", "hub", 0, 10, ANY)
    for i, (user, priority, route) in enumerate(
        [("bob", 1, None), ("alice", 0, None), ("bob", 0, "HELLO"), ("alice", 1, None), ("bob", 1, None)]
    ):
        s.submit(task(f"t{i}", user, priority, route))
    assert [t.id for _, t in s.dispatch()] == ["t0", "t1"]
    assert queued_ids(s) == ["t2", "t3", "t4"]
    for slot_id in ("w1", "w2"):
        for t in s.remove_slot(slot_id):
            s.requeue(t)
    assert queued_ids(s) == ["t0", "t1", "t2", "t3", "t4"]
    assert queued_ids(s, "bob") == ["t0", "t2", "t4"]
    assert queued_ids(s, "nobody") == []


def held(s: Scheduler, slot_id: str) -> list[str]:
    slot = s.slot_of(slot_id)
    assert slot is not None
    return list(slot.assigned)


def hand_back(s: Scheduler, revoked: list[tuple[Slot, Task]]) -> None:
    """What the balancer does when the worker answers "skipped": free the credit, queue again."""
    for slot, t in revoked:
        s.release(slot.id, t.id)
        s.requeue(t)


def test_provisional_tasks_are_taken_back_when_another_user_arrives() -> None:
    s = Scheduler(max_queued_per_user=0, prefetch=4)
    for slot_id in ("w1", "w2"):
        s.add_slot(slot_id, "hub", 0, 10, ANY)
        s.set_prefetch(slot_id, True)
    a = [task(f"A{i}", "alice") for i in range(6)]
    for t in a:
        s.submit(t)
    s.dispatch()
    assert held(s, "w1") == ["A0", "A2", "A4"] and held(s, "w2") == ["A1", "A3", "A5"], "alice alone: prefetch"
    assert s.take_back() == [], "nothing changed"
    s.submit(task("B0", "bob"))
    s.submit(task("B1", "bob"))
    revoked = s.take_back()
    assert sorted(t.id for _, t in revoked) == ["A2", "A3", "A4", "A5"]
    assert s.dispatch() == [], "no provisional task while revocations are in flight"
    hand_back(s, revoked)
    assert s.dispatch() == [], "two users wait: no provisional task for either"
    starts = []
    for finished, slot_id in [("A0", "w1"), ("A1", "w2"), ("B0", "w1"), ("A2", "w2"), ("B1", "w1")]:
        s.release(slot_id, finished)
        starts += [t.id for _, t in s.dispatch()]
    assert starts[:4] == ["B0", "A2", "B1", "A3"], "fewest running first, then least recently served"
    assert "A4" in starts[4:], "bob has nothing queued: alice prefetches again"


def test_a_slot_leaving_the_short_task_regime_gives_back_its_provisional_tasks() -> None:
    s = Scheduler(max_queued_per_user=0, prefetch=2)
    s.add_slot("w1", "hub", 0, 10, ANY)
    s.set_prefetch("w1", True)
    for i in range(4):
        s.submit(task(f"A{i}", "alice"))
    s.dispatch()
    assert held(s, "w1") == ["A0", "A1", "A2"]
    s.set_prefetch("w1", False)
    assert [t.id for _, t in s.take_back()] == ["A2"], "behind a long task, one may wait"


def test_only_tasks_the_balancer_knows_short_wait_deeper_than_one() -> None:
    s = Scheduler(max_queued_per_user=0, prefetch=2)
    s.add_slot("w1", "hub", 0, 10, ANY)
    s.set_prefetch("w1", True)
    for i in range(3):
        s.submit(task(f"A{i}", "alice"))
    assert [t.id for _, t in s.dispatch(may_prefetch=lambda t: False)] == ["A0", "A1"], "one may wait"
    assert [t.id for _, t in s.dispatch(may_prefetch=lambda t: True)] == ["A2"]


def test_tasks_attached_behind_a_running_one_are_provisional() -> None:
    s = Scheduler(max_queued_per_user=0, prefetch=4)
    s.add_slot("w1", "hub", 0, 10, ANY)
    for t in (task("A0", "alice"), task("A1", "alice"), task("A2", "alice")):
        s.attach("w1", t)  # a worker re-announcing after a restart: it runs A0, A1 and A2 wait
    assert held(s, "w1") == ["A0", "A1", "A2"] and s.running_count == 3
    s.submit(task("B0", "bob"))
    assert s.dispatch() == [], "the slot is full"
    revoked = s.take_back()
    assert [t.id for _, t in revoked] == ["A1", "A2"], "bob waits: alice's waiting tasks come back"
    hand_back(s, revoked)
    assert s.user_counts() == {"alice": (2, 1), "bob": (1, 0)}
    s.release("w1", "A0")
    assert drain(s) == ["A1", "B0", "A2"], "then one at a time, in the fairness order"
