"""Hosts made of Linux network namespaces, for the multi-host test and benchmark.

Each host is a namespace with its own address on 10.200.0.0/24, joined to the others through a
bridge in one more namespace (the "switch"), by a veth pair whose switch end can be taken down to
cut that host off. Those addresses exist only inside namespaces made here: nothing is routed to or
from the machine's own network. Needs root (or CAP_NET_ADMIN) and the ``ip`` command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.200.0"


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says what is missing."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def ensure_ip_command() -> None:
    """``ip`` from iproute2, installed with apt-get only when it is missing."""
    if shutil.which("ip"):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise NetnsUnavailable("the `ip` command (iproute2) is missing and cannot be installed")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = subprocess.run(
        ["apt-get", "install", "-y", "-q", "iproute2"], capture_output=True, text=True, env=env,
        timeout=300,
    )
    if install.returncode != 0 or not shutil.which("ip"):
        raise NetnsUnavailable(f"cannot install iproute2: {install.stderr.strip()[-300:]}")


def probe(tag: str) -> None:
    """Raise NetnsUnavailable unless a namespace and a veth pair can be made (and removed)."""
    ensure_ip_command()
    name = f"plb-probe-{tag}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        raise NetnsUnavailable(
            f"`ip netns add` failed: {made.stderr.strip()} (needs root or CAP_NET_ADMIN)"
        )
    try:
        veth = _ip("-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb",
                   check=False)
        if veth.returncode != 0:
            raise NetnsUnavailable(f"cannot make a veth pair: {veth.stderr.strip()}")
        bridge = _ip("-n", name, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            raise NetnsUnavailable(f"cannot make a bridge: {bridge.stderr.strip()}")
    finally:
        _ip("netns", "del", name, check=False)


@dataclass(slots=True)
class Host:
    name: str
    namespace: str
    address: str
    switch_port: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass(slots=True)
class Network:
    """``Network(["lb", "hub1", "hub2"])``: hosts at 10.200.0.1, .2, .3; ``cut``, ``close``."""

    names: list[str]
    tag: str = field(default_factory=lambda: f"{os.getpid()}{os.urandom(2).hex()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    switch: str = ""

    def __post_init__(self) -> None:
        probe(self.tag)
        self.switch = f"plb-{self.tag}-sw"
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for index, name in enumerate(self.names, start=1):
                namespace = f"plb-{self.tag}-{name}"
                port = f"p{index}"
                host = Host(name, namespace, f"{SUBNET}.{index}", port)
                _ip("netns", "add", namespace)
                self.hosts[name] = host
                _ip("-n", namespace, "link", "set", "lo", "up")
                _ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                    "netns", self.switch)
                _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
                _ip("-n", namespace, "link", "set", "eth0", "up")
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def cut(self, name: str) -> None:
        """Pull the host's cable: its switch port goes down, TCP connections hang (no reset)."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].switch_port, "down")

    def heal(self, name: str) -> None:
        """Plug the cable back in."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].switch_port, "up")

    def spawn(self, name: str, argv: list[str], **popen: object) -> subprocess.Popen[bytes]:
        """Run ``argv`` inside host ``name``, in its own process group (ended by :meth:`close`)."""
        process = subprocess.Popen(self.hosts[name].command(*argv), start_new_session=True, **popen)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def close(self) -> None:
        """End every process started here (their whole groups), then remove the namespaces."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        for host in self.hosts.values():
            _kill_namespace_processes(host.namespace)
            _ip("netns", "del", host.namespace, check=False)
        if self.switch:
            _ip("netns", "del", self.switch, check=False)
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_namespace_processes(namespace: str) -> None:
    """Whatever still runs inside ``namespace`` (a worker that left its group) gets SIGKILL."""
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def namespace_inode(host: Host) -> int:
    """The inode of the host's network namespace (``os.stat('/proc/self/ns/net')`` inside it)."""
    return Path(f"/run/netns/{host.namespace}").stat().st_ino
