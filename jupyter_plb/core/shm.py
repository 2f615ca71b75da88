"""Shared-memory segments for large buffers between processes of one machine.

A sender that has a buffer of at least :data:`THRESHOLD` bytes for a process on its own machine
writes it to a *segment*, a file in ``/dev/shm`` it creates with ``O_EXCL`` and mode 0600, with
one copy (``pwrite`` from the buffer itself). Its signed message carries the segment's
:class:`SegmentInfo` — name, size and, when asked for, the SHA-256 digest — instead of the
bytes. The reader (:func:`open_segment`) opens the file only when the kernel says it belongs to
the reader's own uid and no one else may read or write it, maps it read-only, and hands out a
memoryview over the mapping: a pickle protocol 5 out-of-band buffer, so a numpy array unpickles
*onto* the shared pages, without a copy. For such a segment the ownership check stands in for the
digest check (only this uid could have written it, and this uid can read the connection key
anyway); ``verify=True`` checks the digest as well. Buffers that crossed a network keep the
protocol's digest check (protocol.py); this module is for one machine only.

Who removes a segment:

* its consumer, once it has mapped it (``open_segment(..., unlink=True)``, the default; the
  mapping stays valid, the memory is freed when the last view of it is gone);
* its owner, at the end of the task it belongs to, whatever the end (done, failed, cancelled):
  :class:`SegmentRegistry` remembers what this process created, by task, and ``release`` removes
  what no consumer took (a consumer that died first, a cancelled task);
* anyone, for creators that died (a SIGKILL, a crash, a machine-wide restart of the services):
  :func:`sweep` removes the segments whose name says their creator process no longer runs. A
  segment's name holds its creator's pid and that process's start time, so a reused pid does not
  keep a dead creator's segments alive.

Only file system calls are made (open, pwrite, fstat, mmap of the file, unlink, listing a
directory, reading ``/proc/<pid>/stat``), so this lives in ``core`` beside the wire format that
will name segments in its signed envelopes (``core`` may not import ``transport``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import mmap
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_plb.errors import IntegrityError

#: Where segments live: a tmpfs, so a segment is memory, never disk.
DIRECTORY = Path("/dev/shm")
#: Every segment's name starts with this (a sweep looks at these names only).
PREFIX = "plb-"
#: Buffers at least this large are worth a segment (below it, the few system calls a segment
#: costs are more than sending the bytes through ZeroMQ).
THRESHOLD = 256 * 1024
#: Bytes written (and hashed) per system call: hashing a chunk just written while it is still in
#: the cache, rather than the whole buffer in a second pass.
CHUNK = 4 << 20
_MAX_SIZE = 1 << 48
_PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9]{0,31}-")
_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
#: MADV_POPULATE_READ (Linux 5.14): map every page at once instead of a fault per page.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


class SegmentError(IntegrityError):
    """A segment was refused or is gone; ``reason`` is a short tag (``name``, ``missing``,
    ``type``, ``owner``, ``mode``, ``size``, ``digest``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What a signed header says of a segment: its name, its size and, optionally, its digest."""

    name: str
    size: int
    #: SHA-256 of the contents, hex; None when the sender did not compute it.
    digest: str | None = None

    def as_header(self) -> dict[str, Any]:
        """The JSON object for a signed header."""
        return {"name": self.name, "size": self.size, "digest": self.digest}

    @classmethod
    def from_header(cls, value: Any, prefix: str = PREFIX) -> SegmentInfo:
        """Parse and check what a header says (a name that is not a segment name is refused, so a
        header can never make a reader open another file)."""
        if not isinstance(value, dict):
            raise SegmentError("name", "a segment is described by an object with a name, a size and a digest")
        name, size, digest = value.get("name"), value.get("size"), value.get("digest")
        if not isinstance(name, str) or _parse_name(name, prefix) is None:
            raise SegmentError("name", f"{str(name)[:80]!r} is not the name of a jupyter_plb segment")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < _MAX_SIZE:
            raise SegmentError("size", f"segment size must be a number of bytes, got {size!r}")
        if digest is not None and (not isinstance(digest, str) or not _DIGEST_PATTERN.fullmatch(digest)):
            raise SegmentError("digest", "a segment digest is 64 lowercase hexadecimal digits or null")
        return cls(name, size, digest)


def machine_id() -> str | None:
    """Who shares this process's segments: this boot of this machine, and this ``/dev/shm``
    (a container with its own has another); None when there is no segment directory.

    Two processes with the same id see the same segments, whatever address one uses for the other
    (an SSH tunnel's 127.0.0.1 is another machine).
    """
    try:
        st = os.stat(DIRECTORY)
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{st.st_dev}:{st.st_ino}"


class Segment(bytes):
    """A message buffer that stands for a segment: the compact JSON of its :class:`SegmentInfo`.

    It is signed, journaled and forwarded as the small bytes it is (the envelope marks it, so it
    is never taken for data); the process that unpickles the message maps the segment instead.
    """

    @classmethod
    def describing(cls, info: SegmentInfo) -> Segment:
        return cls(json.dumps(info.as_header(), separators=(",", ":")).encode())

    @property
    def info(self) -> SegmentInfo:
        try:
            described = json.loads(self)
        except ValueError:
            raise SegmentError("name", "a segment buffer is not the JSON of a segment") from None
        return SegmentInfo.from_header(described)


# -- names -------------------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3 of proc(5)), fields[19] the start time (field 22)
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


_own: dict[int, int] = {}


def _own_start_time() -> int:
    pid = os.getpid()
    start = _own.get(pid)
    if start is None:
        start = _own[pid] = _start_time(pid) or 0
    return start


def _check_prefix(prefix: str) -> str:
    if not _PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"a segment prefix is a few lowercase letters and digits and a dash, got {prefix!r}")
    return prefix


def new_name(prefix: str = PREFIX) -> str:
    """``<prefix><pid>-<its start time>-<16 random hex digits>``."""
    return f"{_check_prefix(prefix)}{os.getpid()}-{_own_start_time()}-{secrets.token_hex(8)}"


def _parse_name(name: str, prefix: str) -> tuple[int, int] | None:
    """The creator's pid and start time a segment name holds, or None if it is not such a name."""
    if not name.startswith(prefix) or len(name) > 100:
        return None
    match = re.fullmatch(r"(\d{1,10})-(\d{1,20})-[0-9a-f]{16}", name[len(prefix):])
    return (int(match[1]), int(match[2])) if match else None


# -- the writer's side -------------------------------------------------------------------------------
def _bytes_view(data: Any) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("a segment is written from a contiguous buffer (PickleBuffer.raw() gives one)")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def write_segment(
    data: Any,
    *,
    digest: bool = True,
    name: str | None = None,
    directory: Path = DIRECTORY,
    prefix: str = PREFIX,
) -> SegmentInfo:
    """Copy ``data`` (any contiguous buffer) into a new segment, once; describe it.

    ``name``: the segment's name (one :func:`new_name` made, in this process); by default a new one.
    A file of that name that exists already, a symbolic link included, is never opened: the
    creation fails (FileExistsError).

    The file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 whatever the umask,
    and written with ``pwrite`` straight from ``data`` (no intermediate bytes object, no page
    faults: the kernel fills the tmpfs pages). With ``digest``, the SHA-256 of the contents is
    computed chunk by chunk as it is written. A failed write (a full ``/dev/shm``: OSError ENOSPC)
    leaves no file behind; readers map a segment only once it is written, so they never meet a
    hole (the SIGBUS of a mapping past the end of a file can come only from a process of the same
    uid truncating it, which it could as well rewrite).
    """
    view = _bytes_view(data)
    size = view.nbytes
    if name is None:
        name = new_name(prefix)
    elif _parse_name(name, prefix) != (os.getpid(), _own_start_time()):
        raise ValueError(f"{name[:80]!r} is not a segment name made by this process (new_name)")
    path = directory / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    hasher = hashlib.sha256() if digest else None
    try:
        os.fchmod(fd, 0o600)
        offset = 0
        while offset < size:
            chunk = view[offset : offset + CHUNK]
            if hasher is not None:
                hasher.update(chunk)
            written = 0
            while written < chunk.nbytes:
                written += os.pwrite(fd, chunk[written:], offset + written)
            offset += chunk.nbytes
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)
    return SegmentInfo(name, size, hasher.hexdigest() if hasher is not None else None)


def unlink_segment(name: str, *, directory: Path = DIRECTORY, prefix: str = PREFIX) -> bool:
    """Remove a segment by name (a segment name only); False when it was already gone."""
    if _parse_name(name, prefix) is None:
        raise SegmentError("name", f"{name[:80]!r} is not the name of a jupyter_plb segment")
    try:
        os.unlink(directory / name)
    except FileNotFoundError:
        return False
    return True


class SegmentRegistry:
    """The segments this process created that may still exist, by the task they belong to.

    A consumer normally unlinks a segment as soon as it has mapped it; ``release(task)`` at the
    end of the task (done, failed, cancelled, its worker lost) removes whatever is left, and
    ``release_all`` everything (at shutdown). Thread-safe.
    """

    def __init__(self, *, directory: Path = DIRECTORY, prefix: str = PREFIX) -> None:
        self.directory = directory
        self.prefix = _check_prefix(prefix)
        self._by_key: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def write(self, key: str, data: Any, *, digest: bool = True, name: str | None = None) -> SegmentInfo:
        """``write_segment`` for the task ``key``, remembered until ``release(key)``."""
        info = write_segment(data, digest=digest, name=name, directory=self.directory, prefix=self.prefix)
        with self._lock:
            self._by_key.setdefault(key, []).append(info.name)
        return info

    def names(self, key: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._by_key.get(key, ()))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(names) for names in self._by_key.values())

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._by_key

    def release(self, key: str) -> int:
        """The task ``key`` ended: remove its segments no consumer removed; return how many."""
        with self._lock:
            names = self._by_key.pop(key, [])
        return sum(unlink_segment(name, directory=self.directory, prefix=self.prefix) for name in names)

    def release_all(self) -> int:
        with self._lock:
            keys = list(self._by_key)
        return sum(self.release(key) for key in keys)


def sweep(
    *,
    keep: Callable[[], Collection[str]] | None = None,
    directory: Path = DIRECTORY,
    prefix: str = PREFIX,
) -> list[str]:
    """Remove the segments of this uid whose creator process no longer runs; return their names.

    For a restart after a crash or a SIGKILL (the balancer calls it on its timer): the name
    says which process made the segment and when that process started; a segment is removed only
    when no process with that pid and start time runs, and only when this uid owns it. ``keep``
    names the segments still needed (a dead worker's result that its client has not read yet);
    it is asked only when there is a dead creator's segment.
    """
    kept: Collection[str] | None = None
    removed = []
    alive: dict[tuple[int, int], bool] = {}
    uid = os.getuid()
    for name in _names(directory, prefix):
        creator = _parse_name(name, prefix)
        if creator is None:
            continue
        if creator not in alive:
            alive[creator] = _start_time(creator[0]) == creator[1]
        if alive[creator]:
            continue
        if keep is not None:
            kept = keep() if kept is None else kept
            if name in kept:
                continue
        path = directory / name
        try:
            info = os.lstat(path)
            if info.st_uid == uid and stat.S_ISREG(info.st_mode):
                os.unlink(path)
                removed.append(name)
        except FileNotFoundError:
            continue
    return removed


def _names(directory: Path, prefix: str) -> Iterator[str]:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                yield entry.name


# -- the reader's side -------------------------------------------------------------------------------
def open_segment(
    info: SegmentInfo,
    *,
    verify: bool = False,
    unlink: bool = True,
    writable: bool = False,
    directory: Path = DIRECTORY,
    prefix: str = PREFIX,
) -> memoryview:
    """Map the segment ``info`` names and return a memoryview of its bytes, without a copy.

    Refused (:class:`SegmentError`) unless it is a regular file of exactly ``info.size`` bytes,
    owned by this process's uid, with no permission for group or others (mode 0600 or stricter):
    checked on the open file (``fstat``), so the file checked is the file mapped. ``verify``
    checks its SHA-256 against ``info.digest`` too (a segment described without a digest is then
    refused). ``unlink``: remove the file once mapped (this process is its consumer); the mapping
    stays until the last view of it is released. The view is read-only, or with ``writable`` a
    private copy-on-write mapping (still no copy until a page is written; numpy arrays loaded from
    it are then writable as after an in-band pickle).
    """
    if _parse_name(info.name, prefix) is None:
        raise SegmentError("name", f"{info.name[:80]!r} is not the name of a jupyter_plb segment")
    path = directory / info.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SegmentError(
            "missing", f"shared-memory segment {info.name} is gone (its task ended, or its creator's host "
            "cleaned it up)"
        ) from None
    except OSError as exc:  # ELOOP: a symbolic link
        raise SegmentError("type", f"shared-memory segment {info.name} cannot be opened safely: {exc}") from None
    try:
        st = os.fstat(fd)
        _check(info, st)
        if info.size == 0:
            view = memoryview(b"")
        else:
            mapped = mmap.mmap(fd, info.size, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ)
            with contextlib.suppress(OSError, ValueError):  # older kernels: pages fault in as read
                mapped.madvise(_MADV_POPULATE_READ)
            view = memoryview(mapped)
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                now = os.lstat(path)
                if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    os.unlink(path)
    finally:
        os.close(fd)
    if verify:
        if info.digest is None:
            raise SegmentError("digest", f"shared-memory segment {info.name} has no digest to check it against")
        if not hmac.compare_digest(hashlib.sha256(view).hexdigest(), info.digest):
            raise SegmentError(
                "digest", f"shared-memory segment {info.name} does not match the digest its signed header names"
            )
    return view


def _check(info: SegmentInfo, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SegmentError("type", f"shared-memory segment {info.name} is not a regular file")
    if st.st_uid != os.getuid():
        raise SegmentError(
            "owner", f"shared-memory segment {info.name} belongs to uid {st.st_uid}, not to this process's uid "
            f"{os.getuid()}: refused (only a segment of one's own uid can stand in for a digest check)"
        )
    others = stat.S_IMODE(st.st_mode) & 0o077
    if others:
        what = "writable" if others & 0o022 else "readable"
        raise SegmentError(
            "mode", f"shared-memory segment {info.name} has mode {stat.S_IMODE(st.st_mode):04o}: {what} by group or "
            "others, refused (segments are created 0600)"
        )
    if st.st_size != info.size:
        raise SegmentError(
            "size", f"shared-memory segment {info.name} holds {st.st_size} bytes, its signed header says {info.size}"
        )
