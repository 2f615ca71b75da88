"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd on 127.0.0.1.

Everything lives in one temporary directory: the configuration (``slurm.conf``), munge's key and
socket, the daemons' state, spool, logs and pid files. The daemons run in the foreground as this
user's children on free ports, with no cgroups (``proctrack/linuxproc``, ``task/none``), and the
commands find the cluster through ``SLURM_CONF``. Needs Debian's ``slurm-wlm`` and ``munge`` (the
test set-up, ``scripts/test.sh``, installs them) and root (slurmd runs jobs as their user).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
PR_SET_PDEATHSIG = 1
#: CPUs the node claims (config_overrides lets slurmd claim more than the machine has).
CPUS = 16


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why (for ``pytest.skip``)."""


def _find(program: str) -> str | None:
    return shutil.which(program) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{program}", os.X_OK)), None
    )


def unavailable() -> str | None:
    """Why a Slurm cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a real Slurm cluster needs root (slurmd starts jobs as their user)"
    missing = [p for p in (*DAEMONS, *COMMANDS) if _find(p) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): run scripts/test.sh, "
                "which installs Debian's slurm-wlm and munge")
    return None


def _die_with_parent() -> None:
    """In the daemon's child, before exec: SIGTERM it when the test process dies (even killed)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    """One node (``hostname -s``) in one partition, ``plb``; :meth:`start` and :meth:`stop`."""

    folder: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's commands: this cluster's configuration."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "munge"):
            (f / sub).mkdir(mode=0o700, exist_ok=True)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        self.conf.write_text(f"""\
ClusterName=plbtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={f}/munge/munge.socket
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd.pid
SlurmctldLogFile={f}/slurmctld.log
SlurmdLogFile={f}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=plb Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _daemon(self, name: str, *args: str) -> None:
        program = _find(name)
        assert program is not None
        log = open(self.folder / f"{name}.out", "wb")  # noqa: SIM115 - the child keeps it
        self.processes[name] = subprocess.Popen(
            [program, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        log.close()

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        """Write the configuration, start the daemons, return once the node is idle."""
        self._write_config()
        m = self.folder / "munge"
        self._daemon("munged", "--foreground", "--force", f"--socket={m}/munge.socket",
                     f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                     f"--seed-file={m}/munged.seed", f"--log-file={m}/munged.log")
        self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged to listen")
        self._daemon("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._daemon("slurmd", "-D", "-f", str(self.conf), "-N", self.node)
        self._wait(lambda: self.node_state() == "idle", timeout, f"node {self.node} to be idle")
        return self

    def node_state(self) -> str:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                              env=self.env, timeout=20)
        return done.stdout.strip() if done.returncode == 0 else ""

    def _wait(self, condition: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        pause = 0.05
        while not condition():  # type: ignore[operator]
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with status {process.returncode} while "
                                           f"waiting for {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"timed out after {timeout:g} s waiting for {what}:\n{self.logs()}")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def logs(self, lines: int = 15) -> str:
        """The last lines of each daemon's log, to explain a failure."""
        parts = []
        for path in sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.out")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (squeue, scancel…) against this cluster."""
        return subprocess.run(list(command), capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def jobs(self) -> dict[str, str]:
        """Job id -> state (PENDING, RUNNING, COMPLETING…) of the jobs Slurm still lists."""
        done = self.run("squeue", "-h", "-o", "%i %T")
        return dict(line.split() for line in done.stdout.splitlines() if line.strip())

    def stop(self) -> None:
        """Cancel every job, stop the daemons (slurmd first), leave nothing running."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.run("scancel", "--full", "--signal=KILL", "--user=root", timeout=10)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
