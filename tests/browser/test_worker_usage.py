"""The monitor's worker table shows each worker's CPU and resident memory, and a hub's version skew."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.core import parameters
from tests.browser.conftest import ARTIFACTS, TIMEOUT_MS
from tests.conftest import wait_for, worker_count
from tests.test_version_skew import OTHER, FakeHub


@pytest.fixture
def cluster_with_skew(tmp_path: Path) -> Iterator[LocalCluster]:
    """A balancer and monitor, a real hub of 2 workers, and a hub reporting other versions."""
    params = parameters.load(LB_CLIENTPULLPORT=0, LB_WKPULLPORT=0, LB_HCREPPORT=0, MONITOR_PORT=0,
                             HC_INTERVAL=0.5, LB_HEARTBEAT_INTERVAL=0.5)
    with LocalCluster(params, connection_file=tmp_path / "plb-connection.json") as cluster:
        cluster.start()
        cluster.start_hub(2, name="usage-hub")
        stop = threading.Event()

        def fake_hub() -> None:  # its socket lives and dies on this thread
            fake = FakeHub(cluster.connection_file, OTHER)
            fake.register()
            while not stop.wait(0.3):
                fake.beat()
            fake.close()

        thread = threading.Thread(target=fake_hub)
        thread.start()
        try:
            yield cluster
        finally:
            stop.set()
            thread.join(10)


@pytest.mark.filterwarnings("ignore::jupyter_plb.errors.VersionSkewWarning")
def test_worker_table_shows_cpu_memory_and_version_skew(page: Any, cluster_with_skew: LocalCluster) -> None:
    with Client(connection_file=cluster_with_skew.connection_file) as client:
        wait_for(lambda: worker_count(client) == 2, what="2 workers to register")
    assert cluster_with_skew.monitor_url is not None
    page.goto(cluster_with_skew.monitor_url)
    page.wait_for_selector('body[data-conn="live"]', timeout=TIMEOUT_MS)
    rows = page.locator("#worker-table tr.worker-row")
    expect(rows).to_have_count(2, timeout=TIMEOUT_MS)
    expect(rows.locator("td:nth-child(9)")).to_have_text([re.compile(r"^\d+ MiB$")] * 2, timeout=TIMEOUT_MS)
    expect(rows.locator("td:nth-child(8)")).to_have_text([re.compile(r"^\d+ %$")] * 2, timeout=TIMEOUT_MS)
    skew = page.locator("#worker-table .hub-skew:visible")
    expect(skew).to_have_count(1, timeout=TIMEOUT_MS)
    expect(skew).to_contain_text("hub fake-gpu on gpu-node runs Python 3.99.0 and cloudpickle 0.0.1")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#workers-panel").screenshot(path=str(ARTIFACTS / "monitor-worker-usage.png"))
