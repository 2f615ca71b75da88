"""What this machine lets us use and what our processes use: CPUs (affinity, cgroup quota), RSS, CPU time.

Default worker counts come from :func:`usable_cpus`, not ``os.cpu_count()``: a JupyterHub user's
server in a container limited to 2 CPUs of a 64-core host starts 2 workers, not 64. The hub reads
its workers' resident memory and CPU time from ``/proc`` (Linux; elsewhere it reports none).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def usable_cpus(proc_self: Path = _PROC / "self") -> int:
    """CPUs this process may really use: its affinity mask, capped by its cgroup's CPU quota."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13
        count = os.process_cpu_count() or 1
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0)) or 1
    else:
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(proc_self)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (``"max 100000"``: none; ``"150000 100000"``: 1.5)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


@dataclass(frozen=True, slots=True)
class _Mount:
    point: Path
    root: str
    version: int  # 1 (the cpu controller's hierarchy) or 2 (unified)


def _cpu_mounts(mountinfo: str) -> list[_Mount]:
    """Mounts of the cgroup v2 hierarchy and of the v1 hierarchy holding the ``cpu`` controller."""
    mounts = []
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, extra = fields.split(), tail.split()
        if len(parts) < 5 or len(extra) < 3:
            continue
        root, point = parts[3], Path(parts[4].replace("\\040", " "))
        if extra[0] == "cgroup2":
            mounts.append(_Mount(point, root, 2))
        elif extra[0] == "cgroup" and "cpu" in extra[2].split(","):
            mounts.append(_Mount(point, root, 1))
    return mounts


def _cgroup_paths(cgroup: str) -> dict[int, str]:
    """This process's cgroup path in the v2 hierarchy (key 2) and the v1 ``cpu`` one (key 1)."""
    paths: dict[int, str] = {}
    for line in cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            paths[2] = path
        elif "cpu" in controllers.split(","):
            paths[1] = path
    return paths


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _quota_at(directory: Path, version: int) -> float | None:
    if version == 2:
        text = _read(directory / "cpu.max")
        return parse_cpu_max(text) if text is not None else None
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    return parse_cfs(quota, period) if quota is not None and period is not None else None


def cgroup_cpu_quota(proc_self: Path = _PROC / "self") -> float | None:
    """The smallest CPU quota (in CPUs) on this process's cgroup and its ancestors, or None.

    Reads ``proc_self/cgroup`` and ``proc_self/mountinfo`` to find the cgroup's directory, for
    cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``/``cpu.cfs_period_us``).
    """
    cgroup, mountinfo = _read(proc_self / "cgroup"), _read(proc_self / "mountinfo")
    if cgroup is None or mountinfo is None:
        return None
    paths = _cgroup_paths(cgroup)
    limits = []
    for mount in _cpu_mounts(mountinfo):
        path = paths.get(mount.version)
        if path is None:
            continue
        relative = os.path.relpath(path, mount.root) if path.startswith(mount.root) else "."
        directory = (mount.point / relative).resolve() if relative != "." else mount.point
        if not directory.is_dir():
            directory = mount.point  # a container sees its own cgroup as the mount's root
        while True:
            quota = _quota_at(directory, mount.version)
            if quota is not None:
                limits.append(quota)
            if directory == mount.point or mount.point not in directory.parents:
                break
            directory = directory.parent
    return min(limits) if limits else None


def resident_memory(pid: int) -> int | None:
    """Resident set size of a process in bytes (``/proc/<pid>/statm``), or None if unknown."""
    text = _read(_PROC / str(pid) / "statm")
    if text is None:
        return None
    try:
        return int(text.split()[1]) * _PAGE_SIZE
    except (IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process in seconds (``/proc/<pid>/stat``), or None."""
    text = _read(_PROC / str(pid) / "stat")
    if text is None:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return None
