"""pymda and Debian's procmail share an mbox safely (SPEC 1.4 locking).

- 20 concurrent pymda deliveries and 10 concurrent procmail deliveries into
  one mbox, all as one test user: all 30 messages arrive intact, none
  interleaved with another.
- A dotlock held with procmail's ``lockfile`` makes pymda wait, then give
  up after ``lock_timeout`` with exit 75 and a ``4.`` status, leaving the
  mbox byte-identical.
- A dotlock held with liblockfile's ``dotlockfile`` is honoured the same way.
"""

import os
import time

import pytest

from support import mboxfmt, procmail
from support.run import EX_OK, EX_TEMPFAIL, finish, run_pymda, start_pymda

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)"),
    pytest.mark.skipif(not procmail.installed(), reason="procmail/lockfile not installed"),
]

SENDER = "locktest@example.org"
LOCK_TIMEOUT = 2
BODY_LINES = 2000   # ~100 KB per message: big enough that interleaving would show


def make_message(tag):
    body = b"".join(b"%s line %05d %s\n" % (tag, i, b"x" * 40) for i in range(BODY_LINES))
    return (b"Subject: %s\nMessage-ID: <%s@locktest>\nX-Tag: %s\n\n" % (tag, tag, tag)) + body


def body_of(msg):
    return mboxfmt.split_header(msg)[1]


def test_concurrent_pymda_and_procmail_into_one_mbox(test_user):
    mbox = test_user.path("mbox")
    test_user.write("mbox", b"")
    rcfile = procmail.write_rcfile(test_user, str(mbox))
    rcpt = f"{test_user.name}@localhost"
    messages = {}
    procs = []
    for i in range(20):
        tag = b"pymda-%02d" % i
        messages[tag] = make_message(tag)
        procs.append(("pymda", tag, start_pymda(
            ["-f", SENDER, "-a", rcpt, "--mailbox", str(mbox), "-o", "lock_timeout=60"],
            messages[tag], user=test_user)))
    for i in range(10):
        tag = b"procmail-%02d" % i
        messages[tag] = make_message(tag)
        procs.append(("procmail", tag, procmail.start_deliver(
            test_user, str(mbox), messages[tag], sender=SENDER, rcfile=rcfile)))
    failures = []
    for kind, tag, proc in procs:
        code, out = finish(proc, timeout=120)
        if code != EX_OK:
            failures.append((kind, tag, code, out[:200]))
    assert not failures, failures

    parsed = mboxfmt.split_mbox(mbox.read_bytes())
    assert len(parsed) == 30, f"{len(parsed)} messages in the mbox, expected 30"
    seen = {}
    for from_line, msg in parsed:
        tags = {line.split(b": ", 1)[1] for line in msg.split(b"\n") if line.startswith(b"X-Tag: ")}
        assert len(tags) == 1, f"message with X-Tag headers {tags}: interleaved?"
        tag = tags.pop()
        assert tag not in seen, f"{tag} delivered twice"
        seen[tag] = msg
        assert body_of(msg) == body_of(messages[tag]), f"body of {tag} damaged or interleaved"
        assert from_line.startswith(b"From " + SENDER.encode() + b"  ")
    assert set(seen) == set(messages)
    for tag, msg in seen.items():
        if tag.startswith(b"pymda-"):
            assert msg == mboxfmt.expected(messages[tag], SENDER, rcpt)


def test_procmail_lockfile_makes_pymda_wait_then_defer(test_user):
    mbox = test_user.path("mbox")
    before = b"From old@example.org  Tue Nov 24 22:08:05 2026\nSubject: old\n\nold body\n\n"
    test_user.write("mbox", before)
    with procmail.hold_lockfile(f"{mbox}.lock", user=test_user):
        start = time.monotonic()
        code, out = run_pymda(
            ["-f", SENDER, "-a", f"{test_user.name}@localhost", "--mailbox", str(mbox),
             "-o", f"lock_timeout={LOCK_TIMEOUT}"],
            make_message(b"blocked"), user=test_user, timeout=60)
        elapsed = time.monotonic() - start
        assert os.path.exists(f"{mbox}.lock"), "pymda removed a lock it did not own"
    assert code == EX_TEMPFAIL, out
    assert out.startswith(b"4."), out
    assert out.count(b"\n") <= 1, f"more than one output line: {out!r}"
    assert elapsed >= LOCK_TIMEOUT * 0.9, f"gave up after {elapsed:.2f}s, before lock_timeout"
    assert elapsed < LOCK_TIMEOUT + 10
    assert mbox.read_bytes() == before


def test_lock_released_while_waiting_lets_pymda_deliver(test_user):
    mbox = test_user.path("mbox")
    test_user.write("mbox", b"")
    msg = make_message(b"waited")
    with procmail.hold_lockfile(f"{mbox}.lock", user=test_user):
        proc = start_pymda(
            ["-f", SENDER, "-a", f"{test_user.name}@localhost", "--mailbox", str(mbox),
             "-o", "lock_timeout=30"], msg, user=test_user)
        proc.stdin.write(proc.pymda_input)
        proc.stdin.close()
        time.sleep(1.0)
        assert proc.poll() is None, "pymda did not wait for the lock"
        assert mbox.read_bytes() == b""
    with proc.stdout:
        out = proc.stdout.read()
    code = proc.wait(timeout=40)
    assert code == EX_OK, out
    parsed = mboxfmt.split_mbox(mbox.read_bytes())
    assert [m for _, m in parsed] == [mboxfmt.expected(msg, SENDER, f"{test_user.name}@localhost")]


def test_dotlockfile_lock_is_honoured(test_user):
    mbox = test_user.path("mbox")
    test_user.write("mbox", b"")
    with procmail.hold_dotlockfile(str(mbox)):
        code, out = run_pymda(
            ["-f", SENDER, "-a", f"{test_user.name}@localhost", "--mailbox", str(mbox),
             "-o", f"lock_timeout={LOCK_TIMEOUT}"],
            make_message(b"dotlockfile"), user=test_user, timeout=60)
    assert code == EX_TEMPFAIL, out
    assert out.startswith(b"4."), out
    assert mbox.read_bytes() == b""


def test_spool_nobody_may_lock_in_falls_back_to_fcntl_at_once(make_user):
    """Issue 8 item 12: a root-owned 0755 spool directory: neither the user
    nor dotlockfile's group mail can create the dotlock.  dotlockfile exits 2
    for good: pymda must not wait lock_timeout and defer for ever, but
    deliver under the fcntl lock alone, saying so in the log."""
    import shutil

    if not os.access(procmail.DOTLOCKFILE, os.X_OK):
        pytest.skip("dotlockfile not installed")
    user = make_user()
    spool = f"/var/tmp/pymda-rootspool-{os.getpid()}"
    os.mkdir(spool)
    os.chmod(spool, 0o755)
    try:
        start = time.monotonic()
        code, out = run_pymda(
            ["-v", "-d", user.name, "-f", SENDER, "-a", f"{user.name}@localhost",
             "-o", f"mail_spool_directory={spool}",
             "-o", "lock_timeout=10"], make_message(b"rootspool"), timeout=60)
        elapsed = time.monotonic() - start
        assert code == EX_OK, out
        assert elapsed < 5, f"took {elapsed:.1f}s: waited for a lock nobody can make"
        assert b"using fcntl locking only" in out, out
        mbox = os.path.join(spool, user.name)
        with open(mbox, "rb") as f:
            parsed = mboxfmt.split_mbox(f.read())
        assert [m for _, m in parsed] == [
            mboxfmt.expected(make_message(b"rootspool"), SENDER, f"{user.name}@localhost")]
        assert sorted(os.listdir(spool)) == [user.name]
    finally:
        shutil.rmtree(spool, ignore_errors=True)
