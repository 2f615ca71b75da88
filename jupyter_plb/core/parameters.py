"""Load and validate ``parameters.json``: the seed's keys and defaults, plus jupyter_plb's own."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_plb.errors import ParametersError

log = logging.getLogger(__name__)

Parameters = dict[str, Any]

#: The seed's keys, with the seed's defaults (pyLoadBalancer 0.2 ``parameters.json``).
SEED_DEFAULTS: Parameters = {
    "SOCKET_TIMEOUT": 500,
    "LB_IP": "127.0.0.1",
    "LB_WKPULLPORT": 5699,
    "LB_HCREPPORT": 5999,
    "LB_CLIENTPULLPORT": 5799,
    "LB_QUEING_MAXPERUSER": 1000,
    "WKHUB_IP": "127.0.0.1",
    "WKHUB_LBPORT": 8300,
    "WKHUB_HCPORT": 8301,
    "WKHUB_WORKERS": [
        {"nWorkers": 4, "minP": 0, "maxP": 9, "processP": 10},
        {"nWorkers": 4, "minP": 10, "maxP": 99, "processP": 0},
        {"nWorkers": 4, "minP": 100, "maxP": 1000, "processP": 0},
    ],
    "MONITOR_IP": "127.0.0.1",
    "MONITOR_PORT": 9000,
}

#: Keys jupyter_plb adds (documented in the README's parameters table).
EXTRA_DEFAULTS: Parameters = {
    "LB_BIND_IP": None,
    "LB_CONNECTION_FILE": None,
    "LB_HEARTBEAT_INTERVAL": 1.0,
    "LB_PREFETCH": 32,
    "LB_RESULT_RETENTION": 60.0,
    "LB_RESULT_TTL": 3600.0,
    "LB_RESULT_MEMORY": 1 << 30,
    "LB_MAX_MESSAGE_SIZE": 256 << 20,
    "LB_MAX_PEERS": 4096,
    "LB_MAX_QUEUED": 2_000_000,
    # the monitor's history of finished tasks (jupyter_plb.core.history), apart from result retention
    "LB_HISTORY_SIZE": 10_000,
    "LB_HISTORY_AGE": 86400.0,
    "HC_INTERVAL": 2.0,
    # security (jupyter_plb.transport.security): CurveZMQ "auto" = on when binding beyond loopback
    "LB_CURVE": "auto",
    "LB_ALLOW_INSECURE": False,
    "LB_SECURITY_DIR": None,
    "LB_JOURNAL": "auto",
    # large buffers between processes of one machine through /dev/shm (jupyter_plb.core.shm)
    "LB_SHARED_MEMORY": True,
    "LB_SHM_DIGESTS": False,
    # a team pool (jupyter_plb.core.team): identities from certificates, each user sees only their tasks
    "LB_TEAM": False,
    "LB_TEAM_ADMINS": [],
}

DEFAULTS: Parameters = {**SEED_DEFAULTS, **EXTRA_DEFAULTS}

_PORT_KEYS = (
    "LB_WKPULLPORT",
    "LB_HCREPPORT",
    "LB_CLIENTPULLPORT",
    "WKHUB_LBPORT",
    "WKHUB_HCPORT",
    "MONITOR_PORT",
)
_IP_KEYS = ("LB_IP", "WKHUB_IP", "MONITOR_IP")
_GROUP_KEYS = {"nWorkers", "minP", "maxP", "processP"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_group(index: int, group: Any) -> str | None:
    if not isinstance(group, Mapping):
        return f"group {index} must be an object like {{'nWorkers': 4, 'minP': 0, 'maxP': 9, 'processP': 0}}"
    unknown = set(group) - _GROUP_KEYS
    if unknown:
        return f"group {index} has unknown key(s) {sorted(unknown)}; allowed: {sorted(_GROUP_KEYS)}"
    if not _is_int(group.get("nWorkers")) or group["nWorkers"] < 0:
        return f"group {index}: nWorkers must be an integer >= 0"
    for key in ("minP", "maxP"):
        if not _is_number(group.get(key)):
            return f"group {index}: {key} must be a number"
    if group["minP"] > group["maxP"]:
        return f"group {index}: minP ({group['minP']}) is greater than maxP ({group['maxP']})"
    process_p = group.get("processP", 0)
    if not _is_int(process_p) or not -20 <= process_p <= 19:
        return f"group {index}: processP must be an integer nice value from -20 to 19"
    return None


def _problem(key: str, value: Any) -> str | None:
    """Return why ``value`` is not valid for ``key``, or None when it is."""
    default = DEFAULTS[key]
    if key in _PORT_KEYS:
        if not _is_int(value) or not 0 <= value <= 65535:
            return f"must be a port number from 1 to 65535 (0: any free port), got {value!r}"
    elif key in _IP_KEYS:
        if not isinstance(value, str) or not value.strip():
            return f"must be an IP address or host name string, got {value!r}"
    elif key == "LB_CURVE":
        if not (value == "auto" or isinstance(value, bool)):
            return f'must be "auto" (on when binding beyond loopback), true or false, got {value!r}'
    elif key in ("LB_ALLOW_INSECURE", "LB_TEAM", "LB_SHARED_MEMORY", "LB_SHM_DIGESTS"):
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
    elif key in ("LB_BIND_IP", "LB_CONNECTION_FILE", "LB_SECURITY_DIR"):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            return f"must be a non-empty string or null, got {value!r}"
    elif key == "LB_JOURNAL":
        if value is not False and (not isinstance(value, str) or not value.strip()):
            return f"must be \"auto\" (beside the connection file), a file path, or false, got {value!r}"
    elif key == "LB_TEAM_ADMINS":
        if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
            return f"must be a list of user names (their certificates' users), got {value!r}"
    elif key == "WKHUB_WORKERS":
        if not isinstance(value, list):
            return "must be a list of worker groups"
        for index, group in enumerate(value):
            problem = _check_group(index, group)
            if problem:
                return problem
    elif key == "LB_QUEING_MAXPERUSER":
        if not _is_int(value):
            return f"must be an integer (<= 0: no limit), got {value!r}"
    elif key in ("LB_PREFETCH", "LB_RESULT_MEMORY", "LB_MAX_MESSAGE_SIZE", "LB_MAX_PEERS", "LB_MAX_QUEUED",
                 "LB_HISTORY_SIZE"):
        if not _is_int(value) or value < 0:
            return f"must be an integer >= 0, got {value!r}"
    elif _is_number(default) and (not _is_number(value) or value <= 0):
        return f"must be a number > 0, got {value!r}"
    return None


def validate(values: Mapping[str, Any], origin: str = "parameters") -> Parameters:
    """Merge ``values`` over the defaults and check every key; raise ParametersError on the first problem."""
    if not isinstance(values, Mapping):
        raise ParametersError(f"{origin}: must be a JSON object of KEY: value pairs")
    merged = dict(DEFAULTS)
    for key, value in values.items():
        if key not in DEFAULTS:
            raise ParametersError(f"{origin}: {key}: unknown key; known keys: {', '.join(DEFAULTS)}")
        problem = _problem(key, value)
        if problem:
            raise ParametersError(f"{origin}: {key}: {problem}")
        merged[key] = value
    return merged


def load(source: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> Parameters:
    """Return validated parameters from a file path, a mapping, or the defaults, then ``overrides``."""
    if source is None:
        values: dict[str, Any] = {}
        origin = "parameters"
    elif isinstance(source, Mapping):
        values = dict(source)
        origin = "parameters"
    else:
        path = Path(source)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ParametersError(f"{origin}: cannot read the file ({exc.strerror})") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParametersError(
                f"{origin}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        if not isinstance(values, dict):
            raise ParametersError(f"{origin}: must be a JSON object of KEY: value pairs")
    values.update(overrides)
    return validate(values, origin)
