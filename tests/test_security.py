"""Security: who may connect, who may act as whom, what a peer without the keys can do (nothing).

Every attacker here is a real peer on loopback: a ZeroMQ socket made by ``sockets.connect_dealer``
with chosen keys, or a real ``plb hub`` / ``Client`` holding the wrong certificate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from jupyter_plb.balancer import Balancer, function_digest
from jupyter_plb.client import Client, default_user
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core import parameters, protocol
from jupyter_plb.errors import (
    BalancerUnreachable,
    ConnectionFileError,
    ParametersError,
    TaskRejected,
)
from jupyter_plb.transport import connection, security
from jupyter_plb.transport.security import CertificateError, InsecureBinding, PeerKeys
from jupyter_plb.workers.spawn import stop_process

from .conftest import free_params, wait_for, worker_count
from .peers import SILENCE, Peer


def append_line(path: str, text: str) -> str:
    with open(path, "a") as out:
        out.write(text + "\n")
    return text


def square(x: int) -> int:
    return x * x


# -- hand-made peers ------------------------------------------------------------------------------
class Peers:
    """Makes peers, closes them all at the end; ``silent()`` checks none of them got an answer."""

    def __init__(self) -> None:
        self.made: list[Peer] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Peer:
        self.made.append(Peer(*args, **kwargs))
        return self.made[-1]

    def silent(self, wait: float = SILENCE) -> bool:
        poller = zmq.Poller()
        for peer in self.made:
            poller.register(peer.socket, zmq.POLLIN)
        return not poller.poll(wait * 1000)


@pytest.fixture
def peers() -> Iterator[Peers]:
    made = Peers()
    yield made
    for peer in made.made:
        peer.close()


def submit_header(
    fn: Callable[..., Any], args: tuple, user: str
) -> tuple[dict[str, Any], list[Any]]:
    """A ``submit`` message as a Client makes it: the pickled function, then the arguments."""
    fn_buffers = protocol.dumps(fn)
    fn_id = function_digest([protocol.digest(b) for b in fn_buffers])
    arg_buffers = protocol.dumps((args, {}))
    task = {
        "id": protocol.new_id("t"),
        "name": fn.__name__,
        "fn": fn_id,
        "user": user,
        "priority": 0,
        "nbuf": len(arg_buffers),
        "timeout": None,
        "retries": 0,
    }
    header = {"type": "submit", "fns": [{"fn": fn_id, "nbuf": len(fn_buffers)}], "tasks": [task]}
    return header, [*fn_buffers, *arg_buffers]


def rejected(client: Client) -> dict[str, int]:
    return client.status()["rejected"]


# -- policy and files ------------------------------------------------------------------------------
def test_curve_is_on_beyond_loopback_and_off_needs_consent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "localhost"):
        assert security.is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.7"):
        assert not security.is_loopback(host), host

    def params(**values: Any) -> parameters.Parameters:
        return parameters.load(**values)

    assert security.curve_enabled(params()) is False
    assert security.curve_enabled(params(LB_CURVE=True)) is True
    assert security.curve_enabled(params(LB_BIND_IP="0.0.0.0")) is True
    assert security.curve_enabled(params(LB_IP="10.1.2.3")) is True
    with pytest.raises(InsecureBinding, match="LB_ALLOW_INSECURE: true") as refused:
        security.curve_enabled(params(LB_BIND_IP="0.0.0.0", LB_CURVE=False))
    assert "LB_CURVE" in str(refused.value) and "plb keygen" in str(refused.value)
    with caplog.at_level(logging.WARNING, "jupyter_plb.transport.security"):
        insecure = params(LB_BIND_IP="0.0.0.0", LB_CURVE=False, LB_ALLOW_INSECURE=True)
        assert security.curve_enabled(insecure) is False
    assert "INSECURE" in caplog.text
    for bad in ("yes", 1, None):
        with pytest.raises(ParametersError, match="LB_CURVE"):
            params(LB_CURVE=bad)


def test_the_balancer_will_not_listen_beyond_loopback_without_curve_or_consent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "plb-connection.json"
    balancer = Balancer(free_params(LB_BIND_IP="0.0.0.0", LB_CURVE=False), connection_file=path)
    with pytest.raises(InsecureBinding, match="LB_ALLOW_INSECURE"):
        asyncio.run(balancer.start())
    assert not balancer.running and not path.exists()


def test_keygen_writes_private_files_and_secrets_others_can_read_are_refused(
    tmp_path: Path,
) -> None:
    root = tmp_path / "security"
    report = security.keygen(root, user="alice", clients=["bob"], hubs=["gpu1"])
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "server.key_secret",
        "client.key_secret",
        "hub.key_secret",
        "client-bob.key_secret",
        "hub-gpu1.key_secret",
        "bob.key",
        "gpu1.key",
    }
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), "every file is 0600"
    assert all(
        stat.S_IMODE(d.stat().st_mode) == 0o700 for d in [root, *root.rglob("*")] if d.is_dir()
    )
    assert any("PLB_HUB_CERT" in line for line in report.lines())
    own = security.read_certificate(root / "client.key_secret", secret=True)
    bob = security.read_certificate(root / "clients" / "bob.key", secret=False)
    assert own.user == "alice" and bob.user == "bob" and bob.secret is None
    assert security.keygen(root, clients=["bob"]).created == [], "made once, then kept"
    (root / "issued" / "client-bob.key_secret").unlink()  # handed over and deleted here
    with pytest.raises(CertificateError, match="--force"):
        security.keygen(root, clients=["bob"])

    secret = root / "issued" / "hub-gpu1.key_secret"
    secret.chmod(0o644)
    with pytest.raises(CertificateError, match=rf"chmod 600 {secret}"):
        security.read_certificate(secret, secret=True)
    allowed = root / "hubs"
    allowed.chmod(0o777)
    try:
        with pytest.raises(CertificateError, match="chmod go-w"):
            security.check_not_shared(allowed)
        assert security.AllowList(allowed).user(bob.public) is None, (
            "a shared allow-list is ignored"
        )
    finally:
        allowed.chmod(0o700)


def test_default_user_prefers_plb_user_then_the_jupyterhub_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PLB_USER", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "jane")
    assert default_user() == "jane"
    monkeypatch.setenv("PLB_USER", "batch")
    assert default_user() == "batch"


# -- with CurveZMQ ---------------------------------------------------------------------------------
@pytest.fixture
def security_dir(tmp_path: Path) -> Path:
    root = tmp_path / "security"
    security.keygen(root, user="alice", clients=["bob"], hubs=["remote"])
    return root


@pytest.fixture
def curve_cluster(make_cluster: Callable[..., LocalCluster], security_dir: Path) -> LocalCluster:
    return make_cluster(LB_CURVE=True, LB_SECURITY_DIR=str(security_dir))


@pytest.fixture
def connect(
    connection_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Client]]:
    """``connect(cert=None, **kwargs)``: a Client holding ``cert`` (default: this machine's)."""
    made: list[Client] = []

    def make(cert: Path | None = None, **kwargs: Any) -> Client:
        with monkeypatch.context() as env:
            if cert is not None:
                env.setenv("PLB_CLIENT_CERT", str(cert))
            made.append(Client(connection_file=connection_file, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.shutdown(wait=False, cancel_futures=True)


def keys(path: Path, info: connection.ConnectionInfo) -> PeerKeys:
    cert = security.read_certificate(path, secret=True)
    assert cert.secret is not None
    return PeerKeys(info.curve_serverkey.encode(), cert.public, cert.secret, str(path))


def test_with_curve_the_cluster_runs_and_a_client_is_its_certificates_user(
    curve_cluster: LocalCluster,
    connect: Callable[..., Client],
    start_hub: Callable[..., Any],
    connection_file: Path,
    security_dir: Path,
) -> None:
    info = connection.read(connection_file)
    assert len(info.curve_serverkey) == 40 and info.security_dir == str(security_dir)
    alice = connect()
    assert alice.user == "alice", "the certificate's user, whatever the login name"
    start_hub(2)
    wait_for(lambda: worker_count(alice) == 2, what="the hub (its own certificate) to register")
    assert list(alice.map(square, range(20))) == [i * i for i in range(20)]
    status = alice.status()
    assert [u["user"] for u in status["users"]] == ["alice"]
    # The health check connects with the balancer's own certificate.
    wait_for(lambda: alice.status()["health"]["status"] == "ok", what="the health check")
    # A certificate added while the balancer runs is allowed at once (the allow-list is re-read).
    security.keygen(security_dir, clients=["carol"])
    carol = connect(security_dir / "issued" / "client-carol.key_secret")
    assert carol.user == "carol" and carol.submit(square, 7).result(timeout=20) == 49


def test_a_client_cannot_act_as_another_user(
    curve_cluster: LocalCluster,
    connect: Callable[..., Client],
    start_hub: Callable[..., Any],
    security_dir: Path,
) -> None:
    alice = connect()
    bob = connect(security_dir / "issued" / "client-bob.key_secret")
    assert bob.user == "bob"
    theirs = alice.submit(square, 12)  # no hub yet: it stays queued
    with pytest.raises(TaskRejected, match="certificate makes it 'bob'"):
        bob.options(user="alice").submit(square, 1).result(timeout=20)
    assert "certificate" in bob.sendTask("anything", {}, userid="alice")["error"]
    # Read, cancel, acknowledge, list or re-claim alice's task: it does not exist for bob.
    assert bob.getTask(theirs.task_id) == {"progress": None, "result": None, "state": None}
    assert bob.cancelTask(theirs.task_id)["deleted"] is False
    bob._connection.send({"type": "ack", "ids": [theirs.task_id]})
    assert bob.tasks()["tasks"] == [] and bob.tasks(user="alice")["tasks"] == []
    hello = bob._connection.request({"type": "hello", "outstanding": [theirs.task_id]})
    assert hello.header["user"] == "bob"
    resubmit = {"id": theirs.task_id, "name": "x", "route": "x", "user": "bob", "nbuf": 0}
    reply = bob._connection.request({"type": "submit", "fns": [], "tasks": [resubmit]})
    assert "already in use" in reply.header["rejected"][theirs.task_id]
    listed = alice.tasks()["tasks"]
    assert [(t["id"], t["state"], t["user"]) for t in listed] == [
        (theirs.task_id, "queued", "alice")
    ]
    start_hub(1)
    assert theirs.result(timeout=30) == 144, "alice still gets her result, not bob"
    assert bob.future(theirs.task_id) is None and theirs.task_id not in bob._connection.seed_results


def test_peers_without_an_allowed_certificate_cannot_connect(
    curve_cluster: LocalCluster,
    connect: Callable[..., Client],
    start_hub: Callable[..., Any],
    peers: Peers,
    connection_file: Path,
    security_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = connect()
    info = alice.connection_info
    queued = alice.submit(square, 3)
    before = rejected(alice).get("certificate", 0)
    stranger_dir = tmp_path / "stranger"
    security.keygen(stranger_dir, user="mallory")
    stranger = keys(stranger_dir / "client.key_secret", info)
    bob = keys(security_dir / "issued" / "client-bob.key_secret", info)
    attempts = [
        # The HMAC key, but no certificate / an unknown one / a client's on the hub ports
        (info.client_url, None),
        (info.worker_url, None),
        (info.health_url, None),
        (info.client_url, stranger),
        (info.worker_url, stranger),
        (info.health_url, stranger),
        (info.worker_url, bob),
        (info.health_url, bob),
    ]
    for url, curve in attempts:
        peer = peers(url, info.key_bytes, curve)
        peer.send({"type": "hub_hello", "hub": "hub_fake", "name": "fake", "routes": []})
        peer.send({"type": "get", "req": "r1", "ids": [queued.task_id]})
        peer.send({"type": "cancel", "req": "r2", "ids": [queued.task_id]})
        peer.send({"type": "status", "req": "r3"})
        peer.send(*submit_header(square, (2,), "alice"))
    denied = sum(curve is not None for _, curve in attempts)
    wait_for(
        lambda: rejected(alice).get("certificate", 0) - before >= denied,
        what="every certificate refusal to be counted",
    )
    assert peers.silent(), "nobody without an allowed key got an answer"
    status = alice.status()
    assert status["hubs"] == [] and status["totals"]["queued"] == 1
    assert alice.tasks()["tasks"][0]["state"] == "queued"

    # Real components with the wrong certificate fail with a sentence that says why.
    with pytest.raises(BalancerUnreachable, match="refused this certificate"):
        connect(security_dir / "hub.key_secret", connect_timeout=1)
    stale = connection_file.with_name("stale.json")
    connection.write(
        connection.ConnectionInfo(
            **{
                **info.to_dict(),
                "curve_serverkey": stranger.public.decode(),
            }
        ),
        stale,
    )
    with pytest.raises(BalancerUnreachable, match="server key does not match"):
        Client(connection_file=stale, connect_timeout=1)
    # A real `plb hub` holding a client's certificate cannot register; one with its own can.
    hubs_before = rejected(alice).get("certificate", 0)
    with monkeypatch.context() as env:
        env.setenv("PLB_HUB_CERT", str(security_dir / "issued" / "client-bob.key_secret"))
        impostor = start_hub(1, name="impostor")
    wait_for(
        lambda: rejected(alice).get("certificate", 0) > hubs_before, what="the impostor refused"
    )
    start_hub(1, name="good-hub")
    assert queued.result(timeout=30) == 9
    assert [h["name"] for h in alice.hubs()] == ["good-hub"]
    stop_process(impostor)


def test_a_hub_certificate_speaks_only_for_its_own_hub(
    curve_cluster: LocalCluster,
    connect: Callable[..., Client],
    start_hub: Callable[..., Any],
    peers: Peers,
    security_dir: Path,
) -> None:
    alice = connect()
    info = alice.connection_info
    start_hub(2)
    wait_for(lambda: worker_count(alice) == 2, what="2 workers")
    real = alice.hubs()[0]
    remote = peers(
        info.worker_url,
        info.key_bytes,
        keys(security_dir / "issued" / "hub-remote.key_secret", info),
    )
    bad_before = alice.status()["totals"]["bad_messages"]
    remote.send({"type": "hub_bye", "hub": real["id"]})
    remote.send({"type": "worker_lost", "hub": real["id"], "worker": real["workers"][0]["id"]})
    remote.send({"type": "hub_hello", "hub": real["id"], "name": "hijack", "routes": []})
    wait_for(lambda: alice.status()["totals"]["bad_messages"] - bad_before >= 3, what="3 refusals")
    assert [(h["id"], h["name"], len(h["workers"])) for h in alice.hubs()] == [
        (real["id"], real["name"], 2)
    ]
    # Its own hub is fine: the remote certificate can register a hub of its own.
    remote.send({"type": "hub_hello", "hub": "hub_remote", "name": "remote", "routes": []})
    wait_for(
        lambda: {h["name"] for h in alice.hubs()} == {real["name"], "remote"}, what="the remote hub"
    )
    assert alice.submit(square, 5).result(timeout=20) == 25


def test_garbage_at_the_curve_ports_crashes_nothing(
    curve_cluster: LocalCluster, connect: Callable[..., Client]
) -> None:
    alice = connect()
    info = alice.connection_info
    for port in (info.client_port, info.worker_port, info.health_port):
        for payload in (
            os.urandom(4096),
            b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 40,
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(payload)
    assert alice.status()["hubs"] == []
    assert alice.submit(square, 4).cancel() is True


# -- HMAC only (loopback default) ------------------------------------------------------------------
def test_without_the_key_a_peer_cannot_submit_register_read_or_cancel(
    cluster: LocalCluster,
    connection_file: Path,
    start_hub: Callable[..., Any],
    peers: Peers,
) -> None:
    with Client(connection_file=connection_file, user="owner") as owner:
        info = owner.connection_info
        assert info.curve_serverkey == "", "loopback: no Curve by default"
        queued = owner.submit(square, 6)
        before = rejected(owner).get("signature", 0)
        wrong_key = b"not-the-key-" * 4
        sent = 0
        for url in (info.client_url, info.worker_url, info.health_url):
            peer = peers(url, wrong_key)
            for header in (
                {"type": "hub_hello", "hub": "hub_fake", "name": "fake", "routes": []},
                {
                    "type": "worker_ready",
                    "worker": peer.identity,
                    "hub": "hub_fake",
                    "min_p": 0,
                    "max_p": 9,
                },
                {"type": "get", "req": "r1", "ids": [queued.task_id]},
                {"type": "cancel", "req": "r2", "ids": [queued.task_id]},
                {"type": "health_update", "status": "error", "messages": ["<b>owned</b>"]},
            ):
                peer.send(header)
                sent += 1
            peer.send(*submit_header(square, (2,), "owner"))
            sent += 1
        wait_for(
            lambda: rejected(owner).get("signature", 0) - before >= sent,
            what="every forgery counted",
        )
        assert peers.silent()
        status = owner.status()
        assert (
            status["hubs"] == []
            and status["totals"]["queued"] == 1
            and status["totals"]["submitted"] == 1
        )
        assert status["health"]["messages"] != ["<b>owned</b>"]
        start_hub(1)
        assert queued.result(timeout=30) == 36


def test_tampered_buffers_never_reach_pickle_and_replays_are_refused(
    ready_client: Client, peers: Peers, tmp_path: Path
) -> None:
    info = ready_client.connection_info
    legit_file, evil_file = tmp_path / "legit.txt", tmp_path / "evil.txt"
    peer = peers(info.client_url, info.key_bytes)
    evil_args = protocol.dumps(((str(evil_file), "evil"), {}))
    assert len(evil_args) == 1
    before = rejected(ready_client)
    done_before = ready_client.status()["totals"]["done"]

    # One byte of the function's pickle changed under the same signed header: the balancer checks
    # function buffers itself (it keeps them for later tasks) and refuses the message.
    header, buffers = submit_header(append_line, (str(legit_file), "ran"), "tester")
    header["req"] = "fn"
    envelope = peer.session.serialize(header, buffers)[0]
    fn_pickle = bytes(buffers[0])
    flipped = fn_pickle[:-2] + bytes([fn_pickle[-2] ^ 1]) + fn_pickle[-1:]
    peer.send_frames([envelope.replace(fn_pickle, flipped)])
    assert "function digest does not match" in peer.wait_for("error").header["error"]

    # Another pickle of the arguments (same length) under the same signed header: the balancer
    # forwards them unread; the worker checks them against the signed digest before unpickling
    # and fails the task.
    header, buffers = submit_header(append_line, (str(legit_file), "ran"), "tester")
    frames = peer.session.serialize(header, buffers)
    args_pickle = bytes(buffers[-1])
    assert len(args_pickle) == len(evil_args[0]) and frames[0].endswith(args_pickle)
    peer.send_frames([frames[0][: -len(args_pickle)] + evil_args[0]])
    failed = peer.wait_for("results").header["results"][0]
    assert failed["state"] == "failed" and failed["error"]["type"] == "jupyter_plb.errors.IntegrityError"
    assert "altered in transit" in failed["error"]["message"]
    peer.send_frames(frames)  # the genuine frames carry the signature already used: a replay
    wait_for(
        lambda: rejected(ready_client).get("replay", 0) > before.get("replay", 0),
        what="the replay to be refused",
    )
    header, buffers = submit_header(append_line, (str(legit_file), "ran"), "tester")
    peer.send(header, buffers)
    results = peer.wait_for("results")
    assert results.header["results"][0]["state"] == "done"
    assert protocol.loads(results.buffers) == "ran"
    assert ready_client.submit(square, 3).result(timeout=20) == 9
    assert legit_file.read_text() == "ran\n", "the genuine task ran once, the replay never"
    assert not evil_file.exists(), "no tampered pickle reached a pickle.loads"
    assert ready_client.status()["totals"]["done"] == done_before + 2


def test_files_other_users_can_read_are_refused_with_the_fix(
    make_cluster: Callable[..., LocalCluster],
    connect: Callable[..., Client],
    connection_file: Path,
    security_dir: Path,
) -> None:
    server = security_dir / "server.key_secret"
    server.chmod(0o640)
    with pytest.raises(CertificateError, match=rf"chmod 600 {server}"):
        make_cluster(LB_CURVE=True, LB_SECURITY_DIR=str(security_dir))
    server.chmod(0o600)
    make_cluster(LB_CURVE=True, LB_SECURITY_DIR=str(security_dir))
    assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
    mine = security_dir / "client.key_secret"
    mine.chmod(0o604)
    with pytest.raises(CertificateError, match=rf"chmod 600 {mine}"):
        connect()
    mine.chmod(0o600)
    connection_file.chmod(0o644)
    with pytest.raises(ConnectionFileError, match=rf"chmod 600 {connection_file}"):
        connect()
    connection_file.chmod(0o600)
    assert connect().user == "alice"
