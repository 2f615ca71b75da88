"""The Lab panel's task detail: a recent failure opens its traceback, output and arguments."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_plb.client import Client
from tests.browser import test_lab_panel
from tests.browser.conftest import ARTIFACTS, HOSTILE, open_lab_panel
from tests.browser.test_lab_panel import TIMEOUT_MS, Lab, assert_no_markup

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect

pytestmark = pytest.mark.timeout(420)
#: The panel test's JupyterLab fixtures: ``lab``, and the built extension it links.
lab = test_lab_panel.lab
lab_extension = test_lab_panel.lab_extension


def broken_task() -> Any:
    def load_table(path: str) -> None:
        print(f"reading {path}")
        print(HOSTILE)
        raise FileNotFoundError(path)

    return load_table


def test_a_recent_failure_opens_its_detail_in_the_lab_panel(lab: Lab, page: Any) -> None:
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    panel = open_lab_panel(page, lab.base, lab.token)
    expect(panel.locator(".jp-plb-conn.jp-plb-mod-live")).to_be_visible(timeout=TIMEOUT_MS)

    with Client(connection_file=lab.connection_file, user="alice") as client:
        failing = client.submit(broken_task(), "/data/table.csv")
        assert isinstance(failing.exception(60), FileNotFoundError)

    failure = panel.locator(".jp-plb-failures li")
    expect(failure).to_have_count(1, timeout=TIMEOUT_MS)
    failure.locator("button.jp-plb-task-details").click()
    body = page.locator(".jp-Dialog .jp-plb-task-detail")
    expect(body).to_have_attribute("data-state", "failed", timeout=TIMEOUT_MS)
    expect(body).to_have_attribute("data-task-id", failing.task_id)
    expect(page.locator(".jp-Dialog-header")).to_have_text(f"Task {failing.task_id}")
    expect(body.locator('[data-field="traceback"] pre')).to_contain_text("FileNotFoundError: /data/table.csv")
    expect(body.locator('[data-field="stdout"] pre')).to_have_text(f"reading /data/table.csv\n{HOSTILE}\n")
    expect(body.locator('[data-field="args"] pre')).to_have_text("'/data/table.csv'")
    expect(body.locator('dd[data-field="user"]')).to_have_text("alice")
    expect(body.locator('dd[data-field="worker"]')).to_contain_text("worker_")
    assert_no_markup(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-panel-task-detail.png"))

    page.locator(".jp-Dialog button", has_text="Close").click()
    expect(page.locator(".jp-Dialog")).to_have_count(0, timeout=TIMEOUT_MS)
    assert page_errors == []
