"""A team pool: who may see and touch which task, and each user's share of the worker slots.

Pure policy, no sockets and no clock reads (time is passed in). In a team balancer
(``LB_TEAM``, ``plb start --team``) CurveZMQ is on and a client's user is its certificate's
(:func:`jupyter_plb.transport.security.frame_user`); :class:`TeamPolicy` then decides what that user may do.
:class:`FairShare` is used by every balancer: it turns the busy slots sampled at each tick into
each user's share of the slots over the last minutes, shown by the monitor and the Lab panel.
"""

from __future__ import annotations

import collections
import getpass
import os
from collections.abc import Iterable, Mapping
from typing import Any

#: Seconds over which a user's share of the worker slots is measured.
SHARE_WINDOW = 300
#: Task fields another user's task keeps in a non-admin's snapshot (never its id or its error).
PUBLIC_TASK_FIELDS = ("user", "name", "started", "start", "end", "state", "worker", "hub", "time", "priority")


def default_user() -> str:
    """The fairness bucket when none is given: ``$PLB_USER``, else the JupyterHub user, else the
    login name. (With CurveZMQ the balancer binds a client to its certificate's user instead.)"""
    for variable in ("PLB_USER", "JUPYTERHUB_USER"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


class AccessDenied(Exception):
    """A client asked for another user's task; the message names the rule."""


class TeamPolicy:
    """A team pool's rule: a user reads, cancels and lists only their own tasks; admins, all."""

    def __init__(self, admins: Iterable[str] = ()) -> None:
        self.admins = frozenset(admins)

    def is_admin(self, user: str | None) -> bool:
        return user is not None and user in self.admins

    def may_access(self, viewer: str | None, owner: str) -> bool:
        """``viewer`` None is the balancer's own side (its monitor): it sees everything."""
        return viewer is None or viewer == owner or viewer in self.admins

    def denial(self, viewer: str | None, task_id: str, owner: str, action: str) -> str:
        """The sentence a client gets when it may not ``action`` (read, cancel) another's task."""
        return (
            f"cannot {action} task {task_id}: it belongs to user {owner!r} and this client is "
            f"{viewer!r}; in a team pool a client may read, cancel or list only its own tasks "
            "(an admin, LB_TEAM_ADMINS, may do all)"
        )

    def check_listing(self, viewer: str | None, user: Any) -> str | None:
        """The user whose tasks ``viewer`` may list when it asks for ``user``'s; raises if none."""
        if viewer is None or viewer in self.admins:
            return user if isinstance(user, str) and user else None
        if user not in (None, "", viewer):
            raise AccessDenied(
                f"cannot list the tasks of user {user!r}: this client is {viewer!r}; in a team pool a "
                "client may read, cancel or list only its own tasks (an admin, LB_TEAM_ADMINS, may do all)"
            )
        return viewer

    def redact(self, snapshot: dict[str, Any], viewer: str | None) -> dict[str, Any]:
        """The snapshot as ``viewer`` may see it: other users' queue sizes and shares, not their
        task ids, errors or output. An admin (and the balancer's side) sees it whole."""
        admin = viewer is None or viewer in self.admins
        view = {**snapshot, "viewer": {"user": viewer, "admin": admin, "team": True}}
        if admin:
            return view

        def public(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            if entry is None or entry.get("user") == viewer:
                return entry
            return {k: entry[k] for k in PUBLIC_TASK_FIELDS if k in entry}

        view["hubs"] = [
            {**hub, "workers": [{**w, "task": public(w.get("task"))} for w in hub.get("workers", [])]}
            for hub in snapshot.get("hubs", [])
        ]
        for key in ("unschedulable", "recent_failures", "timeline"):
            view[key] = [public(entry) for entry in snapshot.get(key, [])]
        return view


class FairShare:
    """Each user's share of the worker slots over the last ``window`` seconds.

    :meth:`sample` is called at every balancer tick with the users of the tasks running on slots;
    samples are summed per second, so memory is bounded by the window and each call is
    O(running users).
    """

    def __init__(self, window: int = SHARE_WINDOW) -> None:
        self.window = window
        self._seconds: collections.deque[tuple[int, float, dict[str, float]]] = collections.deque()
        self._slot_seconds = 0.0
        self._busy: collections.Counter[str] = collections.Counter()
        self._current: tuple[int, float, dict[str, float]] | None = None
        self._last: float | None = None

    def sample(self, now: float, busy_by_user: Mapping[str, int], slots: int) -> None:
        """Record that, since the previous sample, ``slots`` slots existed and ``busy_by_user`` ran."""
        last, self._last = self._last, now
        if last is None or now <= last:
            return
        dt = min(now - last, 5.0)
        second = int(now)
        if self._current is None or self._current[0] != second:
            self._close_current()
            self._current = (second, 0.0, {})
        at, slot_seconds, busy = self._current
        for user, count in busy_by_user.items():
            busy[user] = busy.get(user, 0.0) + count * dt
        self._current = (at, slot_seconds + slots * dt, busy)
        self._expire(second)

    def _close_current(self) -> None:
        if self._current is None:
            return
        self._seconds.append(self._current)
        self._slot_seconds += self._current[1]
        self._busy.update(self._current[2])
        self._current = None

    def _expire(self, second: int) -> None:
        while self._seconds and self._seconds[0][0] <= second - self.window:
            _, slot_seconds, busy = self._seconds.popleft()
            self._slot_seconds -= slot_seconds
            self._busy.subtract(busy)
            for user in busy:
                if self._busy[user] <= 1e-9:
                    del self._busy[user]

    def shares(self) -> dict[str, float]:
        """``{user: fraction of the slot-seconds it used}`` over the window (0 when no slots)."""
        total = self._slot_seconds
        busy = collections.Counter(self._busy)
        if self._current is not None:
            total += self._current[1]
            busy.update(self._current[2])
        if total <= 0:
            return {}
        return {user: min(1.0, seconds / total) for user, seconds in busy.items() if seconds > 0}



def policy_for(params: Mapping[str, Any]) -> TeamPolicy | None:
    """The team policy when ``LB_TEAM`` is set (it needs CurveZMQ: identities come from certificates)."""
    if not params.get("LB_TEAM"):
        return None
    if params.get("LB_CURVE") is False:
        from jupyter_plb.errors import ParametersError

        raise ParametersError(
            "LB_TEAM needs CurveZMQ (users are known by their certificates); set LB_CURVE to "
            '"auto" or true'
        )
    return TeamPolicy(params.get("LB_TEAM_ADMINS") or ())
