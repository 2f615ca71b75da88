"""The scheduling policy, pure: no sockets, no clock, no processes.

A worker slot with free credit takes, among the users that have a queued task it can run (priority
within ``min_p ≤ p ≤ max_p``, and a route the slot's hub offers when the task names one), the user
with the fewest tasks on slots; ties go to the user served least recently, then that user's oldest
fitting task.

Fairness holds when a task starts, prefetch or not. A slot's first task is the one it runs; the
ones behind it are *provisional* (prefetched to hide a round trip: one, or up to ``prefetch`` of a
kind the balancer knows to be short). A slot takes provisional tasks only while one user alone is
waiting (then the order above cannot pick anyone else); as soon as another user's task could run
there, ``take_back`` names the provisional tasks to revoke, and the balancer asks the worker to
hand back those it has not started.

Queued tasks live in one queue per (user, class), a class being a (priority, route) pair: a deque
that submits append to (sequence numbers only grow), plus a heap, by sequence number, of requeued
tasks older than that deque's tail. Each queue keeps its oldest live task as its head, and dispatch
compares heads only. A cancelled task is only marked (``Task.queue_mark``) and dropped when it
reaches the front of the deque or heap, or with all others when cancelled entries outnumber live
ones by more than ``_COMPACT_SLACK``. Counters replace any global id → task map, so submit, cancel
and dispatch cost does not grow with the queue length.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from jupyter_plb.core.tasks import Task
from jupyter_plb.errors import QueueFull, TaskRejected

ClassKey = tuple[float, str | None]

_OUT, _LIVE, _STALE = 0, 1, 2  # values of Task.queue_mark
_NUMBER = (int, float)
_by_seq = attrgetter("seq")
_COMPACT_SLACK = 32


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
    #: The user whose provisional tasks wait behind the running one, or None when there are none.
    provisional_user: str | None = None
    #: An idle slot waits for this older provisional task to come back from another slot.
    awaiting: str | None = None

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
    queues: dict[ClassKey, _Queue] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Queue:
    """One user's queued tasks of one class; ``head`` is the oldest live one while ``live > 0``.

    Invariant: the front of ``fifo`` and of ``requeued`` (when not empty) are live tasks.
    """

    user: _User
    key: ClassKey
    head: Task
    live: int = 0
    fifo: deque[Task] = field(default_factory=deque)
    requeued: list[tuple[int, int, Task]] = field(default_factory=list)

    def refresh(self) -> None:
        """Drop the dead entries at both fronts and pick the new head, if any task is left."""
        fifo, requeued = self.fifo, self.requeued
        while fifo and fifo[0].queue_mark != _LIVE:
            fifo.popleft().queue_mark = _OUT
        while requeued and requeued[0][2].queue_mark != _LIVE:
            heapq.heappop(requeued)[2].queue_mark = _OUT
        if requeued and (not fifo or requeued[0][0] < fifo[0].seq):
            self.head = requeued[0][2]
        elif fifo:
            self.head = fifo[0]

    def compact(self) -> None:
        """Drop every cancelled entry (the fronts, being live, stay)."""
        kept: deque[Task] = deque()
        for task in self.fifo:
            if task.queue_mark == _LIVE:
                kept.append(task)
            else:
                task.queue_mark = _OUT
        self.fifo = kept
        requeued = []
        for entry in self.requeued:
            if entry[2].queue_mark == _LIVE:
                requeued.append(entry)
            else:
                entry[2].queue_mark = _OUT
        heapq.heapify(requeued)
        self.requeued = requeued


def _running_since(slot: Slot) -> float:
    """When the slot's running task started (the balancer's clock); just assigned: last."""
    started = next(iter(slot.assigned.values())).started
    return math.inf if started is None else started


def _describe_ranges(signatures: set[tuple[float, float, frozenset[str]]]) -> str:
    ranges = sorted({(lo, hi) for lo, hi, _ in signatures})
    return ", ".join(f"{lo:g}–{hi:g}" for lo, hi in ranges) or "none"


def unschedulable_reason(task: Task, slots: Collection[Slot]) -> str | None:
    """Why no connected slot could ever take ``task``, or None when one could."""
    key = (task.priority, task.route)
    if not slots or any(s.accepts(key) for s in slots):
        return None
    signatures = {s.signature for s in slots}
    in_range = [s for s in slots if s.min_p <= task.priority <= s.max_p]
    if task.route is not None and in_range:
        offered = sorted(set().union(*(s.routes for s in slots)))
        return (
            f"no connected hub offers the task {task.route!r} at priority {task.priority:g} "
            f"(offered: {', '.join(offered) or 'none'})"
        )
    return (
        f"no connected worker accepts priority {task.priority:g} "
        f"(ranges {_describe_ranges(signatures)})"
    )


def stealable(slots: Iterable[Slot], idle: Slot, exclude: set[str]) -> tuple[Slot, Task] | None:
    """A prefetched (not running) task the idle slot could run, from the fullest other slot."""
    best: tuple[Slot, Task] | None = None
    for slot in slots:
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


class Scheduler:
    """Queues, fairness, priority ranges and per-user limits."""

    def __init__(self, max_queued_per_user: int = 1000, prefetch: int = 0, max_queued: int = 0) -> None:
        self.max_queued_per_user = max_queued_per_user
        self.max_queued = max_queued
        self.prefetch = prefetch
        self.slots: dict[str, Slot] = {}
        self._users: dict[str, _User] = {}
        self._class_queues: dict[ClassKey, dict[str, _Queue]] = {}
        self._fit_cache: dict[tuple[float, float, frozenset[str]], list[ClassKey]] = {}
        self._queued = 0
        self._provisional: dict[str, Slot] = {}
        self._provisional_users: Counter[str] = Counter()
        self._recheck_provisional = False
        self._revoked: set[str] = set()
        self._recalls: list[tuple[Slot, Task]] = []
        self._awaited: dict[str, Slot] = {}
        self._requeues = itertools.count()
        self._serve_counter = 0
        self._seq = 0

    # -- inspection -------------------------------------------------------------------------
    @property
    def queued_count(self) -> int:
        return self._queued

    @property
    def running_count(self) -> int:
        return sum(len(s.assigned) for s in self.slots.values())

    def iter_queued(self, user: str | None = None) -> Iterator[Task]:
        """Queued tasks (all, or ``user``'s) in sequence order; do not change the queues meanwhile."""
        streams: list[Iterable[Task]] = []
        for u in self._users.values():
            if user is None or u.name == user:
                for q in u.queues.values():
                    streams.append(q.fifo)
                    if q.requeued:
                        streams.append([task for _, _, task in sorted(q.requeued)])
        return (task for task in heapq.merge(*streams, key=_by_seq) if task.queue_mark == _LIVE)

    def user_counts(self) -> dict[str, tuple[int, int]]:
        """``{user: (queued, on slots)}`` for every user seen."""
        return {u.name: (u.queued, u.running) for u in self._users.values()}

    def is_queued(self, task: Task) -> bool:
        return task.queue_mark == _LIVE

    # -- slots ------------------------------------------------------------------------------
    def add_slot(
        self, slot_id: str, group: str, min_p: float, max_p: float, routes: frozenset[str]
    ) -> Slot:
        slot = Slot(slot_id, group, min_p, max_p, routes)
        self.slots[slot_id] = slot
        return slot

    def set_prefetch(self, slot_id: str, short_tasks: bool) -> None:
        """Let a slot hold ``prefetch`` provisional tasks while its tasks are short, one otherwise.

        One waiting task hides the round trip between two long tasks; idle slots steal it back
        at the end of a batch (``stealable``), so it never leaves a slot idle.
        """
        slot = self.slots.get(slot_id)
        if slot is None:
            return
        slot.capacity = 1 + (self.prefetch if short_tasks else min(1, self.prefetch))
        if slot.provisional_user is not None and len(slot.assigned) > slot.capacity:
            self._recheck_provisional = True

    def remove_slot(self, slot_id: str) -> list[Task]:
        """Forget a slot; return the tasks it held (running first), no longer counted as running."""
        slot = self.slots.pop(slot_id, None)
        if slot is None:
            return []
        tasks = list(slot.assigned.values())
        for task in tasks:
            self._users[task.user].running -= 1
            self._revoked.discard(task.id)
        slot.assigned.clear()
        self._end_provisional(slot)
        return tasks

    def slot_of(self, slot_id: str) -> Slot | None:
        return self.slots.get(slot_id)

    # -- queue ------------------------------------------------------------------------------
    def check_submit(self, user: str, extra: int = 1) -> None:
        """Raise QueueFull when ``user`` (or the balancer as a whole) cannot queue ``extra`` more."""
        if self.max_queued and self._queued + extra > self.max_queued:
            raise QueueFull(
                f"the balancer already holds {self._queued} queued tasks, its limit "
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
        """Queue a new task (raises QueueFull or TaskRejected); it gets the next sequence number.

        A task cancelled while queued and submitted again before its entry was dropped keeps its place.
        """
        if not isinstance(task.priority, _NUMBER) or task.priority != task.priority:
            raise TaskRejected(f"priority must be a number, got {task.priority!r}")
        self.check_submit(task.user)
        if task.queue_mark == _OUT:
            self._seq += 1
            task.seq = self._seq
        self._enqueue(task)

    def requeue(self, task: Task) -> None:
        """Put a task back (its worker was lost): it keeps its sequence number, so it goes first."""
        self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        """Queue ``task`` by its sequence number; a task still queued stays as it is."""
        mark = task.queue_mark
        if mark == _LIVE:
            return
        task.queue_mark = _LIVE
        if self._awaited:
            self._stop_awaiting(task.id)
        provisional = self._provisional_users
        if provisional and (len(provisional) > 1 or task.user not in provisional):
            self._recheck_provisional = True
        user = self._users.get(task.user)
        if user is None:
            user = self._users[task.user] = _User(task.user)
        user.queued += 1
        self._queued += 1
        key: ClassKey = (task.priority, task.route)
        if mark == _STALE:  # cancelled, but its entry is still held behind the head: revive it
            user.queues[key].live += 1
            return
        queue = user.queues.get(key)
        if queue is None:
            queue = user.queues[key] = _Queue(user, key, task)
            queues = self._class_queues.get(key)
            if queues is None:
                queues = self._class_queues[key] = {}
                self._fit_cache.clear()
            queues[user.name] = queue
        elif task.seq < queue.head.seq:
            queue.head = task
        queue.live += 1
        fifo = queue.fifo
        if not fifo or fifo[-1].seq <= task.seq:
            fifo.append(task)
        else:
            heapq.heappush(queue.requeued, (task.seq, next(self._requeues), task))

    def _unqueue(self, queue: _Queue, task: Task, mark: int) -> None:
        """``task`` leaves ``queue``, marked ``mark``: _OUT when dispatched, _STALE when cancelled."""
        task.queue_mark = mark
        queue.live -= 1
        queue.user.queued -= 1
        self._queued -= 1
        fifo, requeued = queue.fifo, queue.requeued
        if (fifo and fifo[0] is task) or (requeued and requeued[0][2] is task):
            queue.refresh()
        elif len(fifo) + len(requeued) > 2 * queue.live + _COMPACT_SLACK:
            queue.compact()
        if not queue.live:
            del queue.user.queues[queue.key]
            queues = self._class_queues[queue.key]
            del queues[queue.user.name]
            if not queues:
                del self._class_queues[queue.key]
                self._fit_cache.clear()

    def cancel_queued(self, task: Task) -> bool:
        """Take a queued task out of its queue; False when it was not queued."""
        if task.queue_mark != _LIVE:
            return False
        self._unqueue(self._users[task.user].queues[(task.priority, task.route)], task, _STALE)
        return True

    # -- dispatch ---------------------------------------------------------------------------
    def _fitting(self, slot: Slot) -> list[ClassKey]:
        fitting = self._fit_cache.get(slot.signature)
        if fitting is None:
            fitting = [k for k in self._class_queues if slot.accepts(k)]
            self._fit_cache[slot.signature] = fitting
        return fitting

    def _pick(self, slot: Slot) -> tuple[_Queue | None, bool]:
        """The queue whose head the slot should take next, and whether it is the only user's."""
        best: _Queue | None = None
        best_key: tuple[int, int, int] | None = None
        first: _User | None = None
        alone = True
        for class_key in self._fitting(slot):
            for queue in self._class_queues[class_key].values():
                user = queue.user
                if first is None:
                    first = user
                elif user is not first:
                    alone = False
                key = (user.running, user.last_served, queue.head.seq)
                if best_key is None or key < best_key:
                    best, best_key = queue, key
        return best, alone

    def dispatch(
        self, idle_only: bool = False, may_prefetch: Callable[[Task], bool] | None = None
    ) -> list[tuple[Slot, Task]]:
        """Fill free slot credit: idle slots first, then provisional tasks (unless ``idle_only``).

        A provisional task goes to a slot only when its user is the only one waiting; beyond the
        first one behind the running task, only tasks ``may_prefetch`` accepts (the balancer's
        "known to be short"; without ``may_prefetch``, any task). The first provisional tasks go
        to the slots whose running task started first (the ones expected to free up first), so
        that one user's tasks start in the order they were submitted.
        Returns the assignments made.
        """
        if not self._queued:
            return []
        open_slots = [
            slot for slot in self.slots.values()
            if slot.accepting and len(slot.assigned) < (1 if idle_only else slot.capacity)
        ]
        if not open_slots:
            return []
        assignments: list[tuple[Slot, Task]] = []
        for depth in range(1 if idle_only else max(slot.capacity for slot in open_slots)):
            if depth == 1:
                open_slots = [s for s in open_slots if len(s.assigned) > 1] + sorted(
                    (s for s in open_slots if len(s.assigned) == 1), key=_running_since
                )
            for slot in open_slots:
                if len(slot.assigned) > depth or depth >= slot.capacity:
                    continue
                if slot.awaiting is not None:
                    continue
                queue, alone = self._pick(slot)
                if queue is None:
                    continue
                if slot.assigned:
                    if not self._may_wait_on(slot, queue, alone, may_prefetch):
                        continue
                elif self._provisional and self._recall_older(slot, queue):
                    continue
                assignments.append((slot, self._assign(slot, queue)))
                if not self._queued:
                    return assignments
        return assignments

    def _may_wait_on(
        self, slot: Slot, queue: _Queue, alone: bool, may_prefetch: Callable[[Task], bool] | None
    ) -> bool:
        """May the head of ``queue`` wait, provisional, behind the tasks ``slot`` holds?

        Only while its user is the only one waiting anywhere: alone in the queues the slot could
        serve, with no other user's provisional tasks on any slot and no revocation in flight
        (a task being handed back is still waiting for its start).
        """
        if not alone or self._revoked:
            return False
        holders = self._provisional_users
        if holders and (len(holders) > 1 or queue.user.name not in holders):
            return False
        if len(slot.assigned) > 1 and may_prefetch is not None and not may_prefetch(queue.head):
            return False
        if slot.provisional_user is None:
            slot.provisional_user = queue.user.name
            self._provisional[slot.id] = slot
            holders[slot.provisional_user] += 1
        return True

    def _recall_older(self, idle: Slot, queue: _Queue) -> bool:
        """An idle slot would start the head of ``queue`` while an older task of the same user
        waits, provisional, behind a busy slot: call that one back for the idle slot instead."""
        head = queue.head
        older: tuple[Slot, Task] | None = None
        for slot in self._provisional.values():
            if slot.provisional_user != queue.user.name:
                continue
            waiting = itertools.islice(slot.assigned.values(), 1, None)
            oldest = next((task for task in waiting if task.id not in self._revoked), None)
            if (
                oldest is not None
                and oldest.seq < head.seq
                and idle.accepts((oldest.priority, oldest.route))
                and (older is None or oldest.seq < older[1].seq)
            ):
                older = (slot, oldest)
        if older is None:
            return False
        idle.awaiting = older[1].id
        self._awaited[older[1].id] = idle
        self._revoked.add(older[1].id)
        self._recalls.append(older)
        return True

    def _stop_awaiting(self, task_id: str) -> None:
        slot = self._awaited.pop(task_id, None)
        if slot is not None:
            slot.awaiting = None

    def started(self, task: Task) -> None:
        """The worker started ``task`` (it was provisional): a take-back of it came too late."""
        if self._revoked:
            self._revoked.discard(task.id)
            self._stop_awaiting(task.id)

    def take_back(self) -> list[tuple[Slot, Task]]:
        """Provisional tasks to revoke: all of a slot's when another user now has a queued task
        the slot could run, those beyond its capacity when its tasks stopped being short, and
        those an idle slot calls back because they are older than what it would start.

        They stay on their slot, counted as running, until the worker hands them back
        (``release``) or reports them, if it had started one already.
        """
        recalled, self._recalls = self._recalls, []  # marked revoked when they were recalled
        if not self._recheck_provisional:
            return recalled
        self._recheck_provisional = False
        revoked: list[tuple[Slot, Task]] = []
        for slot in list(self._provisional.values()):
            held = list(slot.assigned.values())
            if self._others_queued(slot, slot.provisional_user):
                revoked.extend((slot, task) for task in held[1:])
                self._end_provisional(slot)
            else:
                revoked.extend((slot, task) for task in held[slot.capacity:])
        self._revoked.update(task.id for _, task in revoked)
        return recalled + revoked

    def _others_queued(self, slot: Slot, user: str | None) -> bool:
        """Does a user other than ``user`` have a queued task ``slot`` could run?"""
        for class_key in self._fitting(slot):
            queues = self._class_queues[class_key]
            if len(queues) > 1 or user not in queues:
                return True
        return False

    def _end_provisional(self, slot: Slot) -> None:
        user = slot.provisional_user
        if user is None:
            return
        slot.provisional_user = None
        del self._provisional[slot.id]
        left = self._provisional_users[user] - 1
        if left:
            self._provisional_users[user] = left
        else:
            del self._provisional_users[user]

    def _assign(self, slot: Slot, queue: _Queue) -> Task:
        """Move the head of ``queue`` onto ``slot``."""
        task = queue.head
        self._unqueue(queue, task, _OUT)
        slot.assigned[task.id] = task
        user = queue.user
        user.running += 1
        self._serve_counter += 1
        user.last_served = self._serve_counter
        return task

    def attach(self, slot_id: str, task: Task) -> None:
        """Record that a slot already holds ``task`` (a worker re-announcing after a restart): the
        first one attached is the one it runs, the others wait behind it, provisional, as when
        dispatched (``take_back`` may revoke them; a slot may hold more than its capacity)."""
        slot = self.slots[slot_id]
        if slot.assigned and slot.provisional_user is None:
            slot.provisional_user = task.user
            self._provisional[slot.id] = slot
            self._provisional_users[task.user] += 1
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
            if self._revoked:
                self._revoked.discard(task_id)
                self._stop_awaiting(task_id)
            if len(slot.assigned) <= 1:
                self._end_provisional(slot)
        return task
