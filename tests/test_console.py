"""The seed's console: a plain script that calls ``startAll()`` sees the balancer's lines."""

from __future__ import annotations

from pathlib import Path

from .conftest import run_script

SCRIPT = '''
import asyncio, logging, sys
from jupyter_plb import Client, startAll
{before}
core = startAll({{"LB_CLIENTPULLPORT": 0, "LB_WKPULLPORT": 0, "LB_HCREPPORT": 0, "MONITOR_PORT": 0,
                  "HC_INTERVAL": 0.2}}, connection_file="plb-connection.json")
{after}
asyncio.run_coroutine_threadsafe(core.healthcheck.wait_checked(20), core.loop).result(30)
core.start_hub(1)
with Client(connection_file=core.connection_file) as client:
    print("RESULT", client.submit(pow, 2, 5).result(timeout=60))
core.stop()
'''

LINES = ("LB - STARTED lb_", "MONITOR - open http://127.0.0.1:", "HC - WARNING : LB HAS NO WORKERS.",
         "LB - ADDING WORKER (worker_")


def run(tmp_path: Path, before: str = "", after: str = "") -> tuple[str, str]:
    done = run_script(SCRIPT.format(before=before, after=after), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "RESULT 32" in done.stdout
    return done.stdout, done.stderr


def test_a_script_without_logging_prints_the_seed_lines_and_the_monitor_url_with_its_token(tmp_path: Path) -> None:
    stdout, stderr = run(tmp_path)
    for line in LINES:
        assert stdout.count(line) == 1, f"{line!r} once on the console:\n{stdout}"
    assert "/plb/monitor?token=" in stdout
    assert not any(line in stderr for line in LINES), "nothing twice through Python's last-resort handler"


def test_logging_configured_before_start_gets_each_line_once_in_its_own_format(tmp_path: Path) -> None:
    stdout, stderr = run(tmp_path, before='logging.basicConfig(level=logging.INFO, format="CONFIGURED %(message)s")')
    for line in LINES:
        assert stderr.count("CONFIGURED " + line) == 1, f"{line!r} once, as configured:\n{stderr}"
        assert line not in stdout, "the seed console stood aside"


def test_logging_configured_later_takes_over_without_double_lines(tmp_path: Path) -> None:
    stdout, stderr = run(tmp_path, after='logging.basicConfig(format="CONFIGURED %(message)s")')
    assert stdout.count("LB - STARTED lb_") == 1, "before the configuration: on the seed console"
    warning = "HC - WARNING : LB HAS NO WORKERS."
    seen = stdout.count(warning) + stderr.count("CONFIGURED " + warning)
    assert seen == 1, f"the first check races the configuration, but its line shows once:\n{stdout}\n{stderr}"
    added = "LB - ADDING WORKER (worker_"
    assert stderr.count("CONFIGURED " + added) == 1, f"after the configuration, once as configured:\n{stderr}"
    assert added not in stdout, "the seed console stood aside"
