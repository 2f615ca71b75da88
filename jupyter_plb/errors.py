"""Exceptions a user of jupyter_plb can meet; each message says what to do."""

from __future__ import annotations

import pickle
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BalancerUnreachable",
    "CancelledError",
    "ClientClosed",
    "ConnectionFileError",
    "DeserializationError",
    "ParametersError",
    "PlbError",
    "ProtocolError",
    "QueueFull",
    "RemoteTraceback",
    "SerializationError",
    "TaskFailed",
    "TaskRejected",
    "TaskTimeout",
    "UnknownTask",
    "VersionSkewWarning",
    "WorkerLost",
    "WorkerMemoryExceeded",
]


class PlbError(Exception):
    """Base class of every jupyter_plb error."""


class ParametersError(PlbError, ValueError):
    """A parameters file or mapping is invalid: the message names the file and the key."""


class ConnectionFileError(PlbError):
    """A connection file is missing, unreadable, malformed or readable by other users."""


class ProtocolError(PlbError):
    """A message failed verification or parsing; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SerializationError(PlbError, pickle.PicklingError):
    """An object could not be pickled for sending (also a ``pickle.PicklingError``)."""


class DeserializationError(PlbError):
    """Bytes that passed the signature check could not be unpickled here."""


class IntegrityError(DeserializationError):
    """A buffer did not match the digest its signed header names (altered in transit)."""


class BalancerUnreachable(PlbError, TimeoutError):
    """The balancer did not answer within the timeout."""


class TaskRejected(PlbError):
    """The balancer refused a task (bad input); the message says why."""


class QueueFull(TaskRejected):
    """The user already has LB_QUEING_MAXPERUSER tasks queued."""


class UnknownTask(PlbError, KeyError):
    """The balancer does not know this task id (never submitted, or its result expired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown task"


class TaskFailed(PlbError):
    """A task failed remotely with an exception that could not be rebuilt locally."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback


class WorkerLost(TaskFailed, BrokenProcessPool):
    """The worker process running the task died (killed, crashed, out of memory, hub lost).

    Also a ``BrokenProcessPool``, what code written for ``ProcessPoolExecutor`` catches; unlike
    that pool, the hub replaces the worker and only this task failed.
    """

    def __init__(self, message: str) -> None:
        super().__init__("WorkerLost", message)


class WorkerMemoryExceeded(WorkerLost, MemoryError):
    """The worker's resident memory went over its hub's ``--memory-limit``: it was killed and
    replaced, and the task it ran failed (or was retried, if its ``retries`` allow)."""

    def __init__(self, message: str) -> None:
        TaskFailed.__init__(self, "WorkerMemoryExceeded", message)


class TaskTimeout(TaskFailed, TimeoutError):
    """The task ran longer than its ``timeout``; its worker was killed and replaced."""

    def __init__(self, message: str) -> None:
        super().__init__("TaskTimeout", message)


class VersionSkewWarning(UserWarning):
    """A hub runs another Python minor or cloudpickle version than this client: its tasks may
    fail to unpickle there."""


class RemoteTraceback(Exception):
    """Carries the remote traceback text; set as ``__cause__`` of a re-raised remote error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class ClientClosed(PlbError, RuntimeError):
    """The client was shut down: it takes no more tasks (as an executor after ``shutdown()``)."""
