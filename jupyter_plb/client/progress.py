"""``progress(futures_or_map)``: a live bar for a batch, an ipywidget in a notebook, text in a terminal.

It is the one implementation behind :func:`progress`, ``Client.map(..., progress=True)`` and the
``%plb map``/``%plb wait`` magics: a :class:`~jupyter_plb.client.display.BatchCounter` counts the futures
as they settle, one thread draws them (:class:`~jupyter_plb.client.display.LiveProgress`).
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable, Collection, Iterable
from typing import IO, Any

from jupyter_plb.client.batches import MapIterator
from jupyter_plb.client.display import BatchCounter, LiveProgress, ProgressLine, ProgressView, in_kernel

#: Running tasks asked of the balancer per refresh (to split running from queued).
RUNNING_LIMIT = 1000


def live(
    counter: BatchCounter,
    label: str,
    running: Callable[[], Collection[str]] | None = None,
    stream: IO[str] | None = None,
) -> LiveProgress:
    """Draw ``counter`` live (a widget in a kernel, a text line elsewhere) from one thread."""
    if in_kernel():
        from IPython.display import display

        from jupyter_plb.client.progress_widget import BatchProgress

        view: ProgressView = BatchProgress(label)
        display(view)
    else:
        view = ProgressLine(counter, label, stream=stream or sys.stderr)
    return LiveProgress(counter, view, running=running).start()


def running_tasks(connection: Any, user: str | None = None) -> Callable[[], set[str]]:
    """What asks the balancer which tasks run now (of ``user``, or of everyone)."""
    query = {"type": "tasks", "state": "running", "limit": RUNNING_LIMIT, **({"user": user} if user else {})}

    def running() -> set[str]:
        return {t["id"] for t in connection.request(dict(query)).header["tasks"]}

    return running


class Progress:
    """A bar being drawn: ``wait()`` for the batch, ``counts``, ``stop()`` drawing, ``futures``."""

    def __init__(self, counter: BatchCounter, drawing: LiveProgress) -> None:
        self.counter = counter
        self._drawing = drawing

    @property
    def view(self) -> ProgressView:
        """The widget (in a notebook) or the text line being drawn."""
        return self._drawing.view

    @property
    def futures(self) -> list[Any]:
        return self.counter.futures

    @property
    def counts(self) -> dict[str, float]:
        return self.counter.counts()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every future settled and the bar shows it; True if they did within ``timeout``."""
        if not self.counter.wait(timeout):
            return False
        self._drawing.join()
        return True

    def stop(self) -> None:
        """Draw the last state and stop, whether or not the batch has finished."""
        self._drawing.stop()


def progress(
    futures_or_map: Any,
    *,
    wait: bool = True,
    label: str | None = None,
    stream: IO[str] | None = None,
) -> Progress:
    """Show how a batch progresses: a future, futures, or what ``Client.map``/``map_futures`` return.

    In a notebook it is a widget, elsewhere a text bar on ``stream`` (standard error). With ``wait``
    (the default) it returns when every future has settled (Ctrl-C stops the bar, not the tasks);
    ``wait=False`` returns at once, the bar going on by itself (``.wait()`` to wait later).
    """
    counter, name, running = _follow(futures_or_map)
    drawing = live(counter, label or name, running, stream)
    shown = Progress(counter, drawing)
    if wait:
        try:
            shown.wait()
        except BaseException:
            shown.stop()
            raise
    return shown


def _follow(target: Any) -> tuple[BatchCounter, str, Callable[[], Collection[str]] | None]:
    """A counter of the target's futures, a label, and how to ask which of them run."""
    if isinstance(target, MapIterator):
        batch = target.batch
        counter = BatchCounter(total=batch.task_count) if batch.task_count is not None else BatchCounter(growing=True)
        batch.follow(counter)
        connection = batch.submitter._connection
        user = batch.submitter._defaults.get("user")
        return counter, f"{batch.name} map", running_tasks(connection, user)
    futures = [target] if isinstance(target, concurrent.futures.Future) else _futures(target)
    owner = next((c for f in futures if (c := getattr(f, "_connection", None)) is not None), None)
    label = getattr(futures[0], "name", "task") if len(futures) == 1 else f"{len(futures)} tasks"
    return BatchCounter(futures), label, running_tasks(owner) if owner is not None else None


def _futures(target: Iterable[Any]) -> list[Any]:
    try:
        futures = list(target)
    except TypeError:
        raise TypeError(f"progress() takes futures or a map, got {type(target).__name__}") from None
    strangers = [f for f in futures if not isinstance(f, concurrent.futures.Future)]
    if strangers:
        raise TypeError(f"progress() takes futures, got a {type(strangers[0]).__name__} among them")
    return futures
