"""The Lab panel shows each worker's CPU and resident memory, and a hub's version skew."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, open_lab_panel
from tests.browser.test_lab_panel import PANEL, TIMEOUT_MS, Lab, lab, lab_extension  # noqa: F401 (fixtures)
from tests.test_version_skew import OTHER, FakeHub

pytestmark = pytest.mark.timeout(420)


def test_lab_panel_shows_worker_usage_and_version_skew(lab: Lab, page: Any) -> None:  # noqa: F811
    stop = threading.Event()

    def fake_hub() -> None:  # a hub reporting other versions; its socket lives on this thread
        hub = FakeHub(lab.connection_file, OTHER)
        hub.register()
        while not stop.wait(0.5):
            hub.beat()
        hub.close()

    thread = threading.Thread(target=fake_hub)
    thread.start()
    try:
        panel = open_lab_panel(page, lab.base, lab.token)
        expect(panel.locator(".jp-plb-conn.jp-plb-mod-live")).to_be_visible(timeout=TIMEOUT_MS)
        local = panel.locator(".jp-plb-hub").filter(has=page.locator(".jp-plb-tag:visible"))
        expect(local.locator(".jp-plb-worker-usage")).to_have_text(
            [re.compile(r"^\d+% · \d+ MiB$")] * 2, timeout=TIMEOUT_MS
        )
        expect(local.locator(".jp-plb-hub-skew")).to_be_hidden()
        skew = panel.locator(".jp-plb-hub-skew:visible")
        expect(skew).to_have_count(1, timeout=TIMEOUT_MS)
        expect(skew).to_contain_text("hub fake-gpu on gpu-node runs Python 3.99.0 and cloudpickle 0.0.1")
        ARTIFACTS.mkdir(exist_ok=True)
        panel.screenshot(path=str(ARTIFACTS / "lab-panel-worker-usage.png"))
    finally:
        stop.set()
        thread.join(10)
