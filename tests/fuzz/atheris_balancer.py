"""Coverage-guided fuzzing of the balancer's message handling with atheris (libFuzzer).

    python tests/fuzz/atheris_balancer.py -runs=20000

Each input becomes a message at one of the three ports, signed with the balancer's key or not;
the balancer must answer or drop it. Any exception, or any error it logs, is a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from jupyter_plb.balancer import Balancer
    from jupyter_plb.core import parameters
    from jupyter_plb.core.protocol import Session

TYPES = [
    "hello", "submit", "get", "cancel", "ack", "status", "tasks", "hub_hello", "heartbeat", "worker_ready",
    "results", "progress", "worker_lost", "hub_bye", "skipped", "health", "health_update", "worker_bye", "hub_drain",
]


class _RaiseOnError(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            raise RuntimeError(f"the balancer logged an error: {record.getMessage()}")


def _start() -> tuple[Balancer, Session]:
    folder = Path(tempfile.mkdtemp(prefix="plb-atheris-"))
    params = parameters.load(LB_CLIENTPULLPORT=0, LB_WKPULLPORT=0, LB_HCREPPORT=0, LB_JOURNAL=False)
    balancer = Balancer(params, connection_file=folder / "plb-connection.json")
    loop = asyncio.new_event_loop()
    info = loop.run_until_complete(balancer.start())
    logging.getLogger("jupyter_plb").addHandler(_RaiseOnError())
    logging.getLogger("jupyter_plb").setLevel(logging.ERROR)
    return balancer, Session(info.key_bytes)


BALANCER, SESSION = _start()
HANDLERS = {
    "clients": BALANCER.client_desk.on_client_message,
    "workers": BALANCER.hub_desk.on_worker_message,
    "health": BALANCER.views.on_health_message,
}


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    role = fdp.PickValueInList(sorted(HANDLERS))
    if fdp.ConsumeBool():
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 400))
        try:
            header = json.loads(text)
        except ValueError:
            header = {}
        if not isinstance(header, dict):
            header = {"tasks": header, "ids": header, "results": header}
        header["type"] = fdp.PickValueInList(TYPES)
        buffers = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        frames = SESSION.serialize(header, buffers)
    else:
        frames = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    identity = fdp.PickValueInList([b"client_x", b"hub_x", b"worker_x", b"client_x-tx"])
    BALANCER._handle(role, [identity, *frames], HANDLERS[role])


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
