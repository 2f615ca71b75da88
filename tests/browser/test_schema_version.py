"""A server of another jupyter_plb release: the monitor page and the Lab panel say so, and draw nothing.

The browser's network rewrites the real server's answers (``api/status``) and websocket frames
(``api/events``) to carry ``"schema": 99``, as a newer balancer would. Screenshots:
``test-artifacts/monitor-schema-mismatch.png``, ``test-artifacts/lab-panel-schema-mismatch.png``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from jupyter_plb.core.snapshot import SCHEMA_VERSION
from tests.browser.conftest import ARTIFACTS, PANEL, TIMEOUT_MS, MonitorServer, open_lab_panel
from tests.browser.test_lab_panel import Lab, lab, lab_extension  # noqa: F401

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect

pytestmark = pytest.mark.timeout(300)
OTHER = SCHEMA_VERSION + 98


def _other_version(text: str) -> str:
    message = json.loads(text)
    if message.get("type") == "snapshot":
        message["schema"] = message["data"]["schema"] = OTHER
    return json.dumps(message)


def speak_another_version(page: Any, status: str, events: str) -> None:
    """Every snapshot the page gets, from the real server, says it is of schema ``OTHER``."""

    def status_answer(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["schema"] = OTHER
        route.fulfill(response=response, body=json.dumps(body))

    def events_frames(ws: Any) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda text: ws.send(_other_version(text)))

    page.route(status, status_answer)
    page.route_web_socket(events, events_frames)


def test_the_monitor_page_refuses_a_snapshot_of_another_schema(page: Any, standalone_monitor: MonitorServer) -> None:
    speak_another_version(page, "**/api/status*", "**/api/events*")
    page.goto(standalone_monitor.url)
    banner = page.locator("#schema-problem")
    expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    expect(banner).to_contain_text(
        f"The balancer speaks snapshot schema {OTHER}, this page understands schema {SCHEMA_VERSION}"
    )
    expect(page.locator("#worker-table tr.worker-row")).to_have_count(0)
    assert page.locator("html").get_attribute("data-snapshots") == "0", "no snapshot was drawn"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "monitor-schema-mismatch.png"))


def test_the_lab_panel_refuses_a_snapshot_of_another_schema(lab: Lab, page: Any) -> None:  # noqa: F811
    speak_another_version(page, "**/plb/api/status*", "**/plb/api/events*")
    panel = open_lab_panel(page, lab.base, lab.token)
    error = panel.locator(".jp-plb-error")
    expect(error).to_be_visible(timeout=TIMEOUT_MS)
    expect(error.locator(".jp-plb-error-title")).to_have_text("Snapshot schema mismatch")
    expect(error.locator(".jp-plb-error-detail")).to_contain_text(
        f"The balancer speaks snapshot schema {OTHER}, this panel understands schema {SCHEMA_VERSION}"
    )
    expect(page.locator(f"{PANEL} .jp-plb-body")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-panel-schema-mismatch.png"))
