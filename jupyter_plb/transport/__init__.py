"""How peers find and trust each other: connection files, keys and CurveZMQ, the ZeroMQ sockets.

Built on :mod:`jupyter_plb.core`; used by the balancer, the hubs and workers, and the clients.
"""
