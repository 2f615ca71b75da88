"""JupyterLab in a real browser: run dashboard.ipynb, watch the Dashboard move while a cell is busy.

The balancer is a LocalCluster of the test; JupyterLab is told where it is through
``PLB_CONNECTION_FILE`` and runs with the jupyter_plb server extension off, so the kernel uses
the test's balancer. The ``page`` fixture (tests/browser/conftest.py) drives Debian's chromium;
a screenshot goes to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.workers.spawn import stop_process
from tests.browser.conftest import free_port, lab_command
from tests.conftest import ROOT, wait_for

ARTIFACTS = ROOT / "test-artifacts"

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.timeout(240)

#: What the page shows: the dashboard's done/running totals and which code cell is busy.
READ_STATE = """() => {
  const number = (cls) => {
    const el = document.querySelector(`.plb-dashboard .plb-totals .${cls} b`);
    return el ? Number(el.textContent) : null;
  };
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
    .map((p) => p.textContent.trim());
  const busy = prompts.findIndex((p) => p.includes('*'));
  return {done: number('plb-done'), running: number('plb-running'), busy, prompts};
}"""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def lab(ready_client: Client, connection_file: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab on a free port, its root holding dashboard.ipynb; yields (base url, token)."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "dashboard.ipynb", root)
    token = secrets.token_hex(16)
    port = free_port()
    env = {
        **os.environ,
        "PLB_CONNECTION_FILE": str(connection_file),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **{
            name: str(tmp_path / name.lower())
            for name in (
                "JUPYTER_CONFIG_DIR",
                "JUPYTER_RUNTIME_DIR",
                "JUPYTERLAB_SETTINGS_DIR",
                "JUPYTERLAB_WORKSPACES_DIR",
            )
        },
    }
    # every cell in the DOM (no windowing) so the test sees which one runs; no news toast
    settings = tmp_path / "jupyterlab_settings_dir" / "@jupyterlab"
    for plugin, values in (
        ("notebook-extension/tracker", {"windowingMode": "none"}),
        ("apputils-extension/notification", {"fetchNews": "false"}),
    ):
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    log = (tmp_path / "lab.log").open("wb")
    server = subprocess.Popen(
        lab_command(port, token, root, "--ServerApp.jpserver_extensions=jupyter_plb=False"),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: answers(f"{base}/api/status?token={token}") or server.poll() is not None,
            timeout=90,
            what="JupyterLab to answer",
        )
        assert server.poll() is None, (tmp_path / "lab.log").read_text()
        yield base, token
    finally:
        stop_process(server)
        log.close()


def test_dashboard_moves_while_another_cell_is_busy(lab: tuple[str, str], page: Any) -> None:
    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 1100})
    page.goto(f"{base}/lab/tree/dashboard.ipynb?reset&token={token}")
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=90_000)
    page.wait_for_selector("text=| Idle", timeout=90_000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    page.wait_for_selector(".plb-dashboard .plb-totals", timeout=60_000)

    # The 4th code cell is `%plb wait all`: sample the dashboard while it is the busy one.
    samples: list[dict[str, Any]] = []
    state: dict[str, Any] = page.evaluate(READ_STATE)
    while state["busy"] != -1 and len(samples) < 200:
        state = page.wait_for_function(
            f"(prev) => {{ const s = ({READ_STATE})(); "
            "const moved = ['done', 'running', 'busy'].some((k) => s[k] !== prev[k]);"
            "return moved && s; }",
            arg=state,
            timeout=60_000,
        ).json_value()
        samples.append(state)
        if state["busy"] == 3 and len({s["done"] for s in samples if s["busy"] == 3}) == 4:
            page.locator(".plb-dashboard").screenshot(path=str(ARTIFACTS / "dashboard-busy.png"))
    while_busy = [s for s in samples if s["busy"] == 3]
    assert len({s["done"] for s in while_busy}) >= 3, samples
    assert any(s["running"] for s in while_busy), samples

    page.wait_for_selector("text=item 16 is unlucky", timeout=30_000)
    page.locator(".plb-dashboard").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
    assert page.locator(".plb-dashboard .plb-user").count() >= 2  # root and bob
