"""The scheduling policy, pure: no sockets, no clock, no processes.

A worker slot with free credit takes, among the users that have a queued task it can run (priority
within ``min_p ≤ p ≤ max_p``, and a route the slot's hub offers when the task names one), the user
with the fewest tasks on slots; ties go to the user served least recently, then that user's oldest
fitting task. Queued tasks live in per-(user, class) ordered dicts, a class being a
(priority, route) pair, so submit, cancel and dispatch cost does not grow with the queue length.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .errors import QueueFull, TaskRejected
from .tasks import Task

ClassKey = tuple[float, str | None]


@dataclass(slots=True, eq=False)
class Slot:
    """One worker process: it runs one task and may hold ``capacity - 1`` more in prefetch.

    ``capacity`` is set by the balancer: prefetch pays only for tasks shorter than a round trip,
    and costs balance at the end of a batch for longer ones.
    """

    id: str
    group: str
    min_p: float
    max_p: float
    routes: frozenset[str]
    capacity: int = 1
    accepting: bool = True
    assigned: OrderedDict[str, Task] = field(default_factory=OrderedDict)

    @property
    def signature(self) -> tuple[float, float, frozenset[str]]:
        return (self.min_p, self.max_p, self.routes)

    def accepts(self, key: ClassKey) -> bool:
        priority, route = key
        return self.min_p <= priority <= self.max_p and (route is None or route in self.routes)


@dataclass(slots=True, eq=False)
class _User:
    name: str
    running: int = 0
    last_served: int = 0
    queued: int = 0
    queues: dict[ClassKey, OrderedDict[str, Task]] = field(default_factory=dict)


def _describe_ranges(signatures: set[tuple[float, float, frozenset[str]]]) -> str:
    ranges = sorted({(lo, hi) for lo, hi, _ in signatures})
    return ", ".join(f"{lo:g}–{hi:g}" for lo, hi in ranges) or "none"


class Scheduler:
    """Queues, fairness, priority ranges and per-user limits."""

    def __init__(self, max_queued_per_user: int = 1000, prefetch: int = 0, max_queued: int = 0) -> None:
        self.max_queued_per_user = max_queued_per_user
        self.max_queued = max_queued
        self.prefetch = prefetch
        self.slots: dict[str, Slot] = {}
        self._users: dict[str, _User] = {}
        self._class_users: dict[ClassKey, set[str]] = {}
        self._fit_cache: dict[tuple[float, float, frozenset[str]], list[ClassKey]] = {}
        self._queued: dict[str, Task] = {}
        self._serve_counter = 0
        self._seq = 0

    # -- inspection -------------------------------------------------------------------------
    @property
    def queued_count(self) -> int:
        return len(self._queued)

    @property
    def running_count(self) -> int:
        return sum(len(s.assigned) for s in self.slots.values())

    def queued_tasks(self) -> list[Task]:
        return list(self._queued.values())

    def user_counts(self) -> dict[str, tuple[int, int]]:
        """``{user: (queued, on slots)}`` for every user seen."""
        return {u.name: (u.queued, u.running) for u in self._users.values()}

    def is_queued(self, task_id: str) -> bool:
        return task_id in self._queued

    def unschedulable_reason(self, task: Task) -> str | None:
        """Why no connected slot could ever take ``task``, or None when one could."""
        key = (task.priority, task.route)
        if not self.slots or any(s.accepts(key) for s in self.slots.values()):
            return None
        signatures = {s.signature for s in self.slots.values()}
        in_range = [s for s in self.slots.values() if s.min_p <= task.priority <= s.max_p]
        if task.route is not None and in_range:
            offered = sorted(set().union(*(s.routes for s in self.slots.values())))
            return (
                f"no connected hub offers the task {task.route!r} at priority {task.priority:g} "
                f"(offered: {', '.join(offered) or 'none'})"
            )
        return (
            f"no connected worker accepts priority {task.priority:g} "
            f"(ranges {_describe_ranges(signatures)})"
        )

    # -- slots ------------------------------------------------------------------------------
    def add_slot(
        self, slot_id: str, group: str, min_p: float, max_p: float, routes: frozenset[str]
    ) -> Slot:
        slot = Slot(slot_id, group, min_p, max_p, routes)
        self.slots[slot_id] = slot
        return slot

    def set_prefetch(self, slot_id: str, short_tasks: bool) -> None:
        """Let a slot hold ``prefetch`` tasks beyond the running one for short tasks, one for long.

        One waiting task hides the round trip between two long tasks; idle slots steal it back
        at the end of a batch (``stealable``), so it never leaves a slot idle.
        """
        slot = self.slots.get(slot_id)
        if slot is not None:
            slot.capacity = 1 + (self.prefetch if short_tasks else min(1, self.prefetch))

    def remove_slot(self, slot_id: str) -> list[Task]:
        """Forget a slot; return the tasks it held (running first), no longer counted as running."""
        slot = self.slots.pop(slot_id, None)
        if slot is None:
            return []
        tasks = list(slot.assigned.values())
        for task in tasks:
            self._users[task.user].running -= 1
        slot.assigned.clear()
        return tasks

    def slot_of(self, slot_id: str) -> Slot | None:
        return self.slots.get(slot_id)

    # -- queue ------------------------------------------------------------------------------
    def check_submit(self, user: str, extra: int = 1) -> None:
        """Raise QueueFull when ``user`` (or the balancer as a whole) cannot queue ``extra`` more."""
        if self.max_queued and len(self._queued) + extra > self.max_queued:
            raise QueueFull(
                f"the balancer already holds {len(self._queued)} queued tasks, its limit "
                f"(LB_MAX_QUEUED); wait for some to finish"
            )
        cap = self.max_queued_per_user
        if cap > 0:
            queued = self._users[user].queued if user in self._users else 0
            if queued + extra > cap:
                raise QueueFull(
                    f"user {user!r} already has {queued} queued task(s) and the limit "
                    f"(LB_QUEING_MAXPERUSER) is {cap}; wait for some to finish or cancel some"
                )

    def submit(self, task: Task) -> None:
        """Queue a new task (raises QueueFull or TaskRejected); it gets the next sequence number."""
        if not isinstance(task.priority, int | float) or task.priority != task.priority:
            raise TaskRejected(f"priority must be a number, got {task.priority!r}")
        self.check_submit(task.user)
        self._seq += 1
        task.seq = self._seq
        self._enqueue(task)

    def requeue(self, task: Task) -> None:
        """Put a task back (its worker was lost): it keeps its sequence number, so it goes first."""
        self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        user = self._users.get(task.user)
        if user is None:
            user = self._users[task.user] = _User(task.user)
        key: ClassKey = (task.priority, task.route)
        queue = user.queues.get(key)
        if queue is None:
            queue = user.queues[key] = OrderedDict()
        if queue and next(reversed(queue.values())).seq > task.seq:
            queue[task.id] = task
            for other_id in [tid for tid, t in queue.items() if t.seq > task.seq]:
                queue.move_to_end(other_id)
        else:
            queue[task.id] = task
        user.queued += 1
        users = self._class_users.get(key)
        if users is None:
            users = self._class_users[key] = set()
            self._fit_cache.clear()
        users.add(task.user)
        self._queued[task.id] = task

    def _unqueue(self, task: Task) -> None:
        user = self._users[task.user]
        key: ClassKey = (task.priority, task.route)
        queue = user.queues[key]
        del queue[task.id]
        user.queued -= 1
        del self._queued[task.id]
        if not queue:
            del user.queues[key]
            users = self._class_users[key]
            users.discard(task.user)
            if not users:
                del self._class_users[key]
                self._fit_cache.clear()

    def cancel_queued(self, task_id: str) -> Task | None:
        task = self._queued.get(task_id)
        if task is not None:
            self._unqueue(task)
        return task

    # -- dispatch ---------------------------------------------------------------------------
    def _fitting(self, slot: Slot) -> list[ClassKey]:
        fitting = self._fit_cache.get(slot.signature)
        if fitting is None:
            fitting = [k for k in self._class_users if slot.accepts(k)]
            self._fit_cache[slot.signature] = fitting
        return fitting

    def _pick(self, slot: Slot) -> Task | None:
        best: Task | None = None
        best_key: tuple[int, int, int] | None = None
        for class_key in self._fitting(slot):
            for user_name in self._class_users.get(class_key, ()):
                user = self._users[user_name]
                head = next(iter(user.queues[class_key].values()))
                key = (user.running, user.last_served, head.seq)
                if best_key is None or key < best_key:
                    best, best_key = head, key
        return best

    def dispatch(self) -> list[tuple[Slot, Task]]:
        """Fill free slot credit; idle slots first, then prefetch. Returns the assignments made."""
        if not self._queued:
            return []
        assignments: list[tuple[Slot, Task]] = []
        for depth in range(1 + self.prefetch):
            for slot in self.slots.values():
                if len(slot.assigned) > depth or depth >= slot.capacity or not slot.accepting:
                    continue
                task = self._pick(slot)
                if task is None:
                    continue
                self._assign(slot, task)
                assignments.append((slot, task))
                if not self._queued:
                    return assignments
        return assignments

    def _assign(self, slot: Slot, task: Task) -> None:
        self._unqueue(task)
        slot.assigned[task.id] = task
        user = self._users[task.user]
        user.running += 1
        self._serve_counter += 1
        user.last_served = self._serve_counter

    def stealable(self, idle: Slot, exclude: set[str]) -> tuple[Slot, Task] | None:
        """A prefetched (not running) task the idle slot could run, from the fullest other slot."""
        best: tuple[Slot, Task] | None = None
        for slot in self.slots.values():
            if slot is idle or len(slot.assigned) < 2:
                continue
            if best is not None and len(slot.assigned) <= len(best[0].assigned):
                continue
            waiting = list(slot.assigned.values())[1:]
            for task in reversed(waiting):
                if task.id not in exclude and idle.accepts((task.priority, task.route)):
                    best = (slot, task)
                    break
        return best

    def attach(self, slot_id: str, task: Task) -> None:
        """Record that a slot already holds ``task`` (a worker re-announcing after a restart)."""
        slot = self.slots[slot_id]
        slot.assigned[task.id] = task
        self._users.setdefault(task.user, _User(task.user)).running += 1

    def continue_sequence(self, seq: int) -> None:
        """New tasks get sequence numbers after ``seq`` (the last one of a restored journal)."""
        self._seq = max(self._seq, seq)

    def release(self, slot_id: str, task_id: str) -> Task | None:
        """A slot finished (or dropped) a task: free its credit. None if it did not hold it."""
        slot = self.slots.get(slot_id)
        if slot is None:
            return None
        task = slot.assigned.pop(task_id, None)
        if task is not None:
            self._users[task.user].running -= 1
        return task
