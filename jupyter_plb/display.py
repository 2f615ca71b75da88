"""How futures and batches show themselves: HTML reprs and a text progress line."""

from __future__ import annotations

import html
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

STATE_COLOURS = {
    "queued": "#8a8a8a",
    "running": "#1f77b4",
    "done": "#2ca02c",
    "failed": "#d62728",
    "cancelled": "#9467bd",
}


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def future_html(fut: Any) -> str:
    """A one-line status card; a failed future shows its remote traceback."""
    state = str(fut.state)
    colour = STATE_COLOURS.get(state, "#555")
    parts = [
        f'<span style="color:{colour};font-weight:bold">{html.escape(state)}</span>',
        f"<code>{html.escape(fut.name)}</code>",
        f"<small>{html.escape(fut.task_id)}</small>",
    ]
    if fut.worker:
        parts.append(f"on {html.escape(str(fut.worker))}")
    parts.append(_duration(fut.elapsed))
    if state == "running" and fut.progress:
        parts.append(f"{int(fut.progress)} %")
    if fut.warning:
        parts.append(f'<span style="color:#b36b00">{html.escape(fut.warning)}</span>')
    body = " · ".join(parts)
    if state == "failed" and fut.done():
        exc = fut.exception()
        remote = getattr(getattr(exc, "__cause__", None), "tb", "") or getattr(exc, "remote_traceback", "")
        body += (
            f'<pre style="color:#d62728;white-space:pre-wrap">{html.escape(repr(exc))}\n'
            f"{html.escape(remote)}</pre>"
        )
    return f'<div class="plb-future">PlbFuture · {body}</div>'


class BatchCounter:
    """Counts a batch of futures as they settle (callbacks, no polling)."""

    def __init__(self, futures: Sequence[Any]) -> None:
        self.total = len(futures)
        self.done = 0
        self.failed = 0
        self.cancelled = 0
        self.started = time.monotonic()
        self.changed = threading.Condition()
        self._futures = futures
        for fut in futures:
            fut.add_done_callback(self._settled)

    def _settled(self, fut: Any) -> None:
        with self.changed:
            if fut.cancelled():
                self.cancelled += 1
            elif fut.exception() is not None:
                self.failed += 1
            else:
                self.done += 1
            self.changed.notify_all()

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    def counts(self) -> dict[str, float]:
        running = sum(1 for f in self._futures if not f.done() and f.state == "running")
        elapsed = time.monotonic() - self.started
        rate = self.finished / elapsed if elapsed > 0 else 0.0
        left = self.total - self.finished
        return {
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "running": running,
            "queued": max(0, left - running),
            "rate": rate,
            "eta": left / rate if rate > 0 else float("nan"),
            "elapsed": elapsed,
        }

    def wait_change(self, timeout: float) -> bool:
        """Wait until another future settles or ``timeout``; True when all have settled."""
        with self.changed:
            if self.finished < self.total:
                self.changed.wait(timeout)
            return self.finished >= self.total


def progress_text(counts: dict[str, float], label: str = "", width: int = 30) -> str:
    total = max(int(counts["total"]), 1)
    finished = counts["done"] + counts["failed"] + counts["cancelled"]
    filled = int(width * finished / total)
    bar = "#" * filled + "-" * (width - filled)
    eta = counts["eta"]
    eta_text = _duration(eta) if eta == eta else "?"
    return (
        f"{label} [{bar}] {int(finished)}/{int(counts['total'])} done {int(counts['done'])} "
        f"failed {int(counts['failed'])} running {int(counts['running'])} queued {int(counts['queued'])} "
        f"{counts['rate']:.0f}/s eta {eta_text}"
    ).strip()


class ProgressLine:
    """A text progress bar for a batch of futures, redrawn at most ``refresh`` times a second."""

    def __init__(self, futures: Sequence[Any], label: str = "", stream: IO[str] | None = None, refresh: float = 5.0) -> None:
        self.counter = BatchCounter(futures)
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = 1.0 / refresh

    def run(self) -> dict[str, float]:
        """Draw until every future has settled; return the final counts."""
        while not self.counter.wait_change(self.interval):
            self.stream.write("\r" + progress_text(self.counter.counts(), self.label))
            self.stream.flush()
        counts = self.counter.counts()
        self.stream.write("\r" + progress_text(counts, self.label) + "\n")
        self.stream.flush()
        return counts
