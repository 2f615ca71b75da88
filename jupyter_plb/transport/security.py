"""Transport security: CurveZMQ certificates, the allow-lists, the ZAP authenticator, the policy.

Every message is signed with the connection key (``protocol.Session``) whatever happens here.
CurveZMQ adds encryption and *who*: the balancer's sockets accept only peers whose public key
is in the allow-list of the port's role (ironhouse), and each message carries the ``User-Id`` of
the certificate that sent it.

A security directory holds (``plb keygen`` makes it; ``LB_SECURITY_DIR`` or ``$PLB_SECURITY_DIR``
moves it)::

    server.key_secret   the balancer's certificate (secret; also lets its health check in)
    client.key_secret   this machine's client certificate (Jupyter kernels and ``Client()`` here)
    hub.key_secret      this machine's hub certificate (``plb hub`` and its workers here)
    clients/NAME.key    public keys allowed on the client port; NAME (or ``user =``) is the user
    hubs/NAME.key       public keys allowed on the workers port
    issued/*.key_secret certificates made for other people or machines: copy, then delete them
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket as stdsocket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from jupyter_plb.errors import PlbError
from jupyter_plb.transport import connection

log = logging.getLogger(__name__)

DIR_ENV = "PLB_SECURITY_DIR"
CERT_ENV = {"clients": "PLB_CLIENT_CERT", "hubs": "PLB_HUB_CERT"}
#: The certificate each role uses on this machine, inside the security directory.
OWN_CERT = {"clients": "client.key_secret", "hubs": "hub.key_secret", "health": "server.key_secret"}
SERVER_CERT = "server.key_secret"
#: The balancer's ports (their ZAP domains) and the allow-list directory each one reads.
DOMAINS = {"clients": "clients", "workers": "hubs", "health": None}
#: The user id of the balancer's own certificate (its health check).
BALANCER_USER = "balancer"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


class CertificateError(PlbError):
    """A certificate or the security directory is missing, malformed or not private."""


class InsecureBinding(PlbError):
    """The balancer was asked to listen beyond loopback without CurveZMQ and without consent."""


# -- policy --------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {str(info[4][0]) for info in stdsocket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    )


def curve_enabled(params: dict[str, Any]) -> bool:
    """Whether the balancer must use CurveZMQ, from ``LB_CURVE`` and the address it binds.

    ``"auto"`` (the default) means on beyond loopback, off on it. Off beyond loopback needs
    ``LB_ALLOW_INSECURE: true`` and logs a warning; without it, an error says what to set.
    """
    setting = params.get("LB_CURVE", "auto")
    host = params.get("LB_BIND_IP") or params["LB_IP"]
    local = is_loopback(host)
    if setting is True or (setting == "auto" and not local):
        if not zmq.has("curve"):
            raise PlbError(
                f"CurveZMQ is required (LB_CURVE={setting!r}, binding {host}) but this libzmq was "
                "built without it; install pyzmq from its wheels "
                "(`pip install --force-reinstall pyzmq`)"
            )
        return True
    if not local:
        if not params.get("LB_ALLOW_INSECURE"):
            raise InsecureBinding(
                f"the balancer would listen on {host}, beyond this machine, without CurveZMQ "
                "(LB_CURVE is false): messages would be signed but not encrypted, and any host "
                'that can reach the ports could try its luck. Set LB_CURVE to "auto" or true '
                "(certificates come from `plb keygen`), or bind 127.0.0.1; on a network you fully "
                "trust, set "
                "LB_ALLOW_INSECURE: true to accept the risk."
            )
        log.warning(
            "LB - !!! INSECURE: listening on %s without CurveZMQ (LB_CURVE false, "
            "LB_ALLOW_INSECURE true). Traffic is signed but readable by anyone on the path, and "
            "anyone holding the connection file can run code on the workers. !!!",
            host,
        )
    return False


# -- files ---------------------------------------------------------------------------------------
def default_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "plb_security"


def resolve_dir(params: dict[str, Any] | None = None, hint: str | None = None) -> Path:
    """``LB_SECURITY_DIR``, else ``$PLB_SECURITY_DIR``, else the connection file's hint, else
    the default."""
    if params and params.get("LB_SECURITY_DIR"):
        return Path(params["LB_SECURITY_DIR"]).expanduser()
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    if hint and Path(hint).is_dir():
        return Path(hint)
    return default_dir()


def check_secret(path: Path) -> None:
    """Refuse a secret certificate that users other than its owner can read or write."""
    connection.check_private(path, CertificateError)


def check_not_shared(path: Path) -> None:
    """Refuse an allow-list file or directory that other users could change (add their own key)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        fix = "go-w" if path.is_dir() else "600"
        raise CertificateError(
            f"{path}: other users can write here (mode {stat.S_IMODE(mode):o}) and could allow "
            f"their own keys; run `chmod {fix} {path}` and try again"
        )


@dataclass(slots=True, frozen=True)
class Certificate:
    """A CurveZMQ certificate: z85 public key, z85 secret key (secret files only), metadata."""

    path: Path
    public: bytes
    secret: bytes | None = field(default=None, repr=False)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        """The user id this certificate gives: its ``user =`` metadata, else its file name."""
        return self.metadata.get("user") or self.path.name.split(".key")[0]


def read_certificate(path: str | Path, *, secret: bool) -> Certificate:
    """Read a pyzmq/czmq certificate file; secret ones must be private (mode 0600)."""
    path = Path(path).expanduser()
    try:
        (check_secret if secret else check_not_shared)(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such certificate") from None
    except (OSError, UnicodeError) as exc:
        raise CertificateError(f"{path}: cannot read the certificate ({exc})") from None
    section = ""
    values: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not raw[:1].isspace():
            section = line.strip()
            continue
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        value = value.strip().strip("\"'")
        (metadata if section == "metadata" else values)[key.strip()] = value
    try:
        public = values["public-key"].encode("ascii")
        keys = [public] + ([values["secret-key"].encode("ascii")] if secret else [])
        if any(len(k) != 40 for k in keys):
            raise ValueError
    except (KeyError, UnicodeError, ValueError):
        what = "public-key and secret-key" if secret else "public-key"
        raise CertificateError(
            f"{path}: not a CurveZMQ {'secret ' if secret else ''}certificate (needs a "
            f"40-character {what}); make one with `plb keygen`"
        ) from None
    return Certificate(path, public, keys[1] if secret else None, metadata)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_not_shared(path)
    return path


def _create_pair(directory: Path, name: str, metadata: dict[str, str]) -> tuple[str, Path]:
    """A new key pair: the secret certificate at ``directory/name`` (0600); returns its public text.

    ``zmq.auth.create_certificates`` writes with the process umask, so it writes into a fresh 0700
    directory first: no other user can open the files before they are made private and moved.
    """
    work = Path(tempfile.mkdtemp(prefix=".keygen-", dir=directory))
    try:
        public_file, secret_file = zmq.auth.create_certificates(work, "cert", metadata=metadata)
        lines = "".join(f'    {k} = "{v}"\n' for k, v in metadata.items())
        public_text = (
            Path(public_file)
            .read_text(encoding="utf-8")
            .replace("metadata\n", f"metadata\n{lines}", 1)
        )
        os.chmod(secret_file, 0o600)
        os.replace(secret_file, directory / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return public_text, directory / name


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def _check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise CertificateError(
            f"{what} {name!r}: use 1 to 128 letters, digits and . _ @ + - (starting with a letter "
            "or digit)"
        )
    return name


def _file_name(user: str) -> str:
    """A safe allow-list file name for a user id (the id itself stays in the metadata)."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", user).lstrip(".")[:128] or "user"


@dataclass(slots=True)
class KeygenReport:
    directory: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    issued: list[tuple[str, str, Path]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"security directory: {self.directory}"]
        out += [f"  created {p}" for p in self.created]
        out += [f"  kept    {p}" for p in self.kept]
        for role, name, path in self.issued:
            if role == "hub":
                out.append(
                    f"hub {name!r}: copy {path} and the connection file to that machine (like an "
                    f"SSH private key: scp, then delete it here), and run there:\n"
                    f"    PLB_HUB_CERT=~/{path.name} plb hub --connect plb-connection.json"
                )
            else:
                out.append(
                    f"client {name!r}: give {path} to that user (privately, then delete it here); "
                    f"they set\n    PLB_CLIENT_CERT=/path/to/{path.name}   (and "
                    "PLB_CONNECTION_FILE to the balancer's connection file)"
                )
        return out


def keygen(
    directory: str | Path | None = None,
    *,
    clients: Iterable[str] = (),
    hubs: Iterable[str] = (),
    user: str | None = None,
    force: bool = False,
) -> KeygenReport:
    """Make the balancer's certificate and this machine's client and hub certificates when missing,
    then one certificate per named client (user id) and hub, allowed in ``clients/`` or ``hubs/``.

    Every file is written with mode 0600 in 0700 directories. ``force`` replaces named certificates
    (and, with no names, this machine's ones: the old keys stop working).
    """
    from jupyter_plb.core.team import default_user

    root = _private_dir(Path(directory).expanduser() if directory else default_dir())
    report = KeygenReport(root)
    allowed = {"clients": _private_dir(root / "clients"), "hubs": _private_dir(root / "hubs")}
    clients, hubs = list(clients), list(hubs)
    replace_own = force and not clients and not hubs
    host = _file_name(stdsocket.gethostname())

    def make(
        role: str | None, target: Path, user: str | None, allow_name: str, replace: bool
    ) -> None:
        if target.exists() and not replace:
            report.kept.append(target)
            return
        allow_path = allowed[role] / f"{allow_name}.key" if role else root / "server.key"
        if role and allow_path.exists() and not replace:
            raise CertificateError(
                f"{allow_path} already allows a certificate for {user!r}; pass --force to replace "
                "it (the old certificate stops working)"
            )
        metadata = {"role": role or "server", **({"user": user} if user else {})}
        public_text, secret_path = _create_pair(target.parent, target.name, metadata)
        _write_private(allow_path, public_text)
        report.created += [secret_path, allow_path]

    make(None, root / SERVER_CERT, None, "server", replace_own)
    own_user = user or default_user()
    make(
        "clients",
        root / OWN_CERT["clients"],
        own_user,
        f"{_file_name(own_user)}@{host}",
        replace_own,
    )
    make("hubs", root / OWN_CERT["hubs"], f"local@{host}", f"local@{host}", replace_own)
    if clients or hubs:
        issued = _private_dir(root / "issued")
        for role, kind, names in (("clients", "client", clients), ("hubs", "hub", hubs)):
            for name in names:
                target = issued / f"{kind}-{_check_name(name, kind)}.key_secret"
                make(role, target, name, name, force)
                report.issued.append((kind, name, target))
    return report


# -- the balancer's side -------------------------------------------------------------------------
class AllowList:
    """Public keys allowed on one port, re-read when the directory's ``*.key`` files change."""

    def __init__(self, directory: Path | None, extra: dict[bytes, str] | None = None) -> None:
        self.directory = directory
        self.extra = dict(extra or {})
        self._stamp: object = None
        self._keys: dict[bytes, str] = dict(self.extra)
        self._lock = threading.Lock()

    def _scan(self) -> object:
        if self.directory is None:
            return ()
        with os.scandir(self.directory) as entries:
            files = sorted(
                (e.name, e.stat().st_mtime_ns, e.stat().st_mode)
                for e in entries
                if e.name.endswith(".key")
            )
        return self.directory.stat().st_mode, files

    def refresh(self) -> None:
        try:
            stamp = self._scan()
        except OSError as exc:  # gone or unreadable: allow nobody from it (fail closed)
            with self._lock:
                if self._stamp is not None:
                    log.error("LB - cannot read the allow-list %s: %s", self.directory, exc)
                self._keys, self._stamp = dict(self.extra), None
            return
        with self._lock:
            if stamp == self._stamp:
                return
            keys = dict(self.extra)
            if self.directory is not None:
                try:
                    check_not_shared(self.directory)
                    names = [name for name, _, _ in stamp[1]]  # type: ignore[index]
                except CertificateError as exc:
                    log.error("LB - allow-list ignored: %s", exc)
                    names = []
                for name in names:
                    try:
                        cert = read_certificate(self.directory / name, secret=False)
                    except CertificateError as exc:
                        log.error("LB - allow-list entry ignored: %s", exc)
                        continue
                    keys[cert.public] = cert.user
            self._keys, self._stamp = keys, stamp

    def user(self, public_z85: bytes) -> str | None:
        self.refresh()
        return self._keys.get(public_z85)

    def __len__(self) -> int:
        self.refresh()
        return len(self._keys)


class _Authenticator(ThreadAuthenticator):
    """The ZAP handler, on its own thread: a handshake never waits for the asyncio loop."""

    def __init__(
        self,
        context: zmq.Context,
        allow: dict[str, AllowList],
        on_denied: Callable[[str, str], None],
    ) -> None:
        super().__init__(context, log=logging.getLogger("jupyter_plb.zap"))
        self._allow = allow
        self._on_denied = on_denied
        self._user = ""
        self._warned: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        for domain in allow:
            self.configure_curve_callback(domain, self)

    def callback(self, domain: str, public_z85: bytes) -> bool:
        try:
            return self._check(domain, public_z85)
        except Exception:  # never let the ZAP thread die: every later handshake would hang
            log.exception("LB - the allow-list check failed; refusing the connection")
            return False

    def _check(self, domain: str, public_z85: bytes) -> bool:
        allow = self._allow.get(domain)
        user = allow.user(public_z85) if allow is not None else None
        if user is not None:
            self._user = user
            return True
        others = [
            d for d, a in self._allow.items() if d != domain and a.user(public_z85) is not None
        ]
        why = f"a key allowed only on the {others[0]} port" if others else "a key in no allow-list"
        if public_z85 not in self._warned:
            self._warned[public_z85] = None
            if len(self._warned) > 1000:
                self._warned.popitem(last=False)
            log.warning(
                "LB - refused a connection on the %s port: %s (%s)",
                domain,
                why,
                public_z85.decode(),
            )
        self._on_denied(domain, why)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called right after a successful ``callback``, on the same thread.
        return self._user


@dataclass(slots=True, frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes = field(repr=False)


class CurveServer:
    """The balancer's CurveZMQ side: its keys, its allow-lists, its context's authenticator."""

    def __init__(self, directory: Path, keys: ServerKeys, allow: dict[str, AllowList]) -> None:
        self.directory = directory
        self.keys = keys
        self.allow = allow
        self.denied: collections.Counter[str] = collections.Counter()
        self._auth: _Authenticator | None = None

    @classmethod
    def load(cls, params: dict[str, Any]) -> CurveServer:
        """Read (or, the first time, make) the certificates in the security directory."""
        directory = resolve_dir(params)
        if not (directory / SERVER_CERT).exists():
            report = keygen(directory)
            log.warning(
                "LB - no CurveZMQ certificates yet: made them in %s (this machine's client and hub "
                "are allowed; `plb keygen --hub NAME` adds a remote hub)",
                report.directory,
            )
        _private_dir(directory)
        cert = read_certificate(directory / SERVER_CERT, secret=True)
        assert cert.secret is not None
        allow = {
            "clients": AllowList(_private_dir(directory / "clients")),
            "workers": AllowList(_private_dir(directory / "hubs")),
            "health": AllowList(None, {cert.public: BALANCER_USER}),
        }
        return cls(directory, ServerKeys(cert.public, cert.secret), allow)

    def start(
        self, context: zmq.Context, on_denied: Callable[[str, str], object] | None = None
    ) -> None:
        def denied(domain: str, why: str) -> None:
            self.denied[domain] += 1
            if on_denied is not None:
                with contextlib.suppress(Exception):
                    on_denied(domain, why)

        self._auth = _Authenticator(context, self.allow, denied)
        self._auth.start()

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def frame_user(frame: zmq.Frame) -> str | None:
    """The ``User-Id`` the authenticator gave the connection a received frame came from."""
    try:
        return cast(str, frame.get("User-Id"))
    except (zmq.ZMQError, AttributeError):
        return None


# -- the peers' side -----------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class PeerKeys:
    """What a client, hub, worker or health check needs to connect with CurveZMQ."""

    server: bytes
    public: bytes
    secret: bytes = field(repr=False)
    certificate: str = ""


def certificate_path(role: str, params: dict[str, Any] | None, hint: str | None = None) -> Path:
    """Where ``role`` (clients, hubs, health) finds its own certificate on this machine."""
    env = CERT_ENV.get(role)
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return resolve_dir(params, hint) / OWN_CERT[role]


def peer_keys(info: Any, params: dict[str, Any] | None, role: str) -> PeerKeys | None:
    """The keys to connect with, or None when the balancer does not use CurveZMQ.

    ``info`` is the ConnectionInfo: a ``curve_serverkey`` in it means the balancer requires Curve.
    """
    server = getattr(info, "curve_serverkey", "") or ""
    if not server:
        return None
    path = certificate_path(role, params, getattr(info, "security_dir", "") or None)
    if not path.exists():
        env = CERT_ENV.get(role, "")
        what = {"clients": "client", "hubs": "hub", "health": "balancer"}[role]
        issue = {"clients": "--client NAME", "hubs": "--hub NAME", "health": ""}[role]
        raise CertificateError(
            f"the balancer at {info.address} requires a CurveZMQ {what} certificate and there is "
            f"none at {path}. On the balancer's machine run `plb keygen {issue}`".rstrip()
            + (f", copy the certificate it prints here and set {env}=/path/to/it" if env else "")
            + " (see docs/security.md)"
        )
    cert = read_certificate(path, secret=True)
    assert cert.secret is not None
    return PeerKeys(server.encode("ascii"), cert.public, cert.secret, str(path))


