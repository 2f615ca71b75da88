"""How every ZeroMQ socket of jupyter_plb is made: one place for options and transport security."""

from __future__ import annotations

import zmq

#: Messages a socket queues per peer before sends would block (they never block: NOBLOCK).
HIGH_WATER_MARK = 100_000


def bind_router(
    context: zmq.Context, host: str, port: int, *, max_message_size: int
) -> tuple[zmq.Socket, int]:
    """A ROUTER bound on ``host:port`` (0: a free port); returns it and the bound port."""
    sock = context.socket(zmq.ROUTER)
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


def connect_dealer(context: zmq.Context, url: str, identity: str, *, linger_ms: int = 1000) -> zmq.Socket:
    """A DEALER with a stable identity (so the balancer can route to it across reconnects)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(url)
    return sock
