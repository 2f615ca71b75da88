"""What clients ask: hello, submit, get, cancel, acks, and their queries."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from jupyter_plb.balancer.state import (
    MAX_HUB_LISTENERS,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_RETRIES,
    StoredFunction,
    finite,
    function_digest,
)
from jupyter_plb.core import protocol, shm, team, versions
from jupyter_plb.core.history import MAX_ARGS
from jupyter_plb.core.protocol import Buffer, Message
from jupyter_plb.core.scheduler import unschedulable_reason
from jupyter_plb.core.tasks import KeptTask, Task
from jupyter_plb.errors import PlbError, TaskRejected

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer

log = logging.getLogger(__name__)


class ClientDesk:
    """What clients ask: hello, submit, get, cancel, acks, and their queries."""

    def __init__(self, lb: Balancer) -> None:
        self.lb = lb

    def _owned(self, task_id: Any) -> Task | KeptTask | None:
        """The task, if the sending client may see it: with Curve, only its certificate's user's
        (in a team pool an admin sees every task)."""
        task = self.lb.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is not None and self.lb.sender is not None and task.user != self.lb.sender and not (
            self.lb.team is not None and self.lb.team.is_admin(self.lb.sender)
        ):
            return None
        return task

    def _denied(self, msg: Message, ids: list[Any], action: str) -> bool:
        """In a team pool, answer a request naming another user's task with the rule, and say so."""
        if self.lb.team is None or self.lb.sender is None:
            return False
        for task_id in ids:
            task = self.lb.tasks.get(task_id) if isinstance(task_id, str) else None
            if task is not None and not self.lb.team.may_access(self.lb.sender, task.user):
                self.lb.reply("clients", msg, {
                    "type": "error", "error": self.lb.team.denial(self.lb.sender, task_id, task.user, action),
                })
                return True
        return False

    def on_client_message(self, msg: Message) -> None:
        if self.lb.team is not None and self.lb.sender is None:
            raise TaskRejected("a team pool knows a client only by its certificate, and this one has none")
        reply_to = msg.header.get("reply_to")
        if isinstance(reply_to, str) and 0 < len(reply_to) <= MAX_ID_LENGTH and (
            self.lb.sender is None or msg.identity in (reply_to.encode(), f"{reply_to}-tx".encode())
        ):  # with Curve, replies go only to the sender's own (-tx) connection pair
            msg.identity = reply_to.encode()
        handler = self.lb.client_handlers.get(msg.type)
        if handler is None:
            raise TaskRejected(f"unknown message type {msg.type!r}")
        handler(msg)

    def on_hello(self, msg: Message) -> None:
        self.lb.reply("clients", msg, {
            "type": "welcome",
            "balancer": self.lb.id,
            "version": versions.package_version(),
            "max_queued_per_user": self.lb.params["LB_QUEING_MAXPERUSER"],
            "result_retention": self.lb.params["LB_RESULT_RETENTION"],
            #: Which shared memory a client may put large arguments in: this machine's, when it is the
            #: client's too (never in a team pool: workers of other uids).
            "shared_memory": shm.machine_id()
            if self.lb.params["LB_SHARED_MEMORY"] and self.lb.team is None else None,
            "user": self.lb.sender,  # with Curve: the user id its certificate binds the client to
            "hubs": [self.lb.hub_desk.hub_versions(hub) for hub in itertools.islice(self.lb.hubs.values(), 1000)
                     if hub.state != "lost"],
        })
        assert msg.identity is not None
        self.lb.hub_listeners[msg.identity] = None
        self.lb.hub_listeners.move_to_end(msg.identity)
        if len(self.lb.hub_listeners) > MAX_HUB_LISTENERS:
            self.lb.hub_listeners.popitem(last=False)
        outstanding = msg.header.get("outstanding") or []
        if isinstance(outstanding, list):
            unknown = []
            for task_id in outstanding[:1_000_000]:
                task = self._owned(task_id)
                if task is None:
                    unknown.append(task_id)
                else:
                    task = self.lb.results.set_client(task, msg.identity)
                    if task.state.finished:
                        self.lb.results.queue_result(task)
            if unknown:
                assert msg.identity is not None
                self.lb.send("clients", msg.identity, {"type": "unknown", "ids": unknown})

    def on_submit(self, msg: Message) -> None:
        header = msg.header
        now = self.lb.now()
        position = 0
        fn_ids: dict[str, str] = {}
        for spec in header.get("fns", []):
            count = int(spec["nbuf"])
            if count < 1 or position + count > len(msg.buffers):
                raise TaskRejected("function buffers missing from the message")
            buffers = msg.buffers[position : position + count]
            digests = msg.digests[position : position + count]
            position += count
            fn_id = function_digest(digests)
            if spec.get("fn") != fn_id or not protocol.matches(buffers, digests):
                raise TaskRejected("function digest does not match its buffers")
            fn_ids[fn_id] = fn_id
            if fn_id not in self.lb.functions:
                origin = spec.get("origin")
                self.lb.functions[fn_id] = StoredFunction(
                    buffers, digests, origin=origin[:200] if isinstance(origin, str) else None
                )
                self.lb.store.function(fn_id, buffers)
        accepted: list[str] = []
        rejected: dict[str, str] = {}
        warnings: dict[str, str] = {}
        for spec in header.get("tasks", []):
            count = spec.get("nbuf", 0)
            if not isinstance(count, int) or count < 0 or position + count > len(msg.buffers):
                raise TaskRejected("task buffers missing from the message")
            buffers = msg.buffers[position : position + count]
            digests = msg.digests[position : position + count]
            position += count
            task_id = spec.get("id")
            try:
                task = self._new_task(spec, msg.identity, now)
            except PlbError as exc:
                if isinstance(task_id, str):
                    rejected[task_id[:MAX_ID_LENGTH]] = str(exc)
                continue
            if task.id in self.lb.tasks:
                if self.lb.tasks[task.id].user != task.user:
                    rejected[task.id] = "this task id is already in use; submit with a new id"
                    continue
                accepted.append(task.id)
                self.lb.results.set_client(self.lb.tasks[task.id], msg.identity)
                continue
            if task.fn is not None and task.fn not in self.lb.functions:
                rejected[task.id] = "the task's function was not sent with it; resubmit"
                continue
            refs = self.lb.shared.object_refs(spec)
            if isinstance(refs, str):
                rejected[task.id] = refs
                continue
            try:
                self.lb.scheduler.submit(task)
            except PlbError as exc:
                rejected[task.id] = str(exc)
                continue
            task.buffers, task.digests = tuple(buffers), tuple(digests)
            if task.fn is not None:
                self.lb.functions[task.fn].refs += 1
            if refs:
                self.lb.task_objects[task.id] = refs
                for digest in refs:
                    self.lb.objects[digest].refs += 1
            self.lb.tasks[task.id] = task
            accepted.append(task.id)
            self.lb.store.submitted(task, refs)
            self.lb.stats.submitted(task, now)
            reason = unschedulable_reason(task, self.lb.scheduler.slots.values())
            if reason:
                task.reason = reason
                self.lb.unschedulable[task.id] = reason
                warnings[task.id] = reason
            self.lb.results.event(task)
        self.lb.shared.drop_unused_functions(fn_ids)
        assert msg.identity is not None
        self.lb.after_commit.append((msg.identity, {
            "type": "submitted", "accepted": accepted, "rejected": rejected, "warnings": warnings,
            "req": msg.header.get("req"),
        }))

    def _new_task(self, spec: dict[str, Any], client: bytes | None, now: float) -> Task:
        task_id = spec.get("id")
        if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID_LENGTH:
            raise TaskRejected(f"task id must be a string of 1 to {MAX_ID_LENGTH} characters")
        user = spec.get("user")
        if not isinstance(user, str) or not 0 < len(user) <= MAX_NAME_LENGTH:
            raise TaskRejected(f"user must be a string of 1 to {MAX_NAME_LENGTH} characters")
        if self.lb.team is not None and self.lb.sender is not None:
            user = self.lb.sender  # a team pool charges the certificate's user, whatever is claimed
        elif self.lb.sender is not None and user != self.lb.sender:
            raise TaskRejected(
                f"user {user!r} is not this client's: its certificate makes it {self.lb.sender!r}"
            )
        priority = spec.get("priority", 0)
        if not finite(priority):
            raise TaskRejected(f"priority must be a finite number, got {priority!r}")
        name = spec.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise TaskRejected(f"task name must be a string of 1 to {MAX_NAME_LENGTH} characters")
        route = spec.get("route")
        fn = spec.get("fn")
        if (route is None) == (fn is None):
            raise TaskRejected("a task names either a hub task (route) or a function (fn)")
        if route is not None and (not isinstance(route, str) or len(route) > MAX_NAME_LENGTH):
            raise TaskRejected("route must be a task name string")
        if fn is not None and not isinstance(fn, str):
            raise TaskRejected("fn must be a function digest string")
        timeout = spec.get("timeout")
        if timeout is not None and (not finite(timeout) or timeout <= 0):
            raise TaskRejected(f"timeout must be a number of seconds > 0, got {timeout!r}")
        retries = spec.get("retries", 0)
        if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise TaskRejected(f"retries must be an integer from 0 to {MAX_RETRIES}")
        args = spec.get("args")
        return Task(
            id=task_id,
            user=user,
            priority=float(priority),
            name=name,
            route=route,
            client=client,
            fn=fn,
            payload=spec.get("payload"),
            args=args[:MAX_ARGS] if isinstance(args, str) else None,
            timeout=float(timeout) if timeout is not None else None,
            retries=retries,
            submitted=now,
            chunk=bool(spec.get("chunk", False)),
        )

    def on_get(self, msg: Message) -> None:
        ids = msg.header.get("ids")
        if not isinstance(ids, list):
            raise TaskRejected("'ids' must be a list of task ids")
        if self._denied(msg, ids[:10_000], "read"):
            return
        now = self.lb.now()
        infos: dict[str, Any] = {}
        buffers: list[Buffer] = []
        digests: list[bytes] = []
        for task_id in ids[:10_000]:
            task = self._owned(task_id)
            if task is None:
                continue
            info = task.summary()
            if task.state.finished and task.result is not None:
                result_buffers, result_digests = self.lb.results.result_frames(task)
                info["result"] = {**task.result, "nbuf": len(result_buffers)}
                buffers.extend(result_buffers)
                digests.extend(result_digests)
                self.lb.results.collected(task, now)
            infos[str(task_id)] = info
        self.lb.reply("clients", msg, {"type": "status", "tasks": infos}, buffers, digests)

    def on_cancel(self, msg: Message) -> None:
        ids = msg.header.get("ids")
        if not isinstance(ids, list):
            raise TaskRejected("'ids' must be a list of task ids")
        if self._denied(msg, ids[:100_000], "cancel"):
            return
        unknown = {"cancelled": False, "state": None, "from": None}
        results = {
            str(i): self.lb.results.cancel(i) if self._owned(i) else dict(unknown)
            for i in ids[:100_000] if isinstance(i, str)
        }
        self.lb.reply("clients", msg, {"type": "cancelled", "results": results})

    def on_ack(self, msg: Message) -> None:
        now = self.lb.now()
        for task_id in msg.header.get("ids", [])[:100_000]:
            task = self._owned(task_id)
            if task is not None and task.state.finished:
                self.lb.results.collected(task, now)

    def on_status(self, msg: Message) -> None:
        snapshot = self.lb.views.snapshot()
        if self.lb.team is not None:
            snapshot = self.lb.team.redact(snapshot, self.lb.sender)
        self.lb.reply("clients", msg, {"type": "snapshot", "data": snapshot})

    def on_tasks(self, msg: Message) -> None:
        header = msg.header
        if self.lb.team is not None:
            try:
                user = self.lb.team.check_listing(self.lb.sender, header.get("user"))
            except team.AccessDenied as exc:
                self.lb.reply("clients", msg, {"type": "error", "error": str(exc)})
                return
        else:
            user = self.lb.sender or header.get("user")  # with Curve: its own tasks only
        self.lb.reply("clients", msg, {
            "type": "task_list",
            **self.lb.views.list_tasks(
                state=header.get("state"),
                user=user,
                name=header.get("name"),
                query=header.get("query"),
                offset=int(header.get("offset", 0)),
                limit=int(header.get("limit", 100)),
            ),
        })

    def on_info(self, msg: Message) -> None:
        """Task summaries by id without collecting results: the monitor of a server attached to
        this balancer (monitor/remote.py)."""
        ids = msg.header.get("ids")
        if not isinstance(ids, list):
            raise TaskRejected("'ids' must be a list of task ids")
        if self._denied(msg, ids[:1000], "read"):
            return
        owned = ((str(i), self._owned(i)) for i in ids[:1000])
        self.lb.reply("clients", msg, {
            "type": "task_info", "tasks": {i: t.summary() for i, t in owned if t is not None},
        })

    def on_jobs(self, msg: Message) -> None:
        self.lb.launchers.note(msg.header.get("launcher"), self.lb.now())
        self.lb.reply("clients", msg, {"type": "jobs_noted"})
