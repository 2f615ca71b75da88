"""The shim that runs CPython's executor tests on a Client: an executor factory over a local cluster.

``conftest.py`` starts the cluster (a balancer and a hub of five workers) once per session and
sets ``CONNECTION_FILE``. Each test's executor is a new ``Client`` of that cluster; its pool is the
hub's workers, so ``max_workers`` and ``mp_context`` name nothing a client owns.
"""

from __future__ import annotations

import unittest
from pathlib import Path
from typing import Any

from jupyter_plb.client import Client, PlbFuture
from jupyter_plb.core import protocol

CONNECTION_FILE: Path | None = None


def plb_executor(max_workers: int | None = None, mp_context: Any = None) -> Client:
    """A new client of the session's cluster, standing in for ``ProcessPoolExecutor(...)``."""
    if CONNECTION_FILE is None:
        raise RuntimeError("the conformance cluster is not running (tests/conformance/conftest.py starts it)")
    return Client(connection_file=CONNECTION_FILE)


def Future() -> PlbFuture:
    """A future of our kind outside any client, for the tests that build futures by hand."""
    return PlbFuture(None, protocol.new_id("t"), "local")


_NO_POOL_OF_ITS_OWN = (
    "a client has no pool of its own: the workers are a hub's (`plb hub --workers N`), started with the hub "
    "and shared by every client"
)
_SCRIPT = (
    "runs a script that imports its executor from concurrent.futures; tests/test_client_lifetime.py runs the "
    "same check on a Client"
)
_BUILDS_ITS_OWN = (
    "builds a ProcessPoolExecutor itself and joins its processes and manager thread: it tests that class; "
    "the same check on a Client (unreferenced, results still computed, then closed) is in "
    "tests/test_client_lifetime.py"
)
_BREAKS = "expects the whole pool to break for good (BrokenProcessPool)"
_REPR = (
    "matches the repr of the base class, `<Future at 0x… state=…>`; a subclass's repr starts with its own "
    "name (`<PlbFuture t-… pow finished>` also names the task)"
)

#: Tests that cannot apply to a remote executor, with the reason.
SKIPPED: dict[str, str] = {
    "PlbInitializerTest.test_initializer": f"initializer/initargs: {_NO_POOL_OF_ITS_OWN}, so no client runs code "
    "at a worker's start",
    "PlbFailingInitializerTest.test_initializer": f"initializer/initargs and a broken pool: {_NO_POOL_OF_ITS_OWN}",
    "PlbProcessPoolExecutorTest.test_max_workers_negative": f"max_workers: {_NO_POOL_OF_ITS_OWN}",
    "PlbProcessPoolExecutorTest.test_killed_child": "kills one of ProcessPoolExecutor._processes and expects the "
    "whole pool to break (BrokenProcessPool); a hub replaces a killed worker and only that task fails, with "
    "WorkerLost (tests/test_core.py)",
    "PlbProcessPoolExecutorTest.test_traceback": "asserts the private class concurrent.futures.process."
    "_RemoteTraceback; a Client's remote traceback is jupyter_plb.errors.RemoteTraceback, also the __cause__ "
    "with the text in .tb (tests/test_core.py)",
    "PlbProcessPoolExecutorTest.test_ressources_gced_in_workers": "hands the task a multiprocessing Manager's "
    "Event proxy, which pickles only into processes that the executor spawns itself (its authkey is not sent "
    "to any other process)",
    "PlbProcessPoolExecutorTest.test_saturation": f"counts ProcessPoolExecutor._processes: {_NO_POOL_OF_ITS_OWN}",
    "PlbProcessPoolExecutorTest.test_idle_process_reuse_one": "counts ProcessPoolExecutor._processes: "
    f"{_NO_POOL_OF_ITS_OWN}",
    "PlbProcessPoolExecutorTest.test_idle_process_reuse_multiple": "counts ProcessPoolExecutor._processes: "
    f"{_NO_POOL_OF_ITS_OWN}",
    "PlbProcessPoolShutdownTest.test_interpreter_shutdown": "runs a script that imports its executor from "
    "concurrent.futures, and expects the exit to wait for the task and the task's print on the script's "
    "stdout: a balancer's task outlives the script (the exit does not wait, so a kernel restart never waits "
    "for hour-long tasks) and its output comes back in fut.stdout; tests/test_client_lifetime.py checks the "
    "clean exit",
    "PlbProcessPoolShutdownTest.test_submit_after_interpreter_shutdown": _SCRIPT,
    "PlbProcessPoolShutdownTest.test_hang_issue39205": "runs a script that imports its executor from "
    "concurrent.futures and expects the task's print on the script's stdout (a worker's output comes back in "
    "fut.stdout); skipped upstream for ProcessPoolExecutor too",
    "PlbProcessPoolShutdownTest.test_processes_terminate": "joins ProcessPoolExecutor._processes and shares a "
    f"multiprocessing Semaphore with them: {_NO_POOL_OF_ITS_OWN}",
    "PlbProcessPoolShutdownTest.test_context_manager_shutdown": _BUILDS_ITS_OWN,
    "PlbProcessPoolShutdownTest.test_del_shutdown": _BUILDS_ITS_OWN,
    "PlbProcessPoolShutdownTest.test_shutdown_no_wait": _BUILDS_ITS_OWN,
    "PlbExecutorDeadlockTest.test_error_at_task_unpickle": f"{_BREAKS} when a task's arguments fail to unpickle "
    "on the worker; a Client fails only that task, with DeserializationError naming the cause",
    "PlbExecutorDeadlockTest.test_exit_at_task_unpickle": f"{_BREAKS} when unpickling a task's arguments calls "
    "sys.exit on the worker; a Client's worker goes on and only that task fails, with the SystemExit",
    "PlbExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": f"{_BREAKS} when a result fails "
    "to unpickle; a Client fails only that task, with DeserializationError",
    "PlbExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": f"{_BREAKS} when unpickling a "
    "result calls sys.exit; a Client fails only that task, with DeserializationError (its I/O thread goes on)",
    "PlbExecutorDeadlockTest.test_shutdown_deadlock_pickle": "joins ProcessPoolExecutor._executor_manager_thread; "
    "the rest of it (an argument that does not pickle fails its future with a PicklingError) is "
    "test_error_at_task_pickle",
    "FutureTests.test_repr": _REPR,
    "FutureTests.test_multiple_set_result": f"its error message {_REPR}",
    "FutureTests.test_multiple_set_exception": f"its error message {_REPR}",
}


def skip_inapplicable(namespace: dict[str, Any]) -> None:
    """Mark the tests of ``SKIPPED`` in the test module's classes as skipped, with their reason."""
    for qualified, reason in SKIPPED.items():
        class_name, test_name = qualified.split(".")
        cls = namespace[class_name]
        setattr(cls, test_name, unittest.skip(reason)(getattr(cls, test_name)))
