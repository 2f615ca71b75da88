"""%plb magics in an isolated IPython shell, against a real balancer and hub on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from jupyter_plb.client import Client, PlbFuture
from jupyter_plb.jupyter import magics

from .conftest import running_balancer, wait_for

pytestmark = pytest.mark.timeout(60)

DEFINITIONS = """
import time
import numpy as np

def double(x):
    return 2 * x

triple = lambda x: 3 * x

def make_adder(n):
    def add(x):
        return x + n
    return add

add5 = make_adder(5)

class Scaler:
    def __init__(self, k):
        self.k = k
    def __call__(self, x):
        return self.k * x
    def scale(self, x):
        return self.k * x

scaler = Scaler(7)
arr = np.arange(6)

def shout(word):
    print("said", word)
    import sys
    print("warned", word, file=sys.stderr)
    return word.upper()

def inverse(x):
    return 1 / x

def nap(seconds):
    time.sleep(seconds)
    return seconds

def echo(value):
    return value
"""


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One balancer and a 2-worker hub for the whole module (its tests share them)."""
    with running_balancer(tmp_path_factory.mktemp("plb"), "magics-hub") as connection_file:
        yield connection_file


@pytest.fixture(scope="module")
def shell() -> Any:
    ip = start_ipython()
    assert ip is not None
    return ip


@pytest.fixture
def ip(shell: Any, balancer: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The shell after ``%load_ext jupyter_plb``, with the test objects and PLB_CONNECTION_FILE."""
    monkeypatch.setenv("PLB_CONNECTION_FILE", str(balancer))
    run(shell, "%load_ext jupyter_plb")
    run(shell, DEFINITIONS)
    yield shell
    run(shell, "%unload_ext jupyter_plb")


@pytest.fixture
def other_client(balancer: Path) -> Iterator[Client]:
    """A second client of the same balancer, to look at what the magics did."""
    with Client(connection_file=balancer, user="observer") as client:
        yield client


def run(ip: Any, code: str) -> Any:
    result = ip.run_cell(code)
    assert result.success, f"{code!r} failed: {result.error_in_exec or result.error_before_exec!r}"
    return result.result


def usage_error(ip: Any, code: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``code``; it must fail with a UsageError shown as exactly one line, no traceback."""
    capsys.readouterr()
    result = ip.run_cell(code)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("UsageError: ")
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def magics_of(ip: Any) -> magics.PlbMagics:
    return ip.magics_manager.registry["PlbMagics"]


# -- loading and connecting ------------------------------------------------------------------------
def test_load_ext_registers_the_magics_and_connects_on_first_use(ip: Any) -> None:
    assert "plb" in ip.magics_manager.magics["line"]
    assert "plb" in ip.magics_manager.magics["cell"]
    assert magics_of(ip)._client is None
    report = run(ip, "%plb status")
    assert magics_of(ip)._client is not None
    assert "magics-hub" in report.text


def test_unload_ext_removes_the_magics_and_cancels_pending_tasks(
    ip: Any, other_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck = run(ip, "%plb submit -p 1e12 double(1)")
    run(ip, "%unload_ext jupyter_plb")
    assert "plb" not in ip.magics_manager.magics["line"]
    wait_for(
        lambda: other_client.getTask(stuck.task_id)["state"] in (None, "cancelled"),
        what="the pending task to be cancelled",
    )
    assert "Line magic function `%plb` not found" in usage_error(ip, "%plb status", capsys)
    run(ip, "%load_ext jupyter_plb")


def test_connect_to_a_named_file(ip: Any, balancer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, f"%plb connect {balancer}")
    assert "connected to balancer lb_" in capsys.readouterr().out
    assert magics_of(ip).connection_file == balancer
    assert run(ip, "%plb submit double(4)").result(30) == 8


def test_a_missing_connection_file_is_one_line(ip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(ip, f"%plb connect {tmp_path / 'nope.json'}", capsys)
    assert "no balancer reachable" in line and "nope.json" in line


def test_no_balancer_listening_is_one_line(
    ip: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = tmp_path / "dead.json"
    dead.write_text(
        json.dumps(
            {
                "address": "127.0.0.1",
                "client_port": port,
                "worker_port": port,
                "health_port": port,
                "key": "k" * 32,
            }
        )
    )
    dead.chmod(0o600)
    monkeypatch.setattr(magics, "CONNECT_TIMEOUT", 0.3)
    monkeypatch.setenv("PLB_CONNECTION_FILE", str(dead))
    line = usage_error(ip, "%plb submit double(1)", capsys)
    assert "no balancer reachable" in line and "did not answer" in line


# -- %plb submit -----------------------------------------------------------------------------------
def test_submit_a_call_returns_its_future(ip: Any) -> None:
    fut = run(ip, "%plb submit shout('hi')")
    assert isinstance(fut, PlbFuture)
    assert fut.result(30) == "HI"
    assert fut.stdout == "said hi\n" and fut.stderr == "warned hi\n"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("double(arr)", [0, 2, 4, 6, 8, 10]),
        ("triple(arr)", [0, 3, 6, 9, 12, 15]),
        ("add5(arr)", [5, 6, 7, 8, 9, 10]),
        ("scaler.scale(arr)", [0, 7, 14, 21, 28, 35]),
        ("scaler(arr)", [0, 7, 14, 21, 28, 35]),
        ("echo(scaler).k", None),
        ("np.add(arr, *[1], **{})", [1, 2, 3, 4, 5, 6]),
    ],
    ids=["function", "lambda", "closure", "method", "instance", "instance-arg", "numpy"],
)
def test_submit_ships_notebook_objects(ip: Any, call: str, expected: Any) -> None:
    if expected is None:  # an instance as the argument: it comes back as a Scaler
        back = run(ip, "%plb submit echo(scaler)").result(30)
        assert type(back).__name__ == "Scaler" and back.k == 7
        return
    assert run(ip, f"%plb submit {call}").result(30).tolist() == expected


def test_submit_options_before_or_after_the_call(ip: Any, other_client: Client) -> None:
    first = run(ip, "%plb submit -p 3 -u alice --timeout 30 --retries 1 -o kept double(2)")
    second = run(ip, "%plb submit double(3) -u bob -p 4")
    assert ip.user_ns["kept"] is first
    assert (first.result(30), second.result(30)) == (4, 6)
    seen = {t["id"]: t for t in other_client.tasks(name="double", limit=1000)["tasks"]}
    assert (seen[first.task_id]["user"], seen[first.task_id]["priority"]) == ("alice", 3)
    assert (seen[second.task_id]["user"], seen[second.task_id]["priority"]) == ("bob", 4)


def test_submit_does_not_expand_dollar_or_braces(ip: Any) -> None:
    assert run(ip, "%plb submit echo('$HOME {arr}')").result(30) == "$HOME {arr}"


def test_submit_inside_a_function_sees_its_locals(ip: Any) -> None:
    run(
        ip,
        "def inner():\n    local_value = 21\n    fut = %plb submit double(local_value)\n    return fut.result(30)",
    )
    assert run(ip, "inner()") == 42


def test_cell_submit_ships_the_names_it_reads(ip: Any) -> None:
    fut = run(
        ip,
        """%%plb submit -o out
values = [double(1), triple(1), add5(1), scaler.scale(1), int(arr.sum())]
print("computed", len(values))
values""",
    )
    assert ip.user_ns["out"] is fut
    assert fut.result(30) == [2, 3, 6, 7, 15]
    assert fut.stdout == "computed 5\n"


def test_cell_submit_runs_like_module_code(ip: Any) -> None:
    run(ip, "counter = 10")
    fut = run(
        ip,
        """%%plb submit
counter = counter + 1
limit: int = 3
def bump(step):
    global counter
    counter += step
    return counter
for _ in range(limit):
    bump(2)
counter""",
    )
    assert fut.result(30) == 17
    assert ip.user_ns["counter"] == 10  # the notebook's copy is untouched
    assert run(ip, "%%plb submit\nx = 1").result(30) is None


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("%plb bogus", "unknown subcommand 'bogus'"),
        ("%plb submit double(", "syntax error"),
        ("%plb submit missing_function(1)", "name 'missing_function' is not defined"),
        ("%plb submit double(missing_argument)", "name 'missing_argument' is not defined"),
        ("%plb submit double", "expected a call"),
        ("%plb submit arr.size()", "not a function"),
        ("%plb submit inverse(1 / 0)", "ZeroDivisionError"),
        ("%plb submit", "needs a call"),
        ("%plb submit -p high double(1)", "invalid float value"),
        ("%plb submit --nope double(1)", "unrecognized arguments"),
        ("%plb submit double('unclosed)", "syntax error"),
        ("%%plb status\nx = 1", "does not take a cell"),
        ("%%plb submit double(1)\nx = 1", "takes only options"),
        ("%%plb submit\nundefined_name + 1", "name 'undefined_name' is not defined"),
        ("%%plb submit\nif True\n    x = 1", "syntax error in the cell, line 1"),
        ("%%plb submit\n# only a comment", "the cell is empty"),
        ("%%plb submit\nfrom os import *", "cannot run as a task"),
        ("%plb map double", "expected a function and an iterable"),
        ("%plb map double 42", "not an iterable"),
        ("%plb map arr range(3)", "not a function"),
        ("%plb map double range(3) --chunksize 0", "--chunksize must be at least 1"),
        ("%plb result t_never_submitted", "unknown task"),
        ("%plb wait t_never_submitted", "unknown task"),
        ("%plb cancel", "the following arguments are required"),
        ("%plb help nope", "unknown subcommand 'nope'"),
        ("%plb status now", "unrecognized arguments"),
        ("%plb submit -o 1x double(1)", "'1x' is not a Python variable name"),
        ("%plb wait --timeout 0", "must be a positive number of seconds"),
        ("%plb dashboard --refresh -1", "must be a positive number of seconds"),
    ],
)
def test_bad_input_is_one_usage_error_line(
    ip: Any, code: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in usage_error(ip, code, capsys)


# -- %plb map --------------------------------------------------------------------------------------
def test_map_returns_the_results_with_a_text_progress_bar(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(ip, "squares = %plb map double range(30) --chunksize 4") is None
    assert ip.user_ns["squares"] == [2 * i for i in range(30)]
    err = capsys.readouterr().err
    assert "double over 30 items [" in err and "8/8 done 8 failed 0" in err


def test_map_of_a_lambda_over_a_generator(ip: Any) -> None:
    assert run(ip, "%plb map lambda x: x + 1 (i * i for i in range(5))") == [1, 2, 5, 10, 17]


def test_map_prints_what_the_tasks_printed(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(ip, "%plb map shout ['a', 'b']") == ["A", "B"]
    captured = capsys.readouterr()
    assert "said a\n" in captured.out and "said b\n" in captured.out
    assert "warned a\n" in captured.err


def test_map_async_returns_futures_and_stores_them(ip: Any) -> None:
    futures = run(ip, "%plb map --async -u carol -o batch triple range(10)")
    assert futures is ip.user_ns["batch"]
    assert all(isinstance(f, PlbFuture) for f in futures)
    assert [f.result(30) for f in futures] == [3 * i for i in range(10)]


def test_map_failure_shows_the_remote_traceback(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    result = ip.run_cell("%plb map inverse [1, 0, 2]")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    out = capsys.readouterr().out
    assert "failed on worker_" in out and "ZeroDivisionError: division by zero" in out
    assert "in inverse" in out and "magics.py" not in out


def test_interrupting_a_map_cancels_its_tasks(
    ip: Any, other_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # Ctrl-C while the cell waits
        result = ip.run_cell("%plb map -u interrupted nap [30] * 4")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert "cancelled 4 unfinished task(s) of the map" in capsys.readouterr().out
    wait_for(
        lambda: other_client.tasks(user="interrupted", state="cancelled")["total"] == 4,
        what="the 4 tasks to be cancelled",
    )


def test_empty_map(ip: Any) -> None:
    assert run(ip, "%plb map double []") == []


# -- status, hubs, result, wait, cancel ------------------------------------------------------------
def test_status_and_hubs_reports(ip: Any) -> None:
    run(ip, "%plb submit double(1)").result(30)
    status = run(ip, "%plb status")
    assert status.text.startswith("balancer lb_")
    assert "<table" in status._repr_html_() and status.data["totals"]["done"] >= 1
    hubs = run(ip, "%plb hubs")
    assert "hub magics-hub" in hubs.text and "priorities any" in hubs.text
    assert len(hubs.data) == 1 and "magics-hub" in hubs._repr_html_()


def test_result_prints_the_output_and_returns_the_value(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "f1 = %plb submit shout('one')")
    fut = ip.user_ns["f1"]
    capsys.readouterr()
    assert run(ip, "%plb result") == "ONE"  # the last task
    captured = capsys.readouterr()
    assert captured.out.startswith("said one\n") and captured.err == "warned one\n"
    assert run(ip, f"%plb result {fut.task_id}") == "ONE"
    assert run(ip, "%plb result f1") == "ONE"


def test_result_of_a_failed_task_shows_its_remote_traceback(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "%plb submit inverse(0)")
    capsys.readouterr()
    result = ip.run_cell("%plb result")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    out = capsys.readouterr().out
    assert "ZeroDivisionError: division by zero" in out and "magics.py" not in out


def test_result_of_a_task_another_client_sent(ip: Any, other_client: Client) -> None:
    fut = other_client.submit(len, "four")
    assert fut.result(30) == 4
    assert run(ip, f"%plb result {fut.task_id}") == 4


def test_result_and_wait_time_out_with_one_line(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "sleeper = %plb submit nap(30)")
    assert "still" in usage_error(ip, "%plb result --timeout 0.1 sleeper", capsys)
    assert "1 of 1 task(s) still unfinished after 0.1 s" in usage_error(ip, "%plb wait --timeout 0.1", capsys)
    run(ip, "%plb cancel sleeper")
    assert ip.user_ns["sleeper"].cancelled()


def test_wait_prints_outputs_and_failures(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run(
        ip,
        "a = %plb submit shout('x')\nb = %plb submit inverse(0)\nc = %plb map --async double range(3)",
    )
    capsys.readouterr()
    run(ip, "%plb wait a b c")
    captured = capsys.readouterr()
    assert "said x\n" in captured.out
    assert "inverse failed: ZeroDivisionError('division by zero')" in captured.err
    assert "5/5 done 4 failed 1" in captured.err  # the progress line
    run(ip, "%plb wait all")
    assert "no unfinished task to wait for" in capsys.readouterr().out


def test_cancel_by_id_by_variable_and_all(ip: Any, other_client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    one = run(ip, "%plb submit -p 1e12 -o one double(1)")
    run(ip, "many = %plb map --async -p 1e12 double range(3)")
    wait_for(lambda: one.warning, what="the balancer's warning")  # it follows the submit
    assert "no connected worker accepts priority" in one.warning
    capsys.readouterr()
    run(ip, f"%plb cancel {one.task_id}")
    assert capsys.readouterr().out == "cancelled 1 of 1 task(s)\n"
    assert one.cancelled()
    run(ip, "%plb cancel many t_unknown")
    assert capsys.readouterr().out == "cancelled 3 of 4 task(s); unknown: t_unknown\n"
    assert all(f.cancelled() for f in ip.user_ns["many"])
    run(ip, "_ = %plb submit -p 1e12 double(1)\n_ = %plb submit -p 1e12 double(2)")
    run(ip, "%plb cancel all")
    assert capsys.readouterr().out == "cancelled 2 of 2 task(s)\n"
    assert other_client.tasks(state="queued", limit=10)["total"] == 0
    run(ip, "%plb cancel all")
    assert capsys.readouterr().out == "no unfinished task to cancel\n"


# -- dashboard and help ----------------------------------------------------------------------------
def test_dashboard_needs_a_kernel(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert "needs a Jupyter kernel" in usage_error(ip, "%plb dashboard", capsys)


def test_dashboard_in_a_kernel(ip: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(magics.show, "in_kernel", lambda: True)
    run(ip, "%plb dashboard --refresh 0.2 -o dash")
    dash = ip.user_ns["dash"]
    try:
        wait_for(lambda: dash.refreshed >= 2, what="two refreshes")
        assert "magics-hub" in dash.hubs.value
    finally:
        run(ip, "%unload_ext jupyter_plb")  # closes the dashboards
        assert not dash.running
        run(ip, "%load_ext jupyter_plb")


def test_help(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "%plb")
    overview = capsys.readouterr().out
    for name in magics.SUBCOMMANDS:
        assert f"%plb {name}" in overview
    run(ip, "%plb help map")
    assert "--chunksize N" in capsys.readouterr().out
    run(ip, "%plb?")
    assert "Subcommands:" in capsys.readouterr().out


def test_the_connection_file_comes_from_the_environment(ip: Any, balancer: Path) -> None:
    assert os.environ["PLB_CONNECTION_FILE"] == str(balancer)
    run(ip, "%plb connect")
    assert magics_of(ip).connection_file is None
    assert magics_of(ip).client.connection_info.client_port == json.loads(balancer.read_text())["client_port"]
