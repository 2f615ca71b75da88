"""The monitor remembers finished tasks after their results are gone, and finds them by search."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from tests.conftest import free_params, wait_for

TIMEOUT = 20.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Balancer and standalone monitor whose results are forgotten 50 ms after they are collected."""
    params = free_params(LB_RESULT_RETENTION=0.05, LB_JOURNAL=False)
    with LocalCluster(params, connection_file=tmp_path / "plb-connection.json") as started:
        started.start()
        started.start_hub(1)
        yield started


@pytest.fixture
def api(cluster: LocalCluster) -> Callable[..., Any]:
    base = cluster.monitor.url.split("/plb/")[0]
    headers = {"Authorization": f"token {cluster.monitor.token}"}

    def get(path: str, status: int = 200, **query: Any) -> Any:
        answer = requests.get(f"{base}/plb/api/{path}", params=query, headers=headers, timeout=TIMEOUT)
        assert answer.status_code == status, answer.text
        return answer.json()

    return get


def explode_task() -> Callable[..., None]:
    def explode(seed: int, mode: str = "fast") -> None:
        print(f"explode got {seed} in mode {mode}")
        print("about to fail", file=sys.stderr)
        raise RuntimeError("kaput")

    return explode


def forgotten(cluster: LocalCluster, task_id: str) -> bool:
    """The balancer dropped the task and its result (its retention ended)."""
    return not cluster.call(cluster.balancer.tasks.__contains__, task_id)


def test_a_failed_task_is_found_by_search_after_its_result_is_forgotten(
    cluster: LocalCluster, api: Callable[..., Any]
) -> None:
    with Client(connection_file=cluster.connection_file, user="alice") as client:
        failing = client.submit(explode_task(), 41, mode="slow")
        fine = client.submit(abs, -3)
        assert isinstance(failing.exception(TIMEOUT), RuntimeError)
        assert fine.result(TIMEOUT) == 3
    wait_for(lambda: forgotten(cluster, failing.task_id) and forgotten(cluster, fine.task_id),
             what="the results' retention to end")

    found = api("tasks", q="state:FAILURE name:explode")
    assert found["total"] == 1 and [t["id"] for t in found["tasks"]] == [failing.task_id]
    assert found["tasks"][0]["error"] == "RuntimeError: kaput"
    assert api("tasks", state="failed")["total"] == 1
    assert {t["id"] for t in api("tasks", q="state:failed,done user:alice")["tasks"]} == {
        failing.task_id, fine.task_id,
    }
    assert [t["id"] for t in api("tasks", q="kaput")["tasks"]] == [failing.task_id]
    assert [t["id"] for t in api("tasks", q="args:slow")["tasks"]] == [failing.task_id]
    assert api("tasks", q="state:failed user:bob")["total"] == 0
    pages = [api("tasks", q="user:alice", limit=1, offset=offset) for offset in (0, 1, 2)]
    assert [p["total"] for p in pages] == [2, 2, 2]
    assert [[t["id"] for t in p["tasks"]] for p in pages] == [[fine.task_id], [failing.task_id], []]

    detail = api(f"tasks/{failing.task_id}")
    assert detail["state"] == "failed" and detail["user"] == "alice" and detail["name"].endswith(".explode")
    assert detail["traceback"].startswith("Traceback (most recent call last):")
    assert "in explode" in detail["traceback"] and detail["traceback"].endswith("RuntimeError: kaput\n")
    assert detail["stdout"] == "explode got 41 in mode slow\n" and detail["stderr"] == "about to fail\n"
    assert detail["args"] == "41, mode='slow'"
    assert detail["worker"].startswith("worker_") and detail["hub"]
    assert detail["submitted"] <= detail["started"] <= detail["ended"]
    assert detail["run_time"] >= 0 and detail["wait_time"] >= 0 and detail["retries"] == 0


def test_live_tasks_have_a_detail_and_bad_queries_a_clear_error(
    cluster: LocalCluster, api: Callable[..., Any]
) -> None:
    with Client(connection_file=cluster.connection_file, user="carol") as client:
        sleeper = client.submit(time.sleep, 60)
        client.status()  # the submit has reached the balancer
        running = wait_for(lambda: api(f"tasks/{sleeper.task_id}")["state"] == "running"
                           and api(f"tasks/{sleeper.task_id}"), what="the sleeper to run")
        assert running["args"] == "60" and running["worker"].startswith("worker_")
        assert running["run_time"] >= 0 and running["wait_time"] >= 0 and running["traceback"] is None
        queued = client.sendTask("NO_HUB_OFFERS_THIS", {"a": 1}, userid="carol")["taskid"]
        detail = api(f"tasks/{queued}")
        assert detail["state"] == "queued" and detail["args"] == "{'a': 1}" and detail["run_time"] is None
        assert [t["id"] for t in api("tasks", q="state:PENDING user:carol")["tasks"]] == [queued]
        assert [t["id"] for t in api("tasks", q="state:STARTED,PENDING")["tasks"]] == [queued, sleeper.task_id]
        assert client.tasks(query="state:queued")["total"] == 1
        client.cancelTask(queued)
        sleeper.cancel()
        wait_for(lambda: api("tasks", q="state:REVOKED")["total"] == 2, what="both tasks to be cancelled")
    assert "unknown task state 'nonsense'" in api("tasks", 400, q="state:nonsense")["message"]
    assert "unknown task state" in api("tasks", 400, state="done,bogus")["message"]
    assert api("tasks/t_never_seen", 404)["message"].startswith("no such task")


def test_a_restarted_balancer_remembers_the_finished_tasks_of_its_journal(tmp_path: Path) -> None:
    connection_file = tmp_path / "plb-connection.json"
    params = free_params()
    with LocalCluster(params, monitor=False, connection_file=connection_file) as first:
        first.start()
        first.start_hub(1)
        with Client(connection_file=connection_file, user="dora") as client:
            failing = client.submit(explode_task(), 5)
            assert isinstance(failing.exception(TIMEOUT), RuntimeError)
    with LocalCluster(params, monitor=False, connection_file=connection_file) as second:
        second.start()
        detail = second.call(second.balancer.task_info, failing.task_id)
        listed = second.call(second.balancer.list_tasks, None, None, None, 0, 10, "state:failed user:dora")
    assert detail["state"] == "failed" and detail["args"] == "5"
    assert detail["stdout"] == "explode got 5 in mode fast\n" and detail["traceback"].endswith("RuntimeError: kaput\n")
    assert [t["id"] for t in listed["tasks"]] == [failing.task_id]
