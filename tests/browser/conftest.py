"""Browser fixtures: Debian's chromium driven by Playwright, and monitor servers to point it at."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core import parameters
from tests.conftest import ROOT, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 30_000
#: The Load Balancer side-bar panel of the lab extension.
PANEL = "#jupyter-plb-panel"


@dataclass
class MonitorServer:
    """Where the page is (URL with its credentials) and the balancer's connection file."""

    kind: str
    url: str
    connection_file: Path


@pytest.fixture
def jp_asyncio_loop() -> None:
    """No in-process Jupyter server here: Playwright owns this thread's event loop."""


@pytest.fixture
def jp_server_cleanup() -> None:
    """Nothing to clean: Jupyter runs as a subprocess (see ``jupyter_monitor``)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for this module; closed with it, since Playwright runs an event loop meanwhile."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); no browser download here")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


HOSTILE = "<img src=x onerror=alert(1)>"


def hostile_task(seconds: float) -> Any:
    """A function task whose name (its ``__qualname__``) is markup, to check escaping."""

    def task() -> float:
        time.sleep(seconds)
        return seconds

    task.__qualname__ = HOSTILE
    return task


def lab_command(port: int, token: str, root: Path, *extra: str) -> list[str]:
    """``jupyter lab`` for a browser test: loopback, a token, no browser, no news."""
    return [
        sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
        f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        *extra, "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jupyter_up(port: int, token: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/api/status", headers={"Authorization": f"token {token}"})
        return conn.getresponse().status == 200
    except OSError:
        return False


@pytest.fixture
def jupyter_monitor(tmp_path: Path) -> Iterator[MonitorServer]:
    """``jupyter server`` with jupyter_plb and a local hub of 2 workers, as a user runs it."""
    port, token = free_port(), secrets.token_hex(16)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    connection_file = tmp_path / "plb-connection.json"
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "ServerApp": {"jpserver_extensions": {"jupyter_plb": True}},
                "PlbExtension": {"local_workers": 2, "connection_file": str(connection_file)},
            }
        )
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--allow-root",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={tmp_path}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: server.poll() is None and _jupyter_up(port, token), 60, "jupyter server")
        wait_for(connection_file.exists, 30, "the connection file")
        yield MonitorServer(
            "jupyter", f"http://127.0.0.1:{port}/plb/monitor?token={token}", connection_file
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


@pytest.fixture
def standalone_monitor(tmp_path: Path) -> Iterator[MonitorServer]:
    """``startAll()``: balancer, health check and standalone monitor, plus a hub of 2 workers."""
    params = parameters.load(
        LB_CLIENTPULLPORT=0, LB_WKPULLPORT=0, LB_HCREPPORT=0, MONITOR_PORT=0, HC_INTERVAL=0.5
    )
    with LocalCluster(params, connection_file=tmp_path / "plb-connection.json") as cluster:
        cluster.start()
        cluster.start_hub(2, name="browser-hub")
        yield MonitorServer("standalone", cluster.monitor.url, cluster.connection_file)


@pytest.fixture(params=["jupyter", "standalone"])
def monitor_server(request: pytest.FixtureRequest) -> MonitorServer:
    return request.getfixturevalue(f"{request.param}_monitor")


def open_lab_panel(page: Any, base: str, token: str) -> Any:
    """Load JupyterLab at ``base``, wait for its splash to go, open the Load Balancer tab."""
    page.goto(f"{base}/lab?reset&token={token}")
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=90_000)
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="jupyter-plb-panel"]')
    tab.wait_for(timeout=TIMEOUT_MS)
    tab.click()
    return page.locator(PANEL)


def answers(url: str) -> bool:
    """Does ``url`` answer 200 right now?"""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
