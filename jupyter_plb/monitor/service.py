"""What the monitor routes act on: the balancer, its event stream, the local hub and the metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jupyter_plb.monitor.events import EventStream
from jupyter_plb.monitor.localhub import LocalHub
from jupyter_plb.monitor.metrics import MetricsExporter

if TYPE_CHECKING:
    from jupyter_plb.balancer.service import Balancer
    from jupyter_plb.monitor.remote import RemoteBalancer

#: The web-application setting under which both hosts put their :class:`MonitorService`.
SETTINGS_KEY = "plb_monitor"


class MonitorService:
    """The balancer's monitor state, shared by the Jupyter extension and the standalone server."""

    def __init__(self, balancer: Balancer | RemoteBalancer, local_hub: LocalHub) -> None:
        self.balancer = balancer
        self.local_hub = local_hub
        self.events = EventStream(balancer)
        self.metrics = MetricsExporter(balancer.snapshot)
