"""pymda-admin redeliver as a real process on real files (SPEC 4, issue 5).

The whole corpus, packed as admins find old mail (Python mailbox mbox,
procmail mbox, gzip/bzip2/xz copies, a Maildir with flags, single files,
stdin), is redelivered into a Maildir and into an mbox: every message
arrives exactly once with its body intact, a second run delivers nothing,
a run killed with SIGKILL and run again completes with no duplicate, a
quota reached mid-batch is counted, bad sources deliver nothing.
"""

import os
import re
import signal
import subprocess
import time

import pytest

import redeliver_packs as packs
from redeliver_packs import read_bytes
from support import paths

SUMMARY = re.compile(rb"^(\d+) delivered, (\d+) skipped, (\d+) failed$")
RATE = re.compile(rb"^\d+ messages in [\d.]+ s \((\d+) messages/s\)$", re.M)
EX_OK = 0
EX_NOINPUT = 66
EX_TEMPFAIL = 75
EX_NOPERM = 77
MAILBOX_FULL = b"5.2.2"


def admin_bin():
    return os.environ.get("PYMDA_ADMIN_BIN") or str(paths.prefix() / "bin" / "pymda-admin")


@pytest.fixture(scope="module")
def admin(pymda_installed):
    path = admin_bin()
    assert os.access(path, os.X_OK), f"pymda-admin not installed at {path}"
    return path


def run_admin(admin, args, input_bytes=b"", timeout=300):
    proc = subprocess.run([admin, *map(str, args)], input=input_bytes,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout


def summary(out):
    last = out.rstrip(b"\n").split(b"\n")[-1]
    m = SUMMARY.match(last)
    assert m, f"no summary line at the end: {out[-500:]!r}"
    return tuple(int(x) for x in m.groups())


@pytest.fixture(scope="module")
def packed(tmp_path_factory, corpus_messages):
    d = tmp_path_factory.mktemp("packed")
    mbox = packs.python_mbox(corpus_messages, d / "python.mbox")
    out = {
        "python-mbox": [mbox],
        "gzip": [packs.compressed(mbox, "gz")],
        "bzip2": [packs.compressed(mbox, "bz2")],
        "xz": [packs.compressed(mbox, "xz")],
    }
    if os.access(packs.PROCMAIL, os.X_OK):
        out["procmail-mbox"] = [packs.procmail_mbox(corpus_messages, d / "procmail.mbox")]
    packs.maildir_with_flags(corpus_messages, d / "Maildir")
    out["maildir"] = [d / "Maildir"]
    return out


def _redeliver_into(admin, tmp_path, sources, mailbox):
    record = tmp_path / "record"
    args = ["redeliver", "--mailbox", mailbox, "-o", f"redeliver_record={record}", *sources]
    return run_admin(admin, args)


@pytest.mark.parametrize("pack", ["python-mbox", "procmail-mbox", "gzip", "bzip2", "xz",
                                  "maildir"])
def test_corpus_into_maildir_once(admin, tmp_path, packed, corpus_messages, pack):
    if pack not in packed:
        pytest.skip("procmail is not installed (scripts/setup-system)")
    target = tmp_path / "Maildir"
    code, out = _redeliver_into(admin, tmp_path, packed[pack], f"{target}/")
    n = len(corpus_messages)
    assert code == EX_OK, out
    assert summary(out) == (n, 0, 0)
    assert RATE.search(out), out
    assert packs.maildir_bodies(target) == packs.packed_bodies(corpus_messages)
    assert not os.listdir(target / "tmp")
    # A second run delivers nothing.
    code, out = _redeliver_into(admin, tmp_path, packed[pack], f"{target}/")
    assert code == EX_OK, out
    assert summary(out) == (0, n, 0)
    assert len(packs.maildir_files(target)) == n


def test_corpus_into_mbox_once(admin, tmp_path, packed, corpus_messages):
    target = tmp_path / "restored.mbox"
    code, out = _redeliver_into(admin, tmp_path, packed["gzip"], target)
    n = len(corpus_messages)
    assert code == EX_OK, out
    assert summary(out) == (n, 0, 0)
    assert packs.mbox_bodies(target) == packs.packed_bodies(corpus_messages)
    size = target.stat().st_size
    code, out = _redeliver_into(admin, tmp_path, packed["python-mbox"], target)
    assert code == EX_OK and summary(out) == (0, n, 0), out
    assert target.stat().st_size == size


def test_maildir_flags_kept(admin, tmp_path, corpus_messages):
    msgs = corpus_messages[:30]
    flags = packs.maildir_with_flags(msgs, tmp_path / "src")
    target = tmp_path / "dst"
    code, out = _redeliver_into(admin, tmp_path, [tmp_path / "src"], f"{target}/")
    assert code == EX_OK and summary(out) == (30, 0, 0), out
    by_body = {packs.body_of(m.read_bytes()): flags[m.name] for m in msgs}
    got = {}
    for path in packs.maildir_files(target):
        sub = os.path.basename(os.path.dirname(path))
        name = os.path.basename(path)
        f = name.split(":2,", 1)[1] if sub == "cur" else None
        got[packs.body_of(read_bytes(path))] = f
    assert got == by_body


def test_source_not_modified(admin, tmp_path, packed):
    src = packed["gzip"][0]
    before = os.stat(src)
    with open(src, "rb") as f:
        data = f.read()
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    code, out = _redeliver_into(admin, tmp_path, [src], f"{tmp_path}/M/")
    assert code == EX_OK, out
    after = os.stat(src)
    assert read_bytes(src) == data
    assert (after.st_mtime_ns, after.st_atime_ns, after.st_mode) == (
        before.st_mtime_ns, before.st_atime_ns, before.st_mode)


def test_single_files_and_stdin(admin, tmp_path, corpus_messages):
    plain = [m for m in corpus_messages if not m.read_bytes().startswith(b"From ")][:40]
    target = tmp_path / "M"
    code, out = _redeliver_into(admin, tmp_path, plain, f"{target}/")
    assert code == EX_OK and summary(out) == (40, 0, 0), out
    assert packs.maildir_bodies(target) == packs.expected_bodies(plain)
    # stdin: a new message delivers, a known one is skipped
    record = tmp_path / "record"
    extra = corpus_messages[-1]
    args = ["redeliver", "--mailbox", f"{target}/", "-o", f"redeliver_record={record}", "-"]
    code, out = run_admin(admin, args, extra.read_bytes())
    expect = (0, 1, 0) if extra in plain else (1, 0, 0)
    assert code == EX_OK and summary(out) == expect, out


def test_sender_from_return_path_or_option(admin, tmp_path):
    src = tmp_path / "one.mbox"
    src.write_bytes(b"From envelope@example.org  Thu Jan  1 00:00:00 1970\n"
                    b"Subject: a\n\nfirst\n\n"
                    b"From envelope@example.org  Thu Jan  1 00:00:00 1970\n"
                    b"Return-Path: <rp@example.org>\nSubject: b\n\nsecond\n")
    target = tmp_path / "M"
    code, out = _redeliver_into(admin, tmp_path, [src], f"{target}/")
    assert code == EX_OK, out
    assert _return_paths(target) == [b"<envelope@example.org>", b"<rp@example.org>"]
    target2 = tmp_path / "M2"
    args = ["redeliver", "-f", "given@example.org", "--mailbox", f"{target2}/", "-o",
            f"redeliver_record={tmp_path}/rec2", src]
    code, out = run_admin(admin, args)
    assert code == EX_OK, out
    assert _return_paths(target2) == [b"<given@example.org>"] * 2


def _return_paths(maildir):
    """The first Return-Path of each stored message, sorted."""
    return sorted(re.search(rb"(?m)^Return-Path: (.*)$", read_bytes(p)).group(1)
                  for p in packs.maildir_files(maildir))


def test_delivered_to_is_not_a_loop(admin, tmp_path):
    """SPEC 4: a saved message delivered to this user before is redelivered."""
    import socket

    me = "root" if os.geteuid() == 0 else os.environ.get("USER", "")
    rcpt = f"{me}@{socket.gethostname()}".encode()
    src = tmp_path / "saved.eml"
    src.write_bytes(b"Delivered-To: " + rcpt + b"\nReceived: x\nDelivered-To: " + rcpt
                    + b"\nSubject: old\n\nbody\n")
    code, out = _redeliver_into(admin, tmp_path, [src], f"{tmp_path}/M/")
    assert code == EX_OK and summary(out) == (1, 0, 0), out


def test_killed_halfway_then_rerun_completes(admin, tmp_path, corpus_messages):
    # Enough messages to kill in the middle: the corpus four times over,
    # each copy made unique by its own header.
    src = tmp_path / "big.mbox"
    with open(src, "wb") as f:
        for rnd in range(4):
            for m in corpus_messages:
                data = m.read_bytes()
                if data.startswith(b"From "):
                    data = data.split(b"\n", 1)[1]
                data = data.replace(b"\n>From ", b"\n>>From ").replace(b"\nFrom ", b"\n>From ")
                f.write(b"From x@example.org  Thu Jan  1 00:00:00 1970\n"
                        + f"X-Round: {rnd}\n".encode() + data.rstrip(b"\n") + b"\n\n")
    total = 4 * len(corpus_messages)
    target = tmp_path / "M"
    record = tmp_path / "record"
    argv = [admin, "redeliver", "--mailbox", f"{target}/", "-o", f"redeliver_record={record}",
            str(src)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    new = target / "new"
    while time.monotonic() < deadline:
        if new.is_dir() and len(os.listdir(new)) >= total // 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(os.listdir(new))
    assert 0 < partial < total, "not killed halfway"
    rerun = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert rerun.returncode == EX_OK, rerun.stdout
    delivered, skipped, failed = summary(rerun.stdout)
    assert failed == 0 and delivered + skipped == total
    assert delivered <= total - partial + 1
    files = packs.maildir_files(target)
    assert len(files) == total
    # Every (round, message) exactly once: no duplicates, nothing missing.
    got = sorted(
        (re.search(rb"\nX-Round: (\d)\n", data).group(1), packs.body_of(data))
        for data in (read_bytes(p) for p in files)
    )
    want = sorted((str(r).encode(), packs.body_of(m.read_bytes()))
                  for r in range(4) for m in corpus_messages)
    assert got == want


def test_quota_reached_mid_batch(admin, tmp_path, packed, corpus_messages):
    target = tmp_path / "M"
    record = tmp_path / "record"
    args = ["redeliver", "--mailbox", f"{target}/", "-o", f"redeliver_record={record}",
            "-o", "quota_storage=300K", packed["python-mbox"][0]]
    code, out = run_admin(admin, args)
    delivered, skipped, failed = summary(out)
    assert code == EX_NOPERM, out
    assert failed > 0 and delivered > 0 and skipped == 0
    assert delivered + failed == len(corpus_messages)
    assert out.count(b"\nfailed: ") + out.startswith(b"failed: ") == failed
    assert out.count(MAILBOX_FULL) == failed
    files = packs.maildir_files(target)
    assert len(files) == delivered
    assert sum(os.path.getsize(p) for p in files) <= 300 * 1024
    assert not os.listdir(target / "tmp")  # nothing half-written
    # each failure names its position and Message-ID
    first = [line for line in out.split(b"\n") if line.startswith(b"failed: ")][0]
    assert re.match(rb"failed: \S+ #\d+ <[^>]+>: 5\.2\.2 ", first), first


def test_bad_sources_deliver_nothing(admin, tmp_path, packed):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 40)
    empty = tmp_path / "empty.mbox"
    empty.write_bytes(b"")
    notmd = tmp_path / "notmaildir"
    (notmd / "stuff").mkdir(parents=True)
    trunc = tmp_path / "truncated.mbox.gz"
    data = read_bytes(packed["gzip"][0])
    trunc.write_bytes(data[: len(data) // 2])
    nofrom = tmp_path / "text.txt"
    nofrom.write_bytes(b"just some text\nFrom here on\n")
    target = tmp_path / "M"
    for bad in (junk, empty, notmd, trunc, nofrom):
        code, out = _redeliver_into(admin, tmp_path, [bad], f"{target}/")
        assert code == EX_NOINPUT, out
        assert summary(out) == (0, 0, 1)
        assert f"failed: {bad}: ".encode() in out, out
        assert not target.exists() or not packs.maildir_files(target)


def test_bad_source_among_good_ones(admin, tmp_path, packed, corpus_messages):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    code, out = _redeliver_into(admin, tmp_path, [empty, packed["xz"][0]], f"{tmp_path}/M/")
    assert code != EX_OK
    assert summary(out) == (len(corpus_messages), 0, 1)


def test_as_root_for_a_user(admin, tmp_path, packed, corpus_messages, test_user):
    # in the user's home: sources are opened with the user's rights
    src = test_user.write("old.mbox.bz2", read_bytes(packed["bzip2"][0]))
    args = ["redeliver", "-d", test_user.name, "--mailbox", "Maildir/", "-m", "Restored", src]
    code, out = run_admin(admin, args)
    assert code == EX_OK, out
    assert summary(out) == (len(corpus_messages), 0, 0)
    folder = os.path.join(test_user.home, "Maildir", ".Restored")
    files = packs.maildir_files(folder)
    assert len(files) == len(corpus_messages)
    assert {os.stat(p).st_uid for p in files} == {test_user.uid}
    record = os.path.join(test_user.home, ".pymda-redeliver")
    assert os.stat(record).st_uid == test_user.uid
    code, out = run_admin(admin, args)
    assert code == EX_OK and summary(out) == (0, len(corpus_messages), 0), out


def test_dry_run_writes_nothing(admin, tmp_path, packed, corpus_messages):
    target = tmp_path / "M"
    record = tmp_path / "record"
    args = ["redeliver", "-n", "--mailbox", f"{target}/", "-o", f"redeliver_record={record}",
            packed["python-mbox"][0]]
    code, out = run_admin(admin, args)
    assert code == EX_OK, out
    assert f"maildir {target}/ folder=INBOX source=mailbox".encode() in out
    assert summary(out) == (len(corpus_messages), 0, 0)
    assert not target.exists() and not record.exists()


def test_a_source_that_is_the_target_is_refused(admin, tmp_path, corpus_messages):
    """A Maildir or mbox redelivered into itself once gained a copy of every
    message per run (each copy new to the record: it has a Delivered-To)."""
    msgs = corpus_messages[:5]
    packs.maildir_with_flags(msgs, tmp_path / "Maildir")
    mbox = packs.python_mbox(msgs, tmp_path / "old.mbox")
    (tmp_path / "alias").symlink_to(tmp_path / "Maildir")
    cases = [
        ([tmp_path / "Maildir"], f"{tmp_path}/Maildir/"),
        ([tmp_path / "alias"], f"{tmp_path}/Maildir/"),       # another path, same place
        ([mbox], str(mbox)),
    ]
    for sources, mailbox in cases:
        before = sorted(packs.maildir_files(tmp_path / "Maildir"))
        size = mbox.stat().st_size
        code, out = _redeliver_into(admin, tmp_path, sources, mailbox)
        assert code == EX_NOINPUT, out
        assert summary(out) == (0, 0, 1), out
        assert f"failed: {sources[0]}: is the mailbox being delivered to".encode() in out
        assert sorted(packs.maildir_files(tmp_path / "Maildir")) == before
        assert mbox.stat().st_size == size
    # into a folder of the same Maildir is not the same place
    args = ["redeliver", "--mailbox", f"{tmp_path}/Maildir/", "-m", "Restored",
            "-o", f"redeliver_record={tmp_path}/record", tmp_path / "Maildir"]
    code, out = run_admin(admin, args)
    assert code == EX_OK and summary(out) == (5, 0, 0), out
    assert len(packs.maildir_files(tmp_path / "Maildir" / ".Restored")) == 5


def test_maildir_source_with_a_fifo_and_a_device(admin, tmp_path, corpus_messages):
    """Files of a Maildir source that are not regular files (a FIFO would
    block the open for ever, /dev/zero never ends) fail alone."""
    packs.maildir_with_flags(corpus_messages[:3], tmp_path / "src")
    os.mkfifo(tmp_path / "src" / "new" / "1.fifo.host")
    (tmp_path / "src" / "new" / "2.zero.host").symlink_to("/dev/zero")
    target = tmp_path / "M"
    code, out = _redeliver_into(admin, tmp_path, [tmp_path / "src"], f"{target}/")
    assert summary(out) == (3, 0, 2), out
    assert b"failed: " + str(tmp_path / "src").encode() + b" new/1.fifo.host: " in out
    assert len(packs.maildir_files(target)) == 3
    assert code == EX_TEMPFAIL, out


def test_a_fifo_as_source_is_refused_without_blocking(admin, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, out = _redeliver_into(admin, tmp_path, [fifo], f"{tmp_path}/M/")
    assert code == EX_NOINPUT and summary(out) == (0, 0, 1), out
    assert f"failed: {fifo}: not a regular file".encode() in out


def test_once_whatever_the_mailbox_is_called(admin, tmp_path, packed, corpus_messages,
                                             test_user):
    """The record names a mailbox by its real path: other spellings of the
    same --mailbox once delivered every message again."""
    src = test_user.write("old.mbox.xz", read_bytes(packed["xz"][0]))
    n = len(corpus_messages)
    home = str(test_user.home)
    spellings = ["Maildir/", "./Maildir/", "Maildir//", f"{home}/Maildir/",
                 f"../{os.path.basename(home)}/Maildir/"]
    for i, mailbox in enumerate(spellings):
        code, out = run_admin(admin, ["redeliver", "-d", test_user.name, "--mailbox", mailbox,
                                      src])
        assert code == EX_OK, out
        assert summary(out) == ((n, 0, 0) if i == 0 else (0, n, 0)), (mailbox, out)
    assert len(packs.maildir_files(os.path.join(home, "Maildir"))) == n


def test_a_locked_mailbox_stops_the_batch(admin, tmp_path):
    """A dotlock nobody releases made every message wait lock_timeout in
    turn (10,000 messages x 60 s); the batch stops at the first one."""
    src = tmp_path / "src.mbox"
    src.write_bytes(b"".join(b"From x@example.org  Thu Jan  1 00:00:00 1970\nSubject: %d\n\n"
                             b"body\n\n" % i for i in range(20)))
    target = tmp_path / "t.mbox"
    target.write_bytes(b"")
    # a live pid (this test's): a dead one would make the lock stale at once
    (tmp_path / "t.mbox.lock").write_bytes(b"%d\n" % os.getpid())
    args = ["redeliver", "--mailbox", target, "-o", f"redeliver_record={tmp_path}/rec",
            "-o", "lock_timeout=1", src]
    started = time.monotonic()
    code, out = run_admin(admin, args)
    assert time.monotonic() - started < 10, out
    assert code == EX_TEMPFAIL and summary(out) == (0, 0, 1), out
    assert b"failed: " + str(src).encode() + b" #1: 4.2.0 " in out
    assert b"\nstopped at a temporary failure" in out
    (tmp_path / "t.mbox.lock").unlink()
    code, out = run_admin(admin, args)
    assert code == EX_OK and summary(out) == (20, 0, 0), out


# --- whose rights open a SOURCE (issue 8, items 1 and 2) ---------------------------------


ONE_MBOX = (b"From old@example.org  Thu Jan  1 00:00:00 1970\n"
            b"Subject: mine\n\nthe user's own mail\n")


@pytest.fixture
def root_only(tmp_path):
    """A directory only root may enter (pytest's tmp_path is 0700 root)."""
    assert os.stat(tmp_path).st_mode & 0o077 == 0, "tmp_path is not root-only"
    d = tmp_path / "root-only"
    d.mkdir(mode=0o700)
    return d


def _nothing_delivered(user):
    shadow = read_bytes("/etc/shadow").split(b"\n", 1)[0]
    home = str(user.home)
    for dirpath, _, files in os.walk(home):
        for name in files:
            if os.path.islink(os.path.join(dirpath, name)):
                continue  # the source itself
            data = read_bytes(os.path.join(dirpath, name))
            assert shadow not in data, f"{dirpath}/{name} holds /etc/shadow's bytes"


def _user_symlink(user, rel, target):
    link = user.path(rel)
    link.symlink_to(target)
    user.chown(link)
    return link


def _refused_for(admin, user, source):
    """redeliver -d USER SOURCE: refused by name, nothing delivered."""
    code, out = run_admin(admin, ["redeliver", "-d", user.name, "--mailbox", "Maildir/",
                                  source])
    assert code == EX_NOINPUT, out
    assert summary(out) == (0, 0, 1), out
    assert f"failed: {source}: cannot open: Permission denied".encode() in out, out
    assert not packs.maildir_files(user.path("Maildir"))


def test_a_symlink_to_etc_shadow_is_refused_for_the_user(admin, test_user):
    """``~/old.mbox -> /etc/shadow``: root opened it and delivered the
    shadow file into the user's Maildir (exit 0)."""
    _refused_for(admin, test_user, _user_symlink(test_user, "old.mbox", "/etc/shadow"))
    _nothing_delivered(test_user)


def test_a_maildir_behind_a_root_only_directory_is_refused(admin, test_user, root_only,
                                                         corpus_messages):
    """``~/srclink -> /root-only/dir/md``: the directory was opened as root
    and its (world-readable) files with openat after the switch."""
    md = root_only / "dir" / "md"
    packs.maildir_with_flags(corpus_messages[:3], md)
    for dirpath, dirs, files in os.walk(root_only / "dir"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    _refused_for(admin, test_user, _user_symlink(test_user, "srclink", md))


def test_a_root_file_in_the_users_home_is_refused(admin, test_user):
    src = test_user.path("restored.mbox")
    src.write_bytes(ONE_MBOX)
    os.chmod(src, 0o600)  # root's, not the user's
    _refused_for(admin, test_user, src)


def test_the_users_own_sources_are_redelivered(admin, test_user, packed, corpus_messages):
    mbox = test_user.write("old.mbox", ONE_MBOX)
    gz = test_user.write("old.mbox.gz", read_bytes(packed["gzip"][0]))
    md = test_user.path("saved")
    packs.maildir_with_flags(corpus_messages[:4], md)
    for dirpath, _, files in os.walk(md):
        test_user.chown(dirpath)
        for name in files:
            test_user.chown(os.path.join(dirpath, name))
    link = _user_symlink(test_user, "link.mbox", mbox)
    n = 1 + len(corpus_messages)  # the Maildir's 4 are in the .gz too: skipped
    args = ["redeliver", "-d", test_user.name, "--mailbox", "Maildir/", mbox, gz, md]
    code, out = run_admin(admin, args)
    assert code == EX_OK and summary(out) == (n, 4, 0), out
    assert len(packs.maildir_files(test_user.path("Maildir"))) == n
    code, out = run_admin(admin, ["redeliver", "-d", test_user.name, "--mailbox", "Maildir/",
                                  link])
    assert code == EX_OK and summary(out) == (0, 1, 0), out


def test_standard_input_is_the_admins_choice(admin, test_user, root_only):
    """``-`` is opened by the admin's shell: the way to give a user a file
    only root can read."""
    src = root_only / "backup.mbox"
    src.write_bytes(ONE_MBOX)
    code, out = run_admin(admin, ["redeliver", "-d", test_user.name, "--mailbox", "Maildir/",
                                  "-"], src.read_bytes())
    assert code == EX_OK and summary(out) == (1, 0, 0), out
    assert len(packs.maildir_files(test_user.path("Maildir"))) == 1


def test_root_without_d_reads_root_only_sources(admin, tmp_path, root_only):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    src = root_only / "backup.mbox"
    src.write_bytes(ONE_MBOX)
    os.chmod(src, 0o600)
    code, out = _redeliver_into(admin, tmp_path, [src], f"{tmp_path}/M/")
    assert code == EX_OK and summary(out) == (1, 0, 0), out
    assert len(packs.maildir_files(tmp_path / "M")) == 1


def test_a_gzip_source_cut_short_during_the_batch_is_a_failure_and_a_summary(tmp_path):
    """In-process: the source shrinks after it was checked (the progress
    bar's start() is the moment between).  What was read is delivered, the
    message at the cut fails temporarily ('source changed'), the batch
    ends with its summary and exit 75 - not a decompressor's EOFError."""
    import gzip

    from pymda import config
    from pymda.admin import redeliver as batch
    from pymda.log import Log

    src = tmp_path / "cut.mbox.gz"
    src.write_bytes(gzip.compress(b"".join(
        b"From a@b Tue Nov 24 22:08:05 2026\nSubject: %d\n\n%s\n\n"
        % (i, os.urandom(3000).hex().encode()) for i in range(40))))

    class CutAtStart:
        def start(self, total):
            with open(src, "r+b") as f:
                f.truncate(src.stat().st_size // 2)

        def update(self, n):
            pass

        def finish(self):
            pass

    cfg = config.load(None, [f"redeliver_record={tmp_path / 'record'}"], environ={})
    opts = batch.Options(mailbox=f"{tmp_path / 'M'}/")
    summary = batch.redeliver([str(src)], opts, cfg, Log(False), progress=CutAtStart())
    assert summary.exit == EX_TEMPFAIL
    assert summary.failed == 1 and 0 < summary.delivered < 40
    (failure,) = summary.failures
    assert failure.temporary and "source changed while reading" in failure.line()
    assert failure.position == f"#{summary.delivered + 1}"
    assert len(os.listdir(tmp_path / "M" / "new")) == summary.delivered
