"""Future cards, batch progress (text and widget) and the Dashboard, against a real balancer."""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import comm
import ipywidgets
import pytest
from comm.base_comm import BaseComm

from jupyter_plb.client import Client, display, progress_widget
from jupyter_plb.jupyter import widgets

from .conftest import running_balancer, wait_for

pytestmark = pytest.mark.timeout(60)

PAYLOAD = "<img src=x onerror=alert(1)>"


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def chatty(word: str) -> str:
    print(f"out {word}")
    import sys

    print(f"err {word}", file=sys.stderr)
    return word


def inverse(x: float) -> float:
    return 1 / x


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A balancer with one hub whose name is an HTML injection attempt."""
    with running_balancer(tmp_path_factory.mktemp("plb"), PAYLOAD) as connection_file:
        yield connection_file


@pytest.fixture
def plb(balancer: Path) -> Iterator[Client]:
    with Client(connection_file=balancer, user="tester") as client:
        yield client
        client.shutdown(wait=False, cancel_futures=True)


def widget_texts(widget: ipywidgets.Widget) -> list[str]:
    """Every string a widget tree shows: HTML values, descriptions, tooltips, placeholders."""
    texts = [
        v for n in ("value", "description", "tooltip", "placeholder") if isinstance(v := getattr(widget, n, None), str)
    ]
    for child in getattr(widget, "children", ()):
        texts.extend(widget_texts(child))
    return texts


class Recorder(BaseComm):
    """A comm that keeps what would be sent to the front end."""

    sent: list[dict[str, Any]] = []

    def publish_msg(
        self,
        msg_type: str,
        data: Any = None,
        metadata: Any = None,
        buffers: Any = None,
        **keys: Any,
    ) -> None:
        if msg_type == "comm_msg":
            Recorder.sent.append(data)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    Recorder.sent = []
    monkeypatch.setattr(comm, "create_comm", Recorder)
    return Recorder.sent


# -- the future card -------------------------------------------------------------------------------
def test_a_done_future_shows_state_place_time_and_output(plb: Client) -> None:
    fut = plb.submit(chatty, PAYLOAD)
    assert fut.result(30) == PAYLOAD
    card = fut._repr_html_()
    assert "done" in card and fut.worker in card and fut.hub in card and " ms" in card
    assert f"out {display.esc(PAYLOAD)}" in card and f"err {display.esc(PAYLOAD)}" in card
    assert "<img" not in card


def test_a_failed_future_shows_the_remote_traceback(plb: Client) -> None:
    fut = plb.submit(inverse, 0)
    with pytest.raises(ZeroDivisionError):
        fut.result(30)
    card = display.future_html(fut)
    assert "failed" in card and "Traceback (most recent call last)" in card
    assert "ZeroDivisionError: division by zero" in card and "in inverse" in card


def test_print_output_writes_the_task_streams(plb: Client, capsys: pytest.CaptureFixture[str]) -> None:
    fut = plb.submit(chatty, "x")
    fut.result(30)
    display.print_output(fut)
    assert capsys.readouterr() == ("out x\n", "err x\n")


def test_show_future_follows_a_running_future(plb: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[dict[str, Any]] = []
    monkeypatch.setattr("IPython.display.display", lambda data, raw: shown.append(data))
    fut = plb.submit(nap, 0.3)
    widgets.show_future(fut)
    assert "application/vnd.jupyter.widget-view+json" in shown[0]
    assert "text/html" in shown[0] and shown[0]["text/plain"] == repr(fut)
    view = next(v for f, v in widgets._live_futures._views if f is fut)
    fut.result(30)
    wait_for(lambda: "done" in view.value and "on worker_" in view.value, what="the view to show done")
    done = plb.submit(nap, 0)
    done.result(30)
    widgets.show_future(done)
    assert "application/vnd.jupyter.widget-view+json" not in shown[1]


# -- batches ---------------------------------------------------------------------------------------
def test_batch_counter_counts_as_futures_settle(plb: Client) -> None:
    futures = [plb.submit(inverse, x) for x in (1, 0, 2)]
    counter = display.BatchCounter(futures)
    assert counter.wait(30)
    counts = counter.counts()
    assert (counts["done"], counts["failed"], counts["running"], counts["queued"]) == (2, 1, 0, 0)
    assert counts["rate"] > 0


def test_batch_counter_with_a_total_and_running_ids(plb: Client) -> None:
    stuck = plb.options(priority=1e12).submit(nap, 0)
    counter = display.BatchCounter(total=3)
    counter.add([stuck])
    assert not counter.wait(0.01)
    assert (counter.counts()["running"], counter.counts()["queued"]) == (0, 3)
    counts = counter.counts(running={stuck.task_id})
    assert (counts["running"], counts["queued"]) == (1, 2)
    counter.close()
    assert not counter.wait(None)  # closed: returns at once, not settled


def test_progress_line_draws_until_the_batch_settles(plb: Client) -> None:
    stream = io.StringIO()
    futures = list(plb.map_futures(nap, [0.01] * 6))
    counts = display.ProgressLine(futures, label="naps", stream=stream, refresh=20).run()
    assert counts["done"] == 6
    assert stream.getvalue().endswith("\n")
    assert "naps [##############################] 6/6 done 6 failed 0" in stream.getvalue()


def test_live_progress_feeds_a_widget_from_one_thread(plb: Client) -> None:
    view = progress_widget.BatchProgress("naps")
    counter = display.BatchCounter(total=8)
    asked: list[float] = []

    def running() -> set[str]:
        asked.append(time.monotonic())
        return {t["id"] for t in plb.tasks(state="running", user="tester")["tasks"]}

    live = display.LiveProgress(counter, view, refresh=20, running=running).start()
    counter.add(plb.map_futures(chatty, ["a"] * 4 + ["b"] * 4))
    live.join(30)
    assert (view.bar.value, view.bar.max, view.bar.bar_style) == (8, 8, "success")
    assert "8/8 · done 8 · failed 0" in view.numbers.value and "took" in view.numbers.value
    assert all(b - a >= 0.99 for a, b in itertools.pairwise(asked))  # at most once a second
    counter_failed = display.BatchCounter([plb.submit(inverse, 0)])
    display.LiveProgress(counter_failed, view, refresh=20).start().join(30)
    assert view.bar.bar_style == "danger"


def test_batch_progress_shows_the_output_tail_while_running() -> None:
    view = progress_widget.BatchProgress(PAYLOAD)
    counts = {
        "total": 4,
        "done": 1,
        "failed": 0,
        "cancelled": 0,
        "running": 1,
        "queued": 2,
        "rate": 2.0,
        "eta": 1.5,
        "elapsed": 0.5,
    }
    view.show(counts, [PAYLOAD, "line 2"], final=False)
    assert "ETA 1.5 s" in view.numbers.value and "running 1 · queued 2" in view.numbers.value
    assert display.esc(PAYLOAD) in view.output.value and "<img" not in "".join(widget_texts(view))


def test_update_sends_changed_traits_as_one_message(recorded: list[dict[str, Any]]) -> None:
    bar = ipywidgets.IntProgress()
    recorded.clear()
    progress_widget.set_traits(bar, max=10, value=5, bar_style="danger")
    assert len(recorded) == 1 and recorded[0]["state"] == {
        "max": 10,
        "value": 5,
        "bar_style": "danger",
    }
    progress_widget.set_traits(bar, max=10, value=5)
    assert len(recorded) == 1


# -- the dashboard ---------------------------------------------------------------------------------
@pytest.fixture
def dashboard(plb: Client) -> Iterator[widgets.Dashboard]:
    dash = widgets.Dashboard(plb, refresh=0.1)
    yield dash
    dash.close()


def test_dashboard_shows_hubs_workers_users_and_throughput(plb: Client, dashboard: widgets.Dashboard) -> None:
    plb.submit(nap, 0).result(30)
    wait_for(lambda: "tester" in "".join(widget_texts(dashboard.users)), what="the user row")
    assert "worker_" in dashboard.hubs.value and "any" in dashboard.hubs.value
    # the throughput sparkline needs a whole second of history: a fresh balancer may have none
    wait_for(lambda: "<svg" in dashboard.header.value, what="the throughput sparkline")
    assert "tasks/s" in dashboard.header.value
    assert dashboard.workers.max == 2


def test_dashboard_keeps_updating_while_the_main_thread_blocks(plb: Client, dashboard: widgets.Dashboard) -> None:
    wait_for(lambda: dashboard.refreshed >= 1, what="a first refresh")
    seen: list[str] = []
    dashboard.header.observe(lambda change: seen.append(change["new"]), "value")
    busy: list[int] = []
    dashboard.workers.observe(lambda change: busy.append(change["new"]), "value")
    futures = [plb.submit(nap, 0.05) for _ in range(30)]
    concurrent.futures.wait(futures, timeout=30)  # blocks like a cell waiting for results
    done_counts = {int(m.group(1)) for v in seen if (m := re.search(r"done <b>(\d+)</b>", v))}
    assert len(done_counts) >= 3, done_counts
    assert 2 in busy


def test_dashboard_escapes_every_string_from_tasks_users_and_hubs(plb: Client, dashboard: widgets.Dashboard) -> None:
    def evil() -> None:
        raise ValueError(PAYLOAD)

    evil.__qualname__ = PAYLOAD
    with pytest.raises(ValueError):
        plb.options(user=PAYLOAD).submit(evil).result(30)
    stuck = plb.options(user=PAYLOAD, priority=1e12).submit(nap, 0)
    escaped = display.esc(PAYLOAD)
    wait_for(
        lambda: escaped in dashboard.failures.value and escaped in "".join(widget_texts(dashboard.users)),
        what="the failure and the user row",
    )
    assert "<img" not in "".join(widget_texts(dashboard))
    assert escaped in dashboard.hubs.value  # hub name
    assert dashboard.failures.value.count(escaped) >= 3  # task name, user, error
    stuck.cancel()


def test_dashboard_cancels_a_users_queued_tasks(plb: Client, dashboard: widgets.Dashboard) -> None:
    carol = plb.options(user="carol", priority=1e12)
    futures = [carol.submit(nap, 0) for _ in range(5)]
    wait_for(lambda: "carol" in dashboard._rows, what="carol's row")
    dashboard._rows["carol"].cancel.click()
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 5 and all(f.cancelled() for f in futures)
    wait_for(
        lambda: "cancelled 5 queued task(s) of <b>carol</b>" in dashboard.message.value,
        what="the message",
    )


def test_dashboard_cancels_a_task_by_id(plb: Client, dashboard: widgets.Dashboard) -> None:
    stuck = plb.options(priority=1e12).submit(nap, 0)
    dashboard.task_id.value = f" {stuck.task_id} "
    dashboard.cancel_task.click()
    concurrent.futures.wait([stuck], timeout=30)
    assert stuck.cancelled()
    wait_for(
        lambda: f"cancelled task <code>{stuck.task_id}</code>" in dashboard.message.value,
        what="message",
    )
    dashboard.task_id.value = stuck.task_id
    dashboard.cancel_task.click()
    wait_for(lambda: "not cancelled: it is already cancelled" in dashboard.message.value, what="message")
    dashboard.task_id.value = "t_unknown"
    dashboard.cancel_task.click()
    wait_for(lambda: "the balancer does not know it" in dashboard.message.value, what="message")


def test_dashboard_stops_when_closed(plb: Client) -> None:
    dash = widgets.Dashboard(plb, refresh=0.1)
    wait_for(lambda: dash.refreshed >= 1, what="a first refresh")
    dash.close_button.click()
    assert not dash.running and dash.comm is None and dash.header.comm is None
    refreshed = dash.refreshed
    plb.submit(nap, 0).result(30)
    assert dash.refreshed == refreshed
    assert not plb._connection.closed  # the client was the caller's


def test_dashboard_owns_the_client_it_opened(balancer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLB_CONNECTION_FILE", str(balancer))
    dash = widgets.Dashboard(refresh=0.1)
    wait_for(lambda: dash.refreshed >= 1, what="a first refresh")
    dash.close()
    assert dash.client._connection.closed


def test_dashboard_sends_nothing_when_nothing_changed(plb: Client, recorded: list[dict[str, Any]]) -> None:
    dash = widgets.Dashboard(plb, refresh=60)
    try:
        wait_for(lambda: dash.refreshed >= 1, what="a first refresh")
        snapshot = plb.status()
        dash.show(snapshot)
        recorded.clear()
        dash.show(snapshot)
        assert recorded == []
    finally:
        dash.close()


def test_dashboard_says_when_it_cannot_refresh(balancer: Path) -> None:
    client = Client(connection_file=balancer)
    client.close()
    dash = widgets.Dashboard(client, refresh=0.1)
    try:
        wait_for(lambda: "cannot refresh" in dash.message.value, what="the error line")
        assert "closed" in dash.message.value and dash.running
    finally:
        dash.close()


def test_dashboard_and_status_report_refuse_a_snapshot_of_another_schema(plb: Client) -> None:
    dash = widgets.Dashboard(plb, refresh=60)
    try:
        wait_for(lambda: dash.refreshed >= 1, what="a first refresh")
        header, refreshed = dash.header.value, dash.refreshed
        dash.show({**plb.status(), "schema": 99})
        assert "speaks snapshot schema 99" in dash.message.value
        assert dash.header.value == header and dash.refreshed == refreshed, "nothing of it is drawn"
    finally:
        dash.close()
    report = display.status_report({"schema": 99})
    assert report.text.startswith("the balancer speaks snapshot schema 99, this view understands schema 1")
