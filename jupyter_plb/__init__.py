"""jupyter_plb: a load balancer for Python tasks that lives inside Jupyter.

Public API: :func:`startAll`, :class:`WorkerHub`, :class:`Client`, :class:`HealthCheck`,
:class:`Balancer`, :func:`report_progress`, and the Jupyter/IPython extension hooks.
Heavy imports (jupyter_server, ipywidgets) happen only where they are used.

``__version__`` is the installed distribution's version, which the build takes from
``labextension/package.json``: one version for the Python package and the lab extension.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Balancer",
    "Client",
    "HealthCheck",
    "LocalCluster",
    "WorkerHub",
    "__version__",
    "as_completed",
    "progress",
    "report_progress",
    "startAll",
]

_LAZY = {
    "Balancer": "balancer",
    "Client": "client",
    "as_completed": "client",
    "progress": "client.progress",
    "HealthCheck": "balancer.healthcheck",
    "LocalCluster": "cluster.launch",
    "startAll": "cluster.launch",
    "WorkerHub": "workers.hub",
    "report_progress": "workers.worker",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from jupyter_plb.core.versions import package_version

        globals()["__version__"] = package_version()
        return globals()["__version__"]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jupyter_plb' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from jupyter_plb.jupyter.extension import PlbExtension

    return [{"module": "jupyter_plb", "app": PlbExtension}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-plb"}]


def load_ipython_extension(ipython: Any) -> None:
    from jupyter_plb.jupyter.magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from jupyter_plb.jupyter.magics import unregister

    unregister(ipython)
