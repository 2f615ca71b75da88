"""One local cluster (a balancer and a hub of five workers) for the whole conformance suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import running_balancer
from . import plb_executor


@pytest.fixture(scope="session", autouse=True)
def conformance_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with running_balancer(tmp_path_factory.mktemp("conformance"), "conformance-hub", workers=5) as path:
        plb_executor.CONNECTION_FILE = path
        try:
            yield path
        finally:
            plb_executor.CONNECTION_FILE = None


@pytest.fixture(scope="session", autouse=True)
def futures_log_to_stderr() -> Iterator[None]:
    """What concurrent.futures logs goes to stderr, as under unittest (the tests read it there);
    under pytest the logging plugin's root handler would take it instead."""
    logger = logging.getLogger("concurrent.futures")
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = True
