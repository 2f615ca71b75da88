"""The Jupyter server extension: a real server (pytest-jupyter), a real balancer and local hub.

Every test runs on the server's loop; the Client is synchronous, so it is used from a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import stat
import time
import warnings
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import psutil
import pytest
import tornado.httpclient
import tornado.websocket
from jupyter_server.utils import JupyterServerAuthWarning, url_path_join

from jupyter_plb.balancer.healthcheck import NO_WORKERS
from jupyter_plb.client import Client
from jupyter_plb.core.snapshot import SCHEMA_VERSION
from jupyter_plb.monitor import PAGE_CSP
from jupyter_plb.monitor.events import MAX_BACKLOG, MAX_PENDING_EVENTS

HOSTILE = "<img src=x onerror=alert(1)>"
DEADLINE = 20.0

#: (method, path, body) of every route, for the login checks.
ENDPOINTS = [
    ("GET", "plb/api/status", None),
    ("GET", "plb/api/tasks", None),
    ("GET", "plb/api/tasks/t_unknown", None),
    ("DELETE", "plb/api/tasks/t_unknown", None),
    ("POST", "plb/api/users/alice/cancel", b""),
    ("POST", "plb/api/hub/local", b'{"action": "stop"}'),
    ("GET", "plb/api/connection", None),
    ("GET", "plb/metrics", None),
    ("GET", "plb/static/monitor.js", None),
]


# -- fixtures and helpers --------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _restore_connection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension exports PLB_CONNECTION_FILE; give it back afterwards."""
    monkeypatch.delenv("PLB_CONNECTION_FILE", raising=False)


@pytest.fixture
def plb_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``c.PlbExtension`` for a test: no local hub and a fast health check unless parametrized."""
    return {"local_workers": 0, "parameters": {"HC_INTERVAL": 0.2}, **getattr(request, "param", {})}


def plb(**config: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("plb_config", [config], indirect=True, ids=["plb"])


@pytest.fixture
def jp_server_config(plb_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_plb": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
        },
        "PlbExtension": plb_config,
    }


@pytest.fixture
def plb_started(jp_serverapp: Any, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Any:
    """The extension after its start hook (``jp_serverapp`` does not run start hooks)."""
    jp_asyncio_loop.run_until_complete(
        asyncio.wait_for(jp_serverapp.extension_manager.start_all_extensions(), DEADLINE)
    )
    return extension(jp_serverapp)


def extension(serverapp: Any) -> Any:
    return next(iter(serverapp.extension_manager.extension_apps["jupyter_plb"]))


@pytest.fixture
def raw_fetch(http_server_client: Any, jp_base_url: str) -> Callable[..., Any]:
    """A request with only the headers given (no token) that returns 4xx answers too."""

    async def fetch(
        path: str, method: str = "GET", body: bytes | None = None, **kwargs: Any
    ) -> Any:
        return await asyncio.wait_for(
            http_server_client.fetch(
                url_path_join(jp_base_url, path),
                method=method,
                body=body,
                raise_error=False,
                follow_redirects=False,
                allow_nonstandard_methods=True,
                **kwargs,
            ),
            DEADLINE,
        )

    return fetch


async def until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """The first truthy ``condition()``, re-checked with a growing pause; fails at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.1)
    return value


async def get_json(jp_fetch: Callable[..., Any], *parts: str, **kwargs: Any) -> Any:
    response = await asyncio.wait_for(jp_fetch(*parts, **kwargs), DEADLINE)
    return json.loads(response.body)


async def connect(ext: Any, user: str = "tester") -> Client:
    return await asyncio.wait_for(
        asyncio.to_thread(Client, connection_file=ext.balancer.connection_path, user=user), DEADLINE
    )


async def disconnect(client: Client) -> None:
    await asyncio.wait_for(
        asyncio.to_thread(client.shutdown, wait=False, cancel_futures=True), DEADLINE
    )


def workers(ext: Any) -> list[dict[str, Any]]:
    return [w for h in ext.balancer.snapshot()["hubs"] if h["state"] == "ok" for w in h["workers"]]


def hostile_task() -> Callable[[], str]:
    def task() -> str:
        return "ok"

    task.__qualname__ = HOSTILE
    return task


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- authentication --------------------------------------------------------------------------------
def test_no_handler_triggers_an_auth_warning(jp_configurable_serverapp: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jp_configurable_serverapp()
    assert [
        str(w.message) for w in caught if issubclass(w.category, JupyterServerAuthWarning)
    ] == []


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_endpoint_refuses_requests_without_a_valid_token(
    plb_started: Any, raw_fetch: Callable[..., Any], method: str, path: str, body: bytes | None
) -> None:
    assert (await raw_fetch(path, method, body)).code == 403
    wrong = {"Authorization": "token not-the-token"}
    assert (await raw_fetch(path, method, body, headers=wrong)).code == 403


async def test_the_page_redirects_to_the_login_and_the_websocket_refuses(
    plb_started: Any, raw_fetch: Callable[..., Any], jp_ws_fetch: Callable[..., Any]
) -> None:
    response = await raw_fetch("plb/monitor")
    assert response.code == 302
    assert "/login?next=" in response.headers["Location"]
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await asyncio.wait_for(
            jp_ws_fetch("plb", "api", "events", headers={"Authorization": "token nope"}), DEADLINE
        )
    assert refused.value.code == 403


async def test_state_changes_by_cookie_need_the_xsrf_token(
    plb_started: Any, raw_fetch: Callable[..., Any], jp_serverapp: Any
) -> None:
    page = await raw_fetch(f"plb/monitor?token={jp_serverapp.identity_provider.token}")
    assert page.code == 200
    cookies = SimpleCookie()
    for header in page.headers.get_list("Set-Cookie"):
        cookies.load(header)
    assert "_xsrf" in cookies
    cookie = "; ".join(f"{k}={v.value}" for k, v in cookies.items())
    path = "plb/api/users/alice/cancel"
    refused = await raw_fetch(path, "POST", b"", headers={"Cookie": cookie})
    assert refused.code == 403
    accepted = await raw_fetch(
        path, "POST", b"", headers={"Cookie": cookie, "X-XSRFToken": cookies["_xsrf"].value}
    )
    assert accepted.code == 200
    assert json.loads(accepted.body) == {"cancelled": 0}


# -- the page and its files ------------------------------------------------------------------------
async def test_monitor_page_and_static_files(
    plb_started: Any, jp_fetch: Callable[..., Any]
) -> None:
    page = await asyncio.wait_for(jp_fetch("plb", "monitor"), DEADLINE)
    assert page.headers["Content-Security-Policy"] == PAGE_CSP
    assert page.headers["Content-Type"].startswith("text/html")
    assert b'src="static/monitor.js"' in page.body
    script = await asyncio.wait_for(jp_fetch("plb", "static", "monitor.js"), DEADLINE)
    assert b"jupyter_plb live monitor" in script.body
    style = await asyncio.wait_for(jp_fetch("plb", "static", "monitor.css"), DEADLINE)
    assert style.headers["Content-Type"].startswith("text/css")


# -- configuration, connection file, health --------------------------------------------------------
def test_ports_are_free_unless_the_configuration_names_them(
    jp_serverapp: Any, plb_started: Any, jp_runtime_dir: Path
) -> None:
    info = plb_started.balancer.info
    assert {info.client_port, info.worker_port, info.health_port}.isdisjoint({5799, 5699, 5999})
    path = jp_runtime_dir / "plb-connection.json"
    assert plb_started.balancer.connection_path == path
    assert os.environ["PLB_CONNECTION_FILE"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["client_port"] == info.client_port


def test_traits_from_config(
    jp_configurable_serverapp: Any, jp_asyncio_loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    client_port = free_port()
    parameters_file = tmp_path / "parameters.json"
    parameters_file.write_text(
        json.dumps({"LB_CLIENTPULLPORT": client_port, "LB_QUEING_MAXPERUSER": 7})
    )
    connection_file = tmp_path / "conn" / "lb.json"
    app = jp_configurable_serverapp(
        config={
            "ServerApp": {
                "jpserver_extensions": {"jupyter_plb": True, "jupyter_server_terminals": False}
            },
            "PlbExtension": {
                "parameters_file": str(parameters_file),
                "parameters": {"LB_QUEING_MAXPERUSER": 9, "LB_HEARTBEAT_INTERVAL": 2.0},
                "connection_file": str(connection_file),
                "local_workers": 0,
            },
        }
    )
    jp_asyncio_loop.run_until_complete(
        asyncio.wait_for(app.extension_manager.start_all_extensions(), DEADLINE)
    )
    ext = extension(app)
    assert ext.local_workers == 0
    assert ext.balancer.params["LB_QUEING_MAXPERUSER"] == 9  # the trait wins over the file
    assert ext.balancer.params["LB_HEARTBEAT_INTERVAL"] == 2.0
    assert ext.balancer.info.client_port == client_port  # named in the file: used as given
    assert ext.balancer.info.worker_port not in (0, 5699)  # not named: a free port
    assert ext.balancer.connection_path == connection_file
    assert os.environ["PLB_CONNECTION_FILE"] == str(connection_file)
    assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600


async def test_connection_endpoint(plb_started: Any, jp_fetch: Callable[..., Any]) -> None:
    data = await get_json(jp_fetch, "plb", "api", "connection")
    path = str(plb_started.balancer.connection_path)
    assert data == {
        "connection_file": path,
        "command": f"plb hub --connect {path}",
        "address": "tcp://127.0.0.1",
    }


async def test_status_reports_the_health_check_while_there_are_no_workers(
    plb_started: Any, jp_fetch: Callable[..., Any]
) -> None:
    async def health() -> dict[str, Any]:
        return (await get_json(jp_fetch, "plb", "api", "status"))["health"]

    deadline = time.monotonic() + DEADLINE
    while (current := await health())["status"] == "unknown" and time.monotonic() < deadline:
        await asyncio.wait_for(plb_started.healthcheck.wait_checked(DEADLINE), DEADLINE)
    assert current["status"] == "warning"
    assert NO_WORKERS in current["messages"]
    status = await get_json(jp_fetch, "plb", "api", "status")
    assert status["balancer"]["id"] == plb_started.balancer.id
    assert status["hubs"] == []


# -- the local hub ---------------------------------------------------------------------------------
@plb(local_workers=2)
async def test_local_hub_starts_with_the_server_and_stops_with_it(
    plb_started: Any, jp_serverapp: Any, jp_fetch: Callable[..., Any]
) -> None:
    await until(lambda: len(workers(plb_started)) == 2, "the local hub's 2 workers")
    status = await get_json(jp_fetch, "plb", "api", "status")
    (hub,) = status["hubs"]
    assert hub["local"] is True
    assert hub["pid"] == plb_started.monitor.local_hub.process.pid
    pids = [hub["pid"], *(w["pid"] for w in hub["workers"])]
    assert all(alive(pid) for pid in pids)
    health = await until(
        lambda: plb_started.balancer.health["status"] == "ok" and plb_started.balancer.health,
        "health ok once workers are there",
    )
    assert health["messages"] == []

    await asyncio.wait_for(jp_serverapp.extension_manager.stop_all_extensions(), DEADLINE)
    assert not [pid for pid in pids if alive(pid)], "processes left after the server stopped"
    assert not plb_started.balancer.running


async def test_local_hub_endpoint_starts_and_stops_a_hub(
    plb_started: Any, jp_fetch: Callable[..., Any]
) -> None:
    started = await get_json(
        jp_fetch,
        "plb",
        "api",
        "hub",
        "local",
        method="POST",
        body=json.dumps({"action": "start", "workers": 1}),
    )
    assert started["running"] is True and started["workers"] == 1
    await until(lambda: len(workers(plb_started)) == 1, "the local hub's worker")
    pid = started["pid"]
    stopped = await get_json(
        jp_fetch, "plb", "api", "hub", "local", method="POST", body=json.dumps({"action": "stop"})
    )
    assert stopped == {"running": False, "workers": 0, "pid": None}
    assert not alive(pid)
    for bad in (b'{"action": "explode"}', b"not json", b'{"action": "start", "workers": 0}'):
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await asyncio.wait_for(
                jp_fetch("plb", "api", "hub", "local", method="POST", body=bad), DEADLINE
            )
        assert refused.value.code == 400


# -- tasks -----------------------------------------------------------------------------------------
@plb(local_workers=1, parameters={"HC_INTERVAL": 0.2, "LB_PREFETCH": 0})
async def test_tasks_list_filters_paginates_and_delete_cancels(
    plb_started: Any, jp_fetch: Callable[..., Any]
) -> None:
    await until(lambda: workers(plb_started), "the local hub's worker")
    client = await connect(plb_started, user="alice")
    try:
        running = await asyncio.to_thread(client.submit, time.sleep, 60)
        queued = [await asyncio.to_thread(client.submit, time.sleep, 60) for _ in range(3)]
        info = plb_started.balancer.task_info
        await until(lambda: info(running.task_id)["state"] == "running", "the first task to run")

        # a quick run of submits travels together, up to COALESCE_DELAY after the first of them
        await until(lambda: len(plb_started.balancer.tasks) == 4, "the queued submits to arrive")
        listing = await get_json(jp_fetch, "plb", "api", "tasks")
        assert listing["total"] == 4
        assert [t["id"] for t in listing["tasks"]][-1] == running.task_id  # newest first
        only_running = await get_json(jp_fetch, "plb", "api", "tasks", params={"state": "running"})
        assert [t["id"] for t in only_running["tasks"]] == [running.task_id]
        page = await get_json(
            jp_fetch,
            "plb",
            "api",
            "tasks",
            params={"user": "alice", "name": "sleep", "offset": "1", "limit": "2"},
        )
        assert page["total"] == 4 and len(page["tasks"]) == 2
        nobody = await get_json(jp_fetch, "plb", "api", "tasks", params={"user": "bob"})
        assert nobody == {"schema": SCHEMA_VERSION, "total": 0, "tasks": []}
        for bad in ({"limit": "ten"}, {"offset": "-1"}, {"limit": "100000"}, {"state": "lost"}):
            with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
                await asyncio.wait_for(jp_fetch("plb", "api", "tasks", params=bad), DEADLINE)
            assert refused.value.code == 400

        one = await get_json(jp_fetch, "plb", "api", "tasks", running.task_id)
        assert one["state"] == "running" and one["user"] == "alice" and one["name"] == "sleep"

        cancelled = await get_json(
            jp_fetch, "plb", "api", "tasks", queued[0].task_id, method="DELETE"
        )
        assert cancelled == {"cancelled": True, "state": "cancelled", "from": "queue"}
        cancelled = await get_json(
            jp_fetch, "plb", "api", "tasks", running.task_id, method="DELETE"
        )
        assert cancelled == {"cancelled": True, "state": "cancelled", "from": "pending"}
        gone = await get_json(jp_fetch, "plb", "api", "tasks", running.task_id)
        assert gone["state"] == "cancelled"
        with pytest.raises(tornado.httpclient.HTTPClientError) as missing:
            await asyncio.wait_for(
                jp_fetch("plb", "api", "tasks", "t_nope", method="DELETE"), DEADLINE
            )
        assert missing.value.code == 404

        by_user = await get_json(
            jp_fetch, "plb", "api", "users", "alice", "cancel", method="POST", body=b""
        )
        assert by_user["cancelled"] >= 1
        await until(lambda: all(f.done() for f in [running, *queued]), "every future to settle")
        assert all(f.cancelled() for f in [running, *queued])
    finally:
        await disconnect(client)


@plb(local_workers=1)
async def test_hostile_task_name_comes_back_json_escaped(
    plb_started: Any, jp_fetch: Callable[..., Any]
) -> None:
    client = await connect(plb_started)
    try:
        future = await asyncio.to_thread(client.submit, hostile_task())
        assert await asyncio.wait_for(future, DEADLINE) == "ok"
    finally:
        await disconnect(client)
    for parts in (("api", "tasks"), ("api", "tasks", future.task_id), ("api", "status")):
        response = await asyncio.wait_for(jp_fetch("plb", *parts), DEADLINE)
        assert (
            b"<img" not in response.body
            and b"\\u003cimg src=x onerror=alert(1)\\u003e" in response.body
        )
        assert response.headers["Content-Type"].startswith("application/json")
    listing = await get_json(jp_fetch, "plb", "api", "tasks")
    assert listing["tasks"][0]["name"] == HOSTILE


# -- the websocket ---------------------------------------------------------------------------------
@plb(local_workers=1)
async def test_websocket_streams_a_snapshot_then_task_events(
    plb_started: Any, jp_ws_fetch: Callable[..., Any]
) -> None:
    ws = await asyncio.wait_for(jp_ws_fetch("plb", "api", "events"), DEADLINE)
    try:
        first = json.loads(await asyncio.wait_for(ws.read_message(), DEADLINE))
        assert first["type"] == "snapshot"
        assert first["data"]["balancer"]["id"] == plb_started.balancer.id

        client = await connect(plb_started)
        try:
            futures = await asyncio.to_thread(lambda: [client.submit(abs, -i) for i in range(5)])
            assert [await asyncio.wait_for(f, DEADLINE) for f in futures] == list(range(5))
        finally:
            await disconnect(client)

        ids = {f.task_id for f in futures}
        states: dict[str, set[str]] = {}
        snapshots = 0
        while not all("done" in states.get(i, ()) for i in ids):
            message = json.loads(await asyncio.wait_for(ws.read_message(), DEADLINE))
            if message["type"] == "snapshot":
                snapshots += 1
                continue
            assert message["type"] == "tasks"
            for event in message["events"]:
                states.setdefault(event["id"], set()).add(event["state"])
        assert ids <= set(states)
    finally:
        ws.close()
    await until(lambda: not plb_started.monitor.events.channels, "the closed socket to be dropped")
    assert not plb_started.balancer.subscribers


async def test_event_stream_coalesces_events_and_bounds_a_slow_listener(plb_started: Any) -> None:
    """A listener whose writes never complete (a reader that stopped reading)."""
    stream = plb_started.monitor.events
    stalled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sent: list[dict[str, Any]] = []

    def send(text: str) -> asyncio.Future[None]:
        sent.append(json.loads(text))
        return stalled

    channel = stream.connect(send)
    assert [m["type"] for m in sent] == ["snapshot"] and channel.writing
    (subscriber,) = plb_started.balancer.subscribers
    subscriber([{"id": "t_1", "state": "queued", "name": "f"}])
    subscriber([{"id": "t_1", "state": "running", "worker": "w"}, {"id": "t_2", "state": "queued"}])

    def batches() -> list[dict[str, Any]]:  # (snapshots may join the backlog meanwhile)
        return [m for m in map(json.loads, channel.backlog) if m["type"] == "tasks"]

    batch = (await until(batches, "the coalesced batch"))[0]
    assert batch == {
        "type": "tasks",
        "schema": SCHEMA_VERSION,
        "events": [
            {"id": "t_1", "state": "running", "name": "f", "worker": "w"},
            {"id": "t_2", "state": "queued"},
        ],
    }
    subscriber([{"id": f"t_{i}", "state": "queued"} for i in range(MAX_PENDING_EVENTS + 5)])
    overflow = (await until(lambda: batches()[1:], "the overflowing batch"))[0]
    assert overflow["dropped"] == 5 and len(overflow["events"]) == MAX_PENDING_EVENTS

    for i in range(3 * MAX_BACKLOG):
        channel.push(f'{{"n": {i}}}')
    assert len(channel.backlog) == MAX_BACKLOG
    assert json.loads(channel.backlog[-1]) == {"n": 3 * MAX_BACKLOG - 1}
    stalled.set_result(None)  # the reader catches up: the backlog drains, one write at a time
    await until(lambda: {"n": 3 * MAX_BACKLOG - 1} in sent, "the backlog to drain")
    stream.disconnect(channel)
    assert not plb_started.balancer.subscribers


async def test_websocket_sends_at_most_two_snapshots_a_second(
    plb_started: Any, jp_ws_fetch: Callable[..., Any]
) -> None:
    ws = await asyncio.wait_for(jp_ws_fetch("plb", "api", "events"), DEADLINE)
    try:
        times = []
        for _ in range(4):
            message = json.loads(await asyncio.wait_for(ws.read_message(), DEADLINE))
            assert message["type"] == "snapshot"
            times.append(time.monotonic())
    finally:
        ws.close()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.45


# -- metrics ---------------------------------------------------------------------------------------
@plb(local_workers=1)
async def test_metrics_in_prometheus_text_format(
    plb_started: Any, jp_fetch: Callable[..., Any]
) -> None:
    client = await connect(plb_started, user="carol")
    try:
        futures = await asyncio.to_thread(lambda: [client.submit(abs, -i) for i in range(3)])
        futures.append(await asyncio.to_thread(client.submit, hostile_task()))
        for future in futures:
            await asyncio.wait_for(future, DEADLINE)
    finally:
        await disconnect(client)
    response = await asyncio.wait_for(jp_fetch("plb", "metrics"), DEADLINE)
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()
    assert 'plb_tasks_finished_total{state="done"} 4.0' in text
    assert "plb_tasks_submitted_total 4.0" in text
    assert 'plb_workers{state="idle"} 1.0' in text
    assert 'plb_hubs{state="ok"} 1.0' in text
    assert 'plb_task_runs_total{name="abs"} 3.0' in text
    assert f'plb_task_runs_total{{name="{HOSTILE}"}} 1.0' in text
    assert 'plb_user_tasks{state="queued",user="carol"} 0.0' in text
    assert 'plb_health{status="ok"}' in text
