"""The notebook view of a batch's progress: an ipywidget bar (imported only inside a kernel)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

from jupyter_plb.client.display import duration, esc


def set_traits(widget: widgets.Widget, **values: Any) -> None:
    """Assign only the traits that changed, as one message."""
    changed = {k: v for k, v in values.items() if getattr(widget, k) != v}
    if changed:
        with widget.hold_sync():
            for key, value in changed.items():
                setattr(widget, key, value)


class BatchProgress(widgets.VBox):
    """A batch's bar and counts (done/failed/running/queued, rate, ETA) and its output tail."""

    def __init__(self, label: str = "") -> None:
        self.bar = widgets.IntProgress(value=0, min=0, max=1, bar_style="info", layout=widgets.Layout(width="30%"))
        self.title = widgets.HTML(
            f"<b style='white-space:nowrap'>{esc(label)}</b>",
            layout=widgets.Layout(width="auto", margin="0 8px 0 0"),
        )
        self.numbers = widgets.HTML(layout=widgets.Layout(flex="1"))
        self.output = widgets.HTML()
        super().__init__([widgets.HBox([self.title, self.bar, self.numbers]), self.output])
        self.add_class("plb-batch")

    def show(self, counts: dict[str, float], output: Sequence[str] = (), final: bool = False) -> None:
        total = int(counts["total"])
        finished = int(counts["done"] + counts["failed"] + counts["cancelled"])
        style = "danger" if counts["failed"] else ("success" if final and finished >= total else "info")
        eta = counts["eta"]
        numbers = (
            f"{finished}/{total} · done {int(counts['done'])} · failed {int(counts['failed'])} · "
            f"running {int(counts['running'])} · queued {int(counts['queued'])} · "
            f"{counts['rate']:.0f}/s · "
            + (f"took {duration(counts['elapsed'])}" if final else f"ETA {duration(eta) if eta == eta else '?'}")
        )
        if counts["cancelled"]:
            numbers += f" · cancelled {int(counts['cancelled'])}"
        tail = "\n".join(output)
        set_traits(self.bar, max=max(total, 1), value=finished, bar_style=style)
        set_traits(self.numbers, value=f"<span class='plb-counts'>{esc(numbers)}</span>")
        set_traits(
            self.output,
            value=(
                f"<pre class='plb-output' style='margin:0;max-height:12em;overflow:auto'>{esc(tail)}</pre>"
                if tail
                else ""
            ),
        )
