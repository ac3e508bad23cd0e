"""mbox delivery (pymda.mbox, pymda.locking; SPEC 1.4), byte level.

By subprocess, as a test user: the From_ line, mboxrd and mboxo quoting
(also across the 1 MiB pieces of a spooled message), one empty line after
each message, 8-bit and NUL bytes, separation from a file that does not
end in an empty line, atime < mtime, mode 0600, appending to a 2 GB mbox
without reading it (/proc/<pid>/io of the finished process), stale and
live dotlocks, a busy fcntl lock (wait, then 75 and the mbox unchanged),
mbox folders and the spool mbox created by root.
"""

import fcntl
import os
import re
import stat
import subprocess
import time

import pytest

from enginekit import (
    LOCKED, MESSAGE, SENDER, assert_failure, assert_ok, deliver, recipient_of,
)
from support import mboxfmt, paths
from support.run import EX_OK, EX_TEMPFAIL, child_environment, reaped, run_pymda, start_pymda

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)")

FROM_LINE_RE = re.compile(
    rb"^From (?P<who>\S+)  (?P<date>(Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 123]\d \d\d:\d\d:\d\d \d{4})$"
)


def trace(user):
    return f"Return-Path: <{SENDER}>\nDelivered-To: {recipient_of(user)}\n".encode()


def mbox_of(user, name="mbox"):
    return user.path(name)


def put(user, args=(), data=MESSAGE, name="mbox", **kw):
    return deliver(user, ["--mailbox", name, *args], data, **kw)


# --- format ---------------------------------------------------------------------------


def test_from_line_format(test_user):
    assert_ok(put(test_user))
    data = mbox_of(test_user).read_bytes()
    first, rest = data.split(b"\n", 1)
    m = FROM_LINE_RE.match(first)
    assert m, first
    assert m["who"] == SENDER.encode()
    when = time.mktime(time.strptime(m["date"].decode(), "%a %b %d %H:%M:%S %Y"))
    assert abs(when - time.time()) < 120
    assert rest == trace(test_user) + MESSAGE + b"\n"


def test_null_sender_from_line(test_user):
    assert_ok(put(test_user, sender=""))
    first = mbox_of(test_user).read_bytes().split(b"\n", 1)[0]
    assert FROM_LINE_RE.match(first)["who"] == b"MAILER-DAEMON"


BODY = (b"From the start\n"
        b">From once\n"
        b">>From twice\n"
        b"Fromage\n"
        b">From\n"
        b"From\n"
        b" From indented\n"
        b"from lower\n"
        b">>>>From deep\n"
        b"From \n")

MBOXRD = (b">From the start\n"
          b">>From once\n"
          b">>>From twice\n"
          b"Fromage\n"
          b">From\n"
          b"From\n"
          b" From indented\n"
          b"from lower\n"
          b">>>>>From deep\n"
          b">From \n")

MBOXO = (b">From the start\n"
         b">From once\n"
         b">>From twice\n"
         b"Fromage\n"
         b">From\n"
         b"From\n"
         b" From indented\n"
         b"from lower\n"
         b">>>>From deep\n"
         b">From \n")


@pytest.mark.parametrize("style, quoted", [("mboxrd", MBOXRD), ("mboxo", MBOXO)])
def test_body_quoting(test_user, style, quoted):
    raw = b"From: header is not quoted <a@b>\nSubject: q\n\n" + BODY
    args = [] if style == "mboxrd" else ["-o", "mbox_quoting=mboxo"]
    assert_ok(put(test_user, args, raw))
    data = mbox_of(test_user).read_bytes()
    stored = data.split(b"\n", 1)[1]
    assert stored == trace(test_user) + raw.replace(BODY, quoted) + b"\n"
    if style == "mboxrd":
        (_, msg), = mboxfmt.split_mbox(data)
        assert msg == trace(test_user) + raw  # mboxrd round-trips


def test_quoting_across_spool_pieces(test_user):
    """A 3 MB message (spooled, written in 1 MiB pieces) with From lines at
    every kind of offset: each is quoted exactly once."""
    lines = []
    size = 0
    i = 0
    while size < 3 * (1 << 20):
        if i % 7 == 0:
            line = b"From line %d\n" % i
        elif i % 11 == 0:
            line = b">From line %d\n" % i
        else:
            line = b"x" * (i % 97) + b" %d\n" % i
        lines.append(line)
        size += len(line)
        i += 1
    raw = b"Subject: big\n\n" + b"".join(lines)
    assert_ok(put(test_user, data=raw))
    data = mbox_of(test_user).read_bytes()
    stored = data.split(b"\n", 1)[1]
    assert stored == mboxfmt.quote(trace(test_user) + raw) + b"\n"


def test_empty_line_after_each_message(test_user):
    msgs = [b"Subject: 1\n\none\n", b"Subject: 2\n\ntwo\n\n", b"Subject: 3\n\nthree"]
    for m in msgs:
        assert_ok(put(test_user, data=m))
    data = mbox_of(test_user).read_bytes()
    parsed = mboxfmt.split_mbox(data)
    assert [m for _, m in parsed] == [trace(test_user) + mboxfmt.normalise(m) for m in msgs]
    assert data.count(b"\nFrom " + SENDER.encode()) == 2
    assert data.endswith(b"three\n\n")


def test_8bit_and_nul_bytes_intact(test_user):
    body = bytes(b for b in range(256) if b not in (10, 13)) + b"\n\0\0\0\n\xff\xfe\n"
    raw = b"Subject: =?utf-8?q?bin=C3=A4r?=\nX-8bit: \xe4\xf6\xfc\n\n" + body
    assert_ok(put(test_user, data=raw))
    stored = mbox_of(test_user).read_bytes().split(b"\n", 1)[1]
    assert stored == trace(test_user) + raw + b"\n"


@pytest.mark.parametrize("tail, sep", [
    (b"no newline at all", b"\n\n"),
    (b"one newline\n", b"\n"),
    (b"blank line\n\n", b""),
])
def test_file_not_ending_in_a_blank_line_gets_separated(test_user, tail, sep):
    old = b"From old@example.org  Tue Nov 24 22:08:05 2026\nSubject: old\n\n" + tail
    test_user.write("mbox", old)
    assert_ok(put(test_user))
    data = mbox_of(test_user).read_bytes()
    assert data.startswith(old + sep + b"From " + SENDER.encode() + b"  ")
    parsed = mboxfmt.split_mbox(data)
    assert len(parsed) == 2
    assert parsed[1][1] == trace(test_user) + MESSAGE


def test_empty_existing_file(test_user):
    test_user.write("mbox", b"")
    assert_ok(put(test_user))
    assert mbox_of(test_user).read_bytes().startswith(b"From " + SENDER.encode())


def test_atime_before_mtime(test_user):
    test_user.write("mbox", b"")
    future = time.time() + 3600
    os.utime(mbox_of(test_user), (future, future - 7200))
    assert_ok(put(test_user))
    st = os.stat(mbox_of(test_user))
    assert st.st_atime_ns < st.st_mtime_ns
    assert abs(st.st_mtime - time.time()) < 60


def test_atime_before_mtime_on_create(test_user):
    assert_ok(put(test_user))
    st = os.stat(mbox_of(test_user))
    assert st.st_atime_ns < st.st_mtime_ns


def test_created_0600_even_with_umask_0(test_user):
    assert_ok(put(test_user, umask=0))
    st = os.stat(mbox_of(test_user))
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (test_user.uid, test_user.gid)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def test_existing_mode_kept(test_user):
    test_user.write("mbox", b"", mode=0o640)
    assert_ok(put(test_user))
    assert stat.S_IMODE(os.stat(mbox_of(test_user)).st_mode) == 0o640


def test_mbox_folder(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "mbox", "-m", "Lists/Python"]))
    folder = test_user.path("mail", "Lists", "Python")
    data = folder.read_bytes()
    assert data.startswith(b"From " + SENDER.encode() + b"  ")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o600
    assert not mbox_of(test_user).exists()


def test_mbox_folder_directory(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "mbox", "-m", "Work",
                                  "-o", "mbox_folder_directory=$home/Mail"]))
    assert test_user.path("Mail", "Work").read_bytes().startswith(b"From ")


def test_spool_mbox_created_by_root_for_the_user(test_user):
    spool = f"/var/mail/{test_user.name}"
    code, out = run_pymda(["-d", test_user.name, "-f", SENDER], MESSAGE)
    assert (code, out) == (EX_OK, b"")
    st = os.stat(spool)
    assert st.st_uid == test_user.uid and stat.S_IMODE(st.st_mode) == 0o600
    with open(spool, "rb") as f:
        data = f.read()
    assert data.startswith(b"From " + SENDER.encode() + b"  ")
    assert not os.path.exists(spool + ".lock")


# --- a 2 GB mbox is not read ------------------------------------------------------------------


def read_chars_of(user, args, data):
    """(exit code, output, rchar) of one pymda run, rchar read from the
    finished (zombie) process's /proc/<pid>/io."""
    proc = subprocess.Popen(
        [str(paths.pymda_bin()), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=child_environment(user), user=user.uid, group=user.gid,
        extra_groups=[])
    proc.stdin.write(data)
    proc.stdin.close()
    out = proc.stdout.read()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    with open(f"/proc/{proc.pid}/io") as f:
        io_stats = dict(line.split(": ") for line in f.read().splitlines())
    proc.wait()
    proc.stdout.close()
    return proc.returncode, out, int(io_stats["rchar"])


def test_appending_to_a_2gb_mbox_does_not_read_it(test_user):
    args = ["-f", SENDER, "-a", recipient_of(test_user)]
    small = test_user.write("small", b"")
    code, out, rchar_small = read_chars_of(test_user, args + ["--mailbox", str(small)], MESSAGE)
    assert (code, out) == (EX_OK, b"")
    big = test_user.write("big", b"")
    os.truncate(big, 2 << 30)
    start = time.monotonic()
    code, out, rchar_big = read_chars_of(test_user, args + ["--mailbox", str(big)], MESSAGE)
    elapsed = time.monotonic() - start
    assert (code, out) == (EX_OK, b"")
    print(f"rchar small={rchar_small} big={rchar_big} elapsed={elapsed:.3f}s")
    assert rchar_big - rchar_small < 64 * 1024, (rchar_small, rchar_big)
    assert elapsed < 5
    size = os.path.getsize(big)
    with open(big, "rb") as f:
        f.seek(2 << 30)
        tail = f.read()
    assert size == (2 << 30) + len(tail)
    # The old file ended in NUL bytes, not an empty line: separated.
    assert tail.startswith(b"\n\nFrom " + SENDER.encode() + b"  ")
    assert tail.endswith(trace(test_user) + MESSAGE + b"\n")


# --- locks ------------------------------------------------------------------------------


def test_stale_dotlock_is_broken(test_user):
    test_user.write("mbox", b"")
    lock = test_user.write("mbox.lock", b"12345\n", mode=0o644)
    old = time.time() - 1000
    os.utime(lock, (old, old))
    start = time.monotonic()
    assert_ok(put(test_user, ["-o", "lock_timeout=30"]))
    assert time.monotonic() - start < 10
    assert not lock.exists()
    assert mbox_of(test_user).read_bytes().startswith(b"From ")


def test_stale_lock_time_setting(test_user):
    test_user.write("mbox", b"")
    lock = test_user.write("mbox.lock", b"", mode=0o644)
    old = time.time() - 10
    os.utime(lock, (old, old))
    assert_ok(put(test_user, ["-o", "stale_lock_time=5", "-o", "lock_timeout=30"]))
    assert not lock.exists()


def test_live_dotlock_times_out_75(test_user):
    """Control for the stale case: a young dotlock of a live process is
    honoured (the pid is this test's: a dead one makes it stale at once)."""
    old_mbox = b"From a@b  Tue Nov 24 22:08:05 2026\nSubject: old\n\nold\n\n"
    test_user.write("mbox", old_mbox)
    holder = f"{os.getpid()}\n".encode()
    lock = test_user.write("mbox.lock", holder, mode=0o644)
    start = time.monotonic()
    result = put(test_user, ["-o", "lock_timeout=1"])
    elapsed = time.monotonic() - start
    assert_failure(result, EX_TEMPFAIL, LOCKED)
    assert 1 <= elapsed < 10
    assert mbox_of(test_user).read_bytes() == old_mbox
    assert lock.read_bytes() == holder


def hold_fcntl(path):
    """Hold a POSIX lock on ``path`` in a separate process; returns it."""
    code = ("import fcntl, sys\n"
            "f = open(sys.argv[1], 'r+b')\n"
            "fcntl.lockf(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    proc = subprocess.Popen(["python3", "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"locked\n"
    return proc


def release(proc):
    proc.stdin.close()
    proc.wait(timeout=10)
    proc.stdout.close()


def test_fcntl_lock_held_waits_then_75(test_user):
    old_mbox = b"From a@b  Tue Nov 24 22:08:05 2026\nSubject: old\n\nold\n\n"
    test_user.write("mbox", old_mbox)
    holder = hold_fcntl(mbox_of(test_user))
    try:
        start = time.monotonic()
        result = put(test_user, ["-o", "lock_timeout=1"])
        elapsed = time.monotonic() - start
    finally:
        release(holder)
    assert_failure(result, EX_TEMPFAIL, LOCKED)
    assert 1 <= elapsed < 10
    assert mbox_of(test_user).read_bytes() == old_mbox
    assert not test_user.path("mbox.lock").exists()  # the dotlock was given back


def test_fcntl_lock_released_delivery_follows_soon(test_user):
    test_user.write("mbox", b"")
    holder = hold_fcntl(mbox_of(test_user))

    proc = start_pymda(["-f", SENDER, "-a", recipient_of(test_user), "--mailbox", "mbox",
                        "-o", "lock_timeout=30"], user=test_user)
    proc.stdin.write(MESSAGE)
    proc.stdin.close()
    time.sleep(0.5)
    assert proc.poll() is None  # waiting for the lock
    released = time.monotonic()
    release(holder)
    code, out = proc.wait(timeout=30), proc.stdout.read()
    proc.stdout.close()
    waited = time.monotonic() - released
    assert (code, out) == (EX_OK, b"")
    assert waited < 1.0, waited  # short retries, not procmail's 8 s sleep
    assert mbox_of(test_user).read_bytes().endswith(trace(test_user) + MESSAGE + b"\n")


def test_pymda_holds_the_fcntl_lock_while_writing(test_user):
    """While pymda is stopped mid-append, another process cannot lock."""
    test_user.write("mbox", b"")
    raw = b"Subject: big\n\n" + (b"y" * 1023 + b"\n") * (64 * 1024)
    src = test_user.write("big.eml", raw)
    import signal

    proc = start_pymda(["-f", SENDER, "-a", recipient_of(test_user), "--mailbox", "mbox"],
                       user=test_user, stdin_path=src)
    mbox = mbox_of(test_user)
    checked = 0
    with reaped(proc):
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if not os.path.exists(str(mbox) + ".lock") or os.path.getsize(mbox) == 0:
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                if 0 < os.path.getsize(mbox) < len(raw):
                    with open(mbox, "rb") as f:
                        with pytest.raises(OSError):
                            fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    checked += 1
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.005)
        out = proc.communicate(timeout=60)[0]
    assert (proc.returncode, out) == (EX_OK, b"")
    print(f"checked={checked}")
    assert checked > 0
    assert not os.path.exists(str(mbox) + ".lock")


# --- how the dotlock is made: O_EXCL on a local file system, link() elsewhere ---------

def _locking_calls(user, mbox):
    """The open/link calls on ``mbox``'s dotlock names during one delivery."""
    import shutil

    if shutil.which("strace") is None:
        pytest.skip("strace not installed (scripts/setup-system)")
    result = run_pymda(["-f", SENDER, "-a", recipient_of(user), "--mailbox", str(mbox)],
                       MESSAGE, user=user)
    assert result.code == 0, result  # control: the delivery works without strace
    proc = subprocess.run(
        ["strace", "-f", "-e", "trace=openat,link", str(paths.pymda_bin()),
         "-f", SENDER, "-a", recipient_of(user), "--mailbox", str(mbox)],
        input=MESSAGE, capture_output=True, timeout=60, check=False,
        user=user.uid, group=user.gid, extra_groups=[],
        env=child_environment(user, None, False, None, ""))
    assert proc.returncode == 0, proc
    name = os.path.basename(mbox) + ".lock"
    return [line for line in proc.stderr.decode().splitlines() if name in line]


def test_dotlock_is_one_o_excl_create_on_a_local_file_system(test_user):
    test_user.write("mbox", b"")
    calls = _locking_calls(test_user, test_user.path("mbox"))
    creates = [c for c in calls if "openat(" in c and "O_CREAT" in c]
    assert len(creates) == 1 and "O_EXCL" in creates[0], calls
    assert f'"{test_user.path("mbox.lock")}"' in creates[0], calls
    assert not [c for c in calls if "link(" in c], calls
    assert not test_user.path("mbox.lock").exists()


def test_dotlock_is_linked_on_a_network_like_file_system(test_user):
    """tmpfs has an anonymous device (major 0), as NFS has: pymda cannot
    tell it from a network file system and uses the NFS-safe link()."""
    import secrets
    from pathlib import Path

    mnt = Path(f"/mnt/pymda-lock-{secrets.token_hex(4)}")
    mnt.mkdir(mode=0o755)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr!r}")
    try:
        box = mnt / "box"
        box.mkdir()
        os.chown(box, test_user.uid, test_user.gid)
        calls = _locking_calls(test_user, box / "mbox")
        assert [c for c in calls if "link(" in c and '"%s"' % (box / "mbox.lock") in c], calls
        assert not (box / "mbox.lock").exists()
        assert (box / "mbox").read_bytes().count(b"\nFrom ") + 1 == 2
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()
