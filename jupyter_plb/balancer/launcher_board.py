"""The balancer's board of launchers: the job tables adapters report, checked and aged.

An adapter (``plb slurm --adapt``, ``Client.adapt``) sends its table at every tick; the board keeps
the last one of each launcher, drops a launcher that closed or went silent for :data:`SILENCE`
seconds, and hands the rest to the snapshot (monitor, Lab panel, ``plb status``). Bad input is a
:class:`TaskRejected` with the reason, never a crash.
"""

from __future__ import annotations

from typing import Any

from jupyter_plb.errors import TaskRejected

#: Seconds after its last report that a launcher is forgotten.
SILENCE = 30.0
MAX_LAUNCHERS = 64
MAX_JOBS = 10_000
MAX_TEXT = 256
JOB_STATES = ("pending", "running", "ending")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise TaskRejected(f"launcher {what} must be a string of 1 to {MAX_TEXT} characters")
    return value


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise TaskRejected(f"launcher {what} must be a non-negative integer, got {value!r}")
    return value


def _job(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TaskRejected("each launcher job must be a mapping")
    state = raw.get("state")
    if state not in JOB_STATES:
        raise TaskRejected(f"job state must be one of {', '.join(JOB_STATES)}, got {state!r}")
    return {"id": _text(raw.get("id"), "job id"), "state": state,
            **{k: _count(raw.get(k, 0), f"job {k}") for k in ("hubs", "slots", "busy")}}


def clean(raw: Any) -> dict[str, Any]:
    """A launcher's report, checked field by field; raises :class:`TaskRejected`."""
    if not isinstance(raw, dict):
        raise TaskRejected("'launcher' must be a mapping")
    jobs = raw.get("jobs", [])
    if not isinstance(jobs, list) or len(jobs) > MAX_JOBS:
        raise TaskRejected(f"launcher jobs must be a list of at most {MAX_JOBS}")
    reason = raw.get("reason") or ""
    return {
        "id": _text(raw.get("id"), "id"),
        "name": _text(raw.get("name"), "name"),
        "kind": _text(raw.get("kind"), "kind"),
        "minimum": _count(raw.get("minimum", 0), "minimum"),
        "maximum": _count(raw.get("maximum", 0), "maximum"),
        "slots_per_job": _count(raw.get("slots_per_job", 1), "slots_per_job"),
        "reason": reason[:MAX_TEXT] if isinstance(reason, str) else "",
        "jobs": [_job(job) for job in jobs],
    }


class LauncherBoard:
    """The last report of each launcher, by its id."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Any]] = {}

    def note(self, raw: Any, now: float) -> None:
        entry = clean(raw)
        if raw.get("closed"):
            self._entries.pop(entry["id"], None)
            return
        if entry["id"] not in self._entries and len(self._entries) >= MAX_LAUNCHERS:
            raise TaskRejected(f"too many launchers report to this balancer (at most {MAX_LAUNCHERS})")
        entry["updated"] = now
        self._entries[entry["id"]] = entry

    def rows(self, now: float) -> list[dict[str, Any]]:
        """The launchers heard from in the last :data:`SILENCE` seconds, with job counts."""
        for key in [k for k, e in self._entries.items() if now - e["updated"] > SILENCE]:
            del self._entries[key]
        rows = []
        for entry in self._entries.values():
            counts = {state: sum(1 for j in entry["jobs"] if j["state"] == state) for state in JOB_STATES}
            rows.append({**entry, "counts": counts})
        return sorted(rows, key=lambda r: (r["name"], r["id"]))
