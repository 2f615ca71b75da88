"""``plb ssh``: hubs on other machines over SSH.

:class:`SSHLauncher` copies the connection file to each host (``scp``, mode 0600), starts one hub
per host over ``ssh`` and stops them by closing their standard input (the hub drains, then exits);
``plb ssh HOST…`` runs it in the foreground until Ctrl-C. It runs the same ``plb hub --connect
FILE`` as a batch job (:mod:`jupyter_plb.jobs.batch`), so the monitor tells them apart only by name
and host.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jupyter_plb.jobs.batch import DEFAULT_PLB, HubOptions, LaunchError, loopback_warning
from jupyter_plb.transport import connection

log = logging.getLogger(__name__)


#: Where ``plb ssh`` puts the connection file on a host, relative to the remote home directory.
REMOTE_DIR = ".plb"


#: Lines of each remote hub's output kept to explain a failure.
KEEP_LINES = 20


#: ssh's own exit status for "could not connect or authenticate".
SSH_FAILED = 255


def _local_host(host: str) -> bool:
    return host.rpartition("@")[2] in ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass(slots=True, eq=False)
class RemoteHub:
    """One ``plb hub`` started over ssh, and the last lines it printed."""

    host: str
    name: str
    remote_path: str
    process: subprocess.Popen[bytes] | None = None
    reported: bool = False
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_LINES)
    )
    reader: threading.Thread | None = None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    @property
    def cert_path(self) -> str:
        """Where the hub's own CurveZMQ certificate goes on the host (when Curve is on)."""
        return f"{self.remote_path}.key_secret"

    def explain(self, code: int) -> str:
        """Why this hub's ssh session ended, in a sentence, with its last lines."""
        if code == 0:
            return f"hub {self.name} on {self.host} stopped"
        if code == SSH_FAILED:
            what = (f"ssh could not connect to {self.host} or log in (exit {code}): check the host "
                    "name, the user, the key (BatchMode is on: no password prompts)")
        elif code == 127:
            what = (f"`plb` was not found on {self.host} (exit 127): install jupyter_plb there, or "
                    "pass --remote-command with the full path of its plb")
        elif code == 2:
            what = f"plb hub on {self.host} refused to start (exit 2)"
        else:
            what = f"hub {self.name} on {self.host} ended with exit status {code}"
        tail = "\n".join(f"    {line}" for line in self.lines)
        return f"{what}\n  last output:\n{tail}" if tail else what


class SSHLauncher:
    """Start one hub per host over OpenSSH; stop them all on :meth:`stop` (or leaving a ``with``).

    ``ssh_options`` are passed to both ``ssh`` and ``scp`` (``-o Port=2222``, ``-F FILE``,
    ``-i KEY``…); ``BatchMode=yes`` is always added, so a missing key fails instead of prompting.
    ``remote_command`` is how to run ``plb`` there (a shell fragment, e.g. ``~/venv/bin/plb``).
    ``remote_dir`` is where the connection file is copied (relative to the remote home: ``.plb``).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        connection_file: str | Path,
        options: HubOptions | None = None,
        *,
        ssh_options: Sequence[str] = (),
        remote_command: str = DEFAULT_PLB,
        remote_dir: str = REMOTE_DIR,
        names: Sequence[str] | None = None,
        ssh: str = "ssh",
        scp: str = "scp",
        out: IO[str] | None = None,
    ) -> None:
        if not hosts:
            raise LaunchError("name at least one host to start hubs on")
        self.connection_file = Path(connection_file).expanduser().resolve()
        self.info = connection.read(self.connection_file)
        self.options = options or HubOptions()
        self.ssh_options = ["-o", "BatchMode=yes", *ssh_options]
        self.remote_command = remote_command
        self.remote_dir = remote_dir.rstrip("/") or "/"
        self.ssh = shutil.which(ssh) or ssh
        self.scp = shutil.which(scp) or scp
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self.token = secrets.token_hex(6)
        seen: collections.Counter[str] = collections.Counter()
        self.hubs: list[RemoteHub] = []
        for index, host in enumerate(hosts):
            base = names[index] if names else host.rpartition("@")[2]
            seen[base] += 1
            name = base if seen[base] == 1 else f"{base}-{seen[base]}"
            path = f"{self.remote_dir}/plb-connection-{self.token}-{index}.json"
            self.hubs.append(RemoteHub(host, name, path))

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Copy the connection file to every host, then start every hub; raise if any cannot."""
        for tool in (self.ssh, self.scp):
            if shutil.which(tool) is None:
                raise LaunchError(f"`{tool}` is not installed here: install OpenSSH's client")
        remote = [h.host for h in self.hubs if not _local_host(h.host)]
        warning = loopback_warning(self.info, ", ".join(remote)) if remote else None
        if warning:
            self._print(f"plb ssh: warning: {warning}")
        try:
            for hub in self.hubs:
                self._copy(hub)
                self._launch(hub)
        except BaseException:
            self.stop(timeout=5)
            raise

    def _ssh(self, host: str, command: str) -> list[str]:
        return [self.ssh, *self.ssh_options, host, command]

    def _copy(self, hub: RemoteHub) -> None:
        """``scp`` the connection file to a private file on the host (directory 0700, file 0600)."""
        directory = shlex.quote(self.remote_dir)
        steps = [
            self._ssh(hub.host, f"umask 077 && mkdir -p {directory} && chmod 700 {directory}"),
            [self.scp, "-q", *self.ssh_options, str(self.connection_file),
             f"{hub.host}:{hub.remote_path}"],
            self._ssh(hub.host, f"chmod 600 {shlex.quote(hub.remote_path)}"),
        ]
        if self.info.curve_serverkey:
            steps += [
                [self.scp, "-q", *self.ssh_options, str(self._issue_certificate(hub)),
                 f"{hub.host}:{hub.cert_path}"],
                self._ssh(hub.host, f"chmod 600 {shlex.quote(hub.cert_path)}"),
            ]
        for command in steps:
            try:
                done = subprocess.run(
                    command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
                )
            except subprocess.TimeoutExpired:
                raise LaunchError(
                    f"copying the connection file to {hub.host} took over 60 s "
                    f"({shlex.join(command[:1])} did not finish): is the host reachable?"
                ) from None
            if done.returncode != 0:
                detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
                raise LaunchError(
                    f"cannot copy the connection file to {hub.host} "
                    f"({os.path.basename(command[0])} failed: {detail})"
                )

    def _issue_certificate(self, hub: RemoteHub) -> Path:
        """With CurveZMQ on, each remote hub gets its own certificate, allowed at the balancer."""
        from jupyter_plb.transport import security

        report = security.keygen(self.info.security_dir or None, hubs=[hub.name])
        return next(path for role, name, path in report.issued if role == "hub" and name == hub.name)

    def remote_hub_command(self, hub: RemoteHub) -> str:
        """The shell command run on ``hub.host``."""
        args = [
            "hub", "--connect", hub.remote_path, "--name", hub.name, "--exit-with-stdin",
            *self.options.arguments(),
        ]
        env = f"PLB_HUB_CERT={shlex.quote(hub.cert_path)} " if self.info.curve_serverkey else ""
        return f"{env}exec {self.remote_command} {shlex.join(args)}"

    def _launch(self, hub: RemoteHub) -> None:
        hub.process = subprocess.Popen(
            self._ssh(hub.host, self.remote_hub_command(hub)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches plb ssh, which then drains the hubs
        )
        hub.reader = threading.Thread(target=self._relay, args=(hub,), daemon=True,
                                      name=f"ssh-{hub.name}")
        hub.reader.start()
        self._print(f"plb ssh: starting hub {hub.name} on {hub.host}")

    def _relay(self, hub: RemoteHub) -> None:
        """Print the hub's output with its name in front; keep its last lines for errors."""
        assert hub.process is not None and hub.process.stdout is not None
        for raw in hub.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            hub.lines.append(line)
            self._print(f"[{hub.name}] {line}")

    def _print(self, text: str) -> None:
        with self._lock, contextlib.suppress(ValueError, OSError):
            print(text, file=self.out, flush=True)

    def wait_registered(self, timeout: float = 60.0) -> list[str]:
        """Wait until every hub shows up at the balancer; return the names of those that did not.

        A hub whose ssh session ended is reported at once (with its last output) rather than waited
        for. Needs the balancer's client port to be reachable from here.
        """
        from jupyter_plb.client.executor import Client

        deadline = time.monotonic() + timeout
        waiting = list(self.hubs)
        ended: list[RemoteHub] = []
        pause = threading.Event()
        with Client(connection_file=self.connection_file, user="plb-ssh") as client:
            while waiting and time.monotonic() < deadline:
                seen = {h["name"] for h in client.status()["hubs"] if h["state"] != "lost"}
                for hub in list(waiting):
                    if hub.name in seen:
                        self._print(f"plb ssh: hub {hub.name} on {hub.host} registered")
                        waiting.remove(hub)
                    elif (code := hub.returncode) is not None:
                        self._finish(hub)
                        hub.reported = True
                        self._print(f"plb ssh: error: {hub.explain(code)}")
                        waiting.remove(hub)
                        ended.append(hub)
                if waiting:
                    pause.wait(0.2)
        for hub in waiting:
            self._print(
                f"plb ssh: warning: hub {hub.name} on {hub.host} runs but has not registered "
                f"with the balancer at {self.info.worker_url} within {timeout:g} s: can "
                f"{hub.host} reach that address and port (firewall, --advertise)?"
            )
        return [hub.name for hub in ended + waiting]

    def _finish(self, hub: RemoteHub) -> None:
        if hub.reader is not None:
            hub.reader.join(5)

    def wait(self) -> int:
        """Block until every hub's session ended; print why each ended; return how many failed."""
        failures = 0
        for hub in self.hubs:
            if hub.process is None:
                continue
            code = hub.process.wait()
            self._finish(hub)
            failures += code != 0
            if not hub.reported:
                hub.reported = True
                self._print(f"plb ssh: {'error: ' if code else ''}{hub.explain(code)}")
        return failures

    def stop(self, timeout: float | None = None) -> None:
        """Drain every hub (close its standard input), wait, end what is left, remove the copies.

        ``timeout`` defaults to the hubs' grace period plus 15 s.
        """
        if timeout is None:
            grace = self.options.grace if self.options.grace is not None else 30.0
            timeout = grace + 15.0
        running = [h for h in self.hubs if h.process is not None and h.process.poll() is None]
        for hub in running:
            assert hub.process is not None
            if hub.process.stdin is not None:
                with contextlib.suppress(OSError):
                    hub.process.stdin.close()
        deadline = time.monotonic() + timeout
        for hub in running:
            assert hub.process is not None
            try:
                hub.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._print(f"plb ssh: hub {hub.name} on {hub.host} did not stop in {timeout:g} s; "
                            "closing its ssh session")
                _end(hub.process)
            self._finish(hub)
            if not hub.reported:
                hub.reported = True
                code = hub.process.returncode
                self._print(f"plb ssh: {'error: ' if code else ''}{hub.explain(code)}")
        for hub in self.hubs:
            if hub.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        self._ssh(hub.host, f"rm -f {shlex.quote(hub.remote_path)} {shlex.quote(hub.cert_path)}"),
                        stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                    )

    def __enter__(self) -> SSHLauncher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
