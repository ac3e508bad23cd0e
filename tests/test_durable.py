"""pymda.durable in-process (no root needed): the named durability helpers
on real files under ``tmp_path``."""

import fcntl
import os
import time

import pytest

from pymda import durable


class Busy(Exception):
    pass


def busy():
    raise Busy()


def test_write_all_writes_everything_through_a_pipe():
    rfd, wfd = os.pipe()
    data = os.urandom(200_000)  # more than a pipe buffer: several write()s
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        durable.write_all(wfd, data)
        os._exit(0)
    os.close(wfd)
    got = bytearray()
    while chunk := os.read(rfd, 65536):
        got += chunk
    os.close(rfd)
    assert os.waitpid(pid, 0)[1] == 0
    assert bytes(got) == data


def test_write_atomically_replaces_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"old")
    durable.write_atomically(str(path), b"new contents", mode=0o640)
    assert path.read_bytes() == b"new contents"
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)
    assert os.listdir(tmp_path) == ["state"]


def test_write_atomically_does_not_write_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(victim)
    durable.write_atomically(str(tmp_path / "link"), b"new")
    assert victim.read_bytes() == b"keep"
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "link").read_bytes() == b"new"


def test_write_atomically_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        durable.write_atomically(str(path), 12345)  # not bytes: fails mid-way
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state"]


def test_fsync_helpers_accept_files_and_directories(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        durable.fsync_file(fd)
    finally:
        os.close(fd)
    durable.fsync_directory(str(tmp_path))
    with pytest.raises(NotADirectoryError):
        durable.fsync_directory(str(tmp_path / "f"))


@pytest.fixture
def two_fds(tmp_path):
    """Two open file descriptions of one lock file: two processes' worth."""
    path = tmp_path / "lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    other = os.open(path, os.O_RDWR)
    yield holder, other
    os.close(holder)
    os.close(other)


def test_flock_with_deadline_waits_then_calls_busy(two_fds):
    holder, other = two_fds
    fcntl.flock(holder, fcntl.LOCK_EX)
    started = time.monotonic()
    with pytest.raises(Busy):
        durable.flock_with_deadline(other, 0.3, busy)
    assert time.monotonic() - started >= 0.3
    fcntl.flock(holder, fcntl.LOCK_UN)
    durable.flock_with_deadline(other, 5, busy)  # free now: taken at once
    with pytest.raises(BlockingIOError):
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_flock_with_deadline_shared_and_conversion(two_fds):
    holder, other = two_fds
    fcntl.flock(holder, fcntl.LOCK_SH)
    durable.flock_with_deadline(other, 5, busy, shared=True)  # shared + shared
    with pytest.raises(Busy):  # shared -> exclusive waits for the other reader
        durable.flock_with_deadline(other, 0.2, busy)
    fcntl.flock(holder, fcntl.LOCK_UN)
    durable.flock_with_deadline(other, 5, busy)  # converted to exclusive
    with pytest.raises(BlockingIOError):
        fcntl.flock(holder, fcntl.LOCK_SH | fcntl.LOCK_NB)


def test_read_all_reads_to_the_end_or_gives_none_past_the_limit(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 200_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert durable.read_all(fd, 200_000) == b"x" * 200_000
        os.lseek(fd, 0, os.SEEK_SET)
        assert durable.read_all(fd, 199_999) is None
        assert durable.read_all(fd, 0) == b""  # at the end already
    finally:
        os.close(fd)
