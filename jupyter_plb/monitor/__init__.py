"""The live monitor: the HTTP/websocket API of docs/monitor-api.md and the page that shows it.

One set of routes (:mod:`.handlers`) served by two hosts: the Jupyter server extension (Jupyter's
login) and :class:`.standalone.StandaloneMonitor` (a printed token), both over a
:class:`.service.MonitorService`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: The monitor page loads only its own script, style and data; nothing inline, nothing remote.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'self'"
)
#: JSON answers are data, never a document.
API_CSP = "default-src 'none'; frame-ancestors 'none'"

_HTML_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def dumps(data: Any) -> str:
    """Compact JSON with ``<``, ``>`` and ``&`` escaped, so no answer can be read as markup.

    Those characters only ever occur inside JSON strings, where the escapes mean the same thing.
    """
    return json.dumps(data, separators=(",", ":")).translate(_HTML_SAFE)
