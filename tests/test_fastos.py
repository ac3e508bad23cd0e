"""pymda.fastos must behave like os / posixpath for what the delivery path uses."""

import os
import posixpath
import subprocess
import sys

import pytest

from pymda import fastos

PATHS = ["", "/", "//", "///", "a", "/a", "a/", "/a/", "a/b", "/a/b/", "a//b", "//a",
         "/a/./b", "a/../b", "../a", "/..", "/a/b/..", ".", "..", "a/./", "x/.y", "/a//b//"]


@pytest.mark.parametrize("p", PATHS)
def test_path_functions_match_posixpath(p):
    assert fastos.path.split(p) == posixpath.split(p)
    assert fastos.path.dirname(p) == posixpath.dirname(p)
    assert fastos.path.basename(p) == posixpath.basename(p)
    assert fastos.path.normpath(p) == posixpath.normpath(p)
    assert fastos.path.abspath(p) == posixpath.abspath(p)


@pytest.mark.parametrize("a, parts", [
    ("a", ("b",)), ("a/", ("b",)), ("", ("b",)), ("a", ("/b",)), ("/a", ("b", "c")),
    ("/a", ("", "c")), ("a", ("b/", "")), ("/", ("x",)),
])
def test_join_matches_posixpath(a, parts):
    assert fastos.path.join(a, *parts) == posixpath.join(a, *parts)


def test_existence_checks(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    d = tmp_path / "d"
    d.mkdir()
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "missing")
    for p in (f, d, link, tmp_path / "missing", "bad\0path"):
        p = str(p)
        assert fastos.path.exists(p) == os.path.exists(p)
        assert fastos.path.lexists(p) == os.path.lexists(p)
        assert fastos.path.isdir(p) == os.path.isdir(p)
        assert fastos.path.isfile(p) == os.path.isfile(p)


def test_makedirs_modes_and_exist_ok(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "a" / "b" / "c"
        fastos.makedirs(str(target), 0o700)
        assert (target.stat().st_mode & 0o777) == 0o700
        assert ((tmp_path / "a").stat().st_mode & 0o777) == 0o755  # parents: default
        fastos.makedirs(str(target), 0o700, exist_ok=True)
        with pytest.raises(FileExistsError):
            fastos.makedirs(str(target), 0o700)
        (tmp_path / "file").write_text("x")
        with pytest.raises(FileExistsError):
            fastos.makedirs(str(tmp_path / "file"), exist_ok=True)
    finally:
        os.umask(old)


def test_functions_are_os_functions():
    for name in ("open", "read", "write", "fsync", "link", "unlink", "lstat", "fstat",
                 "pread", "urandom", "getpid", "uname", "posix_spawn", "waitpid",
                 "waitstatus_to_exitcode", "setgroups", "ftruncate", "utime", "access"):
        assert getattr(fastos, name) is getattr(os, name), name
    for name in ("O_TMPFILE", "O_NOFOLLOW", "O_CLOEXEC", "O_APPEND", "O_DIRECTORY",
                 "SEEK_END", "X_OK", "POSIX_SPAWN_DUP2"):
        assert getattr(fastos, name) == getattr(os, name), name
    assert fastos.devnull == os.devnull


def test_environ_is_live_os_environ_once_os_is_loaded(monkeypatch):
    monkeypatch.setenv("PYMDA_FASTOS_TEST", "yes")
    assert fastos.environ["PYMDA_FASTOS_TEST"] == "yes"


def test_environ_snapshot_without_os():
    code = ("import sys; sys.path.insert(0, %r); from pymda import fastos; "
            "e = fastos.environ; print(e['PYMDA_X'], 'os' in sys.modules)"
            % str(os.path.dirname(os.path.dirname(fastos.__file__))))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         env={"PYMDA_X": "caf\u00e9"}, check=True, text=True).stdout
    assert out.split() == ["caf\u00e9", "False"]
