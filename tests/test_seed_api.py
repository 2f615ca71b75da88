"""The seed's README, run as written (``pyLoadBalancer`` → ``jupyter_plb``), and the seed API's edges."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_plb import startAll
from jupyter_plb.client import Client
from jupyter_plb.workers.spawn import stop_process

from .conftest import ROOT, run_script, wait_for

HUB_SCRIPT = """
from jupyter_plb import WorkerHub

def helloFunction(**kwargs):
    print('WORKER GOT TASK', kwargs)
    result = 'Hello %s %s !' % (kwargs.get('task').get('firstName'), kwargs.get('task').get('lastName'))
    #do something with task
    return result

WKHub = WorkerHub('parameters.json')
WKHub.addTask('HELLO', helloFunction)
WKHub.startWKHUB()
"""


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    """A folder with a parameters.json that differs from the seed's only by free ports."""
    params = {
        "LB_CLIENTPULLPORT": 0,
        "LB_WKPULLPORT": 0,
        "LB_HCREPPORT": 0,
        "MONITOR_PORT": 0,
        "HC_INTERVAL": 0.2,
        "LB_CONNECTION_FILE": str(tmp_path / "plb-connection.json"),
        "WKHUB_WORKERS": [{"nWorkers": 2, "minP": 0, "maxP": 9, "processP": 10}],
    }
    (tmp_path / "parameters.json").write_text(json.dumps(params))
    (tmp_path / "hub.py").write_text(HUB_SCRIPT)
    return tmp_path


def test_seed_readme_flow(seed_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(seed_dir)
    caplog.set_level(logging.INFO)
    core = startAll("parameters.json")
    hub = None
    try:
        wait_for(lambda: "HC - WARNING : LB HAS NO WORKERS." in caplog.text, what="the HC warning")
        hub = subprocess.Popen(
            [sys.executable, "hub.py"], cwd=seed_dir, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        wait_for(lambda: caplog.text.count("LB - ADDING WORKER (worker_") == 2, what="2 workers")

        CL = Client("parameters.json")
        task = {"firstName": "John", "lastName": "Doe"}
        taskid = CL.sendTask("HELLO", task, userid="username").get("taskid")
        assert taskid
        taskinfo = wait_for(lambda: (info := CL.getTask(taskid))["progress"] == 100 and info, what="HELLO done")
        assert taskinfo.get("result") == "Hello John Doe !"
        assert "WORKER GOT TASK" in taskinfo["stdout"] and "'firstName': 'John'" in taskinfo["stdout"]

        batch = CL.getTask([taskid, "t_unknown"])
        assert batch[taskid]["progress"] == 100
        assert batch["t_unknown"] == {"progress": None, "result": None, "state": None}
        assert CL.cancelTask(taskid) == {"deleted": True, "from": "done", "state": "done"}
        assert CL.getTask(taskid)["progress"] is None
        CL.shutdown()
    finally:
        if hub is not None:
            stop_process(hub)
        core.stop()


def test_client_errors_are_dicts_like_the_seed(cluster, connection_file: Path) -> None:
    with Client(connection_file=connection_file) as client:
        assert "error" in client.sendTask("HELLO", {"not": {1, 2}}, userid="u")
        assert client.cancelTask("t_nope") == {"deleted": False, "from": None, "state": None}
        queued = client.sendTask("HELLO", {"a": 1}, userid="u")["taskid"]
        assert client.getTask(queued)["progress"] == 0
        assert client.cancelTask(queued)["from"] == "queue"
        assert client.getTask(queued)["state"] == "cancelled"


def test_no_balancer_gives_a_clear_error(tmp_path: Path) -> None:
    from jupyter_plb.errors import BalancerUnreachable, ConnectionFileError
    from jupyter_plb.transport.connection import ConnectionInfo, write

    with pytest.raises(ConnectionFileError, match="no connection file"):
        Client(connection_file=tmp_path / "missing.json")
    path = write(ConnectionInfo("127.0.0.1", 1, 1, 1, key="k" * 64), tmp_path / "c.json")
    with pytest.raises(BalancerUnreachable, match="did not answer"):
        Client(connection_file=path, connect_timeout=0.3)


def test_functions_defined_in_main_run_remotely(ready_client: Client, connection_file: Path, tmp_path: Path) -> None:
    code = """
from jupyter_plb import Client
OFFSET = 100
def make_adder(n):
    def add(x):
        return x + n + OFFSET
    return add
class Scaler:
    def __init__(self, k):
        self.k = k
    def __call__(self, x):
        return self.k * x
with Client() as client:
    print(client.submit(lambda x: x * 3, 14).result(timeout=30))
    print(client.submit(make_adder(5), 1).result(timeout=30))
    print(client.submit(Scaler(7), 6).result(timeout=30))
"""
    result = run_script(code, tmp_path, env={"PLB_CONNECTION_FILE": str(connection_file)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42", "106", "42"]


BAD_PARAMETERS = [
    ({"LB_PORT": 1}, "LB_PORT: unknown key"),
    ({"LB_CLIENTPULLPORT": "5799"}, "LB_CLIENTPULLPORT: must be a port number"),
    ({"MONITOR_PORT": 70000}, "MONITOR_PORT: must be a port number"),
    ({"WKHUB_WORKERS": [{"nWorkers": 2, "minP": 5, "maxP": 1}]}, "minP (5) is greater than maxP (1)"),
    ({"WKHUB_WORKERS": [{"nWorkers": 2, "minP": 0, "maxP": 1, "cpu": 1}]}, "unknown key(s) ['cpu']"),
    ({"LB_QUEING_MAXPERUSER": 1.5}, "LB_QUEING_MAXPERUSER: must be an integer"),
]


@pytest.mark.parametrize(("content", "message"), BAD_PARAMETERS)
def test_bad_parameters_file_gives_one_clear_line(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps(content))
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_plb", "start", "-p", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"plb: error: {path}: ") and message in lines[0]


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    from jupyter_plb.core import parameters
    from jupyter_plb.errors import ParametersError

    path = tmp_path / "p.json"
    path.write_text('{"SOCKET_TIMEOUT": 500,\n "LB_IP": }')
    with pytest.raises(ParametersError, match=r"p.json: not valid JSON \(line 2"):
        parameters.load(path)


def test_a_second_server_gets_its_own_connection_file(tmp_path: Path) -> None:
    import socket

    from jupyter_plb.transport.connection import ConnectionInfo, claim_default, write

    assert claim_default(tmp_path).name == "plb-connection.json"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        write(ConnectionInfo("127.0.0.1", port, port, port, key="k" * 64), tmp_path / "plb-connection.json")
        assert claim_default(tmp_path).name == "plb-connection-2.json", "the first is owned by a live balancer"
    assert claim_default(tmp_path).name == "plb-connection.json", "a stopped balancer's file is reused"
