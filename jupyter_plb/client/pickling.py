"""What a task carries, pickled: its function (the pickle cached while it is a module and a name)
and its arguments (noting the broadcast objects they name)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import sys
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from jupyter_plb.core import protocol
from jupyter_plb.core.protocol import Buffer

#: Pickles of functions that cloudpickle pickles by module and name: they never change.
_by_reference: weakref.WeakKeyDictionary[Callable[..., Any], tuple[list[Buffer], str]] = weakref.WeakKeyDictionary()

#: While a task's arguments are pickled: the digests of the broadcast objects they name
#: (each :class:`~jupyter_plb.client.broadcast.Broadcast` being pickled adds its own).
named_broadcasts: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("plb_objects", default=None)


def function_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _pickled_by_reference(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is importable by its module and name (so its pickle is that name)."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module_name, str) or module_name == "__main__" or not isinstance(qualname, str):
        return False
    if module_name in cloudpickle.list_registry_pickle_by_value():
        return False
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is fn


def pickle_function(fn: Callable[..., Any]) -> tuple[list[Buffer], str]:
    """The function's pickle and id; cached while cloudpickle pickles it by name only."""
    by_reference = _pickled_by_reference(fn)
    with contextlib.suppress(TypeError):  # TypeError: not weak-referenceable (a numpy ufunc)
        cached = _by_reference.get(fn) if by_reference else None
        if cached is not None:
            return cached
    buffers = protocol.dumps(fn)
    digests = [protocol.digest(b) for b in buffers]
    pickled = (buffers, hashlib.sha256(b"".join(digests)).hexdigest()[:32])
    if by_reference:
        with contextlib.suppress(TypeError):
            _by_reference[fn] = pickled
    return pickled


def pickle_arguments(payload: tuple[Any, dict[str, Any]]) -> tuple[list[Buffer], list[str]]:
    """The arguments' pickle, and the digests of the broadcast objects they name (once each, in order)."""
    naming: list[str] = []
    token = named_broadcasts.set(naming)
    try:
        buffers = protocol.dumps(payload)
    finally:
        named_broadcasts.reset(token)
    return buffers, list(dict.fromkeys(naming)) if naming else naming
