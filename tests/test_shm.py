"""Shared-memory segments (core/shm.py): real files in /dev/shm, real processes, real uids.

Each test uses a prefix of its own, so segments of other test runs on the machine are never
touched or counted.
"""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import stat
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_plb.core import shm
from jupyter_plb.core.shm import SegmentError, SegmentInfo, SegmentRegistry

ROOT = Path(__file__).resolve().parent.parent
DEV_SHM = shm.DIRECTORY
MB = 1 << 20
NOBODY = 65534

pytestmark = pytest.mark.skipif(not DEV_SHM.is_dir(), reason="no /dev/shm on this machine")


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"plbt{secrets.token_hex(4)}-"
    yield prefix
    for path in DEV_SHM.glob(f"{prefix}*"):
        path.unlink(missing_ok=True)


def segments(prefix: str) -> set[str]:
    return {p.name for p in DEV_SHM.glob(f"{prefix}*")}


def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")


# -- writing and reading ----------------------------------------------------------------------------
def test_a_segment_is_created_0600_and_its_consumer_maps_it_and_unlinks_it(prefix: str) -> None:
    data = os.urandom(3 * MB + 5)
    info = shm.write_segment(data, prefix=prefix)
    path = DEV_SHM / info.name
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_size) == (0o600, os.getuid(), len(data))
    assert info.size == len(data) and info.digest is not None and len(info.digest) == 64
    assert SegmentInfo.from_header(info.as_header(), prefix) == info

    view = shm.open_segment(info, prefix=prefix)
    assert not path.exists(), "the consumer unlinks the segment once it has mapped it"
    assert view.readonly and view.nbytes == len(data)
    assert view == data
    with pytest.raises(TypeError):
        view[0] = 1  # type: ignore[index]


def test_the_mode_is_0600_whatever_the_umask(prefix: str) -> None:
    old = os.umask(0)
    try:
        info = shm.write_segment(b"x" * 1000, prefix=prefix)
    finally:
        os.umask(old)
    assert stat.S_IMODE((DEV_SHM / info.name).stat().st_mode) == 0o600


def test_creation_never_opens_a_file_or_link_that_is_there_already(prefix: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    name = shm.new_name(prefix)
    os.symlink(victim, DEV_SHM / name)
    with pytest.raises(FileExistsError):
        shm.write_segment(b"y" * 1000, name=name, prefix=prefix)
    assert victim.read_bytes() == b"keep me"
    (DEV_SHM / name).unlink()
    with pytest.raises(ValueError, match="not a segment name made by this process"):
        shm.write_segment(b"y", name=f"{prefix}1-2-{'0' * 16}", prefix=prefix)


def test_a_zero_length_segment_reads_as_empty(prefix: str) -> None:
    info = shm.write_segment(b"", prefix=prefix)
    assert shm.open_segment(info, prefix=prefix, verify=True).tobytes() == b""
    assert segments(prefix) == set()


def test_a_writable_mapping_is_a_private_copy_on_write(prefix: str) -> None:
    info = shm.write_segment(b"a" * 10_000, prefix=prefix)
    view = shm.open_segment(info, prefix=prefix, writable=True, unlink=False)
    view[:3] = b"xyz"
    assert bytes(view[:4]) == b"xyza"
    again = shm.open_segment(info, prefix=prefix, verify=True)
    assert again == b"a" * 10_000, "writes to a copy-on-write view never reach the segment"


# -- refusals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o620, 0o602])
def test_a_segment_others_may_read_or_write_is_refused(prefix: str, mode: int) -> None:
    info = shm.write_segment(b"z" * 5000, prefix=prefix)
    os.chmod(DEV_SHM / info.name, mode)
    with pytest.raises(SegmentError, match=f"mode {mode:04o}") as refused:
        shm.open_segment(info, prefix=prefix)
    assert refused.value.reason == "mode"
    assert ("writable" if mode & 0o022 else "readable") in str(refused.value)
    assert info.name in segments(prefix), "a refused segment is left alone"


def test_a_segment_of_another_uid_is_refused(prefix: str) -> None:
    as_root()
    info = shm.write_segment(b"z" * 5000, prefix=prefix)
    os.chown(DEV_SHM / info.name, NOBODY, NOBODY)
    with pytest.raises(SegmentError, match=f"belongs to uid {NOBODY}") as refused:
        shm.open_segment(info, prefix=prefix)
    assert refused.value.reason == "owner"


def test_a_link_a_directory_a_wrong_size_and_a_missing_segment_are_refused(prefix: str, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"q" * 100)
    target.chmod(0o600)
    link = shm.new_name(prefix)
    os.symlink(target, DEV_SHM / link)
    with pytest.raises(SegmentError) as refused:
        shm.open_segment(SegmentInfo(link, 100), prefix=prefix)
    assert refused.value.reason == "type"

    folder = shm.new_name(prefix)
    (DEV_SHM / folder).mkdir(mode=0o700)
    with pytest.raises(SegmentError) as refused:
        shm.open_segment(SegmentInfo(folder, 0), prefix=prefix)
    assert refused.value.reason == "type"
    (DEV_SHM / folder).rmdir()

    info = shm.write_segment(b"s" * 100, prefix=prefix)
    with pytest.raises(SegmentError, match="holds 100 bytes, its signed header says 101") as refused:
        shm.open_segment(SegmentInfo(info.name, 101), prefix=prefix)
    assert refused.value.reason == "size"

    shm.open_segment(info, prefix=prefix)
    with pytest.raises(SegmentError, match="is gone") as refused:
        shm.open_segment(info, prefix=prefix)
    assert refused.value.reason == "missing"


@pytest.mark.parametrize("header", [
    {"name": "../../etc/passwd", "size": 1, "digest": None},
    {"name": "plb-1-2-3", "size": 1, "digest": None},
    {"name": "plb-1-2-0123456789abcdef/x", "size": 1, "digest": None},
    {"name": "plb-1-2-0123456789abcdef", "size": -1, "digest": None},
    {"name": "plb-1-2-0123456789abcdef", "size": True, "digest": None},
    {"name": "plb-1-2-0123456789abcdef", "size": 1, "digest": "ab"},
    ["plb-1-2-0123456789abcdef", 1],
])
def test_a_header_can_name_nothing_but_a_segment(header: object) -> None:
    with pytest.raises(SegmentError):
        SegmentInfo.from_header(header)
    if isinstance(header, dict) and isinstance(header.get("name"), str) and "/" in header["name"]:
        with pytest.raises(SegmentError, match="not the name of a jupyter_plb segment"):
            shm.open_segment(SegmentInfo(header["name"], 1))


def test_the_digest_check_is_optional_and_can_be_forced(prefix: str) -> None:
    data = b"d" * 100_000
    info = shm.write_segment(data, prefix=prefix)
    with open(DEV_SHM / info.name, "r+b") as f:  # the same uid changes it: the kernel's check passes
        f.write(b"X")
    assert shm.open_segment(info, prefix=prefix, unlink=False)[:1] == b"X"
    with pytest.raises(SegmentError, match="does not match the digest") as refused:
        shm.open_segment(info, prefix=prefix, verify=True)
    assert refused.value.reason == "digest"

    plain = shm.write_segment(data, prefix=prefix, digest=False)
    assert plain.digest is None
    with pytest.raises(SegmentError, match="has no digest"):
        shm.open_segment(plain, prefix=prefix, verify=True, unlink=False)
    assert shm.open_segment(plain, prefix=prefix) == data


# -- who unlinks ----------------------------------------------------------------------------------------
def test_the_owner_registry_removes_what_no_consumer_took_when_a_task_ends(prefix: str) -> None:
    registry = SegmentRegistry(prefix=prefix)
    done = [registry.write("done", b"1" * 1000), registry.write("done", b"2" * 1000)]
    failed = registry.write("failed", b"3" * 1000)
    cancelled = registry.write("cancelled", b"4" * 1000)
    assert len(registry) == 4 and "done" in registry
    assert registry.names("done") == tuple(i.name for i in done)

    for info in done:  # success: the consumer mapped (and unlinked) both
        shm.open_segment(info, prefix=prefix)
    assert registry.release("done") == 0
    assert registry.release("failed") == 1  # its worker failed before it read the argument
    assert failed.name not in segments(prefix)
    assert cancelled.name in segments(prefix)
    assert registry.release_all() == 1
    assert segments(prefix) == set() and len(registry) == 0
    assert registry.release("done") == 0


_CREATOR = """
import sys
from jupyter_plb.core import shm
registry = shm.SegmentRegistry(prefix=sys.argv[1])
print(registry.write("task", b"x" * 300_000).name, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.timeout(60)
def test_a_sweep_removes_the_segments_of_a_creator_killed_by_sigkill_and_no_others(prefix: str) -> None:
    creator = subprocess.Popen(
        [sys.executable, "-c", _CREATOR, prefix], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert creator.stdout is not None
        orphan = creator.stdout.readline().strip()
        mine = shm.write_segment(b"m" * 1000, prefix=prefix)
        assert orphan in segments(prefix)
        assert shm.sweep(prefix=prefix) == [], "the creator still runs: its segment stays"
    finally:
        creator.send_signal(signal.SIGKILL)
        creator.wait(30)
    assert creator.returncode == -signal.SIGKILL
    assert shm.sweep(prefix=prefix) == [orphan]
    assert segments(prefix) == {mine.name}, "a live process's segment is not swept"
    assert shm.sweep(prefix=prefix) == []


def test_a_sweep_sees_a_reused_pid_and_leaves_other_uids_alone(prefix: str) -> None:
    as_root()
    start = shm._start_time(os.getpid())
    assert start is not None
    reused = f"{prefix}{os.getpid()}-{start + 1}-{secrets.token_hex(8)}"  # this pid, another process
    os.close(os.open(DEV_SHM / reused, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    foreign = f"{prefix}999999999-1-{secrets.token_hex(8)}"
    os.close(os.open(DEV_SHM / foreign, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.chown(DEV_SHM / foreign, NOBODY, NOBODY)
    assert shm.sweep(prefix=prefix) == [reused]
    assert segments(prefix) == {foreign}


# -- numpy, without a copy ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_100_mb_numpy_array_crosses_a_segment_with_one_copy_and_loads_without_one(prefix: str) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(100 * MB // 8, dtype=np.float64)
    pickled: list[pickle.PickleBuffer] = []
    main = pickle.dumps(array, protocol=5, buffer_callback=pickled.append)
    assert len(main) < 1000 and len(pickled) == 1

    tracemalloc.start()
    try:
        # the sender: the one copy the floor needs, from the array's own memory into the segment
        info = shm.write_segment(pickled[0].raw(), prefix=prefix, digest=False)
        _, sent_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        # the receiver: maps the pages and unpickles the array onto them
        view = shm.open_segment(info, prefix=prefix)
        loaded = pickle.loads(main, buffers=[view])
        _, loaded_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        copied = np.array(loaded)  # the control: a copy of the array is seen by the same measure
        _, copy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == array.nbytes
    assert sent_peak < MB and loaded_peak < MB, (sent_peak, loaded_peak)
    assert copy_peak >= array.nbytes, "tracemalloc sees numpy's allocations, so the figures above are honest"
    mapping = np.frombuffer(view, dtype=np.uint8)
    assert loaded.__array_interface__["data"][0] == mapping.__array_interface__["data"][0], \
        "the loaded array's data is the mapping itself"
    assert loaded.__array_interface__["data"][0] != array.__array_interface__["data"][0]
    assert not loaded.flags.writeable and loaded.dtype == array.dtype and loaded.shape == array.shape
    assert np.array_equal(loaded, array) and np.array_equal(copied, array)
    assert segments(prefix) == set()
