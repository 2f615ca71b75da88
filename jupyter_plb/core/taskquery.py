"""The task table's search: Flower's query syntax (``state:FAILURE name:foo``), parsed and matched.

A query is words and ``key:value`` terms. ``state:`` takes our states and Celery's names
(``FAILURE``, ``SUCCESS``, ``REVOKED``, ``PENDING``, ``STARTED``…), any case; ``key:a,b`` and a
repeated key mean either; different keys and words must all match. ``user:`` is exact, the
other keys and plain words match case-insensitive substrings (a plain word: of the id, name,
user, worker, error or arguments). Quotes group words: ``name:"my task"``, ``"division by zero"``.
A ``word:`` whose word is no key is searched as plain text (``RuntimeError: kaput`` works).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from jupyter_plb.core.tasks import TaskState

STATE_NAMES: dict[str, frozenset[str]] = {
    **{s.value: frozenset({s.value}) for s in TaskState},
    "success": frozenset({"done"}),
    "failure": frozenset({"failed"}),
    "revoked": frozenset({"cancelled"}),
    "canceled": frozenset({"cancelled"}),
    "pending": frozenset({"queued"}),
    "received": frozenset({"queued"}),
    "retry": frozenset({"queued"}),
    "started": frozenset({"running"}),
    "finished": frozenset({"done", "failed", "cancelled"}),
    "active": frozenset({"queued", "running"}),
}
FINISHED = frozenset({"done", "failed", "cancelled"})
#: Query key → the field it searches (``kwargs:``, ``exception:`` as Flower users write them).
KEYS = {
    "state": "state", "name": "name", "user": "user", "id": "id", "worker": "worker", "hub": "hub",
    "error": "error", "exception": "error", "args": "args", "kwargs": "args",
}
MAX_QUERY = 1000
_TERM = re.compile(r'(?:([A-Za-z_]+):)?(?:"([^"]*)"?|(\S+))')


class QueryError(ValueError):
    """A query that cannot be understood; the message says what to write instead."""


class SearchFields(NamedTuple):
    """What a query looks at in one task."""

    id: str
    name: str
    user: str
    state: str
    worker: str | None
    hub: str | None
    error: str | None
    args: str | None


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """A parsed query: ``states`` None means any; every other part must match."""

    states: frozenset[str] | None = None
    users: frozenset[str] | None = None
    #: Exact task names (the ``name=`` parameter), or None.
    names: frozenset[str] | None = None
    #: (field, alternatives): one of the lower-case alternatives is a substring of the field.
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()
    words: tuple[str, ...] = field(default=())

    @property
    def wants_live(self) -> bool:
        """Queued or running tasks may match."""
        return self.states is None or not self.states <= FINISHED

    @property
    def wants_finished(self) -> bool:
        return self.states is None or bool(self.states & FINISHED)

    def matches(self, task: SearchFields) -> bool:
        if self.states is not None and task.state not in self.states:
            return False
        if self.users is not None and task.user not in self.users:
            return False
        if self.names is not None and task.name not in self.names:
            return False
        for name, alternatives in self.fields:
            value = (getattr(task, name) or "").lower()
            if not any(a in value for a in alternatives):
                return False
        if self.words:
            text = "\n".join(v for v in (task.id, task.name, task.user, task.worker, task.error, task.args) if v)
            text = text.lower()
            return all(word in text for word in self.words)
        return True


def parse_states(text: str) -> frozenset[str]:
    """``failed,cancelled`` or ``FAILURE`` → our state names; QueryError for an unknown one."""
    states: set[str] = set()
    for name in text.split(","):
        name = name.strip().lower()
        if not name:
            continue
        if name not in STATE_NAMES:
            known = ", ".join(sorted(STATE_NAMES))
            raise QueryError(f"unknown task state {name!r}; use one of {known}")
        states |= STATE_NAMES[name]
    if not states:
        raise QueryError("state: needs a state, e.g. state:failed or state:failed,cancelled")
    return frozenset(states)


def parse(
    query: str | None = None,
    *,
    state: str | None = None,
    user: str | None = None,
    name: str | None = None,
) -> TaskQuery:
    """Parse ``query`` (the search box) together with the exact ``state=``/``user=``/``name=`` filters."""
    if query is not None and not isinstance(query, str):
        raise QueryError("the query must be a string")
    if query is not None and len(query) > MAX_QUERY:
        raise QueryError(f"the query is longer than {MAX_QUERY} characters")
    query_states: set[str] = set()
    query_users: set[str] = set()
    fields: dict[str, list[str]] = {}
    words: list[str] = []
    for match in _TERM.finditer(query or ""):
        key, quoted, bare = match.groups()
        value = quoted if quoted is not None else bare
        known = KEYS.get((key or "").lower())
        if known is None:
            text = f"{key}:{value}" if key else value
            if text:
                words.append(text.lower())
        elif known == "state":
            query_states |= parse_states(value)
        elif known == "user":
            query_users |= {u for u in value.split(",") if u}
        else:
            alternatives = [v.lower() for v in value.split(",") if v] if quoted is None else [value.lower()]
            fields.setdefault(known, []).extend(alternatives)
    states = _both(parse_states(state) if state else None, frozenset(query_states) if query_states else None)
    users = _both(frozenset({user}) if user else None, frozenset(query_users) if query_users else None)
    return TaskQuery(
        states=states,
        users=users,
        names=frozenset({name}) if name else None,
        fields=tuple((k, tuple(v)) for k, v in fields.items() if v),
        words=tuple(words),
    )


def _both(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Two filters on one field: both hold (None: no filter)."""
    if a is None or b is None:
        return a if b is None else b
    return a & b
