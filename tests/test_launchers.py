"""Launchers: `plb ssh` against a real OpenSSH server on loopback, Slurm and PBS job scripts.

The sshd is the machine's own OpenSSH server (installed with apt-get when missing), run by the
test on a free loopback port with a host key and an authorized key made here; the ssh client is
told to read no configuration and no known-hosts file of the user, so ``~/.ssh`` is not touched.
``sbatch`` and ``qsub`` are stand-in shell scripts that record what they were given; the real
Slurm tests are in ``tests/test_slurm.py``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jupyter_plb.client import Client
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.workers.spawn import stop_process

from .conftest import ROOT, wait_for, worker_count

PLB = [sys.executable, "-m", "jupyter_plb"]
#: How the ssh sessions run plb: this interpreter and this checkout, whatever the login PATH is.
REMOTE_PLB = (
    f"env PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} "
    "-m jupyter_plb"
)


def square(x: int) -> int:
    return x * x


def setup_ran_here(_: int) -> bool:
    """Whether the hub's setup hook (tests.setup_hooks:mark_worker) ran in this worker."""
    return os.environ.get("PLB_SETUP_MARK") == str(os.getpid())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plb(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PLB, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


#: The first test to use the sshd may have to install it (apt-get), which takes a while.
SSH_TIMEOUT = pytest.mark.timeout(600)


# -- a real sshd -----------------------------------------------------------------------------------
def _install_openssh_server() -> str | None:
    """apt-get install openssh-server (services not started); return why not, or None."""
    if shutil.which("apt-get") is None:
        return "sshd is not installed and apt-get is not available"
    if os.geteuid() != 0:
        return "sshd is not installed and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:  # keep the package from starting a system-wide sshd on port 22
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            return f"apt-get install openssh-server failed: {done.stderr.strip()[-300:]}"
    finally:
        if made_policy:
            policy.unlink()
    return None


@dataclass
class SSHServer:
    port: int
    options: list[str]  # for plb ssh: repeated -o values
    config: str  # for plb ssh --ssh-config


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    daemon = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(daemon):
        problem = _install_openssh_server()
        if problem:
            pytest.skip(problem)
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"the OpenSSH client ({tool}) is not installed")
    folder = tmp_path_factory.mktemp("sshd")
    folder.chmod(0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)],
                       check=True, capture_output=True, timeout=30)
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "client_key.pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {folder}/host_key
PidFile {folder}/sshd.pid
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    checked = subprocess.run(
        [daemon, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    if checked.returncode != 0:
        pytest.skip(f"sshd rejects the test configuration: {checked.stderr.strip()}")
    log = folder / "sshd.log"
    process = subprocess.Popen([daemon, "-D", "-e", "-f", str(config)], stderr=open(log, "wb"))  # noqa: SIM115
    try:
        def listening() -> bool:
            assert process.poll() is None, log.read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, what="sshd to listen")
        yield SSHServer(
            port,
            [f"Port={port}", f"IdentityFile={folder}/client_key", "IdentitiesOnly=yes",
             "StrictHostKeyChecking=no", f"UserKnownHostsFile={folder}/known_hosts",
             "HostKeyAlias=plb-test-sshd", "LogLevel=ERROR"],
            os.devnull,
        )
    finally:
        stop_process(process, timeout=5)


def ssh_args(server: SSHServer) -> list[str]:
    args = ["--ssh-config", server.config]
    for option in server.options:
        args += ["-o", option]
    return args


@SSH_TIMEOUT
def test_plb_ssh_starts_hubs_runs_tasks_and_stops_them(
    sshd: SSHServer, cluster: LocalCluster, client: Client, connection_file: Path, tmp_path: Path
) -> None:
    remote_dir = tmp_path / "remote"
    output = tmp_path / "plb-ssh.out"
    with open(output, "wb") as out:
        launcher = subprocess.Popen(
            [*PLB, "ssh", "127.0.0.1", "--connect", str(connection_file), "--workers", "2",
             "--grace", "5", "--setup", "tests.setup_hooks:mark_worker",
             "--remote-command", REMOTE_PLB, "--remote-dir", str(remote_dir), *ssh_args(sshd)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        wait_for(lambda: worker_count(client) == 2, timeout=60, what="the hub started over ssh")
        hub = client.status()["hubs"][0]
        assert hub["name"] == "127.0.0.1" and hub["state"] == "ok"
        assert list(client.map(square, range(50), timeout=30)) == [x * x for x in range(50)]
        assert all(client.map(setup_ran_here, range(10), timeout=30)), "--setup reaches the remote hub"
        copies = list(remote_dir.glob("plb-connection-*.json"))
        assert len(copies) == 1 and copies[0].read_bytes() == connection_file.read_bytes()
        assert stat.S_IMODE(copies[0].stat().st_mode) == 0o600
        assert stat.S_IMODE(remote_dir.stat().st_mode) == 0o700
        wait_for(lambda: "registered" in output.read_text(), what="plb ssh to see the hub register")

        launcher.send_signal(signal.SIGINT)  # Ctrl-C: the hubs drain, then plb ssh returns
        assert launcher.wait(30) == 0, output.read_text()
    finally:
        stop_process(launcher)
    text = output.read_text()
    assert "plb ssh: hub 127.0.0.1 on 127.0.0.1 registered" in text
    assert "[127.0.0.1]" in text and "hub 127.0.0.1 on 127.0.0.1 stopped" in text, text
    wait_for(lambda: not client.status()["hubs"], what="the hub to say goodbye")
    wait_for(lambda: not _alive(hub["pid"]), what="the remote hub process to end")
    assert not list(remote_dir.glob("plb-connection-*.json")), "the copy of the key is removed"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@SSH_TIMEOUT
def test_plb_ssh_reports_an_unreachable_host(
    sshd: SSHServer, connection_file: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    closed = free_port()
    options = [o if not o.startswith("Port=") else f"Port={closed}" for o in sshd.options]
    done = plb("ssh", "127.0.0.1", "--connect", str(connection_file), "--ssh-config", os.devnull,
               "--remote-dir", str(tmp_path / "remote"), *(x for o in options for x in ("-o", o)))
    assert done.returncode == 2
    assert "cannot copy the connection file to 127.0.0.1" in done.stderr
    assert "refused" in done.stderr.lower()


@SSH_TIMEOUT
def test_plb_ssh_reports_a_missing_plb(
    sshd: SSHServer, connection_file: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    done = plb("ssh", "127.0.0.1", "--connect", str(connection_file), "--remote-command",
               "/nonexistent/bin/plb", "--remote-dir", str(tmp_path / "remote"), *ssh_args(sshd))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "`plb` was not found on 127.0.0.1 (exit 127)" in done.stdout
    assert done.stdout.count("was not found") == 1, "reported once"
    assert not list((tmp_path / "remote").glob("plb-connection-*.json"))


# -- batch schedulers ------------------------------------------------------------------------
@pytest.fixture
def fake_tools(tmp_path: Path) -> Path:
    """``sbatch`` and ``qsub`` stand-ins: record their arguments and the script, print an id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, reply in (("sbatch", "4242;cluster"), ("qsub", "1234.pbs-server")):
        script = bin_dir / tool
        script.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "$@" > "{tmp_path}/{tool}.args"\n'
            f'cat > "{tmp_path}/{tool}.script"\n'
            f'if [ -n "$FAKE_REFUSE" ]; then echo "{tool}: error: $FAKE_REFUSE" >&2; exit 1; fi\n'
            f'echo "{reply}"\n'
        )
        script.chmod(0o755)
    return bin_dir


def test_slurm_script_starts_one_draining_hub_per_node(
    connection_file: Path, cluster: LocalCluster
) -> None:
    done = plb("slurm", "--connect", str(connection_file), "--nodes", "4",
               "--workers-per-node", "32",
               "--time", "1:00:00", "--partition", "short", "--account", "proj42", "--grace", "60",
               "--memory-limit", "4G", "--tasks", "mymodule:TASKS", "--setup", "mymodule:warm_up",
               "--dry-run")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert script.startswith("#!/bin/bash\n")
    for directive in ("--nodes=4", "--ntasks-per-node=1", "--cpus-per-task=32", "--time=1:00:00",
                      "--partition=short", "--account=proj42", "--signal=TERM@90"):
        assert f"#SBATCH {directive}\n" in script
    assert "srun --ntasks-per-node=1" in script
    assert (f"plb hub --connect {connection_file} --workers 32 --tasks mymodule:TASKS --grace 60 "
            "--memory-limit 4G --setup mymodule:warm_up") in script
    assert '--name "slurm-${SLURM_JOB_ID}-${SLURMD_NODENAME}"' in script
    assert f"if [ ! -r {connection_file} ]" in script
    assert "WARNING: the connection file gives the balancer's address as 127.0.0.1" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0


def test_pbs_scripts_for_pbs_pro_and_torque(connection_file: Path, cluster: LocalCluster) -> None:
    pro = plb("pbs", "--connect", str(connection_file), "--nodes", "2", "--workers-per-node", "8",
              "--walltime", "2:00:00", "--queue", "workq", "--dry-run").stdout
    assert "#PBS -l select=2:ncpus=8\n" in pro and "#PBS -l place=scatter\n" in pro
    assert "#PBS -l walltime=2:00:00\n" in pro and "#PBS -q workq\n" in pro
    assert 'for node in $(sort -u "$PBS_NODEFILE"); do' in pro and "pbs_tmrsh" in pro
    assert "trap 'kill -TERM $(jobs -p) 2>/dev/null; wait' TERM" in pro
    torque = plb("pbs", "--connect", str(connection_file), "--nodes", "3", "--flavor", "torque",
                 "--dry-run").stdout
    assert "#PBS -l nodes=3:ppn=1\n" in torque and "pbsdsh -u /bin/bash -c" in torque
    for script in (pro, torque):
        assert f"plb hub --connect {connection_file} --workers" in script
        assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0


def test_submitting_runs_sbatch_and_qsub_and_prints_the_job_id(
    connection_file: Path, cluster: LocalCluster, fake_tools: Path, tmp_path: Path
) -> None:
    path = {"PATH": f"{fake_tools}{os.pathsep}{os.environ['PATH']}"}
    args = ["--connect", str(connection_file), "--nodes", "2", "--workers-per-node", "4"]
    slurm = plb("slurm", *args, env=path)
    assert slurm.returncode == 0, slurm.stderr
    assert "submitted Slurm job 4242" in slurm.stdout and "scancel 4242" in slurm.stdout
    assert (tmp_path / "sbatch.args").read_text().split() == ["--parsable"]
    assert (tmp_path / "sbatch.script").read_text() == plb("slurm", *args, "--dry-run").stdout
    pbs = plb("pbs", *args, env=path)
    assert pbs.returncode == 0, pbs.stderr
    assert "submitted PBS job 1234.pbs-server" in pbs.stdout
    assert (tmp_path / "qsub.script").read_text() == plb("pbs", *args, "--dry-run").stdout


def test_submitting_reports_a_missing_or_refusing_scheduler(
    connection_file: Path, cluster: LocalCluster, fake_tools: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = plb("slurm", "--connect", str(connection_file), env={"PATH": str(empty)})
    assert missing.returncode == 2
    assert "`sbatch` was not found on PATH" in missing.stderr and "--dry-run" in missing.stderr
    refused = plb("pbs", "--connect", str(connection_file),
                  env={"PATH": f"{fake_tools}{os.pathsep}{os.environ['PATH']}",
                       "FAKE_REFUSE": "Unknown queue"})
    assert refused.returncode == 2 and "qsub: error: Unknown queue" in refused.stderr
    bad = plb("slurm", "--connect", str(connection_file), "--time", "1:00; rm -rf /", "--dry-run")
    assert bad.returncode == 2 and "--time must look like 1:00:00" in bad.stderr


def test_plb_ssh_gives_each_remote_hub_its_own_certificate_under_curve(
    sshd: SSHServer, make_cluster, connection_file: Path, tmp_path: Path
) -> None:
    make_cluster(LB_CURVE=True, LB_SECURITY_DIR=str(tmp_path / "security"))
    remote_dir = tmp_path / "remote"
    output = tmp_path / "plb-ssh.out"
    with Client(connection_file=connection_file) as client, open(output, "wb") as out:
        launcher = subprocess.Popen(
            [*PLB, "ssh", "127.0.0.1", "--connect", str(connection_file), "--workers", "1",
             "--grace", "5", "--remote-command", REMOTE_PLB, "--remote-dir", str(remote_dir),
             *ssh_args(sshd)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            wait_for(lambda: worker_count(client) == 1, timeout=60, what="the hub started over ssh with Curve")
            assert client.submit(square, 7).result(timeout=30) == 49
            certs = list(remote_dir.glob("*.key_secret"))
            assert len(certs) == 1 and stat.S_IMODE(certs[0].stat().st_mode) == 0o600
            assert (tmp_path / "security" / "hubs").is_dir()
            launcher.send_signal(signal.SIGINT)
            assert launcher.wait(30) == 0, output.read_text()
        finally:
            stop_process(launcher)
    assert not list(remote_dir.glob("*.key_secret")), "the hub's secret key is removed afterwards"
