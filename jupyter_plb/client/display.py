"""How futures, batches and balancer snapshots show themselves: HTML, text, a live progress line.

Everything here works without ipywidgets; :mod:`jupyter_plb.jupyter.widgets` builds the live views.
Every string that comes from a task, a user or a hub is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import collections
import html
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from jupyter_plb.core.snapshot import version_problem

STATE_COLOURS = {
    "queued": "#8a8a8a",
    "running": "#1f77b4",
    "done": "#2ca02c",
    "failed": "#d62728",
    "cancelled": "#9467bd",
}
#: Lines of captured task output a live progress view keeps.
OUTPUT_TAIL = 20
#: Lines of captured task output printed after a batch (the rest stays on the futures).
OUTPUT_PRINT_LIMIT = 1000


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def esc(value: Any) -> str:
    """Text from a task, user or hub, safe inside HTML."""
    return html.escape(str(value), quote=True)


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where widgets can be shown), False in a terminal or script."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def remote_traceback(exc: BaseException | None) -> str:
    """The traceback text the worker sent with a failed task's exception ('' if none)."""
    if exc is None:
        return ""
    return getattr(exc.__cause__, "tb", "") or getattr(exc, "remote_traceback", "") or ""


def _output_html(fut: Any) -> str:
    blocks = []
    for stream, colour in (("stdout", "inherit"), ("stderr", "#b36b00")):
        text = getattr(fut, stream, "")
        if text:
            blocks.append(
                f'<pre class="plb-{stream}" style="margin:2px 0;color:{colour};white-space:pre-wrap">{esc(text)}</pre>'
            )
    return "".join(blocks)


def future_html(fut: Any) -> str:
    """A status card: state, task, hub/worker, elapsed, progress, output; failed: traceback."""
    state = str(fut.state)
    colour = STATE_COLOURS.get(state, "#555")
    parts = [
        f'<span style="color:{colour};font-weight:bold">{esc(state)}</span>',
        f"<code>{esc(fut.name)}</code>",
        f"<small>{esc(fut.task_id)}</small>",
    ]
    if fut.worker:
        where = f"{esc(fut.worker)} @ {esc(fut.hub)}" if fut.hub else esc(fut.worker)
        parts.append(f"on {where}")
    parts.append(duration(fut.elapsed))
    if state == "running" and fut.progress:
        pct = int(fut.progress)
        parts.append(f'<progress max="100" value="{pct}" style="width:8em;vertical-align:middle"></progress> {pct} %')
    if fut.warning:
        parts.append(f'<span style="color:#b36b00">{esc(fut.warning)}</span>')
    body = " · ".join(parts) + _output_html(fut)
    if state == "failed" and fut.done():
        exc = fut.exception()
        body += f'<pre style="color:#d62728;white-space:pre-wrap">{esc(repr(exc))}\n{esc(remote_traceback(exc))}</pre>'
    return f'<div class="plb-future">PlbFuture · {body}</div>'


def print_output(fut: Any, header: bool = False) -> None:
    """Write what a task printed to this process's stdout/stderr (under the waiting cell)."""
    if not (fut.stdout or fut.stderr):
        return
    if header:
        print(f"--- {fut.task_id} {fut.name} ---", flush=True)
    if fut.stdout:
        sys.stdout.write(fut.stdout if fut.stdout.endswith("\n") else fut.stdout + "\n")
        sys.stdout.flush()
    if fut.stderr:
        sys.stderr.write(fut.stderr if fut.stderr.endswith("\n") else fut.stderr + "\n")
        sys.stderr.flush()


def print_outputs(futures: Iterable[Any], limit: int = OUTPUT_PRINT_LIMIT) -> None:
    """:func:`print_output` for a batch, in order, a header per task; stop after ``limit`` lines."""
    printed = 0
    with_output = [f for f in futures if f.stdout or f.stderr]  # set when a future settles
    for index, fut in enumerate(with_output):
        if printed >= limit:
            print(
                f"... output of {len(with_output) - index} more task(s) not shown; see their futures' .stdout/.stderr"
            )
            return
        print_output(fut, header=len(with_output) > 1)
        printed += fut.stdout.count("\n") + fut.stderr.count("\n") + 1


class BatchCounter:
    """Counts a batch of futures as they settle (done callbacks, no polling).

    Futures may be added while the batch is being submitted; ``total`` is then given up front,
    or, with ``growing=True``, counts the futures added until :meth:`seal` says there are no more.
    """

    def __init__(self, futures: Sequence[Any] = (), total: int | None = None, *, growing: bool = False) -> None:
        self.growing = growing
        self.total = 0 if growing else len(futures) if total is None else total
        self.done = 0
        self.failed = 0
        self.cancelled = 0
        self.started = time.monotonic()
        self.changed = threading.Condition()
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL)
        self.closed = False
        self._futures: list[Any] = []
        self._pending: set[Any] = set()
        self.add(futures)

    def add(self, futures: Iterable[Any]) -> None:
        """Count these futures too (they are part of ``total``)."""
        for fut in futures:
            with self.changed:
                self._futures.append(fut)
                self._pending.add(fut)
                if self.growing:
                    self.total += 1
            fut.add_done_callback(self._settled)

    def seal(self) -> None:
        """No more futures will be added (a growing batch has its total now)."""
        with self.changed:
            self.growing = False
            self.changed.notify_all()

    @property
    def complete(self) -> bool:
        return not self.growing and self.finished >= self.total

    def _settled(self, fut: Any) -> None:
        with self.changed:
            self._pending.discard(fut)
            if fut.cancelled():
                self.cancelled += 1
            elif fut.exception() is not None:
                self.failed += 1
            else:
                self.done += 1
            for text in (getattr(fut, "stdout", ""), getattr(fut, "stderr", "")):
                if text:
                    self.output.extend(text.splitlines())
            if self.complete:
                self.changed.notify_all()

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def futures(self) -> list[Any]:
        return list(self._futures)

    def counts(self, running: Collection[str] = ()) -> dict[str, float]:
        """Counts, rate and ETA; ``running`` are task ids the balancer says are running."""
        with self.changed:
            pending = list(self._pending)
        busy = sum(1 for f in pending if f.state == "running" or getattr(f, "task_id", None) in running)
        elapsed = time.monotonic() - self.started
        rate = self.finished / elapsed if elapsed > 0 else 0.0
        left = max(0, self.total - self.finished)
        return {
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "running": busy,
            "queued": max(0, left - busy),
            "rate": rate,
            "eta": left / rate if rate > 0 else float("nan"),
            "elapsed": elapsed,
        }

    def wait(self, timeout: float | None) -> bool:
        """Wait until all futures settled (or :meth:`close`, or ``timeout``); True if they did."""
        with self.changed:
            self.changed.wait_for(lambda: self.closed or self.complete, timeout)
            return self.complete

    def close(self) -> None:
        """Wake the waiters for good (the batch will not complete: interrupted, not submitted)."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()


def progress_text(counts: dict[str, float], label: str = "", width: int = 30) -> str:
    total = max(int(counts["total"]), 1)
    finished = counts["done"] + counts["failed"] + counts["cancelled"]
    filled = min(width, int(width * finished / total))
    bar = "#" * filled + "-" * (width - filled)
    eta = counts["eta"]
    eta_text = duration(eta) if eta == eta else "?"
    return (
        f"{label} [{bar}] {int(finished)}/{int(counts['total'])} done {int(counts['done'])} "
        f"failed {int(counts['failed'])} running {int(counts['running'])} "
        f"queued {int(counts['queued'])} "
        f"{counts['rate']:.0f}/s eta {eta_text}"
    ).strip()


class ProgressView(Protocol):
    """Something that shows a batch's counts: the text :class:`ProgressLine` or a widget."""

    def show(self, counts: dict[str, float], output: Sequence[str], final: bool) -> None: ...


class ProgressLine:
    """A text progress bar for a batch (futures or a :class:`BatchCounter`), ``refresh`` times/s."""

    def __init__(
        self,
        futures: Sequence[Any] | BatchCounter,
        label: str = "",
        stream: IO[str] | None = None,
        refresh: float = 5.0,
    ) -> None:
        self.counter = futures if isinstance(futures, BatchCounter) else BatchCounter(futures)
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = 1.0 / refresh

    def show(self, counts: dict[str, float], output: Sequence[str] = (), final: bool = False) -> None:
        self.stream.write("\r" + progress_text(counts, self.label) + ("\n" if final else ""))
        self.stream.flush()

    def run(self) -> dict[str, float]:
        """Draw until every future has settled; return the final counts."""
        while not self.counter.wait(self.interval):
            self.show(self.counter.counts())
        counts = self.counter.counts()
        self.show(counts, final=True)
        return counts


class LiveProgress:
    """Keeps a progress view up to date from one thread until its batch settles or it is stopped.

    ``running`` (optional) asks the balancer which task ids run now; it is called at most once a
    second, so the running/queued split is right even for tasks that never report progress.
    """

    def __init__(
        self,
        counter: BatchCounter,
        view: ProgressView,
        refresh: float = 4.0,
        running: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.counter = counter
        self.view = view
        self.interval = 1.0 / refresh
        self._running = running
        self._thread = threading.Thread(target=self._run, name="plb-progress", daemon=True)

    def start(self) -> LiveProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Draw the last state and end the thread, whether or not the batch completed."""
        self.counter.close()
        self._thread.join()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        running: Collection[str] = ()
        asked = 0.0
        while True:
            final = self.counter.wait(self.interval) or self.counter.closed
            if self._running is not None and not final and time.monotonic() - asked >= 1.0:
                asked = time.monotonic()
                try:
                    running = self._running()
                except Exception:  # the balancer is slow or gone: keep the last answer
                    running = ()
            self.view.show(self.counter.counts(running), list(self.counter.output), final)
            if final:
                return


@dataclass(slots=True)
class Report:
    """Data with a text and an HTML rendering (what ``%plb status`` and ``%plb hubs`` return)."""

    data: Any
    text: str
    html: str

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return self.html


_CELL = "text-align:left;padding:1px 12px 1px 0"


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th style='{_CELL}'>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='{_CELL}'>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return (
        "<table class='plb-table' style='border-collapse:collapse;margin:2px 0'>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _worker_task(worker: dict[str, Any]) -> str:
    task = worker.get("task")
    if not task:
        return ""
    return f"{task.get('name', '')} ({task.get('user', '')}) {task.get('id', '')}"


def hub_rows(hubs: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for hub in hubs:
        for worker in hub.get("workers", []) or [{}]:
            rows.append(
                [
                    hub.get("name", ""),
                    hub.get("host", ""),
                    hub.get("state", ""),
                    worker.get("id", "-"),
                    worker.get("state", ""),
                    worker.get("priorities", ""),
                    worker.get("done", ""),
                    _worker_task(worker),
                ]
            )
    return rows


HUB_HEADERS = ("hub", "host", "hub state", "worker", "state", "priorities", "done", "current task")


def hubs_report(hubs: Sequence[dict[str, Any]]) -> Report:
    """Hubs and their workers (busy/idle, priority range, current task), as the snapshot
    (core/snapshot.py) counts and words them."""
    lines = []
    for hub in hubs:
        workers = hub.get("workers", [])
        lines.append(
            f"hub {hub.get('name')} ({hub.get('host')}) {hub.get('state')}: {len(workers)} workers, "
            f"{hub.get('busy', 0)} busy"
        )
        for worker in workers:
            current = _worker_task(worker)
            lines.append(
                f"  {worker.get('id')} {worker.get('state')} priorities {worker.get('priorities', '?')}"
                f" done {worker.get('done', 0)}" + (f" running {current}" if current else "")
            )
    text = "\n".join(lines) or "no hubs connected"
    body = html_table(HUB_HEADERS, hub_rows(hubs)) if hubs else "<i>no hubs connected</i>"
    return Report(list(hubs), text, f"<div class='plb-hubs'>{body}</div>")


def status_report(snapshot: dict[str, Any]) -> Report:
    """The balancer's snapshot as a short summary: health, totals, rates, users, hubs, failures
    (newest first, as the snapshot orders them)."""
    problem = version_problem(snapshot)
    if problem is not None:
        return Report(snapshot, problem, f"<div class='plb-status' style='color:#d62728'>{esc(problem)}</div>")
    balancer, totals = snapshot["balancer"], snapshot["totals"]
    health = snapshot["health"]
    users = snapshot["users"]
    failures = snapshot["recent_failures"][:5]
    waiting = snapshot["unschedulable"]
    head = (
        f"balancer {balancer['id']} up {balancer['uptime']:.0f} s, "
        f"health: {health['label']}, {snapshot['rates']['done_per_s']:.0f} tasks/s"
    )
    counts = ", ".join(f"{k} {v}" for k, v in totals.items())
    lines = [head, "  " + counts, *("  " + m for m in health["messages"])]
    lines += [
        f"  user {u['user']}: queued {u['queued']}, running {u['running']}, done {u.get('done', 0)}, "
        f"failed {u.get('failed', 0)}"
        for u in users
    ]
    lines += [f"  failed {f.get('id', '')} {f['name']} ({f['user']}): {f.get('error', '')}" for f in failures]
    lines += [
        f"  waiting {u.get('id', '')} {u['name']} ({u['user']}) priority {u['priority']}: {u.get('reason', '')}"
        for u in waiting[:5]
    ]
    hubs = hubs_report(snapshot.get("hubs", []))
    text = "\n".join([*lines, hubs.text])
    user_rows = [
        [u["user"], u["queued"], u["running"], u.get("done", 0), u.get("failed", 0), u.get("cancelled", 0)]
        for u in users
    ]
    parts = [
        f"<div><b>{esc(head)}</b></div>",
        f"<div>{esc(counts)}</div>",
        *(f"<div style='color:#b36b00'>{esc(m)}</div>" for m in health["messages"]),
        html_table(("user", "queued", "running", "done", "failed", "cancelled"), user_rows) if users else "",
        hubs.html,
    ]
    if failures:
        parts.append(
            html_table(
                ("failed task", "name", "user", "error"),
                [[f.get("id", ""), f["name"], f["user"], f.get("error", "")] for f in failures],
            )
        )
    if waiting:
        parts.append(
            html_table(
                ("waiting task", "name", "user", "priority", "why"),
                [[u.get("id", ""), u["name"], u["user"], u["priority"], u.get("reason", "")] for u in waiting[:5]],
            )
        )
    return Report(snapshot, text, "<div class='plb-status'>" + "".join(parts) + "</div>")
