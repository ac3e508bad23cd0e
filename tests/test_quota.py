"""Tests for pymda.quota: maildirsize format, limits, boundaries, rebuilds,
interoperability with dovecot's `maildir` quota backend, and (through the
installed pymda) quota enforcement at delivery.

Dovecot's rule, checked here against dovecot itself (`doveadm save` with
the quota plugin): usage + size == limit is accepted, one byte more is
refused ("Quota exceeded").
"""

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pymda import config, quota
from pymda.errors import EX_NOPERM, EX_TEMPFAIL, PermFail, TempFail
from pymda.record import Record
from pymda.users import Identity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import paths  # noqa: E402
from support.dovecot import QuotaDovecot as Dovecot  # noqa: E402
from support.run import run_pymda, start_pymda, finish  # noqa: E402
from support.users import create_user, delete_user  # noqa: E402

FULL_TEXT = "Mailbox is full"
FULL_PERM = "5.2.2"
FULL_TEMP = "4.2.2"
FULL_PERM_LINE = b"5.2.2 Mailbox is full"
FULL_TEMP_LINE = b"4.2.2 Mailbox is full"
TOO_BIG_STATUS = b"5.2.3"
LOCK_BUSY_STATUS = "4.2.0"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users)")
DOVEADM = "/usr/bin/doveadm"
needs_dovecot = pytest.mark.skipif(not os.path.exists(DOVEADM), reason="dovecot-core missing")


class Target(Record):
    """Stand-in with the shape of resolve.Target that quota uses."""

    __slots__ = ("kind", "path", "folder", "identity")
    _defaults = {"folder": "INBOX"}


NOBODY = Identity(name="nobody", uid=65534, gid=65534, home="/nonexistent")


def make_cfg(tmp_path, text="", overrides=()):
    """A Config from TOML ``text`` (no cache written)."""
    path = None
    if text:
        path = tmp_path / "pymda.toml"
        path.write_text(textwrap.dedent(text))
    return config.load(str(path) if path else None, list(overrides),
                       environ={"PYMDA_CACHE_DIR": str(tmp_path / "cache")},
                       write_cache=False)


def make_maildir(root, folders=()):
    root = Path(root)
    for folder in ("",) + tuple("." + f for f in folders):
        for sub in ("new", "cur", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    return str(root) + "/"


def put(maildir, name, size, folder="", sub="new"):
    """A message file of ``size`` bytes (the name may carry ,S=)."""
    path = Path(maildir) / folder / sub / name
    path.write_bytes(b"x" * size)
    return path


def check(target, size, cfg):
    """quota.check, its hold released at once (as after a delivery)."""
    quota.release(quota.check(target, size, cfg))


def maildirsize(maildir):
    return (Path(maildir) / "maildirsize").read_text()


# --- the file format ---------------------------------------------------------


@pytest.mark.parametrize("storage,messages,line", [
    (0, 0, "0S"),           # dovecot writes 0S rather than an empty line
    (1024, 0, "1024S"),
    (1024, 10, "1024S,10C"),
    (0, 10, "10C"),
])
def test_format_limits_as_dovecot_writes_them(storage, messages, line):
    assert quota.format_limits(storage, messages) == line
    assert quota.parse_limits(line) == (storage, messages)


def test_parse_sums_every_line_and_ignores_an_unfinished_last_line():
    data = b"1000S,5C\n100 1\n  50   2\n-30 -1\n999 9"
    assert quota.parse_maildirsize(data) == ((1000, 5), 120, 2, 3)


@pytest.mark.parametrize("data", [
    b"1000S\n100 1\n\0\n",
    b"1000S\n100\n",
    b"1000S\nabc 1\n",
    b"1000S\n-5 -1\n",
    b"",
    b"no newline at all",
])
def test_corrupt_files_are_rejected(data):
    assert quota.parse_maildirsize(data) is None


@pytest.mark.parametrize("name,size", [
    ("1.M2P3.host,S=1234", 1234),
    ("1.M2P3.host,S=1234,W=1260:2,S", 1234),
    ("1.M2P3.host,S=1234:2,", 1234),
    ("1.M2P3.host", None),
    ("1.M2P3.host,S=12x4", None),
    ("1.M2P3.host,S=", None),
    ("1.M2P3.host,S=\u00b2:2,S", None),        # str.isdigit() says yes, int() raises
    ("1.M2P3.host,S=\u0663\u0663", None),       # int() would read 33
    ("1.M2P3.host,S=" + "9" * 30, None),        # beyond int64: not a size
])
def test_size_from_name(name, size):
    assert quota.size_from_name(name) == size


# --- limits ------------------------------------------------------------------


def test_per_user_values_override_global(tmp_path):
    cfg = make_cfg(tmp_path, """
        quota_storage = "10M"
        quota_messages = 100
        [users."alice"]
        quota_storage = "1K"
        [users."bob@example.org"]
        quota_messages = 3
        uid = 5000
        gid = 5000
        home = "/srv/mail/bob"
    """)
    assert quota.limits(cfg, Identity(name="alice", uid=1, gid=1, home="/")) == (1024, 100)
    assert quota.limits(cfg, Identity(name="bob@example.org", uid=1, gid=1, home="/")) == (10 << 20, 3)
    assert quota.limits(cfg, Identity(name="carol", uid=1, gid=1, home="/")) == (10 << 20, 100)


def test_an_address_table_without_uid_is_a_config_error(tmp_path):
    """A quota-only [users."alice@example.org"] made alice@example.org an
    unknown (virtual) user: 5.1.1, her mail bounced.  Now the file is refused
    (check-config says so; delivery defers)."""
    from pymda.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make_cfg(tmp_path, """
            [users."alice@example.org"]
            quota_storage = "1G"
        """)
    assert 'users."alice@example.org"' in err.value.text and "uid, gid and home" in err.value.text
    assert str(tmp_path / "pymda.toml") in err.value.text


# --- check: boundaries ---------------------------------------------------------


def test_storage_exactly_at_limit_is_accepted_one_byte_over_refused(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    put(md, "1.M1P1.h,S=600", 600)
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    check(t, 400, cfg)
    with pytest.raises(PermFail) as err:
        check(t, 401, cfg)
    assert err.value.status == FULL_PERM and err.value.text == FULL_TEXT
    assert err.value.exit == EX_NOPERM


def test_message_count_limit(tmp_path):
    md = make_maildir(tmp_path / "Maildir", folders=["Work"])
    put(md, "1.M1P1.h,S=10", 10)
    put(md, "2.M1P1.h,S=10:2,S", 10, folder=".Work", sub="cur")
    cfg = make_cfg(tmp_path, overrides=["quota_messages=3"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    check(t, 10, cfg)           # the 3rd message fits
    put(md, "3.M1P1.h,S=10", 10)
    quota.record(t, 10, cfg)
    with pytest.raises(PermFail):     # the 4th does not (recounted: still 3)
        check(t, 1, cfg)


def test_tempfail_mode(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=10", "quota_full_tempfail=true"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    with pytest.raises(TempFail) as err:
        check(t, 11, cfg)
    assert err.value.status == FULL_TEMP and err.value.exit == EX_TEMPFAIL
    assert err.value.line() == FULL_TEMP_LINE.decode()


def test_mbox_uses_file_size_and_ignores_message_limit(tmp_path):
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"y" * 700)
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000", "quota_messages=1"])
    t = Target(kind="mbox", path=str(mbox), identity=NOBODY)
    check(t, 300, cfg)
    with pytest.raises(PermFail):
        check(t, 301, cfg)
    missing = Target(kind="mbox", path=str(tmp_path / "none"), identity=NOBODY)
    check(missing, 1000, cfg)
    assert quota.usage(cfg, NOBODY, t) == (700, None)


def test_folders_and_trash_count_tmp_does_not(tmp_path):
    md = make_maildir(tmp_path / "Maildir", folders=["Trash", "Work.Reports"])
    put(md, "a,S=100", 100)
    put(md, "b", 7, sub="cur")                          # no S=: stat
    put(md, "c,S=200:2,ST", 200, folder=".Trash", sub="cur")
    put(md, "d,S=300", 300, folder=".Work.Reports")
    put(md, "e,S=999", 999, sub="tmp")                  # not delivered yet
    assert quota.scan(md) == (607, 4)


_AUDIT = {"on": False, "seen": []}


def _audit(event, args):
    if _AUDIT["on"] and event in ("open", "os.scandir", "os.listdir", "os.rename"):
        _AUDIT["seen"].append((event, args))


sys.addaudithook(_audit)


def test_no_limit_means_no_file_io(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    cfg = make_cfg(tmp_path)
    _AUDIT["seen"].clear()
    _AUDIT["on"] = True
    try:
        check(Target(kind="maildir", path=md, identity=NOBODY), 10**12, cfg)
        check(Target(kind="mbox", path=str(tmp_path / "mbox"), identity=NOBODY), 10**12, cfg)
    finally:
        _AUDIT["on"] = False
    assert _AUDIT["seen"] == []
    assert not (Path(md) / "maildirsize").exists()


def test_a_trusted_file_costs_the_lock_and_one_open_and_no_scan(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    (Path(md) / "maildirsize").write_text("1000S\n10 1\n")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    _AUDIT["seen"].clear()
    _AUDIT["on"] = True
    try:
        check(Target(kind="maildir", path=md, identity=NOBODY), 10, cfg)
    finally:
        _AUDIT["on"] = False
    seen = [(e, os.path.basename(args[0])) for e, args in _AUDIT["seen"]]
    assert seen == [("open", quota.LOCK_NAME), ("open", "maildirsize")]


def test_check_imports_nothing_heavy():
    code = ("import sys; from pymda import quota; "
            "heavy = {'filelock', 're', 'json', 'tomllib', 'asyncio', 'click', 'socket',"
            " 'tempfile', 'logging', 'subprocess'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-S", "-c", code], check=True, cwd=paths.REPO)


# --- maildirsize: when it is trusted, when it is rebuilt ---------------------


def test_missing_file_is_built_with_configured_limits(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    put(md, "1,S=100", 100)
    put(md, "2", 23, sub="cur")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=2048", "quota_messages=50"])
    check(Target(kind="maildir", path=md, identity=NOBODY), 1, cfg)
    assert maildirsize(md) == "2048S,50C\n123 2\n"
    assert oct(os.stat(Path(md) / "maildirsize").st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(md)) == sorted(["new", "cur", "tmp", "maildirsize",
                                              quota.LOCK_NAME])


def test_trusted_file_is_not_rescanned(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    (Path(md) / "maildirsize").write_text("1000S\n900 1\n")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    # The directory is empty, but the file says 900: the file wins.
    with pytest.raises(PermFail):
        check(t, 101, cfg)
    check(t, 100, cfg)
    assert maildirsize(md) == "1000S\n900 1\n"


@pytest.mark.parametrize("content", [
    "garbage\n",
    "1000S\n5 1\n\0\n",
    "1000S\n-5 -1\n",
    "2000S\n0 0\n",               # limits changed in the config
    "1000S\n0 0\n" + "1 1\n" * 1280,  # 5120 bytes and more
    "1000S\n2000 1\n1 1\n",       # over quota with more than one line
    "1" + "0" * 4400 + "S\n0 0\n",  # int() raises on over 4300 digits
    "1000S\n1_0 1\n",             # int() would take these
    "1000S\n+5 1\n",
])
def test_untrusted_file_is_rebuilt(tmp_path, content):
    md = make_maildir(tmp_path / "Maildir")
    put(md, "1,S=100", 100)
    (Path(md) / "maildirsize").write_text(content)
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    check(Target(kind="maildir", path=md, identity=NOBODY), 900, cfg)
    assert maildirsize(md) == "1000S\n100 1\n"


def _with_maildirsize(tmp_path, name, size, content):
    """A Maildir holding one message ``name`` of ``size`` bytes and a
    maildirsize saying ``content``: (root, the maildirsize Path)."""
    md = make_maildir(tmp_path / "Maildir")
    put(md, name, size)
    size_file = Path(md) / "maildirsize"
    size_file.write_text(content)
    return md, size_file


def test_over_quota_single_line_trusted_while_fresh_rebuilt_when_stale(tmp_path):
    md, size_file = _with_maildirsize(tmp_path, "1,S=100", 100, "1000S\n2000 5\n")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    with pytest.raises(PermFail):
        check(t, 1, cfg)
    old = time.time() - quota.STALE_SECONDS - 5
    os.utime(size_file, (old, old))
    check(t, 1, cfg)
    assert maildirsize(md) == "1000S\n100 1\n"


def test_a_file_at_exactly_the_limit_with_several_lines_is_recounted(tmp_path):
    """Issue 8 item 5: a client deleted mail without updating maildirsize;
    the file says exactly full (not over), the next message would not fit:
    recount (courier) instead of refusing for ever."""
    # the 600 was deleted
    md, size_file = _with_maildirsize(tmp_path, "1,S=400", 400, "1000S\n400 1\n600 1\n")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    check(t, 100, cfg)
    assert maildirsize(md) == "1000S\n400 1\n"


def test_a_single_line_file_at_the_limit_is_trusted_while_fresh(tmp_path):
    md, size_file = _with_maildirsize(tmp_path, "1,S=400", 400, "1000S,5C\n1000 1\n")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000", "quota_messages=5"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    with pytest.raises(PermFail):
        check(t, 1, cfg)
    assert maildirsize(md) == "1000S,5C\n1000 1\n"       # no scan
    old = time.time() - quota.STALE_SECONDS - 5
    os.utime(size_file, (old, old))
    check(t, 600, cfg)
    assert maildirsize(md) == "1000S,5C\n400 1\n"


def test_a_file_at_the_message_limit_with_several_lines_is_recounted(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    put(md, "1,S=10", 10)
    (Path(md) / "maildirsize").write_text("0S,2C\n10 1\n10 1\n")
    cfg = make_cfg(tmp_path, overrides=["quota_messages=2"])
    check(Target(kind="maildir", path=md, identity=NOBODY), 10, cfg)
    assert maildirsize(md) == "2C\n10 1\n"


def test_a_read_only_view_of_a_full_file_is_not_rescanned(tmp_path):
    """pymda-policyd and pymda-admin ask without a message: exactly full
    is not over, the file is believed (one open, no scan)."""
    md = make_maildir(tmp_path / "Maildir")
    (Path(md) / "maildirsize").write_text("1000S\n500 1\n500 1\n")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    assert quota.usage(cfg, NOBODY, t) == (1000, 2)


def test_record_appends_one_line_only_when_the_file_exists(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    t = Target(kind="maildir", path=md, identity=NOBODY)
    quota.record(t, 42, None)
    assert not (Path(md) / "maildirsize").exists()
    (Path(md) / "maildirsize").write_text("0S\n0 0\n")
    quota.record(t, 42, None)
    quota.record(t, 8, None)
    assert maildirsize(md) == "0S\n0 0\n42 1\n8 1\n"
    quota.record(Target(kind="mbox", path=str(tmp_path / "mbox"), identity=NOBODY), 5, None)
    assert not (tmp_path / "mbox").exists()


def test_symlinked_maildirsize_is_never_followed(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    victim = tmp_path / "victim"
    victim.write_text("1000S\n0 0\n")
    (Path(md) / "maildirsize").symlink_to(victim)
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    check(t, 10, cfg)          # rebuilt: the link is replaced, not written through
    quota.record(t, 10, cfg)
    assert victim.read_text() == "1000S\n0 0\n"
    assert not (Path(md) / "maildirsize").is_symlink()


def _child_prologue(md, *options):
    """Python source a child process starts with: ``cfg`` (config with
    ``options``), ``t`` (a maildir Target of ``md`` for nobody), ``quota``."""
    return textwrap.dedent(f"""
        from pymda import config, quota
        from pymda.record import Record
        from pymda.users import Identity
        class T(Record):
            __slots__ = ("kind", "path", "folder", "identity")
        cfg = config.load(None, {list(options)!r}, environ={{}})
        t = T(kind="maildir", path={md!r}, folder="INBOX",
              identity=Identity(name="nobody", uid=65534, gid=65534, home="/"))
    """)


def test_a_fifo_or_directory_named_maildirsize_blocks_nothing(tmp_path):
    """A user's FIFO must not hang a delivery or pymda-policyd (its worker
    threads): it is not a regular file, so it is untrusted and rebuilt."""
    md = make_maildir(tmp_path / "Maildir")
    put(md, "1,S=100", 100)
    fifo = Path(md) / "maildirsize"
    code = _child_prologue(md, "quota_storage=1000") + textwrap.dedent(f"""
        import os
        quota.record(t, 5, cfg)                              # no reader: skipped
        print(quota.usage(cfg, t.identity, t))               # policyd: a scan
        quota.release(quota.check(t, 900, cfg))              # delivery: rebuilt
        print(open(os.path.join({md!r}, "maildirsize")).read(), end="")
    """)
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-c", code], cwd=paths.REPO, timeout=30,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert (proc.returncode, proc.stdout) == (0, b"(100, 1)\n1000S\n100 1\n"), proc.stdout
    fifo.unlink()
    fifo.mkdir()
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=md, identity=NOBODY)
    assert quota.usage(cfg, NOBODY, t) == (100, 1)
    quota.record(t, 5, cfg)
    with pytest.raises(TempFail):                            # cannot replace it: defer
        check(t, 1, cfg)


def test_missing_maildir_counts_as_empty(tmp_path):
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1000"])
    t = Target(kind="maildir", path=str(tmp_path / "new-user" / "Maildir") + "/", identity=NOBODY)
    check(t, 1000, cfg)
    with pytest.raises(PermFail):
        check(t, 1001, cfg)


# --- serialised rebuilds -----------------------------------------------------


def _check_in_child(md, storage, timeout):
    code = _child_prologue(md, f"quota_storage={storage}", f"lock_timeout={timeout}")
    code += textwrap.dedent("""
        import sys
        try:
            quota.release(quota.check(t, 1, cfg))
        except Exception as e:
            print(e.line() if hasattr(e, "line") else repr(e)); sys.exit(e.exit)
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=paths.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_rebuild_waits_for_the_lock_holder(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    put(md, "1,S=100", 100)
    fd = os.open(os.path.join(md, quota.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        child = _check_in_child(md, 1000, 30)
        time.sleep(0.5)
        assert child.poll() is None, child.communicate()
        assert not (Path(md) / "maildirsize").exists()
    finally:
        os.close(fd)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out
    assert maildirsize(md) == "1000S\n100 1\n"


def test_a_lock_held_too_long_defers(tmp_path):
    md = make_maildir(tmp_path / "Maildir")
    fd = os.open(os.path.join(md, quota.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        out, _ = _check_in_child(md, 1000, 0.3).communicate(timeout=30)
    finally:
        os.close(fd)
    assert out.startswith(LOCK_BUSY_STATUS.encode()), out


def test_concurrent_check_and_record_never_corrupt_the_file(tmp_path):
    """Many processes rebuild, check and append at once, near the limit."""
    md = make_maildir(tmp_path / "Maildir")
    workers = 12
    code = _child_prologue(md, "quota_storage=5000") + textwrap.dedent(f"""
        import os, sys
        n = int(sys.argv[1])
        for i in range(40):
            try:
                hold = quota.check(t, 100, cfg)
            except quota_error:
                continue
            name = f"{{n}}.{{i}},S=100"
            with open(os.path.join({md!r}, "tmp", name), "wb") as f:
                f.write(b"x" * 100)
            os.rename(os.path.join({md!r}, "tmp", name), os.path.join({md!r}, "new", name))
            quota.record(t, 100, cfg)
            quota.release(hold)
            if i % 7 == 0:   # force rebuilds while others append
                try:
                    os.unlink(os.path.join({md!r}, "maildirsize"))
                except FileNotFoundError:
                    pass
    """).replace("quota_error", "__import__('pymda.errors').errors.PermFail")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], cwd=paths.REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for n in range(workers)]
    samples = []
    while any(p.poll() is None for p in procs):
        try:
            samples.append((Path(md) / "maildirsize").read_bytes())
        except FileNotFoundError:
            pass
    for p in procs:
        out, _ = p.communicate()
        assert p.returncode == 0, out
    for data in samples + [(Path(md) / "maildirsize").read_bytes()]:
        parsed = quota.parse_maildirsize(data)
        assert parsed is not None, data
        assert parsed[0] == (5000, 0)
    used_bytes, used_count = quota.scan(md)
    # The Maildir++ quota is advisory: racing deliveries may overshoot by
    # at most one message each, never more.
    assert used_count <= 50 + workers
    assert used_bytes == used_count * 100


# --- dovecot interoperability -------------------------------------------------


@pytest.fixture
def mailuser():
    if os.geteuid() != 0:
        pytest.skip("needs root (creates users)")
    user = create_user()
    try:
        yield user
    finally:
        delete_user(user)


def user_maildir(user, folders=()):
    md = make_maildir(user.home / "Maildir", folders)
    for dirpath, dirnames, filenames in os.walk(user.home / "Maildir"):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), user.uid, user.gid)
        os.chmod(dirpath, 0o700)
    os.chown(user.home / "Maildir", user.uid, user.gid)
    return md


def user_put(user, md, name, size, folder="", sub="new"):
    p = put(md, name, size, folder, sub)
    os.chown(p, user.uid, user.gid)


def identity_of(user):
    return Identity(name=user.name, uid=user.uid, gid=user.gid, home=str(user.home))


@needs_dovecot
def test_dovecot_reads_pymda_maildirsize_and_pymda_agrees_after_recalc(tmp_path, mailuser):
    md = user_maildir(mailuser, folders=["Work"])
    user_put(mailuser, md, "1.M1P1.h,S=2048", 2048)
    user_put(mailuser, md, "2.M1P1.h,S=1024:2,S", 1024, folder=".Work", sub="cur")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=10K", "quota_messages=20"])
    t = Target(kind="maildir", path=md, identity=identity_of(mailuser))
    check(t, 1, cfg)                     # pymda writes maildirsize
    assert os.stat(Path(md) / "maildirsize").st_uid == mailuser.uid
    quota.record(t, 4096, cfg)                 # a line no message backs
    dovecot = Dovecot(tmp_path, mailuser, md, "storage=10K:messages=20")
    # dovecot believes the file (7 KiB, 3 messages), it did not scan
    assert dovecot.quota_get() == {"STORAGE": (7, 10), "MESSAGE": (3, 20)}
    assert maildirsize(md) == "10240S,20C\n3072 2\n4096 1\n"
    dovecot.recalc()
    assert dovecot.quota_get() == {"STORAGE": (3, 10), "MESSAGE": (2, 20)}
    assert quota.read_maildirsize(md, 10240, 20) == (3072, 2)
    assert quota.usage(cfg, t.identity, t) == (3072, 2)


@needs_dovecot
def test_pymda_honours_a_maildirsize_written_by_dovecot(tmp_path, mailuser):
    md = user_maildir(mailuser)
    dovecot = Dovecot(tmp_path, mailuser, md, "storage=2K")
    msg = b"Subject: x\n\n" + b"a" * (1000 - 13) + b"\n"
    assert dovecot.save(msg).returncode == 0
    assert maildirsize(md).startswith("2048S\n")
    # a message dovecot does not know about: pymda must not rescan
    user_put(mailuser, md, "9.M9P9.h,S=500", 500, sub="cur")
    cfg = make_cfg(tmp_path, overrides=["quota_storage=2K"])
    t = Target(kind="maildir", path=md, identity=identity_of(mailuser))
    check(t, 1048, cfg)
    with pytest.raises(PermFail):
        check(t, 1049, cfg)


@needs_dovecot
def test_boundary_is_the_same_as_dovecots(tmp_path, mailuser):
    """dovecot accepts usage == limit and refuses one byte more; so does pymda."""
    md = user_maildir(mailuser)
    dovecot = Dovecot(tmp_path, mailuser, md, "storage=1K")

    def message(size):
        return b"Subject: x\n\n" + b"a" * (size - 13) + b"\n"

    assert dovecot.save(message(1000)).returncode == 0
    assert dovecot.save(message(25)).returncode != 0      # 1025 > 1024
    cfg = make_cfg(tmp_path, overrides=["quota_storage=1K"])
    t = Target(kind="maildir", path=md, identity=identity_of(mailuser))
    with pytest.raises(PermFail):
        check(t, 25, cfg)
    check(t, 24, cfg)
    assert dovecot.save(message(24)).returncode == 0      # 1024 == 1024
    with pytest.raises(PermFail):
        check(t, 1, cfg)


# --- at delivery, through the installed pymda ---------------------------------

needs_pymda = pytest.mark.skipif(not os.access(paths.pymda_bin(), os.X_OK),
                                 reason="pymda is not installed (scripts/install)")

MESSAGE = b"From: a@example.org\nTo: b@example.org\nSubject: quota\n\n" + b"body\n" * 40


def deliver(user, *args, data=MESSAGE, cfg_file=None):
    argv = ["-d", user.name, "-f", "sender@example.org", "-a", f"{user.name}@localhost"]
    if cfg_file:
        argv += ["-c", str(cfg_file)]
    return run_pymda(argv + list(args), data)


def stored_sizes(md):
    sizes = []
    for sub in ("new", "cur"):
        for name in os.listdir(Path(md) / sub):
            sizes.append(os.path.getsize(Path(md) / sub / name))
    return sizes


@pytest.fixture
def delivered_size(mailuser):
    """Bytes one MESSAGE takes in the user's Maildir (trace headers included)."""
    code, out = deliver(mailuser, "--mailbox", "Probe/", "-o", "quota_storage=0")
    assert code == 0, out
    (size,) = stored_sizes(mailuser.home / "Probe")
    return size


@needs_pymda
def test_delivery_at_the_limit_and_one_byte_over(mailuser, delivered_size):
    limit = f"quota_storage={2 * delivered_size}"
    for _ in range(2):
        code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", limit)
        assert (code, out) == (0, b"")
    code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", limit)
    assert code == EX_NOPERM and out.startswith(FULL_PERM_LINE), out
    md = mailuser.home / "Maildir"
    assert len(stored_sizes(md)) == 2
    assert quota.parse_maildirsize((md / "maildirsize").read_bytes())[1:3] == (2 * delivered_size, 2)
    # one byte less room: the second message no longer fits
    code, out = deliver(mailuser, "--mailbox", "Other/", "-o", f"quota_storage={2 * delivered_size - 1}")
    assert code == 0, out
    code, out = deliver(mailuser, "--mailbox", "Other/", "-o", f"quota_storage={2 * delivered_size - 1}")
    assert code == EX_NOPERM and out.startswith(FULL_PERM_LINE), out


@needs_pymda
def test_delivery_with_a_fifo_named_maildirsize(mailuser):
    """The message is in new/ before maildirsize is appended to: a blocking
    open there meant a timeout, a retry and a duplicate."""
    md = user_maildir(mailuser)
    fifo = Path(md) / "maildirsize"
    os.mkfifo(fifo)
    os.chown(fifo, mailuser.uid, mailuser.gid)
    code, out = run_pymda(["-d", mailuser.name, "-f", "s@example.org", "--mailbox", "Maildir/"],
                          MESSAGE, timeout=30)
    assert (code, out) == (0, b"")
    assert len(stored_sizes(md)) == 1
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)   # no limit: left alone
    code, out = run_pymda(["-d", mailuser.name, "-f", "s@example.org", "--mailbox", "Maildir/",
                           "-o", "quota_storage=1M"], MESSAGE, timeout=30)
    assert (code, out) == (0, b"")
    assert len(stored_sizes(md)) == 2
    assert quota.parse_maildirsize(fifo.read_bytes())[1:3] == (sum(stored_sizes(md)), 2)


@needs_pymda
def test_delivery_message_count_limit(mailuser):
    for _ in range(3):
        code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", "quota_messages=3")
        assert code == 0, out
    code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", "quota_messages=3")
    assert code == EX_NOPERM and out.startswith(FULL_PERM_LINE), out
    assert len(stored_sizes(mailuser.home / "Maildir")) == 3


@needs_pymda
def test_delivery_into_a_folder_counts_against_the_root(mailuser):
    for _ in range(2):
        code, out = deliver(mailuser, "--mailbox", "Maildir/", "-m", "Work", "-o", "quota_messages=2")
        assert code == 0, out
    code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", "quota_messages=2")
    assert code == EX_NOPERM and out.startswith(FULL_PERM_LINE), out
    assert (mailuser.home / "Maildir" / "maildirsize").exists()
    assert not (mailuser.home / "Maildir" / ".Work" / "maildirsize").exists()


@needs_pymda
def test_delivery_per_user_override(tmp_path, mailuser):
    cfg_file = tmp_path / "pymda.toml"
    cfg_file.write_text(textwrap.dedent(f"""
        mailbox = "Maildir/"
        quota_messages = 100
        [users."{mailuser.name}"]
        quota_messages = 1
    """))
    os.chmod(tmp_path, 0o755)
    os.chmod(cfg_file, 0o644)
    code, out = deliver(mailuser, cfg_file=cfg_file)
    assert code == 0, out
    code, out = deliver(mailuser, cfg_file=cfg_file)
    assert code == EX_NOPERM and out.startswith(FULL_PERM_LINE), out


@needs_pymda
def test_delivery_address_table_without_uid_defers_never_bounces(tmp_path, mailuser):
    cfg_file = tmp_path / "pymda.toml"
    cfg_file.write_text(f'mailbox = "Maildir/"\n[users."{mailuser.name}@localhost"]\n'
                        'quota_storage = 10\n')
    os.chmod(tmp_path, 0o755)
    os.chmod(cfg_file, 0o644)
    code, out = run_pymda(["-c", str(cfg_file), "-a", f"{mailuser.name}@localhost",
                           "-f", "s@example.org"], MESSAGE)
    assert code == EX_TEMPFAIL and out.startswith(b"4."), out
    assert b"uid, gid and home" in out


@needs_pymda
def test_delivery_mbox_quota(mailuser):
    code, out = deliver(mailuser, "--mailbox", "probe.mbox", "-o", "quota_storage=0")
    assert code == 0, out
    one = os.path.getsize(mailuser.home / "probe.mbox")
    limit = f"quota_storage={2 * one}"
    for _ in range(2):
        code, out = deliver(mailuser, "--mailbox", "mail.mbox", "-o", limit)
        assert code == 0, out
    code, out = deliver(mailuser, "--mailbox", "mail.mbox", "-o", limit)
    assert code == EX_NOPERM and out.startswith(FULL_PERM_LINE), out
    assert os.path.getsize(mailuser.home / "mail.mbox") == 2 * one


@needs_pymda
def test_delivery_tempfail_mode(mailuser):
    code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", "quota_storage=10",
                        "-o", "quota_full_tempfail=true")
    assert code == EX_TEMPFAIL and out.startswith(FULL_TEMP_LINE), out
    md = mailuser.home / "Maildir"
    assert not md.exists() or stored_sizes(md) == []


@needs_pymda
def test_delivery_message_size_limit(mailuser):
    size = len(MESSAGE)
    code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", f"message_size_limit={size - 1}")
    assert code == EX_NOPERM and out.startswith(TOO_BIG_STATUS + b" "), out
    code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", f"message_size_limit={size}")
    assert code == 0, out


@needs_pymda
def test_concurrent_deliveries_near_the_limit(mailuser, delivered_size):
    limit = f"quota_storage={5 * delivered_size}"
    procs = [start_pymda(["-d", mailuser.name, "-f", "s@example.org", "-a",
                          f"{mailuser.name}@localhost", "--mailbox", "Maildir/", "-o", limit],
                         MESSAGE) for _ in range(16)]
    results = [finish(p) for p in procs]
    codes = sorted(r.code for r in results)
    assert set(codes) <= {0, EX_NOPERM}, results
    md = mailuser.home / "Maildir"
    delivered = len(stored_sizes(md))
    assert delivered == codes.count(0)
    assert 5 <= delivered <= 5 + len(procs)  # advisory quota: overshoot only by racing
    parsed = quota.parse_maildirsize((md / "maildirsize").read_bytes())
    assert parsed is not None and parsed[0] == (5 * delivered_size, 0)
    # the next delivery (sequential) is refused: the mailbox is full
    code, out = deliver(mailuser, "--mailbox", "Maildir/", "-o", limit)
    assert code == EX_NOPERM and out.startswith(FULL_PERM_LINE), out


# --- pymda-admin quota ----------------------------------------------------------

USER_UNKNOWN = b"5.1.1 "


def admin_bin():
    return paths.prefix() / "bin" / "pymda-admin"


@needs_root
def test_admin_quota_shows_usage_and_recalc_rebuilds_as_the_user(tmp_path, mailuser):
    md = user_maildir(mailuser, folders=["Trash"])
    user_put(mailuser, md, "1,S=2048", 2048)
    user_put(mailuser, md, "2,S=1024:2,ST", 1024, folder=".Trash", sub="cur")
    (Path(md) / "maildirsize").write_text("bad\n")
    cfg_file = tmp_path / "pymda.toml"
    cfg_file.write_text('mailbox = "Maildir/"\nquota_storage = "8K"\nquota_messages = 4\n')
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([admin_bin(), "quota", "-c", cfg_file, f"{mailuser.name}+x@localhost"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert out.returncode == 0, out.stdout
    text = out.stdout.decode()
    assert f"user:     {mailuser.name}\n" in text
    assert "[3072 of 8192 bytes]" in text and "(37%)" in text
    assert "messages: 2 of 4 (50%)" in text
    assert maildirsize(md) == "bad\n"                  # reading writes nothing
    out = subprocess.run([admin_bin(), "quota", "--recalc", "-c", cfg_file, mailuser.name],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert out.returncode == 0, out.stdout
    assert maildirsize(md) == "8192S,4C\n3072 2\n"
    st = os.stat(Path(md) / "maildirsize")
    assert (st.st_uid, st.st_gid) == (mailuser.uid, mailuser.gid)
    assert os.stat(Path(md) / quota.LOCK_NAME).st_uid == mailuser.uid


def test_admin_quota_unknown_user(tmp_path):
    cfg_file = tmp_path / "pymda.toml"
    cfg_file.write_text("quota_storage = 1000\n")
    out = subprocess.run([admin_bin(), "quota", "-c", cfg_file, "no-such-user-xyz"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 67 and out.stdout.startswith(b"pymda-admin: " + USER_UNKNOWN), \
        out.stdout


def test_admin_quota_report_format():
    from pymda.admin.quota import format_report

    ident = Identity(name="alice", uid=1, gid=1, home="/home/alice")
    t = Target(kind="mbox", path="/var/mail/alice", identity=ident)
    assert format_report(ident, t, 0, 0, 1536, None) == (
        "user:     alice\n"
        "mailbox:  /var/mail/alice (mbox)\n"
        "storage:  1.5 KiB, no limit   [1536 bytes]\n"
        "messages: not counted for mbox")
