"""Live ipywidgets views: a future's status line and the :class:`Dashboard` (a batch's bar is
:class:`jupyter_plb.client.progress.BatchProgress`).

Core widgets only (VBox/HBox/HTML/IntProgress/Button/Text), so they render in JupyterLab,
Notebook 7 and VS Code without a front-end extension of ours. Each view is written by one
background thread (the kernel's main thread may be busy in another cell), with ``hold_sync`` so
related changes travel in one message. Widget updates from threads need ipykernel >= 7.1.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

from jupyter_plb.client.display import (
    HUB_HEADERS,
    duration,
    esc,
    future_html,
    html_table,
    hub_rows,
)
from jupyter_plb.client.progress_widget import set_traits
from jupyter_plb.core.snapshot import version_problem

#: Seconds between refreshes of the live future views.
FUTURE_REFRESH = 0.5
#: Throughput points (seconds) drawn in the dashboard's sparkline.
SPARK_POINTS = 60
HEALTH_COLOURS = {"ok": "#2ca02c", "warning": "#b36b00", "error": "#d62728"}


def _close_tree(widget: widgets.Widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


# -- futures ---------------------------------------------------------------------------------------
class _LiveFutures:
    """One daemon thread re-rendering displayed unfinished futures; it ends when none is left."""

    def __init__(self) -> None:
        self._views: list[tuple[Any, widgets.HTML]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, fut: Any, view: widgets.HTML) -> None:
        with self._lock:
            self._views.append((fut, view))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="plb-futures", daemon=True)
                self._thread.start()
        fut.add_done_callback(lambda _: self._wake.set())

    def _run(self) -> None:
        while True:
            self._wake.wait(FUTURE_REFRESH)
            self._wake.clear()
            with self._lock:
                views = list(self._views)
            for fut, view in views:
                set_traits(view, value=future_html(fut))
            with self._lock:
                self._views = [(f, v) for f, v in self._views if not f.done()]
                if not self._views:
                    self._thread = None
                    return


_live_futures = _LiveFutures()


def show_future(fut: Any) -> None:
    """Display a future: a widget that follows it while it runs, plain HTML once it is done.

    Registered as the IPython display hook of ``PlbFuture`` by ``%load_ext jupyter_plb`` in a
    kernel; front ends without widgets fall back to the ``text/html`` of the same bundle.
    """
    from IPython.display import display

    data = {"text/plain": repr(fut), "text/html": future_html(fut)}
    if not fut.done():
        view = widgets.HTML(future_html(fut))
        data.update(view._repr_mimebundle_())
        data["text/plain"] = repr(fut)
        _live_futures.add(fut, view)
    display(data, raw=True)




# -- dashboard -------------------------------------------------------------------------------------
def sparkline(points: Sequence[float], width: int = 240, height: int = 32) -> str:
    """An inline SVG polyline of numbers (tasks done per second)."""
    if not points:
        return ""
    top = max(max(points), 1)
    step = width / max(len(points) - 1, 1)
    coords = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(points))
    return (
        f'<svg width="{width}" height="{height}" class="plb-spark">'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{coords}"/></svg>'
    )


def header_html(snapshot: dict[str, Any]) -> str:
    """Balancer, health, totals and throughput, as the snapshot (core/snapshot.py) words them."""
    balancer, totals, health = snapshot["balancer"], snapshot["totals"], snapshot["health"]
    colour = HEALTH_COLOURS.get(health["status"], "#555")
    counts = " · ".join(
        f"<span class='plb-{esc(k)}'>{esc(k)} <b>{esc(totals[k])}</b></span>"
        for k in ("queued", "running", "done", "failed", "cancelled")
    )
    messages = "".join(f"<div style='color:{colour}'>{esc(m)}</div>" for m in health["messages"])
    done = [p["done"] for p in snapshot["throughput"]][-SPARK_POINTS:]
    return (
        f"<div class='plb-header'><b>jupyter_plb</b> balancer "
        f"<code>{esc(balancer['id'] or '?')}</code>"
        f" · up {duration(float(balancer['uptime']))} · "
        f"<b style='color:{colour}'>{esc(health['label'])}</b></div>"
        f"<div class='plb-totals'>{counts}</div>"
        f"<div class='plb-throughput'><span class='plb-rate'>{snapshot['rates']['done_per_s']:.0f}</span> tasks/s "
        f"{sparkline(done)}</div>{messages}"
    )


def failures_html(snapshot: dict[str, Any], limit: int = 10) -> str:
    """The newest failures first (the snapshot's order)."""
    failures = snapshot["recent_failures"][:limit]
    if not failures:
        return ""
    rows = [
        [time.strftime("%H:%M:%S", time.localtime(f["time"])), f.get("id", ""), f["name"], f["user"],
         f.get("error", "")]
        for f in failures
    ]
    return "<b>Recent failures</b>" + html_table(("time", "task", "name", "user", "error"), rows)


def hubs_html(snapshot: dict[str, Any]) -> str:
    hubs = snapshot["hubs"]
    if not hubs:
        return "<b>Hubs</b> <i>none connected: start one with <code>plb hub --connect FILE</code></i>"
    return "<b>Hubs and workers</b>" + html_table(HUB_HEADERS, hub_rows(hubs))


class _UserRow(widgets.HBox):
    def __init__(self, user: str, on_cancel: Any) -> None:
        self.user = user
        self.label = widgets.HTML(layout=widgets.Layout(width="45%"))
        self.queue = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="30%"))
        self.cancel = widgets.Button(
            description="cancel queued",
            tooltip="cancel this user's queued tasks",
            button_style="warning",
            layout=widgets.Layout(width="auto"),
        )
        self.cancel.on_click(lambda _: on_cancel(user))
        super().__init__([self.label, self.queue, self.cancel])
        self.add_class("plb-user")

    def show(self, info: dict[str, Any], longest: int) -> None:
        set_traits(
            self.label,
            value=(
                f"<b>{esc(self.user)}</b> queued "
                f"<b class='plb-user-queued'>{esc(info['queued'])}</b> · "
                f"running {esc(info['running'])} · done {esc(info.get('done', 0))} · "
                f"failed {esc(info.get('failed', 0))}"
            ),
        )
        set_traits(self.queue, max=max(longest, 1), value=int(info["queued"]))


class Dashboard(widgets.VBox):
    """A live panel of the balancer: totals and throughput, per-user queues, hubs and workers,
    recent failures, and cancel buttons.

    ``Dashboard()`` connects with ``Client()`` (``$PLB_CONNECTION_FILE``) and closes that client
    when it is closed; ``Dashboard(client)`` uses yours. One background thread refreshes it every
    ``refresh`` seconds (and at once after a button), also while another cell is running.
    """

    def __init__(self, client: Any = None, refresh: float = 1.0) -> None:
        if not refresh > 0:
            raise ValueError(f"refresh must be a positive number of seconds, not {refresh}")
        if client is None:
            from jupyter_plb.client.executor import Client

            client = Client()
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client
        self.refresh = refresh
        self.header = widgets.HTML("<i>connecting…</i>")
        self.workers = widgets.IntProgress(
            value=0,
            min=0,
            max=1,
            description="busy workers",
            style={"description_width": "initial"},
        )
        self.workers_label = widgets.HTML()
        self.users = widgets.VBox()
        self.hubs = widgets.HTML()
        self.failures = widgets.HTML()
        self.task_id = widgets.Text(placeholder="task id", layout=widgets.Layout(width="18em"))
        self.cancel_task = widgets.Button(description="cancel task", button_style="warning")
        self.close_button = widgets.Button(description="close", tooltip="stop and close the dashboard")
        self.message = widgets.HTML()
        self.cancel_task.on_click(lambda _: self._request("task", self.task_id.value.strip()))
        self.close_button.on_click(lambda _: self.close())
        self._rows: dict[str, _UserRow] = {}
        self._actions: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closed = False
        self.refreshed = 0
        super().__init__(
            [
                self.header,
                widgets.HBox([self.workers, self.workers_label]),
                widgets.HTML("<b>Users</b>"),
                self.users,
                self.hubs,
                self.failures,
                widgets.HBox([self.task_id, self.cancel_task, self.close_button]),
                self.message,
            ]
        )
        self.add_class("plb-dashboard")
        self._thread = threading.Thread(target=self._run, name="plb-dashboard", daemon=True)
        self._thread.start()

    # -- gestures (main thread): queue and wake, never block ------------------------------------
    def _request(self, kind: str, target: str) -> None:
        if target:
            self._actions.put((kind, target))
            self._wake.set()

    def cancel_user(self, user: str) -> None:
        """Cancel ``user``'s queued tasks (done by the dashboard's thread, then it refreshes)."""
        self._request("user", user)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the refresh thread, close the widgets and the client the dashboard opened."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
        for child in self.children:
            _close_tree(child)
        for row in self._rows.values():
            _close_tree(row)
        if self._owns_client:
            self.client.close()
        super().close()

    # -- the refresh thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._act()
            try:
                snapshot = self.client.status()
                if self._closed:
                    return
                self.show(snapshot)
            except Exception as exc:  # the balancer is gone or slow: say so, keep trying
                if self._closed:
                    return
                set_traits(
                    self.message,
                    value=f"<span style='color:#d62728'>cannot refresh: {esc(exc)}</span>",
                )
            self._wake.wait(self.refresh)
            self._wake.clear()

    def _act(self) -> None:
        while True:
            try:
                kind, target = self._actions.get_nowait()
            except queue.Empty:
                return
            try:
                text = self._cancel_user(target) if kind == "user" else self._cancel_task(target)
            except Exception as exc:
                text = f"<span style='color:#d62728'>cancel failed: {esc(exc)}</span>"
            set_traits(self.message, value=text)

    def _cancel_user(self, user: str) -> str:
        cancelled = 0
        for _ in range(1000):  # 1000 ids per request; a user holds at most LB_QUEING_MAXPERUSER
            ids = [t["id"] for t in self.client.tasks(state="queued", user=user, limit=1000)["tasks"]]
            if not ids:
                break
            cancelled += sum(bool(r.get("cancelled")) for r in self.client.cancel(ids).values())
        return f"cancelled {cancelled} queued task(s) of <b>{esc(user)}</b>"

    def _cancel_task(self, task_id: str) -> str:
        reply = self.client.cancel([task_id]).get(task_id, {})
        if reply.get("cancelled"):
            return f"cancelled task <code>{esc(task_id)}</code>"
        state = reply.get("state")
        why = f"it is already {esc(state)}" if state else "the balancer does not know it"
        return f"task <code>{esc(task_id)}</code> not cancelled: {why}"

    def show(self, snapshot: dict[str, Any]) -> None:
        """Render a snapshot (the shape of ``Client.status()``, core/snapshot.py)."""
        problem = version_problem(snapshot)
        if problem is not None:
            set_traits(self.message, value=f"<span style='color:#d62728'>{esc(problem)}</span>")
            return
        workers = snapshot["workers"]
        users = snapshot["users"]
        longest = max((int(u["queued"]) for u in users), default=0)
        set_traits(self.header, value=header_html(snapshot))
        set_traits(self.workers, max=max(workers["total"], 1), value=workers["busy"])
        set_traits(
            self.workers_label, value=f"<span class='plb-busy'>{workers['busy']}</span> / {workers['total']}"
        )
        for info in users:
            row = self._rows.get(info["user"])
            if row is None:
                row = self._rows[info["user"]] = _UserRow(info["user"], self.cancel_user)
            row.show(info, longest)
        shown = tuple(self._rows[u["user"]] for u in users)
        if shown != self.users.children:
            self.users.children = shown
        set_traits(self.hubs, value=hubs_html(snapshot))
        set_traits(self.failures, value=failures_html(snapshot))
        self.refreshed += 1
