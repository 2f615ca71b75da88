"""Batch jobs in the Lab panel and the monitor page: an adapter's job table, drawn as text.

The table reaches the balancer the way an adapter sends it (``Client.report_jobs``, a signed
client message); the real-Slurm tests (tests/test_slurm.py) check what an adapter puts in it.
Screenshots: ``test-artifacts/lab-panel-jobs.png``, ``test-artifacts/monitor-jobs.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from tests.browser.conftest import ARTIFACTS, HOSTILE, MonitorServer, open_lab_panel
from tests.browser.test_lab_panel import PANEL, TIMEOUT_MS, Lab, lab, lab_extension  # noqa: F401

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect

pytestmark = pytest.mark.timeout(300)


def table(closed: bool = False) -> dict[str, Any]:
    return {
        "id": "adapter-5e1f", "name": "slurm", "kind": "slurm", "closed": closed,
        "minimum": 0, "maximum": 20, "slots_per_job": 4,
        "reason": "12 task(s) waited 2.3 s with no free slot",
        "jobs": [
            {"id": "4101", "state": "running", "hubs": 1, "slots": 4, "busy": 3},
            {"id": "4102", "state": "running", "hubs": 1, "slots": 4, "busy": 4},
            {"id": "4103", "state": "pending", "hubs": 0, "slots": 0, "busy": 0},
            {"id": HOSTILE, "state": "ending", "hubs": 0, "slots": 0, "busy": 0},
        ],
    }


def report(connection_file: Path, closed: bool = False) -> None:
    with Client(connection_file=connection_file, user="plb-adapt") as client:
        client.report_jobs(table(closed))


def test_lab_panel_lists_each_adapters_jobs(lab: Lab, page: Any) -> None:  # noqa: F811 (the fixture)
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    panel = open_lab_panel(page, lab.base, lab.token)
    expect(panel.locator(".jp-plb-body")).to_be_visible(timeout=TIMEOUT_MS)
    title = panel.locator(".jp-plb-section-title", has_text="Batch jobs")
    expect(title).to_be_hidden()  # no launcher reports yet

    report(lab.connection_file)
    expect(title).to_have_text("Batch jobs (4)", timeout=TIMEOUT_MS)
    launcher = panel.locator('.jp-plb-launcher[data-key="adapter-5e1f"]')
    expect(launcher.locator(".jp-plb-launcher-head")).to_contain_text("2 running")
    expect(launcher.locator(".jp-plb-launcher-head")).to_contain_text("1 pending, 2 running, 1 ending · 0–20 jobs")
    rows = launcher.locator(".jp-plb-job-row")
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_contain_text("4101")
    expect(rows.nth(0)).to_contain_text("3/4 busy")
    expect(launcher.locator('.jp-plb-job-row[data-key="4103"][data-state="pending"]')).to_contain_text("no hub yet")
    expect(rows.nth(3).locator(".jp-plb-job-id")).to_have_text(HOSTILE)  # as text, not markup
    assert page.locator('img[src="x"], [onerror]').count() == 0
    launcher.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-panel-jobs.png"))

    report(lab.connection_file, closed=True)
    expect(title).to_be_hidden(timeout=TIMEOUT_MS)
    assert not page_errors, page_errors


def test_monitor_page_lists_each_adapters_jobs(standalone_monitor: MonitorServer, page: Any) -> None:
    page.goto(standalone_monitor.url)
    section = page.locator("#jobs-panel")
    expect(page.locator("html")).not_to_have_attribute("data-snapshots", "0", timeout=TIMEOUT_MS)
    expect(section).to_be_hidden()
    report(standalone_monitor.connection_file)
    expect(section).to_be_visible(timeout=TIMEOUT_MS)
    expect(section.locator("#jobs-count")).to_have_text("4 jobs")
    expect(section.locator('tr.job-row[data-key="adapter-5e1f/4102"][data-state="running"]')).to_contain_text("4 / 4")
    expect(section.locator('tr.job-row[data-state="pending"]')).to_contain_text("4103")
    expect(section.locator("tr.launcher-row")).to_contain_text("1 pending, 2 running, 1 ending · 0 to 20 jobs")
    assert page.locator('#jobs-table img, [onerror]').count() == 0
    section.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "monitor-jobs.png"))
    report(standalone_monitor.connection_file, closed=True)
    expect(section).to_be_hidden(timeout=TIMEOUT_MS)
