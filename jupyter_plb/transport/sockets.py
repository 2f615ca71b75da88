"""How every ZeroMQ socket of jupyter_plb is made: one place for options and transport security."""

from __future__ import annotations

from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from jupyter_plb.transport.security import PeerKeys, ServerKeys

#: Messages a socket queues per peer before sends would block (they never block: NOBLOCK).
HIGH_WATER_MARK = 100_000


def bind_router(
    context: zmq.Context,
    host: str,
    port: int,
    *,
    max_message_size: int,
    curve: ServerKeys | None = None,
    domain: str = "",
) -> tuple[zmq.Socket, int]:
    """A ROUTER bound on ``host:port`` (0: a free port); returns it and the bound port.

    With ``curve``, the socket is a CurveZMQ server: every connection is encrypted and must pass
    the ZAP authenticator of ``context`` for ``domain`` (the allow-list of the port's role).
    """
    sock = context.socket(zmq.ROUTER)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
    try:
        if port:
            sock.bind(f"tcp://{host}:{port}")
        else:
            port = sock.bind_to_random_port(f"tcp://{host}")
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock, port


def connect_dealer(
    context: zmq.Context,
    url: str,
    identity: str,
    *,
    linger_ms: int = 1000,
    curve: PeerKeys | None = None,
) -> zmq.Socket:
    """A DEALER with a stable identity (so the balancer can route to it across reconnects).

    With ``curve``, it connects as a CurveZMQ client with its certificate's keys.
    """
    sock = context.socket(zmq.DEALER)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(url)
    return sock


def probe_handshake(url: str, curve: PeerKeys, timeout: float) -> int | None:
    """Try one CurveZMQ handshake with ``url`` on a throw-away socket; return its monitor event.

    ``zmq.EVENT_HANDSHAKE_SUCCEEDED``, ``…_FAILED_AUTH`` (the server refused the key), another
    ``…_FAILED_*`` event, or None when nothing happened within ``timeout`` seconds.
    """
    from zmq.utils.monitor import recv_monitor_message

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    )
    try:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        sock.connect(url)
        if not monitor.poll(int(timeout * 1000)):
            return None
        return int(recv_monitor_message(monitor)["event"])
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        context.term()


def diagnose(url: str, keys: PeerKeys, timeout: float = 2.0) -> str | None:
    """Why a CurveZMQ connection to ``url`` fails, found by trying one handshake, or None."""
    event = probe_handshake(url, keys, timeout)
    if event is None:
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the balancer at {url} refused this certificate ({keys.certificate}, public key "
            f"{keys.public.decode()}): it is not in the allow-list for this port. On the "
            "balancer's machine, `plb keygen --client NAME` (or --hub NAME) makes an allowed one"
        )
    if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return (
            f"the CurveZMQ handshake with {url} failed: the connection file's server key does not "
            "match the balancer (was it restarted with new certificates?); use the connection file "
            "it wrote last"
        )
    return None
