"""This package's version; version skew between a hub and this process (Python minor, cloudpickle).

The Python minor and cloudpickle versions must match.

A function pickled by cloudpickle under Python 3.11 may not load under 3.12 (bytecode differs), nor
under another cloudpickle version; a hub that differs is named when it registers, not only when a
task fails to unpickle there. :func:`skew` is the one comparison the client, ``plb status`` and the
balancer's snapshot (the monitor) use.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from typing import Any

import cloudpickle

#: This interpreter's versions, as hubs report theirs at registration.
LOCAL: dict[str, str] = {
    "python": "{}.{}.{}".format(*sys.version_info[:3]),
    "cloudpickle": cloudpickle.__version__,
}


@functools.cache
def package_version() -> str:
    """The installed distribution's version (the build takes it from ``labextension/package.json``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jupyter_plb")
    except PackageNotFoundError:  # a source tree imported without being installed
        return "0+unknown"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def skew(hub: Mapping[str, Any], local: Mapping[str, str] = LOCAL, here: str = "this client") -> str | None:
    """What to tell the user when ``hub``'s Python minor or cloudpickle version differs from
    ``local``'s (both ``{"python": "3.11.7", "cloudpickle": "3.0.0"}``), else None.

    A version the hub did not report is not a difference (a seed hub says nothing).
    """
    python, pickler = str(hub.get("python") or ""), str(hub.get("cloudpickle") or "")
    theirs, ours = [], []
    if python and _minor(python) != _minor(local["python"]):
        theirs.append(f"Python {python}")
        ours.append(f"Python {local['python']}")
    if pickler and pickler != local["cloudpickle"]:
        theirs.append(f"cloudpickle {pickler}")
        ours.append(f"cloudpickle {local['cloudpickle']}")
    if not theirs:
        return None
    name = str(hub.get("name") or hub.get("id") or "?")
    host = f" on {hub['host']}" if hub.get("host") else ""
    return (
        f"hub {name}{host} runs {' and '.join(theirs)}, {here} {' and '.join(ours)}: tasks sent there "
        f"may fail to unpickle; run the hub with Python {_minor(local['python'])} and cloudpickle "
        f"{local['cloudpickle']}"
    )
