"""Task functions shared by every system in the benchmark (importable, so pickled by reference)."""

from __future__ import annotations

import time


def noop(x: object = None) -> object:
    return x


def sleep_10ms(_: object = None) -> None:
    time.sleep(0.01)


def size_of(data: bytes) -> int:
    return len(data)
