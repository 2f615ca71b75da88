"""A team pool, end to end: one `plb start --team` balancer, two JupyterLabs attached to it.

Alice's and Bob's JupyterLab servers run with ``--PlbExtension.attach`` and each user's CurveZMQ
client certificate; a kernel in each (started through its server, driven over the kernel
websocket as Lab does) submits with ``%plb map``. The tests check that both users' tasks take the
one worker slot in turn (the fairness rule), that each Lab panel shows the shared pool and each
user's share, that Bob can neither cancel nor read Alice's task, that a forged ``userid`` is
charged to its certificate's user, and that killing and restarting the team balancer loses no
task while each panel says the team balancer is unreachable, then recovers. Screenshots:
``test-artifacts/team-pool-alice.png``, ``team-pool-bob.png``, ``team-pool-unreachable.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.transport import security
from jupyter_plb.workers.spawn import stop_process
from tests.browser.conftest import ARTIFACTS, TIMEOUT_MS, answers, free_port, lab_command, open_lab_panel
from tests.browser.test_lab_panel import PANEL, lab_extension  # noqa: F401  (a fixture)
from tests.conftest import ROOT, wait_for

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect

websocket = pytest.importorskip("websocket")

pytestmark = pytest.mark.timeout(300)

TASKS_EACH = 6
TASK_SECONDS = 0.4
KERNEL_SETUP = f"""
%load_ext jupyter_plb
import time
def slow(x):
    time.sleep({TASK_SECONDS})
    return x * x
"""


# ------------------------------------------------------------------------------ the processes
@dataclass
class Kernel:
    """A kernel started by a Jupyter server, driven over its websocket as Lab drives it."""

    base: str
    token: str
    id: str = ""
    ws: Any = None
    session: str = field(default_factory=lambda: uuid.uuid4().hex)

    def start(self) -> None:
        self.id = _api(self.base, self.token, "/api/kernels", method="POST", body={"name": "python3"})["id"]
        url = self.base.replace("http", "ws", 1) + f"/api/kernels/{self.id}/channels?session_id={self.session}"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {self.token}"], timeout=60)

    def run(self, code: str, timeout: float = 60) -> str:
        """Execute ``code``; return what it printed and its value's text; raise on an error."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                       "username": "test", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        out: list[str] = []
        error: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "execute_result":
                out.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                error.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                if error:
                    raise KernelError("\n".join(error))
                return "".join(out)
        raise AssertionError(f"the kernel did not finish {code!r} within {timeout} s")

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.id:
            _api(self.base, self.token, f"/api/kernels/{self.id}", method="DELETE")


class KernelError(Exception):
    """An error a kernel cell raised (its ``ename: evalue``)."""


@dataclass
class TeamLab:
    user: str
    base: str
    token: str
    log: Path
    process: subprocess.Popen[bytes]
    kernel: Kernel

    def api(self, path: str, method: str = "GET") -> Any:
        return _api(self.base, self.token, path, method=method)


@dataclass
class Pool:
    connection_file: Path
    command: list[str]
    env: dict[str, str]
    log: Path
    balancer: subprocess.Popen[bytes]
    labs: dict[str, TeamLab]
    hub: subprocess.Popen[bytes] | None = None

    def start_balancer(self) -> None:
        with open(self.log, "ab") as log:
            self.balancer = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def admin(self) -> Client:
        """A client with the admin's certificate (``--admin boss``): it sees every task."""
        certificate = self.connection_file.parent / "sec/issued/client-boss.key_secret"
        os.environ[security.CERT_ENV["clients"]] = str(certificate)
        try:
            return Client(connection_file=self.connection_file, connect_timeout=20)
        finally:
            del os.environ[security.CERT_ENV["clients"]]

    def start_hub(self) -> None:
        """One worker slot, from a hub that joins as one on another machine would."""
        if self.hub is None:
            self.hub = subprocess.Popen(
                [sys.executable, "-m", "jupyter_plb", "hub", "--connect",
                 str(self.connection_file), "--workers", "1", "--name", "team-hub"],
                env=self.env, start_new_session=True,
            )


def _api(base: str, token: str, path: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "DELETE") else None)
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None


def _start_lab(user: str, folder: Path, extension: Path, team_file: Path, cert: Path) -> TeamLab:
    dirs = {
        name: folder / name.lower()
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                     "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")
    }
    for path in dirs.values():
        path.mkdir(parents=True)
    (dirs["JUPYTER_DATA_DIR"] / "labextensions").mkdir()
    (dirs["JUPYTER_DATA_DIR"] / "labextensions" / "jupyter-plb").symlink_to(extension)
    news = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLB_")}
    env.update({name: str(path) for name, path in dirs.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    token, port = secrets.token_hex(16), free_port()
    log = folder / "lab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            lab_command(
                port, token, folder, "--ServerApp.jpserver_extensions=jupyter_plb=True",
                f"--PlbExtension.attach={team_file}", f"--PlbExtension.attach_certificate={cert}",
            ),
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    return TeamLab(user, base, token, log, process, Kernel(base, token))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, lab_extension: Path) -> Iterator[Pool]:  # noqa: F811
    """The team balancer (no hub yet) and Alice's and Bob's Labs, each with a kernel set up."""
    folder = tmp_path_factory.mktemp("team")
    security.keygen(folder / "sec", clients=["alice", "bob", "boss"])
    params = folder / "parameters.json"
    params.write_text(json.dumps({
        "LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0, "MONITOR_PORT": 0,
        "HC_INTERVAL": 0.5, "LB_HEARTBEAT_INTERVAL": 0.3, "LB_SECURITY_DIR": str(folder / "sec"),
    }))
    team_file = folder / "team.json"
    command = [sys.executable, "-m", "jupyter_plb",
               "start", "--team", "--admin", "boss", "-p", str(params), "--connection-file", str(team_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    pool = Pool(team_file, command, env, folder / "balancer.log", None, {})  # type: ignore[arg-type]
    pool.start_balancer()
    try:
        wait_for(team_file.exists, 30, "the team balancer's connection file")
        for user in ("alice", "bob"):
            pool.labs[user] = _start_lab(
                user, folder / user, lab_extension, team_file, folder / f"sec/issued/client-{user}.key_secret"
            )
        for lab in pool.labs.values():
            wait_for(
                lambda lab=lab: lab.process.poll() is not None or answers(f"{lab.base}/api/status?token={lab.token}"),
                90, f"{lab.user}'s JupyterLab to answer",
            )
            assert lab.process.poll() is None, lab.log.read_text()
            lab.kernel.start()
            lab.kernel.run(KERNEL_SETUP)
        yield pool
    finally:
        for lab in pool.labs.values():
            with contextlib.suppress(OSError, urllib.error.URLError):
                lab.kernel.stop()
            stop_process(lab.process, timeout=20)
        if pool.hub is not None:
            stop_process(pool.hub)
        stop_process(pool.balancer, timeout=20)


def _open_panel(page: Any, lab: TeamLab) -> Any:
    panel = open_lab_panel(page, lab.base, lab.token)
    expect(panel.locator(".jp-plb-body")).to_be_visible(timeout=TIMEOUT_MS)
    return panel


def _share_row(panel: Any, user: str) -> Any:
    return panel.locator(".jp-plb-share-row").filter(has_text=user)


def _status_messages(lab: TeamLab) -> list[str]:
    try:
        return lab.api("/plb/api/status")["health"]["messages"]
    except (OSError, urllib.error.URLError, ValueError):
        return []


# ---------------------------------------------------------------------------------- the tests
def test_two_users_share_the_team_pool_fairly_and_survive_its_restart(pool: Pool, browser: Any) -> None:
    alice, bob = pool.labs["alice"], pool.labs["bob"]
    # Each server's API and each kernel see the team balancer, as their certificate's user.
    for lab in (alice, bob):
        status = wait_for(lambda lab=lab: lab.api("/plb/api/status").get("viewer"), 20, "the team snapshot")
        assert status == {"user": lab.user, "admin": False, "team": True}
        assert lab.kernel.run("print(__import__('jupyter_plb').Client().user)").strip() == lab.user

    pages = {user: browser.new_context(viewport={"width": 1300, "height": 950}).new_page() for user in ("alice", "bob")}
    panels = {user: _open_panel(pages[user], pool.labs[user]) for user in pages}
    for user, panel in panels.items():
        expect(panel.locator(".jp-plb-team-identity")).to_have_text(f"Team pool · you are {user}", timeout=TIMEOUT_MS)

    # Both queue their maps before any worker exists: then one slot serves them in turn.
    for lab in (alice, bob):
        lab.kernel.run(f"futs = %plb map --async slow range({TASKS_EACH})")
    pool.start_hub()
    admin = pool.admin()
    try:
        timeline = wait_for(
            lambda: len(t := admin.status()["timeline"]) >= 6 and t, 60, "six tasks to have run"
        )
        order = [entry["user"] for entry in sorted(timeline, key=lambda e: e["start"])][:6]
        assert order in (["alice", "bob"] * 3, ["bob", "alice"] * 3), order

        # Each panel shows the one shared pool: the team's hub, both users and their shares.
        for user, panel in panels.items():
            expect(panel.locator(".jp-plb-hub")).to_have_count(1, timeout=TIMEOUT_MS)
            for other in ("alice", "bob"):
                expect(_share_row(panel, other)).to_have_count(1, timeout=TIMEOUT_MS)
            expect(_share_row(panel, user)).to_have_class("jp-plb-share-row jp-plb-mod-you")
            # Only the user's own row offers "Cancel queued": the balancer refuses the others.
            other = "bob" if user == "alice" else "alice"
            others_cancel = panel.locator(".jp-plb-user-row").filter(has_text=other).locator("button")
            expect(others_cancel).to_have_count(1)
            expect(others_cancel).to_be_hidden()
            ARTIFACTS.mkdir(exist_ok=True)
            pages[user].screenshot(path=str(ARTIFACTS / f"team-pool-{user}.png"))
        api_users = {u["user"]: u for u in bob.api("/plb/api/status")["users"]}
        assert api_users["alice"]["share"] > 0 and api_users["bob"]["share"] > 0, api_users
        # Bob's monitor tab: the same pool, and the fair share panel with his row marked.
        monitor = pages["bob"].context.new_page()
        monitor.goto(f"{bob.base}/plb/monitor?token={bob.token}")
        share = monitor.locator("#share-table tbody tr")
        expect(share).to_have_count(2, timeout=TIMEOUT_MS)
        expect(monitor.locator("#share-table tr.share-you td.user")).to_have_text("bob")
        expect(monitor.locator("#share-viewer")).to_contain_text("Team pool · you are bob")
        alices_cancel = monitor.locator('#users-table tr[data-key="alice"] button[data-action="cancel-user"]')
        expect(alices_cancel).to_have_count(1)
        expect(alices_cancel).to_be_hidden()
        expect(monitor.locator('#users-table tr[data-key="bob"] button[data-action="cancel-user"]')).to_be_visible()
        monitor.screenshot(path=str(ARTIFACTS / "team-pool-monitor.png"), full_page=True)
        monitor.close()

        # The team balancer dies with tasks queued; both servers say so, without hanging.
        pool.balancer.send_signal(signal.SIGKILL)
        pool.balancer.wait(10)
        for lab in (alice, bob):
            wait_for(lambda lab=lab: any("team balancer unreachable since" in m for m in _status_messages(lab)),
                     15, f"{lab.user}'s server to report the lost team balancer")
            started = time.monotonic()
            with pytest.raises(urllib.error.HTTPError) as refused:
                lab.api("/plb/api/tasks")
            assert refused.value.code == 503 and time.monotonic() - started < 5
        unreachable = panels["alice"].locator(".jp-plb-team-unreachable")
        expect(unreachable).to_contain_text("Team balancer unreachable since", timeout=TIMEOUT_MS)
        pages["alice"].screenshot(path=str(ARTIFACTS / "team-pool-unreachable.png"))

        # Started again, it has every task from its journal: each kernel gets all its results.
        pool.start_balancer()
        for lab in (alice, bob):
            results = lab.kernel.run("print([f.result(90) for f in futs])", timeout=120)
            assert results.strip() == str([x * x for x in range(TASKS_EACH)])
        expect(unreachable).to_be_hidden(timeout=TIMEOUT_MS)
        for lab in (alice, bob):
            wait_for(lambda lab=lab: not _status_messages(lab) or all(
                "unreachable" not in m for m in _status_messages(lab)), 15, "the servers to recover")
    finally:
        admin.close()
        for page in pages.values():
            page.context.close()
    done: dict[str, int] = {}
    with pool.admin() as admin:
        for task in admin.tasks(state="done", limit=1000)["tasks"]:
            done[task["user"]] = done.get(task["user"], 0) + 1
    assert done == {"alice": TASKS_EACH, "bob": TASKS_EACH}, done


def test_a_user_cannot_touch_another_users_tasks_nor_claim_to_be_them(pool: Pool) -> None:
    alice, bob = pool.labs["alice"], pool.labs["bob"]
    pool.start_hub()
    task_id = alice.kernel.run("fut = %plb submit slow(3)\nprint(fut.task_id)").strip()
    rule = "in a team pool a client may read, cancel or list only its own tasks"

    # Bob's kernel: %plb cancel and %plb result name the rule; the task is untouched.
    for magic, action in ((f"%plb cancel {task_id}", "cancel"), (f"%plb result {task_id}", "read")):
        shown = bob.kernel.run(magic)  # a magic's UsageError is printed on stderr
        refusal = f"cannot {action} task {task_id}: it belongs to user 'alice'"
        assert f"UsageError: %plb {magic.split()[1]}: {refusal}" in shown, shown
        assert rule in shown
    # Bob's server: the monitor API refuses too (403), and lists only Bob's tasks.
    for method in ("GET", "DELETE"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            bob.api(f"/plb/api/tasks/{task_id}", method=method)
        assert refused.value.code == 403
        assert rule in json.loads(refused.value.read())["message"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        bob.api("/plb/api/tasks?user=alice")
    assert refused.value.code == 403
    assert alice.kernel.run("print(fut.result(30))").strip() == "9"
    assert alice.api(f"/plb/api/tasks/{task_id}")["state"] == "done"

    # Bob's snapshot shows Alice's queue sizes and share, not her task ids or errors: his timeline
    # has her finished task (as many entries as hers), without its id. Each server's snapshot is up
    # to half a second old, so wait until Alice's shows her task and both timelines agree.
    def agreeing() -> dict[str, Any] | None:
        hers, his = alice.api("/plb/api/status"), bob.api("/plb/api/status")
        shown = task_id in json.dumps(hers["timeline"]) and len(hers["timeline"]) == len(his["timeline"])
        return his if shown else None

    snapshot = wait_for(agreeing, 10, "both servers' timelines to show alice's finished task")
    assert task_id not in json.dumps(snapshot)

    # A forged user: Bob's map "as alice" is charged to Bob.
    forged = json.loads(bob.kernel.run(
        "import json\nfs = %plb map --async -u alice slow range(2)\nprint(json.dumps([f.task_id for f in fs]))"
    ))
    bob.kernel.run("[f.result(30) for f in fs]")
    with pool.admin() as admin:
        owners = {t["id"]: t["user"] for t in admin.tasks(limit=1000)["tasks"]}
    assert [owners[i] for i in forged] == ["bob", "bob"]
    bob_ids = {t["id"] for t in bob.api("/plb/api/tasks?limit=1000")["tasks"]}
    assert set(forged) <= bob_ids and task_id not in bob_ids
