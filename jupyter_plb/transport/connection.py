"""The connection file: address, ports and key a hub or a client needs to reach the balancer.

It is worth as much as an SSH private key (whoever holds it can run code on the workers), so it is
written with mode 0600 and refused when other users can read it. With CurveZMQ it also carries the
balancer's public key (``curve_serverkey``), and ``security_dir`` tells peers on the balancer's
machine where their certificates are (see ``security.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jupyter_plb.core.parameters import Parameters
from jupyter_plb.errors import ConnectionFileError, PlbError

ENV_VAR = "PLB_CONNECTION_FILE"
FILE_NAME = "plb-connection.json"


@dataclass(slots=True)
class ConnectionInfo:
    """Where the balancer listens and the key that signs every message."""

    address: str
    client_port: int
    worker_port: int
    health_port: int
    key: str = field(repr=False)
    balancer_id: str = ""
    transport: str = "tcp"
    #: The balancer's CurveZMQ public key (z85); empty when it does not use Curve.
    curve_serverkey: str = ""
    #: The balancer's security directory: where peers on its machine find their certificates.
    security_dir: str = ""

    def url(self, port: int) -> str:
        return f"{self.transport}://{self.address}:{port}"

    @property
    def client_url(self) -> str:
        return self.url(self.client_port)

    @property
    def worker_url(self) -> str:
        return self.url(self.worker_port)

    @property
    def health_url(self) -> str:
        return self.url(self.health_port)

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str) -> ConnectionInfo:
        required = ("address", "client_port", "worker_port", "health_port", "key")
        missing = [k for k in required if k not in data]
        if missing:
            raise ConnectionFileError(f"{origin}: missing key(s) {missing}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for port in ("client_port", "worker_port", "health_port"):
            if not isinstance(known[port], int) or not 0 < known[port] < 65536:
                raise ConnectionFileError(f"{origin}: {port} must be a port number")
        if not isinstance(known["key"], str) or len(known["key"]) < 16:
            raise ConnectionFileError(f"{origin}: key must be a string of at least 16 characters")
        server_key = known.get("curve_serverkey", "")
        if server_key and (not isinstance(server_key, str) or len(server_key) != 40):
            raise ConnectionFileError(f"{origin}: curve_serverkey must be a 40-character z85 key")
        return cls(**known)


def default_path() -> Path:
    """``plb-connection.json`` in the Jupyter runtime dir."""
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / FILE_NAME


def resolve_path(params: Parameters | None = None) -> Path:
    """The connection file the parameters name, else ``$PLB_CONNECTION_FILE``, else the default."""
    if params and params.get("LB_CONNECTION_FILE"):
        return Path(params["LB_CONNECTION_FILE"]).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return default_path()


def _in_use(address: str, port: int) -> bool:
    """Whether something listens on ``address:port`` here (or the address is not this machine's)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return True
    return False


def claim_default(directory: Path) -> Path:
    """``plb-connection.json`` in ``directory``, or ``plb-connection-2.json``… when a running
    balancer (another Jupyter server) already owns it; a stopped one's file is reused, so a
    restarted server finds its journal and its ports again."""
    for number in range(1, 100):
        path = directory / (FILE_NAME if number == 1 else f"plb-connection-{number}.json")
        try:
            info = read(path)
        except ConnectionFileError:
            return path
        if not _in_use(info.address, info.client_port):
            return path
    raise ConnectionFileError(f"{directory}: 99 balancers already run from this directory")


def new_key() -> str:
    return secrets.token_hex(32)


def check_private(path: Path, error: type[PlbError] = ConnectionFileError) -> None:
    """Refuse a file that users other than its owner can read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(
            f"{path}: other users can read this key file (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}` and try again"
        )


def write(info: ConnectionInfo, path: Path) -> Path:
    """Write ``info`` atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(info.to_dict(), out, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def read(path: str | Path) -> ConnectionInfo:
    path = Path(path).expanduser()
    try:
        check_private(path)
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConnectionFileError(
            f"{path}: no connection file; start the balancer first (`plb start` or JupyterLab "
            "with jupyter_plb), or pass the file the balancer wrote"
        ) from None
    except OSError as exc:
        raise ConnectionFileError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConnectionFileError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConnectionFileError(f"{path}: must hold a JSON object")
    return ConnectionInfo.from_dict(data, str(path))


def from_parameters(params: Parameters, path: Path | None = None) -> ConnectionInfo:
    """Connection info for a peer configured by ``params``: the seed's address and ports, the
    file's keys.

    A port given as 0 in the parameters (any free port) is taken from the connection file, where
    the balancer wrote the port it bound.
    """
    info = read(path or resolve_path(params))
    return ConnectionInfo(
        address=params["LB_IP"],
        client_port=params["LB_CLIENTPULLPORT"] or info.client_port,
        worker_port=params["LB_WKPULLPORT"] or info.worker_port,
        health_port=params["LB_HCREPPORT"] or info.health_port,
        key=info.key,
        balancer_id=info.balancer_id,
        curve_serverkey=info.curve_serverkey,
        security_dir=info.security_dir,
    )
