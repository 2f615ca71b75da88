"""The monitor page in a real browser, on a real server with a hub: live, and no XSS."""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import expect

from jupyter_plb.client import Client
from tests.browser.conftest import ARTIFACTS, HOSTILE, MonitorServer, hostile_task

TIMEOUT_MS = 30_000


def test_monitor_page_shows_workers_queues_and_hostile_names_as_text(
    page: Any, monitor_server: MonitorServer
) -> None:
    dialogs: list[str] = []
    problems: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: Any) -> None:
        if message.type == "error":  # CSP violations are reported here
            problems.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))

    page.goto(monitor_server.url)
    page.wait_for_selector('body[data-conn="live"]', timeout=TIMEOUT_MS)
    expect(page.locator("#worker-table tr.worker-row")).to_have_count(2, timeout=TIMEOUT_MS)
    assert page.locator('#worker-table tr.worker-row[data-state="busy"]').count() == 0
    queue_chart = page.locator("#queue-chart")
    expect(queue_chart).to_have_attribute("data-series", "0")

    with Client(connection_file=monitor_server.connection_file, user="browser") as client:
        # More tasks than the 2 workers take with their prefetch, so a queue builds up.
        futures = [client.submit(time.sleep, 0.2) for _ in range(40)]
        futures += [client.submit(hostile_task(0.2)) for _ in range(2)]
        busy = page.locator('#worker-table tr.worker-row[data-state="busy"]')
        busy.first.wait_for(timeout=TIMEOUT_MS)
        expect(queue_chart).not_to_have_attribute("data-series", "0", timeout=TIMEOUT_MS)
        for future in futures:
            future.result(60)

    expect(page.locator("#total-done")).to_have_text(str(len(futures)), timeout=TIMEOUT_MS)
    expect(busy).to_have_count(0, timeout=TIMEOUT_MS)
    stats = page.locator("#stats-table tbody")
    stats.get_by_text(HOSTILE, exact=True).first.wait_for(timeout=TIMEOUT_MS)
    expect(stats.locator("tr")).to_have_count(2, timeout=TIMEOUT_MS)
    assert page.locator("img, [onerror]").count() == 0
    assert dialogs == []
    expect(page.locator("#task-stream")).not_to_have_attribute("data-rects", "0")

    ARTIFACTS.mkdir(exist_ok=True)
    name = "monitor.png" if monitor_server.kind == "jupyter" else "monitor-standalone.png"
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    assert problems == []
