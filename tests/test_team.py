"""A team pool without a browser: the policy, the fair share, a team balancer and its remote view.

The end-to-end run (`plb start --team`, two attached JupyterLabs, kernels, panels, a restart) is
tests/browser/test_team_pool.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core.snapshot import SCHEMA_VERSION
from jupyter_plb.core.team import FairShare, TeamPolicy, policy_for
from jupyter_plb.errors import BalancerUnreachable, ParametersError, TaskRejected
from jupyter_plb.monitor.remote import RemoteBalancer
from jupyter_plb.transport import security
from tests.conftest import free_params, wait_for, worker_count

RULE = "in a team pool a client may read, cancel or list only its own tasks"


# -- the pure parts --------------------------------------------------------------------------------
def test_fair_share_is_each_users_part_of_the_slot_seconds_over_the_window() -> None:
    share = FairShare(window=10)
    share.sample(100.0, {}, 4)
    for step in range(1, 9):  # 4 slots for 8 s: alice holds 2, bob 1
        share.sample(100.0 + step, {"alice": 2, "bob": 1}, 4)
    assert share.shares() == pytest.approx({"alice": 0.5, "bob": 0.25})
    for step in range(9, 25):  # then only bob, long enough for alice's seconds to leave the window
        share.sample(100.0 + step, {"bob": 4}, 4)
    assert share.shares() == pytest.approx({"bob": 1.0})


def test_the_policy_hides_other_users_task_ids_and_errors_but_not_their_queues() -> None:
    policy = TeamPolicy(admins=["boss"])
    snapshot = {
        "users": [{"user": "alice", "queued": 5, "running": 1, "share": 0.5}],
        "hubs": [{"workers": [{"id": "w1", "task": {"id": "t_a", "name": "f", "user": "alice", "started": 1.0}}]}],
        "recent_failures": [{"id": "t_b", "name": "f", "user": "alice", "time": 2.0, "error": "KeyError: secret"}],
        "unschedulable": [{"id": "t_c", "name": "g", "user": "bob", "priority": 5, "reason": "no slot"}],
        "timeline": [{"id": "t_d", "user": "alice", "name": "f", "start": 1.0, "end": 2.0, "state": "done"}],
    }
    seen = json.dumps(policy.redact(snapshot, "bob"))
    for hidden in ("t_a", "t_b", "t_d", "secret"):
        assert hidden not in seen
    assert "t_c" in seen, "bob's own task stays whole"
    assert policy.redact(snapshot, "bob")["users"] == snapshot["users"]
    assert policy.redact(snapshot, "boss")["hubs"] == snapshot["hubs"]
    assert policy.redact(snapshot, "boss")["viewer"] == {"user": "boss", "admin": True, "team": True}
    assert policy.check_listing("bob", None) == "bob"
    assert policy.check_listing("boss", "alice") == "alice"
    with pytest.raises(Exception, match="cannot list the tasks of user 'alice'"):
        policy.check_listing("bob", "alice")
    with pytest.raises(ParametersError, match="LB_TEAM needs CurveZMQ"):
        policy_for({"LB_TEAM": True, "LB_CURVE": False})
    assert policy_for({"LB_TEAM": False}) is None


# -- a team balancer -------------------------------------------------------------------------------
@pytest.fixture
def team_dir(tmp_path: Path) -> Path:
    root = tmp_path / "security"
    security.keygen(root, clients=["alice", "bob", "boss"])
    return root


@pytest.fixture
def team(make_cluster: Callable[..., LocalCluster], team_dir: Path) -> LocalCluster:
    return make_cluster(LB_TEAM=True, LB_TEAM_ADMINS=["boss"], LB_SECURITY_DIR=str(team_dir))


@pytest.fixture
def as_user(
    connection_file: Path, team_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Client]]:
    """``as_user(name, **kwargs)``: a Client holding that user's issued certificate."""
    made: list[Client] = []

    def make(name: str, **kwargs: Any) -> Client:
        with monkeypatch.context() as env:
            env.setenv("PLB_CLIENT_CERT", str(team_dir / "issued" / f"client-{name}.key_secret"))
            made.append(Client(connection_file=connection_file, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.shutdown(wait=False, cancel_futures=True)


def test_a_team_balancer_charges_the_certificates_user_and_keeps_users_apart(
    team: LocalCluster, as_user: Callable[..., Client], start_hub: Callable[..., Any]
) -> None:
    assert team.balancer.curve is not None, "a team pool turns CurveZMQ on, even on loopback"
    alice, bob, boss = as_user("alice"), as_user("bob"), as_user("boss")
    forged = as_user("bob", user="alice")
    queued = alice.sendTask("NOBODY_OFFERS_IT", {"n": 1})["taskid"]
    claimed = forged.sendTask("NOBODY_OFFERS_IT", {"n": 2}, userid="alice")["taskid"]
    assert {t["id"]: t["user"] for t in boss.tasks()["tasks"]} == {queued: "alice", claimed: "bob"}

    assert RULE in bob.getTask(queued)["error"]
    assert RULE in bob.cancelTask(queued)["error"]
    with pytest.raises(TaskRejected, match=r"cannot cancel task .* belongs to user 'alice'"):
        bob.cancel([queued])
    with pytest.raises(TaskRejected, match="cannot list the tasks of user 'alice'"):
        bob.tasks(user="alice")
    assert [t["id"] for t in bob.tasks()["tasks"]] == [claimed]
    assert alice.getTask(queued)["state"] == "queued", "untouched by bob's attempts"

    status = bob.status()
    assert status["viewer"] == {"user": "bob", "admin": False, "team": True}
    assert {u["user"]: u["queued"] for u in status["users"]} == {"alice": 1, "bob": 1}
    # an admin cancels anyone's task
    assert boss.cancel([queued])[queued]["cancelled"] is True

    start_hub(1)
    wait_for(lambda: worker_count(boss) == 1, what="the hub to register")
    assert alice.submit(pow, 2, 5).result(timeout=20) == 32
    running = alice.submit(time.sleep, 1.0)
    wait_for(lambda: running.task_id in json.dumps(boss.status()["hubs"]), 10, "the admin to see it run")
    assert running.task_id not in json.dumps(bob.status()), "bob sees that alice runs, not her task"
    assert "alice" in json.dumps(bob.status()["hubs"])
    running.result(timeout=20)
    shares = wait_for(lambda: {u["user"]: u["share"] for u in boss.status()["users"] if u["share"]}, 10,
                      "alice's share of the slot")
    assert set(shares) == {"alice"}


def test_the_remote_view_says_when_the_team_balancer_is_gone_and_recovers(
    team: LocalCluster, team_dir: Path, connection_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLB_CLIENT_CERT", str(team_dir / "issued" / "client-alice.key_secret"))

    async def scenario() -> None:
        remote = RemoteBalancer(connection_file, free_params(), poll_interval=0.1, timeout=1.0)
        await remote.start()
        try:
            await until(lambda: remote.reachable, "the first snapshot")
            assert remote.snapshot()["viewer"]["user"] == "alice"
            assert await remote.list_tasks(state="queued") == {"schema": SCHEMA_VERSION, "total": 0, "tasks": []}
            with pytest.raises(TaskRejected, match="cannot list the tasks of user 'bob'"):
                await remote.list_tasks(user="bob")

            await asyncio.to_thread(team.stop)
            await until(lambda: not remote.reachable, "the loss to be noticed")
            snapshot = remote.snapshot()
            assert snapshot["team"]["reachable"] is False and snapshot["health"]["status"] == "error"
            assert snapshot["health"]["messages"][0].startswith("team balancer unreachable since ")
            started = time.monotonic()
            with pytest.raises(BalancerUnreachable, match="team balancer unreachable since"):
                await remote.task_info("t_x")
            assert time.monotonic() - started < 0.5, "no wait for a balancer known to be gone"

            again = LocalCluster(team.params, monitor=False, connection_file=connection_file)
            await asyncio.to_thread(again.start)
            try:
                await until(lambda: remote.reachable, "the team balancer to answer again", 20)
                assert remote.snapshot()["team"]["unreachable_since"] is None
            finally:
                await asyncio.to_thread(again.stop)
        finally:
            await remote.stop()

    asyncio.run(scenario())


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
