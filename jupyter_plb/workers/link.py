"""A hub's conversation with its balancer: hello, heartbeats, goodbye, and what the balancer asks.

On another machine (``plb hub --connect FILE``) a hub outlives its balancer: when the balancer goes
silent it retries with backoff and registers again, workers included, when one answers (the same
balancer, or a new one on the same address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket as stdsocket
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import cloudpickle
import zmq

from jupyter_plb.core import parameters, protocol
from jupyter_plb.core.protocol import Message, Session
from jupyter_plb.transport import sockets
from jupyter_plb.transport.connection import ConnectionInfo

if TYPE_CHECKING:
    from jupyter_plb.transport.security import PeerKeys
    from jupyter_plb.workers.supervisor import Supervisor

log = logging.getLogger(__name__)

#: The balancer is "silent" after this many heartbeat intervals without an answer.
SILENT_AFTER = 3
#: While the balancer is silent, heartbeats back off (doubling) up to this many seconds.
MAX_RETRY_INTERVAL = 10.0


class BalancerLink:
    """The hub's socket to the balancer; it speaks for the hub and its ``supervisor``'s workers."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        info: ConnectionInfo,
        params: parameters.Parameters,
        curve: PeerKeys | None,
        *,
        hub_id: str,
        name: str,
        local: bool,
        routes: Mapping[str, object],
        supervisor: Supervisor,
    ) -> None:
        self.loop = loop
        self.info = info
        self.hub_id = hub_id
        self.name = name
        self.local = local
        self.routes = routes
        self.supervisor = supervisor
        self.heartbeat_interval = float(params["LB_HEARTBEAT_INTERVAL"])
        self.balancer_id: str | None = None
        self._session = Session(info.key_bytes, max_message_size=params["LB_MAX_MESSAGE_SIZE"])
        self._context = zmq.Context()
        self._socket = sockets.connect_dealer(
            self._context, info.worker_url, hub_id, linger_ms=500, curve=curve
        )
        loop.add_reader(self._socket.fileno(), self._on_readable)
        self._heartbeat: asyncio.TimerHandle | None = None
        self._last_ack = 0.0
        self._last_hello = 0.0
        self._started = time.monotonic()
        self._silent = False
        self._retry_interval = self.heartbeat_interval

    def send(self, header: dict[str, Any]) -> None:
        """Send, then look for input: a send can consume the edge of ZeroMQ's readable FD."""
        with contextlib.suppress(zmq.ZMQError):
            protocol.send(self._socket, self._session.serialize(header))
        if not self._socket.closed:
            self.loop.call_soon(self._on_readable)

    def hello(self) -> None:
        self._last_hello = time.monotonic()
        self.send({
            "type": "hub_hello",
            "hub": self.hub_id,
            "name": self.name,
            "host": stdsocket.gethostname(),
            "pid": os.getpid(),
            "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID"),
            "routes": sorted(self.routes),
            "local": self.local,
            "state": self.supervisor.state,
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "cloudpickle": cloudpickle.__version__,
        })

    def beat(self) -> None:
        """Heartbeat; while the balancer is silent, back off (ZeroMQ reconnects underneath).

        Whichever balancer answers next (the same one, or a new one on the same address) says
        ``heartbeat_ack`` or ``reregister``, and the hub registers again and so do its workers.
        """
        self.supervisor.forgive_crashes()
        silent_for = time.monotonic() - max(self._last_ack, self._started)
        delay = self.heartbeat_interval
        if silent_for > SILENT_AFTER * self.heartbeat_interval:
            if not self._silent:
                self._silent = True
                self._retry_interval = self.heartbeat_interval
                log.warning(
                    "WKHUB - the balancer at %s has not answered for %.0f s; retrying with backoff "
                    "(up to every %.0f s) for as long as it is away",
                    self.info.worker_url, silent_for, MAX_RETRY_INTERVAL,
                )
            self._retry_interval = min(MAX_RETRY_INTERVAL, self._retry_interval * 2)
            delay = max(delay, self._retry_interval)
        self.send({
            "type": "heartbeat",
            "hub": self.hub_id,
            "state": self.supervisor.state,
            "workers": list(self.supervisor.workers),
            "usage": self.supervisor.usage(),
        })
        self._heartbeat = self.loop.call_later(delay, self.beat)

    def bye(self) -> None:
        """Stop heartbeating and say ``hub_bye``: the balancer requeues what still runs here."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self.send({"type": "hub_bye", "hub": self.hub_id})

    def close(self) -> None:
        self.loop.remove_reader(self._socket.fileno())
        self._socket.close(linger=500)
        self._context.term()

    def _on_readable(self) -> None:
        if self._socket.closed:
            return
        while (frames := protocol.recv_ready(self._socket)) is not None:
            try:
                msg = self._session.deserialize(frames)
            except protocol.ProtocolError as exc:
                log.warning("WKHUB - dropped a message: %s", exc)
                continue
            self._handle(msg)

    def _handle(self, msg: Message) -> None:
        balancer = msg.header.get("balancer")
        if msg.type in ("hub_welcome", "heartbeat_ack", "drain_ack"):
            self._answered()
        if msg.type in ("hub_welcome", "heartbeat_ack"):
            interval: Any = msg.header.get("heartbeat")
            valid = isinstance(interval, int | float) and 0.01 <= interval <= 60
            if valid and interval != self.heartbeat_interval:
                self.heartbeat_interval = float(interval)
                self._beat_on_schedule()
            if balancer != self.balancer_id:
                if self.balancer_id is not None:
                    log.info("WKHUB - balancer changed to %s; workers announce again", balancer)
                    self.supervisor.announce()
                self.balancer_id = balancer
        elif msg.type == "reregister":
            self._answered()
            recent = time.monotonic() - self._last_hello < self.heartbeat_interval
            if balancer == self.balancer_id and recent:
                return  # heartbeats queued while the balancer was away: one hello answers them all
            log.info("WKHUB - balancer %s does not know this hub; registering again", balancer)
            self.balancer_id = balancer
            self.hello()
            self.supervisor.announce()
        elif msg.type == "drain_ack":
            self.supervisor.retire()
        elif msg.type == "kill_worker":
            self.supervisor.kill(str(msg.header.get("worker")), msg.header.get("reason"))

    def _answered(self) -> None:
        """The balancer answered: if it had been silent, heartbeats return to their interval."""
        self._last_ack = time.monotonic()
        if self._silent:
            self._silent = False
            self._retry_interval = self.heartbeat_interval
            log.info("WKHUB - the balancer answers again")
            self._beat_on_schedule()

    def _beat_on_schedule(self) -> None:
        """The next heartbeat one interval from now."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = self.loop.call_later(self.heartbeat_interval, self.beat)
