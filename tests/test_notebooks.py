"""Every notebook in notebooks/ runs top to bottom in a real kernel against a real balancer.

The balancer here is a LocalCluster with a hub (the conftest fixtures); the kernel finds it
through ``PLB_CONNECTION_FILE`` in its environment, as it would under the server extension.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_plb.client import Client

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: Path, workdir: Path, connection_file: Path) -> Any:
    copy = shutil.copy(path, workdir / path.name)
    nb = nbformat.read(copy, as_version=4)
    env = {
        **os.environ,
        "PLB_CONNECTION_FILE": str(connection_file),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return nb


def widget_values(nb: Any, model: str) -> list[Any]:
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [w["state"].get("value") for w in state.values() if w["model_name"] == model]


def test_there_are_the_three_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "dashboard.ipynb",
        "quickstart.ipynb",
        "users-and-priorities.ipynb",
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, ready_client: Client, connection_file: Path, tmp_path: Path) -> None:
    nb = execute(path, tmp_path, connection_file)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    if path.name == "quickstart.ipynb":
        assert "'Hello John Doe !'" in text and "WORKER GOT TASK John Doe" in text
        assert "Bonjour Marie !" in text and "328350" in text
        assert "divide failed: ZeroDivisionError" in text
        cards = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
        assert cards.count('class="plb-future"') >= 3 and "ZeroDivisionError" in cards
    elif path.name == "dashboard.ipynb":
        html = "".join(v for v in widget_values(nb, "HTMLModel") if isinstance(v, str))
        assert "plb-header" in html and "Hubs and workers" in html and "item 16 is unlucky" in html
        assert "40/40 · done 38 · failed 2" in html
    else:
        assert "bob's tasks done after" in text and "no connected worker accepts priority" in text
        assert "cancelled 1 of 1 task(s)" in text
        cancelled = re.search(r"cancelled (\d+) of dave's 200 tasks", text)
        assert cancelled and int(cancelled.group(1)) >= 100, text
