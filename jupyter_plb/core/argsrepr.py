"""A short text of a task's arguments, made by the client at submit time for the monitor.

The balancer never unpickles arguments, so the client sends this text in the task's header. It
is cheap and bounded whatever the arguments are: containers are cut after a few items, strings
and bytes are sliced before they are repr'd, huge integers are not printed, objects with a
``shape`` (numpy arrays, data frames, tensors) show their type and shape, and a ``__repr__``
that raises gives ``<TypeName>``.
"""

from __future__ import annotations

import reprlib
from typing import Any

from jupyter_plb.core.protocol import _Blob

#: Characters of the whole text at most.
MAX_LENGTH = 200


class _Short(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdeque = 6
        self.maxdict = self.maxset = self.maxfrozenset = 6
        self.maxstring = 60
        self.maxother = 60

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x) if len(x) <= self.maxstring else f"{x[: self.maxstring]!r}… ({len(x)} bytes)"

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return f"bytearray({self.repr_bytes(bytes(x[: self.maxstring + 1]), level)})"

    def repr__Blob(self, x: _Blob, level: int) -> str:  # reprlib dispatches on repr_<type name>
        return f"<bytes of {len(x.data)}>"

    def repr_instance(self, x: Any, level: int) -> str:
        kind = type(x)
        try:
            shape = x.shape if hasattr(kind, "shape") else None
            if isinstance(shape, tuple) and shape:
                return f"{kind.__name__}(shape={shape!r})"
            return reprlib.Repr.repr_instance(self, x, level)
        except Exception:
            return f"<{kind.__name__}>"


_short = _Short()


def _one(value: Any) -> str:
    kind = type(value)
    if kind is float or kind is bool or value is None or (kind is int and -(1 << 62) < value < 1 << 62):
        return repr(value)  # the common case, without reprlib's dispatch
    return _short.repr(value)


def args_text(args: Any, kwargs: dict[str, Any] | None = None) -> str:
    """``1, 'a', key=[1, 2, ...]``: at most :data:`MAX_LENGTH` characters."""
    try:
        parts = [_one(a) for a in args] if isinstance(args, tuple | list) else [_one(args)]
        if kwargs:
            parts.extend(f"{k}={_one(v)}" for k, v in kwargs.items())
        text = ", ".join(parts)
    except Exception:
        return "<arguments that cannot be shown>"
    return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 1] + "…"
