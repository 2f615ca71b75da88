"""Progress from Python: ``jupyter_plb.progress``, ``map(progress=True)``, tqdm over ``as_completed``."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from tqdm import tqdm

from jupyter_plb import as_completed, progress
from jupyter_plb.client import Client

from .conftest import ROOT, run_script

SCRIPT = """
import sys, time
from jupyter_plb import Client, progress

def nap(x):
    time.sleep(0.02)
    return x

with Client(connection_file=sys.argv[1]) as client:
    futures = [client.submit(nap, i) for i in range(40)]
    shown = progress(futures)
    print("after progress:", sum(f.done() for f in futures), "done of", len(futures), flush=True)
    mapped = client.map(nap, range(30), progress=True)
    print("map:", sum(mapped), flush=True)
    mapped.progress.wait()
    print("counts:", shown.counts["done"], shown.counts["failed"], flush=True)
"""


def nap(x: int) -> int:
    return x


def test_a_text_bar_in_a_terminal(ready_client: Client, connection_file: Path, tmp_path: Path) -> None:
    result = run_script(SCRIPT, tmp_path, str(connection_file))
    assert result.returncode == 0, result.stderr
    assert "after progress: 40 done of 40" in result.stdout
    assert "map: 435" in result.stdout and "counts: 40 0" in result.stdout
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip()]
    assert any(re.search(r"40 tasks \[#{30}\] 40/40 done 40 failed 0", line) for line in lines), result.stderr
    assert any(re.search(r"nap map \[#{30}\] 30/30 done 30", line) for line in lines), result.stderr
    assert result.stderr.count("\n") >= 2  # each bar ends its line when it is finished


def test_progress_of_a_map_without_a_length_and_of_failures(ready_client: Client) -> None:
    out = io.StringIO()
    mapped = ready_client.map_futures(lambda x: 1 / x, (i for i in range(5)))
    shown = progress(mapped, stream=out)
    assert shown.counts["total"] == 5 and shown.counts["failed"] == 1 and shown.counts["done"] == 4
    assert "5/5 done 4 failed 1" in out.getvalue()
    with pytest.raises(TypeError, match="futures"):
        progress([1, 2])


def test_tqdm_over_as_completed_and_map(ready_client: Client) -> None:
    futures = [ready_client.submit(nap, i) for i in range(25)]
    out = io.StringIO()
    seen = [f.result() for f in tqdm(as_completed(futures), file=out, mininterval=0)]
    assert sorted(seen) == list(range(25))
    assert "25/25" in out.getvalue()  # the total comes from len(as_completed(...))
    out = io.StringIO()
    assert sum(tqdm(ready_client.map(nap, range(12)), file=out, mininterval=0)) == 66
    assert "12/12" in out.getvalue()
    out = io.StringIO()
    again = [ready_client.submit(nap, i) for i in range(10)]
    assert len(list(tqdm(as_completed(again), total=len(again), file=out))) == 10 and "10/10" in out.getvalue()


CELLS = [
    "import time\nfrom jupyter_plb import Client, progress\nclient = Client()\n"
    "def nap(x):\n    time.sleep(0.01)\n    return x",
    "futures = [client.submit(nap, i) for i in range(60)]\nshown = progress(futures)\n"
    "print('blocking returned with', sum(f.done() for f in futures), 'done')",
    "later = progress([client.submit(nap, i) for i in range(20)], wait=False)\n"
    "print('non-blocking returned with', later.counts['done'] < 20 or 'all', 'left')",
    "later.wait()\nmapped = client.map(nap, range(30), progress=True)\nprint('sum', sum(mapped))\n"
    "mapped.progress.wait()",
]


@pytest.mark.timeout(120)
def test_a_widget_in_a_notebook(ready_client: Client, connection_file: Path, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    env = {
        **os.environ,
        "PLB_CONNECTION_FILE": str(connection_file),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute(
        env=env
    )
    outputs = [o for cell in nb.cells for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    text = "".join(o.get("text", "") for o in outputs)
    assert "blocking returned with 60 done" in text and "non-blocking returned with" in text and "sum 435" in text
    assert "[###" not in text  # no text bar in a notebook
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [w["state"] for w in state.values() if w["model_name"] == "IntProgressModel"]
    assert sorted((b["value"], b["max"]) for b in bars) == [(20, 20), (30, 30), (60, 60)], json.dumps(bars)
    html = " ".join(str(w["state"].get("value")) for w in state.values() if w["model_name"] == "HTMLModel")
    assert "60/60 · done 60 · failed 0" in html and "30/30 · done 30" in html
