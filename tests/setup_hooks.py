"""Setup hooks for ``plb hub --setup`` in the tests: each notes its worker's pid in a log file."""

from __future__ import annotations

import os


def _log_pid() -> None:
    path = os.environ.get("PLB_TEST_SETUP_LOG")
    if path:
        with open(path, "a") as log:
            log.write(f"{os.getpid()}\n")


def mark_worker() -> None:
    """Mark this worker process (tasks read ``PLB_SETUP_MARK``)."""
    _log_pid()
    os.environ["PLB_SETUP_MARK"] = str(os.getpid())


def fail() -> None:
    _log_pid()
    raise RuntimeError("no licence server")
