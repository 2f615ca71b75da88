"""The Jupyter server extension: the balancer, its health check, the monitor and a local hub.

Everything runs on the Jupyter server's event loop. ``benchmarks/server_responsiveness.py``
(10,000 tasks through the hosted balancer) keeps the server's ``GET /api/status`` p99 near 20 ms;
its worst samples are garbage collections of the whole server process, which a balancer thread
would not avoid, so the balancer has no thread of its own. Kernels started by the server find the
balancer through ``$PLB_CONNECTION_FILE``.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Dict, Int, Unicode, default, validate

from jupyter_plb.balancer.healthcheck import HealthCheck
from jupyter_plb.balancer.service import Balancer
from jupyter_plb.core.parameters import Parameters
from jupyter_plb.core.parameters import load as load_parameters
from jupyter_plb.core.parameters import validate as validate_parameters
from jupyter_plb.monitor.handlers import jupyter_handlers
from jupyter_plb.monitor.localhub import LocalHub
from jupyter_plb.monitor.remote import RemoteBalancer
from jupyter_plb.monitor.service import SETTINGS_KEY, MonitorService
from jupyter_plb.transport import connection, security
from jupyter_plb.workers.resources import usable_cpus

#: Balancer ports that are free ports (0) inside Jupyter unless the configuration names them.
PORT_KEYS = ("LB_CLIENTPULLPORT", "LB_WKPULLPORT", "LB_HCREPPORT")


class PlbExtension(ExtensionApp):
    """Hosts jupyter_plb in a Jupyter server.

    Parameters come, lowest first, from the seed's defaults, ``parameters_file`` and
    ``parameters``. Ports are the exception to the seed's defaults: a balancer port that neither
    names is a free port chosen at start (the seed's fixed 5799/5699/5999 would collide between two
    Jupyter servers on one machine); hubs and kernels read the bound ports from the connection file.
    Name them (in either) to fix them, e.g. for remote hubs behind a firewall.
    """

    name = "jupyter_plb"
    description = "A load balancer for Python tasks, with its monitor, inside Jupyter."
    load_other_extensions = True

    parameters_file = Unicode(
        "",
        config=True,
        help="""A pyLoadBalancer-style parameters.json (seed keys such as LB_QUEING_MAXPERUSER,
        WKHUB_WORKERS, LB_IP; see the README). Balancer ports it names are used as given.""",
    )
    parameters = Dict(
        config=True,
        help="""parameters.json keys set in the Jupyter config; they override parameters_file,
        e.g. c.PlbExtension.parameters = {"LB_QUEING_MAXPERUSER": 5000}.""",
    )
    connection_file = Unicode(
        "",
        config=True,
        help="""Where the balancer writes its connection file (address, ports, key; mode 0600).
        Default: plb-connection.json in the Jupyter runtime dir (plb-connection-2.json… when
        another running server's balancer owns it). Exported to kernels as
        $PLB_CONNECTION_FILE; `plb hub --connect <file>` on another machine joins with a copy.""",
    )
    freeze_startup_objects = Bool(
        True,
        config=True,
        help="""Once the balancer runs, move the objects the server made while starting (hundreds of
        thousands: parsers, schemas, modules) out of the garbage collector's reach (gc.freeze).
        Tasks flowing at thousands per second make Python run full collections often; each would
        otherwise walk all of them and stall the server for 50-150 ms.""",
    )
    local_workers = Int(
        config=True,
        help="""Worker processes of the local hub started with the server (default: one per CPU this
        server may use: its CPU affinity, capped by its cgroup's CPU quota, so a JupyterHub user's
        container limited to 2 CPUs starts 2 workers). 0 starts no local hub (POST
        /plb/api/hub/local can still start one, as many workers unless it says how many).""",
    )

    @default("local_workers")
    def _default_local_workers(self) -> int:
        return usable_cpus()

    @validate("local_workers")
    def _check_local_workers(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 0:
            raise ValueError("local_workers must be >= 0 (0: no local hub)")
        return proposal["value"]

    attach = Unicode(
        config=True,
        help="""A team balancer's connection file (`plb start --team`, docs/team.md; default
        $PLB_ATTACH). Then this server hosts no balancer and no health check: its monitor, Lab
        panel and kernels use the team balancer, and no local hub starts unless local_workers is
        set in the configuration.""",
    )
    attach_certificate = Unicode(
        config=True,
        help="""With attach: this user's CurveZMQ client certificate for the team balancer
        (`plb keygen --client NAME` on the team balancer's machine; default $PLB_CLIENT_CERT).
        The monitor uses it and kernels get it as $PLB_CLIENT_CERT: the team balancer knows this
        server's user by it.""",
    )

    @default("attach")
    def _default_attach(self) -> str:
        return os.environ.get("PLB_ATTACH", "")

    @default("attach_certificate")
    def _default_attach_certificate(self) -> str:
        return os.environ.get(security.CERT_ENV["clients"], "")

    balancer: Balancer | RemoteBalancer
    healthcheck: HealthCheck | None
    monitor: MonitorService
    #: Attach mode's decision about the local hub (None: local_workers decides).
    _attach_local_hub: bool | None = None

    def effective_parameters(self) -> Parameters:
        """The parameters with the precedence above (ports not named: 0)."""
        values: dict[str, Any] = dict.fromkeys(PORT_KEYS, 0)
        if self.parameters_file:
            from_file = load_parameters(self.parameters_file)
            named = json.loads(Path(self.parameters_file).read_text(encoding="utf-8"))
            values.update((key, value) for key, value in from_file.items() if key in named)
        values.update(self.parameters)
        return validate_parameters(values, "PlbExtension.parameters")

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        params = self.effective_parameters()
        if self.attach:
            self._attach_settings(params)
            return
        if self.connection_file:
            path = Path(self.connection_file)
        else:
            path = connection.claim_default(Path(self.serverapp.runtime_dir))
        self.balancer = Balancer(params, connection_file=path)
        self.healthcheck = HealthCheck(params, connection_file=path)
        self.monitor = MonitorService(
            self.balancer, LocalHub(path, self.local_workers or usable_cpus())
        )
        self.settings[SETTINGS_KEY] = self.monitor
        self._route_logs()
        # Set before any kernel starts: kernels inherit the server's environment.
        os.environ[connection.ENV_VAR] = str(path)

    def _attach_settings(self, params: Parameters) -> None:
        """Attach mode: the monitor talks to the team balancer; kernels get its connection file."""
        path = Path(self.attach).expanduser().resolve()
        if self.attach_certificate:
            os.environ[security.CERT_ENV["clients"]] = str(Path(self.attach_certificate).expanduser())
        self.balancer = RemoteBalancer(path, params)
        self.healthcheck = None
        asked = "local_workers" in self.config.get(self.__class__.__name__, {})
        self.monitor = MonitorService(
            self.balancer, LocalHub(path, self.local_workers or usable_cpus(), name="attached")
        )
        self._attach_local_hub = asked and self.local_workers > 0
        self.settings[SETTINGS_KEY] = self.monitor
        self._route_logs()
        os.environ[connection.ENV_VAR] = str(path)

    def initialize_handlers(self) -> None:
        self.handlers.extend(jupyter_handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Bind the balancer, start the health check and the local hub on the server's loop."""
        await self.balancer.start()
        if self.healthcheck is not None:
            self.healthcheck.start()
        if self.freeze_startup_objects:
            gc.collect()
            gc.freeze()
        if self.local_workers if self._attach_local_hub is None else self._attach_local_hub:
            await self.monitor.local_hub.start()
        self.log.info(
            "PLB - jupyter_plb running; monitor at %s, connection file %s",
            url_path_join(serverapp.base_url, "plb/monitor"),
            self.balancer.connection_path,
        )

    def _route_logs(self) -> None:
        """Show the balancer's lines (``LB - ADDING WORKER …``, the health check's) in the server's log."""
        plb_log = logging.getLogger("jupyter_plb")
        self._log_handlers = [h for h in self.log.handlers if h not in plb_log.handlers]
        for handler in self._log_handlers:
            plb_log.addHandler(handler)
        if plb_log.level == logging.NOTSET or plb_log.level > logging.INFO:
            plb_log.setLevel(logging.INFO)

    async def stop_extension(self) -> None:
        """Stop the local hub (and its workers), the health check and the balancer; never raises."""
        if not hasattr(self, "monitor"):
            return
        for handler in getattr(self, "_log_handlers", []):
            logging.getLogger("jupyter_plb").removeHandler(handler)
        for what, stop in (
            ("event stream", self.monitor.events.close),
            ("local hub", self.monitor.local_hub.stop),
            ("health check", self.healthcheck.stop if self.healthcheck else None),
            ("balancer", self.balancer.stop),
        ):
            if stop is None:
                continue
            try:
                result = stop()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.log.exception("PLB - error while stopping the %s", what)
