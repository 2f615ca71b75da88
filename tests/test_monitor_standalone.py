"""The standalone monitor (``startAll()``, ``plb start``): the same routes behind a token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import websocket

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core import parameters
from jupyter_plb.monitor import PAGE_CSP
from tests.conftest import wait_for

HOSTILE = "<img src=x onerror=alert(1)>"
TIMEOUT = 20.0

ROUTES = [
    ("GET", "/plb/api/status"),
    ("GET", "/plb/api/tasks"),
    ("GET", "/plb/api/tasks/t_unknown"),
    ("DELETE", "/plb/api/tasks/t_unknown"),
    ("POST", "/plb/api/users/alice/cancel"),
    ("POST", "/plb/api/hub/local"),
    ("GET", "/plb/api/connection"),
    ("GET", "/plb/metrics"),
    ("GET", "/plb/monitor"),
    ("GET", "/plb/static/monitor.js"),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Balancer, health check and standalone monitor on free ports (default hub heartbeat)."""
    params = parameters.load(
        LB_CLIENTPULLPORT=0, LB_WKPULLPORT=0, LB_HCREPPORT=0, MONITOR_PORT=0, HC_INTERVAL=0.2
    )
    with LocalCluster(params, connection_file=tmp_path / "plb-connection.json") as started:
        started.start()
        yield started


@pytest.fixture
def base(cluster: LocalCluster) -> str:
    return cluster.monitor.url.split("/plb/")[0]


@pytest.fixture
def auth(cluster: LocalCluster) -> dict[str, str]:
    return {"Authorization": f"token {cluster.monitor.token}"}


@pytest.fixture
def browser(cluster: LocalCluster) -> requests.Session:
    """A session that opened the printed URL: it holds the auth and ``_xsrf`` cookies."""
    session = requests.Session()
    page = session.get(cluster.monitor.url, timeout=TIMEOUT)
    assert page.status_code == 200 and page.url.endswith("/plb/monitor")
    return session


def request(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=TIMEOUT, allow_redirects=False, **kwargs)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def worker_count(cluster: LocalCluster) -> int:
    snapshot = cluster.call(cluster.balancer.snapshot)
    return sum(len(h["workers"]) for h in snapshot["hubs"] if h["state"] == "ok")


def hostile_task() -> Any:
    def task() -> str:
        return "ok"

    task.__qualname__ = HOSTILE
    return task


# -- the token -------------------------------------------------------------------------------------
def test_url_carries_a_random_token_on_a_free_port(cluster: LocalCluster) -> None:
    monitor = cluster.monitor
    assert monitor.port not in (0, 9000)
    assert monitor.url == f"http://127.0.0.1:{monitor.port}/plb/monitor?token={monitor.token}"
    assert len(monitor.token) >= 32


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_refuses_requests_without_the_token(base: str, method: str, path: str) -> None:
    assert request(method, base + path).status_code == 403
    assert request(method, base + path, headers={"Authorization": "token wrong"}).status_code == 403
    assert request(method, base + path + "?token=wrong").status_code == 403


def test_the_token_header_opens_every_read_route(base: str, auth: dict[str, str]) -> None:
    for path, kind in (
        ("/plb/api/status", "application/json"),
        ("/plb/api/tasks", "application/json"),
        ("/plb/api/connection", "application/json"),
        ("/plb/metrics", "text/plain"),
        ("/plb/monitor", "text/html"),
        ("/plb/static/monitor.css", "text/css"),
    ):
        response = request("GET", base + path, headers=auth)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith(kind), path
    assert request("GET", base + "/plb/api/tasks/t_unknown", headers=auth).status_code == 404
    assert request("GET", base + "/plb/api/tasks?limit=many", headers=auth).status_code == 400


def test_query_token_sets_an_httponly_cookie_and_reloads_without_it(
    cluster: LocalCluster, base: str
) -> None:
    first = request("GET", cluster.monitor.url)
    assert first.status_code == 302 and first.headers["Location"] == "/plb/monitor"
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"plb-monitor-{cluster.monitor.port}=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    session = requests.Session()
    session.cookies.update(first.cookies)
    page = session.get(base + "/plb/monitor", timeout=TIMEOUT)
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"] == PAGE_CSP
    assert "_xsrf" in session.cookies
    assert session.get(base + "/plb/static/monitor.js", timeout=TIMEOUT).status_code == 200
    assert session.get(base + "/plb/api/status", timeout=TIMEOUT).json()["balancer"]["id"]


def test_cross_site_post_without_token_is_refused(
    browser: requests.Session, base: str, auth: dict[str, str]
) -> None:
    url = base + "/plb/api/users/alice/cancel"
    assert browser.post(url, timeout=TIMEOUT).status_code == 403  # the cookie alone: no
    assert browser.delete(base + "/plb/api/tasks/t_x", timeout=TIMEOUT).status_code == 403
    xsrf = {"X-XSRFToken": str(browser.cookies["_xsrf"])}
    accepted = browser.post(url, headers=xsrf, timeout=TIMEOUT)
    assert accepted.status_code == 200 and accepted.json() == {"cancelled": 0}
    assert request("POST", url, headers=auth).json() == {"cancelled": 0}  # token: no xsrf needed


def test_websocket_from_another_site_is_refused(browser: requests.Session, base: str) -> None:
    """Cross-site websocket hijacking: the cookie is sent, but the Origin is not the monitor's."""
    ws_url = base.replace("http://", "ws://") + "/plb/api/events"
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    ws = websocket.create_connection(ws_url, timeout=TIMEOUT, cookie=cookie, origin=base)
    assert json.loads(ws.recv())["type"] == "snapshot"
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            ws_url, timeout=TIMEOUT, cookie=cookie, origin="http://evil.example"
        )
    assert refused.value.status_code == 403


# -- data ------------------------------------------------------------------------------------------
def test_tasks_events_and_cancel_through_the_standalone_api(
    cluster: LocalCluster, base: str, auth: dict[str, str]
) -> None:
    cluster.start_hub(1)
    wait_for(lambda: worker_count(cluster) == 1, what="the hub's worker")
    ws_url = base.replace("http://", "ws://") + "/plb/api/events"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url, timeout=TIMEOUT)
    assert refused.value.status_code == 403
    ws = websocket.create_connection(ws_url, timeout=TIMEOUT, header=auth)
    try:
        assert json.loads(ws.recv())["type"] == "snapshot"
        client = Client(connection_file=cluster.connection_file, user="dave")
        try:
            done = [client.submit(abs, -i) for i in range(3)] + [client.submit(hostile_task())]
            assert [f.result(TIMEOUT) for f in done] == [0, 1, 2, "ok"]
            slow = client.submit(time.sleep, 60)

            def running() -> bool:
                info = cluster.call(cluster.balancer.task_info, slow.task_id)
                return info is not None and info["state"] == "running"

            wait_for(running, what="the slow task to run")
            cancelled = request("DELETE", f"{base}/plb/api/tasks/{slow.task_id}", headers=auth)
            assert cancelled.json() == {"cancelled": True, "state": "cancelled", "from": "pending"}
            wait_for(slow.done, what="the cancelled task's future")
        finally:
            client.shutdown(wait=False, cancel_futures=True)
        seen: dict[str, set[str]] = {}
        ids = {f.task_id for f in done}
        deadline = time.monotonic() + TIMEOUT
        while not all("done" in seen.get(i, ()) for i in ids) and time.monotonic() < deadline:
            message = json.loads(ws.recv())
            for event in message.get("events", []):
                seen.setdefault(event["id"], set()).add(event["state"])
        assert all("done" in seen.get(i, ()) for i in ids)
    finally:
        ws.close()
    listing = request("GET", base + "/plb/api/tasks?user=dave&limit=10", headers=auth)
    assert b"<img" not in listing.content
    names = {t["name"] for t in listing.json()["tasks"]}
    assert names == {"abs", "sleep", HOSTILE}


def test_health_and_metrics_without_workers(
    cluster: LocalCluster, base: str, auth: dict[str, str]
) -> None:
    def health() -> dict[str, Any]:
        return request("GET", base + "/plb/api/status", headers=auth).json()["health"]

    warning = wait_for(lambda: (h := health())["status"] == "warning" and h, what="a warning")
    assert warning["messages"] == ["HC - WARNING : LB HAS NO WORKERS."]
    metrics = request("GET", base + "/plb/metrics", headers=auth).text
    assert 'plb_health{status="warning"} 1.0' in metrics
    assert "plb_tasks_submitted_total 0.0" in metrics


def test_local_hub_endpoint_and_stop_leaves_no_process(
    cluster: LocalCluster, base: str, auth: dict[str, str]
) -> None:
    url = base + "/plb/api/hub/local"
    started = request("POST", url, headers=auth, json={"action": "start", "workers": 1}).json()
    assert started["running"] is True and started["workers"] == 1
    wait_for(lambda: worker_count(cluster) == 1, what="the local hub's worker")
    snapshot = cluster.call(cluster.balancer.snapshot)
    pids = [started["pid"], *(w["pid"] for h in snapshot["hubs"] for w in h["workers"])]
    assert request("POST", url, headers=auth, json={"action": "dance"}).status_code == 400
    cluster.stop()
    assert not [pid for pid in pids if alive(pid)]
