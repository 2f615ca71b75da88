"""HealthCheck: probes the balancer from outside, over its own connection, and says what is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio

from jupyter_plb.core import parameters, protocol
from jupyter_plb.core.protocol import Session
from jupyter_plb.transport import connection, security, sockets

log = logging.getLogger(__name__)

NO_WORKERS = "HC - WARNING : LB HAS NO WORKERS."
NOT_RESPONDING = "HC - ERROR : LB IS NOT RESPONDING."
#: A message that persists is logged again after this many seconds.
REPEAT_AFTER = 30.0


def evaluate(report: dict[str, Any] | None) -> tuple[str, list[str]]:
    """Turn the balancer's health report into a status and the seed-style messages."""
    if report is None:
        return "error", [NOT_RESPONDING]
    messages = []
    if not report.get("workers"):
        messages.append(NO_WORKERS)
    for name in report.get("silent_hubs", []):
        messages.append(f"HC - WARNING : HUB {name} IS NOT SENDING HEARTBEATS.")
    for name in report.get("unhealthy_hubs", []):
        messages.append(f"HC - WARNING : HUB {name} IS UNHEALTHY (ITS WORKERS KEEP DYING).")
    overdue = report.get("overdue", [])
    if overdue:
        messages.append(f"HC - WARNING : {len(overdue)} TASK(S) RUNNING PAST THEIR TIMEOUT.")
    if report.get("unschedulable"):
        messages.append(
            f"HC - WARNING : {report['unschedulable']} QUEUED TASK(S) NO CONNECTED WORKER CAN TAKE."
        )
    return ("warning" if messages else "ok"), messages


class HealthCheck:
    """Asks the balancer for a health report every ``HC_INTERVAL`` seconds and logs problems."""

    def __init__(
        self,
        params: parameters.Parameters | str | Path | None = None,
        *,
        connection_file: str | Path | None = None,
    ) -> None:
        self.params = parameters.load(params)
        self._connection_file = connection_file
        self.status = "unknown"
        self.messages: list[str] = []
        self.report: dict[str, Any] | None = None
        self.checks = 0
        self._logged: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    def start(self) -> asyncio.Task[None]:
        """Run on the current loop until :meth:`stop`."""
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="plb-healthcheck")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_checked(self, timeout: float) -> None:
        """Wait until the next check has completed."""
        assert self._changed is not None
        self._changed.clear()
        await asyncio.wait_for(self._changed.wait(), timeout)

    async def run(self) -> None:
        path = self._connection_file or connection.resolve_path(self.params)
        info = connection.read(path)
        curve = security.peer_keys(info, self.params, "health")  # the balancer's own certificate
        session = Session(info.key_bytes, max_message_size=self.params["LB_MAX_MESSAGE_SIZE"])
        context = zmq.asyncio.Context()
        interval = self.params["HC_INTERVAL"]
        reply_timeout = max(2 * self.params["SOCKET_TIMEOUT"] / 1000, 0.5)
        sock = None
        counter = 0
        try:
            while True:
                if sock is None:
                    sock = cast(zmq.asyncio.Socket, sockets.connect_dealer(
                        context, info.health_url, protocol.new_id("hc"), linger_ms=0, curve=curve
                    ))
                counter += 1
                req = f"hc{counter}"
                await sock.send_multipart(session.serialize({"type": "health", "req": req}))
                report = None
                deadline = time.monotonic() + reply_timeout
                while report is None and (left := deadline - time.monotonic()) > 0:
                    if not await sock.poll(int(left * 1000)):
                        break
                    frames = await sock.recv_multipart(copy=False)
                    try:
                        msg = session.deserialize(frames)
                    except protocol.ProtocolError as exc:
                        log.warning("HC - dropped a message: %s", exc)
                        continue
                    if msg.header.get("req") == req:
                        report = msg.header
                if report is None:
                    sock.close(linger=0)
                    sock = None
                self._record(report)
                if sock is not None:
                    await sock.send_multipart(session.serialize(
                        {"type": "health_update", "status": self.status, "messages": self.messages}
                    ))
                await asyncio.sleep(interval)
        finally:
            if sock is not None:
                sock.close(linger=0)
            context.term()

    def _record(self, report: dict[str, Any] | None) -> None:
        self.report = report
        self.status, self.messages = evaluate(report)
        self.checks += 1
        now = time.monotonic()
        for message in self.messages:
            last = self._logged.get(message)
            if last is None or now - last >= REPEAT_AFTER:
                self._logged[message] = now
                (log.error if "ERROR" in message else log.warning)(message)
        for message in list(self._logged):
            if message not in self.messages:
                del self._logged[message]
        if self._changed is not None:
            self._changed.set()
