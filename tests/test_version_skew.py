"""Version skew: a hub whose Python minor or cloudpickle version differs is named when it registers.

The skewed hub is a test acting as one: a real DEALER socket sending a ``hub_hello`` built and signed
with the protocol module, reporting versions this interpreter does not have. The client, ``plb
status`` and the monitor API are the real ones.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import zmq

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core import parameters, protocol
from jupyter_plb.core.protocol import Session
from jupyter_plb.core.versions import LOCAL, skew
from jupyter_plb.errors import VersionSkewWarning
from jupyter_plb.transport import connection, sockets

from .conftest import ROOT, wait_for, worker_count

OTHER = {"python": "3.99.0", "cloudpickle": "0.0.1"}
#: Clients that only watch warn too; the tests that look at the warnings record them themselves.
pytestmark = pytest.mark.filterwarnings("ignore::jupyter_plb.errors.VersionSkewWarning")


def test_skew_compares_the_python_minor_and_the_cloudpickle_version() -> None:
    local = {"python": "3.11.7", "cloudpickle": "3.0.0"}
    assert skew({"python": "3.11.2", "cloudpickle": "3.0.0"}, local) is None, "patch releases load alike"
    assert skew({"python": "", "cloudpickle": ""}, local) is None, "a hub that did not say is not skewed"
    text = skew({"name": "gpu:7", "host": "gpu", "python": "3.12.1", "cloudpickle": "3.0.0"}, local)
    assert text is not None and text.startswith("hub gpu:7 on gpu runs Python 3.12.1, this client Python 3.11.7")
    assert "cloudpickle" not in text.split(":")[1]
    text = skew({"name": "n", "python": "3.11.7", "cloudpickle": "3.1.0"}, local, here="this balancer")
    assert text is not None and "runs cloudpickle 3.1.0, this balancer cloudpickle 3.0.0" in text


class FakeHub:
    """Registers like a hub (no workers) from a real socket, reporting ``versions``."""

    def __init__(self, connection_file: Path, versions: dict[str, str], name: str = "fake-gpu") -> None:
        info = connection.read(connection_file)
        self.session = Session(info.key_bytes)
        self.context = zmq.Context()
        self.id = protocol.new_id("hub")
        self.socket = sockets.connect_dealer(self.context, info.worker_url, self.id)
        self.hello = {
            "type": "hub_hello", "hub": self.id, "name": name, "host": "gpu-node", "pid": 4242,
            "routes": [], "local": False, "state": "ok", **versions,
        }

    def register(self) -> None:
        protocol.send(self.socket, self.session.serialize(self.hello))

    def beat(self) -> None:
        protocol.send(self.socket, self.session.serialize(
            {"type": "heartbeat", "hub": self.id, "state": "ok", "workers": []}
        ))

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def skewed_hub(connection_file: Path) -> Iterator[Callable[[], FakeHub]]:
    made: list[FakeHub] = []

    def make() -> FakeHub:
        hub = FakeHub(connection_file, OTHER)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.close()


@pytest.fixture
def quiet_cluster(connection_file: Path) -> Iterator[LocalCluster]:
    """A balancer with its monitor; a fake hub that never heartbeats stays "ok" for the test."""
    params = parameters.load(LB_CLIENTPULLPORT=0, LB_WKPULLPORT=0, LB_HCREPPORT=0, MONITOR_PORT=0,
                             HC_INTERVAL=0.2, LB_HEARTBEAT_INTERVAL=10)
    with LocalCluster(params, connection_file=connection_file) as cluster:
        cluster.start()
        yield cluster


def skewed_hubs(client: Client) -> dict[str, str | None]:
    return {h["name"]: h["version_skew"] for h in client.status()["hubs"]}


def test_a_connected_client_warns_when_a_skewed_hub_joins(
    quiet_cluster: LocalCluster, connection_file: Path, skewed_hub: Callable[[], FakeHub]
) -> None:
    with Client(connection_file=connection_file) as client, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert client.version_skew == {}
        hub = skewed_hub()
        hub.register()
        wait_for(lambda: client.version_skew, what="the client to hear of the hub")
    assert list(client.version_skew) == [hub.id]
    (warning,) = [w for w in caught if issubclass(w.category, VersionSkewWarning)]
    text = str(warning.message)
    assert text.startswith("hub fake-gpu on gpu-node runs Python 3.99.0 and cloudpickle 0.0.1, this client "
                           f"Python {LOCAL['python']} and cloudpickle {LOCAL['cloudpickle']}")
    assert "may fail to unpickle" in text


def test_a_client_warns_on_connect_of_skewed_hubs_only(
    quiet_cluster: LocalCluster,
    connection_file: Path,
    skewed_hub: Callable[[], FakeHub],
    start_hub: Callable[..., subprocess.Popen[bytes]],
) -> None:
    start_hub(1, name="same-versions")
    hub = skewed_hub()
    hub.register()
    with Client(connection_file=connection_file) as watcher:
        wait_for(lambda: worker_count(watcher) == 1 and len(watcher.status()["hubs"]) == 2,
                 what="both hubs to register")
    with pytest.warns(VersionSkewWarning, match="hub fake-gpu on gpu-node runs Python 3.99.0") as caught:
        client = Client(connection_file=connection_file)
    with client:
        assert len([w for w in caught if issubclass(w.category, VersionSkewWarning)]) == 1
        assert caught[0].filename == __file__, "the warning points at the Client() line"
        assert list(client.version_skew) == [hub.id]
        hubs = skewed_hubs(client)
    assert hubs["same-versions"] is None
    assert hubs["fake-gpu"] is not None and "this balancer" in hubs["fake-gpu"]


def test_plb_status_and_the_monitor_api_show_the_skew(
    quiet_cluster: LocalCluster, connection_file: Path, skewed_hub: Callable[[], FakeHub]
) -> None:
    skewed_hub().register()
    with Client(connection_file=connection_file) as client:
        wait_for(lambda: "fake-gpu" in skewed_hubs(client), what="the hub to register")
    status = subprocess.run(
        [sys.executable, "-m", "jupyter_plb", "status", "--connect", str(connection_file)],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    hub_line = next(i for i, line in enumerate(lines) if line.startswith("  hub fake-gpu (gpu-node)"))
    assert lines[hub_line + 1].startswith("    warning: hub fake-gpu on gpu-node runs Python 3.99.0")
    assert "VersionSkewWarning" not in status.stderr, "said once, next to its hub"

    monitor = quiet_cluster.monitor
    assert monitor is not None
    base = monitor.url.split("/plb/")[0]
    snapshot = requests.get(f"{base}/plb/api/status", headers={"Authorization": f"token {monitor.token}"},
                            timeout=10).json()
    assert {k: snapshot["balancer"][k] for k in ("python", "cloudpickle")} == LOCAL
    (hub,) = snapshot["hubs"]
    assert (hub["python"], hub["cloudpickle"]) == (OTHER["python"], OTHER["cloudpickle"])
    assert hub["version_skew"].startswith(
        f"hub fake-gpu on gpu-node runs Python 3.99.0 and cloudpickle 0.0.1, this balancer Python {LOCAL['python']}"
    )
