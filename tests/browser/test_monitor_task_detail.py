"""The monitor's task search and task detail in a real browser: found, shown, escaped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from jupyter_plb.client import Client
from tests.browser.conftest import ARTIFACTS, HOSTILE, MonitorServer

TIMEOUT_MS = 30_000


def kaput_task() -> Callable[[int], None]:
    def simulate_kaput(seed: int) -> None:
        print(f"step 1 of seed {seed}")
        print(HOSTILE)
        raise RuntimeError("kaput")

    return simulate_kaput


def test_search_finds_a_failed_task_and_its_detail_shows_traceback_and_output(
    page: Any, standalone_monitor: MonitorServer
) -> None:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: (problems.append(f"dialog {dialog.message}"), dialog.dismiss()))

    with Client(connection_file=standalone_monitor.connection_file, user="alice") as client:
        failing = client.submit(kaput_task(), 7)
        done = [client.submit(abs, -i) for i in range(5)]
        assert isinstance(failing.exception(60), RuntimeError)
        assert [f.result(60) for f in done] == list(range(5))

    page.goto(standalone_monitor.url)
    page.wait_for_selector('body[data-conn="live"]', timeout=TIMEOUT_MS)
    rows = page.locator("#tasks-table tbody tr")
    expect(rows).to_have_count(6, timeout=TIMEOUT_MS)

    page.fill("#filter-q", "state:FAILURE kaput")
    page.press("#filter-q", "Enter")
    expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
    expect(rows.first).to_have_attribute("data-state", "failed")
    expect(rows.first).to_have_attribute("data-key", failing.task_id)
    expect(page.locator("#tasks-count")).to_have_text("(1–1 of 1)")

    page.fill("#filter-q", "user:alice")
    page.check('#filter-states input[value="done"]')  # the change searches at once
    expect(rows).to_have_count(5, timeout=TIMEOUT_MS)
    expect(page.locator('#tasks-table tbody tr[data-state="done"]')).to_have_count(5)
    page.check('#filter-states input[value="failed"]')
    expect(rows).to_have_count(6, timeout=TIMEOUT_MS)
    page.uncheck('#filter-states input[value="done"]')
    expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#tasks-panel").screenshot(path=str(ARTIFACTS / "monitor-task-search.png"))

    page.locator(f'#tasks-table a.task-link[href="#task={failing.task_id}"]').click()
    detail = page.locator("#task-detail")
    expect(detail).to_have_attribute("data-state", "failed", timeout=TIMEOUT_MS)
    expect(detail).to_have_attribute("data-task-id", failing.task_id)
    expect(page.locator("#task-detail-traceback")).to_contain_text("RuntimeError: kaput")
    expect(page.locator("#task-detail-traceback")).to_contain_text("in simulate_kaput")
    expect(page.locator("#task-detail-stdout")).to_have_text(f"step 1 of seed 7\n{HOSTILE}\n")
    expect(page.locator("#task-detail-args")).to_have_text("7")
    expect(page.locator('#task-detail-fields dd[data-field="user"]')).to_have_text("alice")
    expect(page.locator('#task-detail-fields dd[data-field="worker"]')).to_contain_text("worker_")
    assert page.locator("#task-detail .td-block[data-field='stderr']").is_hidden()
    assert page.locator("img, [onerror]").count() == 0
    page.screenshot(path=str(ARTIFACTS / "monitor-task-detail.png"))

    page.keyboard.press("Escape")
    expect(detail).not_to_have_attribute("open", "")
    page.wait_for_function("() => window.location.hash === ''", timeout=TIMEOUT_MS)  # the fragment is dropped

    # A link to the page with the fragment opens the task at once.
    page.goto(page.evaluate("window.location.href") + f"#task={done[0].task_id}")
    expect(detail).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    expect(page.locator('#task-detail-fields dd[data-field="name"]')).to_have_text("abs")
    assert page.locator("#task-detail .td-block[data-field='traceback']").is_hidden()
    assert problems == []
