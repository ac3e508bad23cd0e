"""Faults: pymda killed, a full file system, a 200 MB message.

- kill -9 in the middle of a delivery whose message is still arriving
  through a pipe: the mbox is byte-identical, nothing in Maildir new/ (and
  no dotlock left behind); kill -9 while the Maildir file is half written:
  new/ stays empty (the partial file is only in tmp/).
- a full file system (a small tmpfs, root only): 75 with a 4.x.y status,
  the mbox truncated back to its exact bytes, no file left in new/ or tmp/.
- a 200 MB message, generated as a stream, delivered to Maildir and to
  mbox: the stored bytes are right and the peak RSS of the pymda process
  (getrusage(RUSAGE_CHILDREN) in a fresh wrapper process) stays under
  40 MB.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from enginekit import (
    SENDER, TEMP, assert_failure, assert_ok, deliver, maildir_files, recipient_of,
)
from support import paths
from support.run import EX_TEMPFAIL, reaped, start_pymda

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users, mount)")

RSS_LIMIT_KB = 40 * 1024
BIG_SIZE = 200 * 1000 * 1000


def prepare(user, kind):
    """An mbox or a Maildir holding one message already; returns its path."""
    if kind == "mbox":
        assert_ok(deliver(user, ["--mailbox", "mbox"]))
        return user.path("mbox")
    assert_ok(deliver(user, ["--mailbox", "Maildir/"]))
    return user.path("Maildir")


def state_of(path):
    if path.is_dir():
        return {sub: maildir_files(path, sub) for sub in ("new", "cur", "tmp")}
    return path.read_bytes()


# --- kill -9 ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mbox", "Maildir"])
def test_kill_9_while_the_message_arrives(test_user, kind):
    box = prepare(test_user, kind)
    before = state_of(box)
    mailbox = "mbox" if kind == "mbox" else "Maildir/"
    proc = start_pymda(["-f", SENDER, "-a", recipient_of(test_user), "--mailbox", mailbox],
                       user=test_user)
    try:
        proc.stdin.write(b"Subject: slow\n\n")
        for i in range(5):
            proc.stdin.write(b"line %d " % i + b"z" * 60000 + b"\n")
            proc.stdin.flush()
            time.sleep(0.05)
        assert proc.poll() is None  # still reading
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except BrokenPipeError:
                pass
    assert proc.returncode == -signal.SIGKILL
    assert state_of(box) == before
    assert not test_user.path("mbox.lock").exists()


def test_kill_9_while_the_maildir_file_is_written(test_user):
    box = prepare(test_user, "Maildir")
    before = maildir_files(box, "new")
    raw = b"Subject: big\n\n" + (b"k" * 1023 + b"\n") * (48 * 1024)
    src = test_user.write("big.eml", raw)
    proc = start_pymda(["-f", SENDER, "-a", recipient_of(test_user), "--mailbox", "Maildir/"],
                       user=test_user, stdin_path=src, stdout=subprocess.DEVNULL)
    killed_partial = False
    with reaped(proc):
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            names = os.listdir(box / "tmp")
            if not names:
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                size = os.stat(box / "tmp" / names[0]).st_size
            except FileNotFoundError:
                size = None
            if size is not None and 0 < size < len(raw) and maildir_files(box, "new") == before:
                os.kill(proc.pid, signal.SIGKILL)
                killed_partial = True
                break
            os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=60)
    if not killed_partial:
        pytest.fail("never caught the writer mid-file (machine too fast?)")
    assert maildir_files(box, "new") == before
    (leftover,) = os.listdir(box / "tmp")  # the partial file, only in tmp/
    assert os.path.getsize(box / "tmp" / leftover) < len(raw)


# --- a full file system -------------------------------------------------------------------


@pytest.fixture
def small_fs(test_user):
    """A 2 MB tmpfs with a directory owned by the test user."""
    mnt = f"/mnt/pymda-full-{secrets.token_hex(4)}"
    os.mkdir(mnt, 0o755)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", mnt],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {proc.stdout.decode(errors='replace')}")
        box = os.path.join(mnt, "box")
        os.mkdir(box, 0o700)
        os.chown(box, test_user.uid, test_user.gid)
        yield mnt, box
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def fill(mnt, leave=16 * 1024):
    """Fill the file system, then free about ``leave`` bytes."""
    filler = os.path.join(mnt, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for piece in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * piece)
            except OSError:
                pass
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


BIG_MESSAGE = b"Subject: does not fit\n\n" + (b"f" * 99 + b"\n") * 3000  # 300 KB


def test_full_fs_mbox_75_and_truncated_back(test_user, small_fs):
    mnt, box = small_fs
    mbox = os.path.join(box, "mbox")
    assert_ok(deliver(test_user, ["--mailbox", mbox]))
    with open(mbox, "rb") as f:
        before = f.read()
    fill(mnt)
    result = deliver(test_user, ["--mailbox", mbox], BIG_MESSAGE)
    assert_failure(result, EX_TEMPFAIL, TEMP)
    with open(mbox, "rb") as f:
        assert f.read() == before
    # no dotlock left; the append record beside the mbox (kept between
    # appends) says no append is under way
    assert sorted(os.listdir(box)) == [".mbox.pymda-append", "mbox"]
    with open(os.path.join(box, ".mbox.pymda-append"), "rb") as f:
        assert f.read().startswith(b"done\n")


def test_full_fs_maildir_75_and_nothing_left(test_user, small_fs):
    mnt, box = small_fs
    maildir = os.path.join(box, "Maildir")
    assert_ok(deliver(test_user, ["--mailbox", maildir + "/"]))
    before = maildir_files(maildir, "new")
    fill(mnt)
    result = deliver(test_user, ["--mailbox", maildir + "/"], BIG_MESSAGE)
    assert_failure(result, EX_TEMPFAIL, TEMP)
    assert maildir_files(maildir, "new") == before
    assert os.listdir(os.path.join(maildir, "tmp")) == []


def test_full_fs_new_folder_75(test_user, small_fs):
    """Not even the folder's directories fit: 75, and the root is untouched."""
    mnt, box = small_fs
    maildir = os.path.join(box, "Maildir")
    assert_ok(deliver(test_user, ["--mailbox", maildir + "/"]))
    before = maildir_files(maildir, "new")
    fill(mnt, leave=0)
    result = deliver(test_user, ["--mailbox", maildir + "/", "-m", "Sub"], BIG_MESSAGE)
    assert result.code == EX_TEMPFAIL and result.output.startswith(b"4."), result
    assert maildir_files(maildir, "new") == before
    sub = os.path.join(maildir, ".Sub", "new")
    assert not os.path.isdir(sub) or os.listdir(sub) == []


# --- a 200 MB message: memory stays flat --------------------------------------------------


WRAPPER = textwrap.dedent(r'''
    import hashlib, json, os, resource, subprocess, sys, time

    argv, uid, gid, kind, total, trace = json.loads(sys.argv[1])
    line = b"%s\r\n" % (b"The quick brown fox jumps over the lazy dog. " * 3)
    raw_block = line * 1000 + b"From the middle of a line block\r\n>From quoted\r\n"
    stored_block = raw_block.replace(b"\r\n", b"\n")
    if kind == "mbox":
        stored_block = stored_block.replace(b"\nFrom the", b"\n>From the")
        stored_block = stored_block.replace(b"\n>From quoted", b"\n>>From quoted")
    head = b"Subject: 200 MB\r\nMessage-ID: <big@example.org>\r\n\r\n"
    digest = hashlib.sha256(trace.encode() + head.replace(b"\r\n", b"\n"))
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, user=uid, group=gid,
                            extra_groups=[], cwd="/")
    proc.stdin.write(head)
    size = len(head)
    while size < total:
        proc.stdin.write(raw_block)
        digest.update(stored_block)
        size += len(raw_block)
    proc.stdin.close()
    out = proc.stdout.read()
    code = proc.wait()
    elapsed = time.monotonic() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"code": code, "out": out.decode(errors="replace"), "rss_kb": rss,
                      "sha256": digest.hexdigest(), "input": size, "seconds": elapsed}))
''')


def run_big(user, kind, mailbox):
    trace = f"Return-Path: <{SENDER}>\nDelivered-To: {recipient_of(user)}\n"
    argv = [str(paths.pymda_bin()), "-f", SENDER, "-a", recipient_of(user),
            "--mailbox", mailbox]
    spec = json.dumps([argv, user.uid, user.gid, kind, BIG_SIZE, trace])
    proc = subprocess.run([sys.executable, "-c", WRAPPER, spec], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout
    return json.loads(proc.stdout)


def sha256_of(path, skip_first_line=False, drop_last=0):
    import hashlib

    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if skip_first_line:
            first = f.readline()
            assert first.startswith(b"From " + SENDER.encode() + b"  ")
            size -= len(first)
        remaining = size - drop_last
        while remaining:
            chunk = f.read(min(1 << 20, remaining))
            assert chunk
            digest.update(chunk)
            remaining -= len(chunk)
        tail = f.read()
    return digest.hexdigest(), tail


@pytest.mark.parametrize("kind", ["Maildir", "mbox"])
def test_200mb_message_peak_rss(test_user, kind):
    mailbox = "Maildir/" if kind == "Maildir" else "mbox"
    result = run_big(test_user, kind.lower(), mailbox)
    print(f"{kind}: {result['input']} bytes in {result['seconds']:.2f}s, "
          f"peak RSS {result['rss_kb'] / 1024:.1f} MB")
    assert (result["code"], result["out"]) == (0, ""), result
    assert result["rss_kb"] < RSS_LIMIT_KB, result
    if kind == "Maildir":
        new = test_user.path("Maildir", "new")
        (name,) = os.listdir(new)
        path = new / name
        digest, _ = sha256_of(path)
        assert f",S={os.path.getsize(path)}," in name
    else:
        path = test_user.path("mbox")
        digest, tail = sha256_of(path, skip_first_line=True, drop_last=1)
        assert tail == b"\n"
    assert digest == result["sha256"]


# --- write errors undo themselves ------------------------------------------------------------


def run_with_fsize(user, args, data, limit):
    """pymda under RLIMIT_FSIZE (what postfix sets from mailbox_size_limit)."""
    from support.run import run

    return run(["prlimit", f"--fsize={limit}", str(paths.pymda_bin()), *args], data, user=user)


@pytest.mark.parametrize("kind", ["mbox", "Maildir"])
def test_file_size_limit_is_efbig_522_and_undone(test_user, kind):
    box = prepare(test_user, kind)
    before = state_of(box)
    mailbox = "mbox" if kind == "mbox" else "Maildir/"
    args = ["-f", SENDER, "-a", recipient_of(test_user), "--mailbox", mailbox]
    result = run_with_fsize(test_user, args, BIG_MESSAGE, 64 * 1024)
    assert_failure(result, 77, "5.2.2")  # not killed by SIGXFSZ
    assert state_of(box) == before
    assert not test_user.path("mbox.lock").exists()


def test_sigterm_mid_append_truncates_the_mbox_back(test_user):
    box = prepare(test_user, "mbox")
    before = box.read_bytes()
    raw = b"Subject: big\n\n" + (b"t" * 1023 + b"\n") * (64 * 1024)
    src = test_user.write("big.eml", raw)
    proc = start_pymda(["-f", SENDER, "-a", recipient_of(test_user), "--mailbox", "mbox"],
                       user=test_user, stdin_path=src)
    caught = False
    with reaped(proc):
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if os.path.getsize(box) <= len(before):
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            if len(before) < os.path.getsize(box) < len(before) + len(raw):
                os.kill(proc.pid, signal.SIGTERM)
                caught = True
            os.kill(proc.pid, signal.SIGCONT)
            if caught:
                break
        out = proc.communicate(timeout=60)[0]
    if not caught:
        pytest.fail("never caught the writer mid-append")
    assert proc.returncode == EX_TEMPFAIL, out
    assert out.startswith(b"4.") and out.count(b"\n") == 1, out
    assert box.read_bytes() == before
    assert not test_user.path("mbox.lock").exists()
