"""The seed's console: the balancer's lines on the terminal of a script that set up no logging.

pyLoadBalancer printed ``LB - ADDING WORKER (…)``, ``HC - WARNING : LB HAS NO WORKERS.`` and the
monitor's address on its console. :func:`show_on_console` gives ``startAll()`` the same, and stands
aside as soon as the program configures logging itself (a handler on the root logger), so that no
line shows twice. Inside Jupyter the lines go to the server's
log, as every extension's do.
"""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = "jupyter_plb"


def _logging_configured() -> bool:
    return bool(logging.getLogger().handlers)


class _SeedConsole(logging.StreamHandler):
    """Prints records as the seed did while nobody configured logging, else hands them to the
    root logger's handlers.

    The package logger does not propagate while this handler is on it, so each record is routed
    by one look at the root's handlers: a ``basicConfig()`` on another thread can never make a line
    show both here and in the configured handler.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        configured = logging.getLogger().handlers
        if not configured:
            return bool(super().handle(record))
        for handler in configured:
            if record.levelno >= handler.level:
                handler.handle(record)
        return True


def show_on_console() -> None:
    """Print jupyter_plb's INFO lines on standard output unless logging is (or gets) configured.

    The ``jupyter_plb`` logger is set to INFO when it has no level: a program that wants other
    levels configures logging before ``startAll()``.
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    if _logging_configured() or any(isinstance(h, _SeedConsole) for h in logger.handlers):
        return
    handler = _SeedConsole(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
