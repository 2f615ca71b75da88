"""The "Load Balancer" side-bar panel of the lab extension, in JupyterLab, in a real browser.

A real ``jupyter lab`` subprocess runs the jupyter_plb server extension with its embedded balancer
and local hub (2 workers); its Jupyter dirs are the test's own temporary ones, and the built lab
extension is linked into its data dir (the checkout's ``jupyter_plb/labextension``, built here with
``jlpm`` when missing or older than ``labextension/src``; else the copy ``pip install .`` put in a
``share/jupyter/labextensions``). The test process submits tasks with :class:`Client` through the
server's connection file, hostile names included, and watches the panel: live data, counts that
move, names as literal text, the monitor tab, cancelling a user's queued task. Screenshots:
``test-artifacts/lab-panel.png`` (light) and ``test-artifacts/lab-panel-dark.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.workers.spawn import stop_process
from tests.browser.conftest import (
    ARTIFACTS,
    HOSTILE,
    PANEL,
    TIMEOUT_MS,
    answers,
    free_port,
    hostile_task,
    lab_command,
    open_lab_panel,
)
from tests.conftest import ROOT, wait_for

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect

# Room for building the lab extension once (session fixture) on a machine where it is missing.
pytestmark = pytest.mark.timeout(420)

EVIL_USER = "<b>evil</b>"
LAB_EXTENSION = ROOT / "jupyter_plb" / "labextension"
LAB_SOURCES = ROOT / "labextension"


# ---------------------------------------------------------------------------------- the extension
def _newest_source_mtime() -> float:
    files = [
        *LAB_SOURCES.glob("src/*.ts"),
        *LAB_SOURCES.glob("style/*"),
        LAB_SOURCES / "package.json",
    ]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def _checkout_build_ok() -> bool:
    built = LAB_EXTENSION / "package.json"
    return (LAB_EXTENSION / "static" / "style.js").is_file() and built.is_file()


def _installed_extension() -> Path | None:
    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("labextensions"):
        candidate = Path(folder) / "jupyter-plb"
        if (candidate / "package.json").is_file() and (candidate / "static").is_dir():
            return candidate
    return None


def _jlpm(jlpm: str, *args: str, timeout: float) -> None:
    command = [jlpm, *args]
    try:
        done = subprocess.run(command, cwd=LAB_SOURCES, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`jlpm {' '.join(args)}` in labextension/ took over {timeout} s: {exc}")
    if done.returncode != 0:
        pytest.fail(
            f"`jlpm {' '.join(args)}` in labextension/ failed ({done.returncode}):\n"
            f"{(done.stdout + done.stderr)[-3000:]}"
        )


@pytest.fixture(scope="session")
def lab_extension() -> Path:
    """The built lab extension (a folder with package.json and static/), built if need be."""
    stale = _checkout_build_ok() and ((LAB_EXTENSION / "package.json").stat().st_mtime < _newest_source_mtime())
    if _checkout_build_ok() and not stale:
        return LAB_EXTENSION
    jlpm = shutil.which("jlpm")  # from jupyter-builder, the build chain of labextension/
    missing = [
        what
        for what, ok in (
            ("node (apt-get install nodejs)", shutil.which("node")),
            ("jlpm (pip install jupyter-builder)", jlpm),
            ("labextension/package.json", (LAB_SOURCES / "package.json").is_file()),
        )
        if not ok
    ]
    if missing:
        if stale:
            return LAB_EXTENSION  # older than labextension/src, but no way to rebuild it here
        installed = _installed_extension()
        if installed is not None:
            return installed
        pytest.skip(
            "the jupyter-plb lab extension is neither built (jupyter_plb/labextension/static) nor "
            "installed (share/jupyter/labextensions/jupyter-plb), and building it from "
            f"labextension/ needs: {', '.join(missing)}"
        )
    assert jlpm is not None
    if not (LAB_SOURCES / "node_modules").is_dir():
        _jlpm(jlpm, "install", timeout=240)
    _jlpm(jlpm, "build:prod", timeout=150)
    assert _checkout_build_ok(), "jlpm build:prod did not produce jupyter_plb/labextension"
    return LAB_EXTENSION


# ---------------------------------------------------------------------------------- the server
@dataclass
class Lab:
    base: str
    token: str
    connection_file: Path
    log: Path

    def api(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.base}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)


def _local_hub_pids(lab: Lab) -> list[int]:
    try:
        hubs = lab.api("/plb/api/status").get("hubs", [])
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [h["pid"] for h in hubs if h.get("local") and isinstance(h.get("pid"), int)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[-1][:1] != "Z"
    return True


@pytest.fixture
def lab(lab_extension: Path, tmp_path: Path) -> Iterator[Lab]:
    """``jupyter lab`` with jupyter_plb enabled and a local hub of 2 workers, in its own dirs."""
    root = tmp_path / "root"
    root.mkdir()
    dirs = {
        name: tmp_path / name.lower()
        for name in (
            "JUPYTER_CONFIG_DIR",
            "JUPYTER_DATA_DIR",
            "JUPYTER_RUNTIME_DIR",
            "JUPYTERLAB_SETTINGS_DIR",
            "JUPYTERLAB_WORKSPACES_DIR",
        )
    }
    for folder in dirs.values():
        folder.mkdir()
    # The data dir comes first in the labextensions path: this build wins over any other copy.
    (dirs["JUPYTER_DATA_DIR"] / "labextensions").mkdir()
    (dirs["JUPYTER_DATA_DIR"] / "labextensions" / "jupyter-plb").symlink_to(lab_extension)
    # no news toast over the page
    news = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = {
        **os.environ,
        **{name: str(folder) for name, folder in dirs.items()},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("PLB_CONNECTION_FILE", None)
    token, port = secrets.token_hex(16), free_port()
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            lab_command(
                port, token, root, "--ServerApp.jpserver_extensions=jupyter_plb=True", "--PlbExtension.local_workers=2"
            ),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Lab(
        f"http://127.0.0.1:{port}",
        token,
        dirs["JUPYTER_RUNTIME_DIR"] / "plb-connection.json",
        log_path,
    )
    hub_pids: list[int] = []
    try:
        wait_for(
            lambda: server.poll() is not None or answers(f"{running.base}/api/status?token={token}"),
            timeout=90,
            what="JupyterLab to answer",
        )
        assert server.poll() is None, log_path.read_text()
        wait_for(running.connection_file.exists, 30, "the server's plb-connection.json")
        hub_pids = wait_for(lambda: _local_hub_pids(running), 60, "the local hub to register")
        yield running
    finally:
        hub_pids = _local_hub_pids(running) or hub_pids
        stop_process(server, timeout=20)
        # The server stops its local hub; make sure of it (the hub leads its own process group).
        for pid in hub_pids:
            with contextlib.suppress(AssertionError):
                wait_for(lambda pid=pid: not _alive(pid), 15, f"local hub {pid} to exit")
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------- the test
#: Records, on every DOM change of the panel, what a person would have seen: each done total,
#: the most workers busy at once, and whether a worker's current task showed the hostile name.
RECORD = """(hostile) => {
  const panel = document.querySelector('#jupyter-plb-panel');
  const seen = (window.plbSeen = {done: [], busy: 0, hostileOnWorker: false});
  const read = () => {
    const value = panel.querySelector('.jp-plb-total[data-key="done"] .jp-plb-total-value');
    const done = value ? Number(value.textContent) : NaN;
    if (!Number.isNaN(done) && seen.done.at(-1) !== done) seen.done.push(done);
    const busy = panel.querySelectorAll('.jp-plb-worker.jp-plb-mod-busy');
    seen.busy = Math.max(seen.busy, busy.length);
    for (const task of panel.querySelectorAll('.jp-plb-worker.jp-plb-mod-busy .jp-plb-worker-task')) {
      if (task.textContent.includes(hostile)) seen.hostileOnWorker = true;
    }
  };
  new MutationObserver(read).observe(panel, {
    subtree: true, childList: true, characterData: true, attributes: true
  });
  read();
}"""


def total(page: Any, key: str) -> Any:
    return page.locator(f'{PANEL} .jp-plb-total[data-key="{key}"] .jp-plb-total-value')


def user_row(page: Any, user: str) -> Any:
    return page.locator(f"{PANEL} .jp-plb-user-row").filter(
        has=page.locator(".jp-plb-user").get_by_text(user, exact=True)
    )


def assert_no_markup(page: Any) -> None:
    """No element came out of the hostile strings, in the panel or anywhere in Lab."""
    assert page.locator(f"{PANEL} img, {PANEL} b, {PANEL} [onerror]").count() == 0
    assert page.locator('img[src="x"], [onerror]').count() == 0


def test_lab_panel_live_counts_hostile_names_monitor_and_themes(lab: Lab, page: Any) -> None:
    dialogs: list[str] = []
    page_errors: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    # -- open the panel from its side-bar tab
    panel = open_lab_panel(page, lab.base, lab.token)
    expect(panel).to_be_visible(timeout=TIMEOUT_MS)
    expect(panel.locator(".jp-plb-title")).to_have_text("Load Balancer")

    # -- live data from the real balancer: the websocket is up, the local hub and its 2 workers
    expect(panel.locator(".jp-plb-body")).to_be_visible(timeout=TIMEOUT_MS)
    expect(panel.locator(".jp-plb-conn.jp-plb-mod-live")).to_be_visible(timeout=TIMEOUT_MS)
    hub = panel.locator(".jp-plb-hub")
    expect(hub).to_have_count(1, timeout=TIMEOUT_MS)
    expect(hub.locator(".jp-plb-tag")).to_have_text("local")
    expect(hub.locator(".jp-plb-worker")).to_have_count(2, timeout=TIMEOUT_MS)
    # --workers N hubs accept any priority (-1e9..1e9): shown as "any"
    expect(hub.locator(".jp-plb-worker-range")).to_have_text(["any", "any"])
    expect(panel.locator(".jp-plb-badge").first).to_have_text("healthy", timeout=TIMEOUT_MS)
    expect(total(page, "done")).to_have_text("0")
    expect(panel.locator(".jp-plb-warning-line")).to_be_hidden()

    page.evaluate(RECORD, HOSTILE)
    with Client(connection_file=lab.connection_file, user=EVIL_USER) as client:
        # A hub task no hub offers: it stays queued, unschedulable, with its name in the reason.
        sent = client.sendTask(HOSTILE, {"n": 1})
        assert "taskid" in sent, sent
        # The hostile functions first: each is a worker's current task from its dispatch on.
        futures = [client.submit(hostile_task(1.5)) for _ in range(2)]
        futures += [client.submit(time.sleep, 0.25) for _ in range(16)]

        # The counts move while the workers run: the recorder saw every value the panel showed.
        page.wait_for_function("(n) => window.plbSeen.done.at(-1) === n", arg=len(futures), timeout=TIMEOUT_MS)
        for future in futures:
            future.result(60)
        recorded = page.evaluate("() => window.plbSeen")
        seen = recorded["done"]
        assert recorded["busy"] >= 1, recorded
        # the hostile function's name was shown on a busy worker, as text
        assert recorded["hostileOnWorker"], recorded
        assert len(set(seen)) >= 3, seen
        assert seen == sorted(seen), seen
        expect(total(page, "done")).to_have_text(str(len(futures)), timeout=TIMEOUT_MS)
        expect(hub.locator(".jp-plb-worker.jp-plb-mod-busy")).to_have_count(0, timeout=TIMEOUT_MS)
        expect(hub.locator(".jp-plb-worker-done")).to_have_text(
            [str(n) for n in _worker_done_counts(lab)], timeout=TIMEOUT_MS
        )

        # The hostile user and task name are plain text.
        row = user_row(page, EVIL_USER)
        expect(row).to_have_count(1, timeout=TIMEOUT_MS)
        expect(row.locator(".jp-plb-stat-queued .jp-plb-stat-value")).to_have_text("1")
        expect(row.locator(".jp-plb-stat-done .jp-plb-stat-value")).to_have_text(str(len(futures)))
        expect(total(page, "queued")).to_have_text("1")
        warning = panel.locator(".jp-plb-warning-line")
        expect(warning).to_be_visible(timeout=TIMEOUT_MS)
        expect(warning).to_contain_text(HOSTILE)
        assert_no_markup(page)
        assert dialogs == []

        # -- the monitor, in a main-area tab
        panel.get_by_role("button", name="Open monitor").click()
        monitor_tab = page.locator("#jupyter-plb-monitor")
        expect(monitor_tab).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text("PLB Monitor")
        monitor = page.frame_locator("#jupyter-plb-monitor iframe")
        monitor.locator('body[data-conn="live"]').wait_for(timeout=TIMEOUT_MS)
        workers = monitor.locator("#worker-table tr.worker-row")
        expect(workers).to_have_count(2, timeout=TIMEOUT_MS)
        expect(workers.locator("td:nth-child(3)")).to_have_text(["any", "any"])
        expect(monitor.locator("#total-done")).to_have_text(str(len(futures)), timeout=TIMEOUT_MS)
        monitor.locator("#users-table tbody").get_by_text(EVIL_USER, exact=True).first.wait_for(timeout=TIMEOUT_MS)
        monitor.locator("#stats-table tbody").get_by_text(HOSTILE, exact=True).first.wait_for(timeout=TIMEOUT_MS)
        assert monitor.locator("img, b, [onerror]").count() == 0
        # the monitor follows Lab's theme (light here), whatever the OS prefers
        monitor.locator('html[data-scheme="light"]').wait_for(state="attached", timeout=TIMEOUT_MS)

        # -- screenshots: light, then JupyterLab Dark
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "lab-panel.png"))
        page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
        page.wait_for_selector(
            'body[data-jp-theme-name="JupyterLab Dark"][data-jp-theme-light="false"]',
            state="attached",
            timeout=TIMEOUT_MS,
        )
        # Lab shows its splash over the page while it swaps the theme
        page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=TIMEOUT_MS)
        expect(panel).to_be_visible()
        # the panel and the monitor tab follow the theme: dark backgrounds
        monitor.locator('html[data-scheme="dark"]').wait_for(state="attached", timeout=TIMEOUT_MS)
        for node in (panel, monitor.locator("body")):
            background = node.evaluate("(node) => getComputedStyle(node).backgroundColor")
            assert _luminance(background) < 0.3, background
        page.screenshot(path=str(ARTIFACTS / "lab-panel-dark.png"))

        # -- cancel the hostile user's queued task, through the confirmation dialog
        row.get_by_role("button", name="Cancel queued").click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
        expect(dialog.locator(".jp-Dialog-body")).to_contain_text(f'user "{EVIL_USER}"')
        assert dialog.locator("b, img").count() == 0
        dialog.get_by_role("button", name="Cancel tasks").click()
        expect(dialog).to_have_count(0, timeout=TIMEOUT_MS)
        expect(total(page, "queued")).to_have_text("0", timeout=TIMEOUT_MS)
        expect(total(page, "cancelled")).to_have_text("1", timeout=TIMEOUT_MS)
        expect(row.get_by_role("button", name="Cancel queued")).to_be_hidden()
        expect(panel.locator(".jp-plb-warning-line")).to_be_hidden(timeout=TIMEOUT_MS)
        assert lab.api("/plb/api/status")["totals"]["cancelled"] == 1

    assert_no_markup(page)
    assert dialogs == []
    assert page_errors == []


def _worker_done_counts(lab: Lab) -> list[int]:
    """What the panel should show per worker, sorted as it sorts them (same range: by id)."""
    hubs = [h for h in lab.api("/plb/api/status")["hubs"] if h.get("local")]
    workers = sorted(hubs[0]["workers"], key=lambda w: w["id"])
    return [w["done"] for w in workers]


def _luminance(css_color: str) -> float:
    """Relative brightness 0..1 of ``rgb(r, g, b)`` / ``rgba(r, g, b, a)``."""
    inside = css_color[css_color.index("(") + 1 : css_color.index(")")]
    r, g, b = (float(part) for part in inside.split(",")[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
