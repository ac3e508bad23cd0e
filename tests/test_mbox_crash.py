"""kill -9 of the mbox lock holder (SPEC 1.4; issue 8 item 4; docs/mbox.md).

- A dotlock naming a dead pid of this host is stale at once (pymda's own
  ``pid\\nhost\\n`` and liblockfile's bare ``pid\\n`` on a local file
  system); another host's, an empty (postfix) and procmail's ``0`` lock
  keep the mtime rule: they are waited for.
- A pymda killed (SIGSTOP, then SIGKILL) in the middle of writing a 40 MB
  message leaves a partial message and its append record; the next
  delivery removes the partial message before appending (the mbox is the
  old bytes + the new message, the record is gone).  The same in a
  Debian-like spool (2775 root:mail, the user cannot create files there:
  the record is in the home directory).
- The partial message is left alone when something else was appended
  after it (here: procmail), and when its writer is alive (stopped, its
  dotlock broken by the mtime rule): that delivery defers with 4.2.0.
- Stress: 30 concurrent writers into one mbox, the lock holder killed
  with SIGKILL at random points many times (killed deliveries retried, as
  postfix retries a delivery that died): every message is present and
  whole, never-killed ones exactly once, Python's mailbox.mbox and
  procmail's ``formail -s`` find only whole messages; no lock or record
  is left.
"""

import mailbox
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from enginekit import LOCKED, SENDER, assert_failure, assert_ok, deliver, recipient_of
from support import mboxfmt, procmail
from support.run import EX_OK, EX_TEMPFAIL, start_pymda

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)")

SMALL = b"Subject: after the crash\nMessage-ID: <after@example.org>\n\nsmall body\n"
OLD = b"From old@example.org  Tue Nov 24 22:08:05 2026\nSubject: old\n\nold body\n\n"


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def put(user, args=(), data=SMALL, name="mbox", **kw):
    return deliver(user, ["--mailbox", name, *args], data, **kw)


# --- dotlocks of dead processes --------------------------------------------------------


@pytest.mark.parametrize("content", [
    "{pid}\n{host}\n",  # pymda's own
    "{pid}\n",          # liblockfile / dotlockfile -p (local file system)
])
def test_dotlock_of_a_dead_pid_is_stale_at_once(test_user, content):
    test_user.write("mbox", OLD)
    lock = test_user.write(
        "mbox.lock", content.format(pid=dead_pid(), host=socket.gethostname()).encode(), 0o644)
    start = time.monotonic()
    assert_ok(put(test_user, ["-o", "lock_timeout=30"]))
    assert time.monotonic() - start < 5
    assert not lock.exists()
    assert [m for _, m in mboxfmt.split_mbox(test_user.path("mbox").read_bytes())][1] == \
        mboxfmt.expected(SMALL, SENDER, recipient_of(test_user))


@pytest.mark.parametrize("content", [
    "{pid}\nother-host.example\n",  # another host's (NFS): its pid means nothing here
    "",                             # postfix
    "0",                            # procmail's lockfile
    "garbage\n",
])
def test_other_dotlocks_keep_the_mtime_rule(test_user, content):
    test_user.write("mbox", OLD)
    lock = test_user.write("mbox.lock", content.format(pid=dead_pid()).encode(), 0o644)
    assert_failure(put(test_user, ["-o", "lock_timeout=1"]), EX_TEMPFAIL, LOCKED)
    assert lock.exists()
    assert test_user.path("mbox").read_bytes() == OLD


# --- undoing a killed writer's partial message ------------------------------------------


def big_message(tag, mb=40):
    line = b"%s %s\n" % (tag, b"q" * 70)
    return b"Subject: %s\nMessage-ID: <%s@example.org>\n\n" % (tag, tag) + line * (mb * 13000)


def start_as(user, args, data, tmp_path, name):
    src = tmp_path / f"{name}.in"
    src.write_bytes(data)
    return start_pymda(args, user=user, stdin_path=src)


def record_active(path):
    """An append record describing an append under way (the record beside
    the mbox is kept between appends, its first line "done" when idle)."""
    return path.exists() and not path.read_bytes().startswith(b"done\n")


def kill_while_writing(proc, mbox, before, expected_total):
    """SIGSTOP ``proc`` once the mbox grew, check it is partial, SIGKILL it."""
    deadline = time.monotonic() + 60
    while os.path.getsize(mbox) <= before:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "pymda never started writing"
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(0.2)  # the write() under way when it stopped completes
    size = os.path.getsize(mbox)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    if size - before >= expected_total:
        pytest.skip("the writer finished before it could be stopped")
    return size


def killed_append(user, tmp_path, mbox, args):
    before = os.path.getsize(mbox)
    msg = big_message(b"killed")
    proc = start_as(user, ["-f", SENDER, "-a", recipient_of(user), *args], msg, tmp_path, "big")
    return kill_while_writing(proc, mbox, before, len(msg)), before


def test_killed_writer_partial_message_removed_by_the_next(test_user, tmp_path):
    test_user.write("mbox", OLD)
    mbox = test_user.path("mbox")
    size, before = killed_append(test_user, tmp_path, str(mbox), ["--mailbox", "mbox"])
    assert before < size
    record = test_user.path(".mbox.pymda-append")
    assert record_active(record), "no append record beside the mbox"
    code, out = deliver(test_user, ["-v", "--mailbox", "mbox"], SMALL)
    assert code == EX_OK, out
    assert b"removed the unfinished message" in out, out
    assert mbox.read_bytes().startswith(OLD)
    assert [m for _, m in mboxfmt.split_mbox(mbox.read_bytes())] == [
        b"Subject: old\n\nold body\n", mboxfmt.expected(SMALL, SENDER, recipient_of(test_user))]
    assert not record_active(record)
    assert not test_user.path("mbox.lock").exists()


def test_the_record_beside_the_mbox_is_kept_and_reused(test_user):
    """Each append rewrites the same record file in place and marks it
    done afterwards (docs/mbox.md): one file, the user's, 0600."""
    test_user.write("mbox", OLD)
    record = test_user.path(".mbox.pymda-append")
    for n in range(3):
        code, out = deliver(test_user, ["--mailbox", "mbox"], SMALL)
        assert code == EX_OK, out
        st = record.stat()
        if n == 0:
            first = st.st_ino
        assert st.st_ino == first and st.st_nlink == 1
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (test_user.uid, 0o600)
        data = record.read_bytes()
        assert data.startswith(b"done\n"), data[:80]
        # what was overwritten is the record of this very append
        assert b"-append/1 dev=" in data and b" pid=" in data
    assert len(mboxfmt.split_mbox(test_user.path("mbox").read_bytes())) == 4


def test_partial_message_followed_by_other_mail_is_left(test_user, tmp_path):
    if not procmail.installed():
        pytest.skip("procmail not installed")
    test_user.write("mbox", OLD)
    mbox = test_user.path("mbox")
    size, _ = killed_append(test_user, tmp_path, str(mbox), ["--mailbox", "mbox"])
    # The dead writer's dotlock would make procmail wait 8 s per try: it is
    # stale (pid dead), remove it as pymda would.
    os.unlink(f"{mbox}.lock")
    code, out = procmail.deliver(test_user, str(mbox), b"Subject: by procmail\n\nhi\n")
    assert code == 0, out
    after_procmail = mbox.read_bytes()
    assert len(after_procmail) > size
    code, out = deliver(test_user, ["-v", "--mailbox", "mbox"], SMALL)
    assert code == EX_OK, out
    assert b"followed by other mail" in out, out
    data = mbox.read_bytes()
    assert data.startswith(after_procmail)
    assert data.endswith(mboxfmt.expected(SMALL, SENDER, recipient_of(test_user)) + b"\n")
    assert not record_active(test_user.path(".mbox.pymda-append"))


def test_record_of_a_live_writer_defers(test_user, tmp_path):
    """A writer that is stopped, not dead, in the middle of its append, and
    whose dotlock was broken by the mtime rule (dotlock only, a tiny
    stale_lock_time): the next delivery must not cut its message; it
    defers with 4.2.0 and leaves the mbox as it is."""
    test_user.write("mbox", OLD)
    mbox = test_user.path("mbox")
    dot_only = ["-o", "mbox_locks=[\"dotlock\"]", "-o", "stale_lock_time=1"]
    msg = big_message(b"stopped")
    proc = start_as(test_user, ["-f", SENDER, "-a", recipient_of(test_user), "--mailbox",
                                "mbox", *dot_only], msg, tmp_path, "big")
    try:
        while mbox.stat().st_size <= len(OLD):
            assert proc.poll() is None
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.2)  # the write() under way when it stopped completes
        size = mbox.stat().st_size
        if size - len(OLD) >= len(msg):
            pytest.skip("the writer finished before it could be stopped")
        time.sleep(2.5)  # its dotlock is now older than stale_lock_time
        result = put(test_user, [*dot_only, "-o", "lock_timeout=10"])
        assert_failure(result, EX_TEMPFAIL, LOCKED)
        assert b"unfinished append by running process" in result.output
        assert mbox.stat().st_size == size
        assert record_active(test_user.path(".mbox.pymda-append"))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.fixture
def debian_spool():
    """A spool like Debian's /var/mail: 2775 root:mail."""
    import grp

    spool = "/var/tmp/pymda-test-spool-%d" % os.getpid()
    os.mkdir(spool)
    os.chown(spool, 0, grp.getgrnam("mail").gr_gid)
    os.chmod(spool, 0o2775)
    yield spool
    shutil.rmtree(spool, ignore_errors=True)


def test_killed_writer_in_a_spool_the_user_cannot_write(test_user, tmp_path, debian_spool):
    if not os.access(procmail.DOTLOCKFILE, os.X_OK):
        pytest.skip("dotlockfile not installed")
    mbox = os.path.join(debian_spool, test_user.name)
    with open(mbox, "wb") as f:
        f.write(OLD)
    os.chown(mbox, test_user.uid, test_user.gid)
    os.chmod(mbox, 0o600)
    args = ["--mailbox", mbox, "-o", f"mail_spool_directory={debian_spool}"]
    killed_append(test_user, tmp_path, mbox, args)
    records = [n for n in os.listdir(test_user.home) if n.startswith(".pymda-append.")]
    assert len(records) == 1, os.listdir(test_user.home)
    assert not os.path.exists(os.path.join(debian_spool, f".{test_user.name}.pymda-append"))
    code, out = deliver(test_user, ["-v", *args], SMALL)
    assert code == EX_OK, out
    assert b"removed the unfinished message" in out, out
    with open(mbox, "rb") as f:
        data = f.read()
    assert data == OLD + mboxfmt.split_mbox(data)[1][0] + b"\n" + \
        mboxfmt.expected(SMALL, SENDER, recipient_of(test_user)) + b"\n"
    assert not [n for n in os.listdir(test_user.home) if n.startswith(".pymda-append.")]
    assert not os.path.exists(mbox + ".lock")


# --- stress: 30 writers, the lock holder killed again and again ---------------------------

WRITERS = 30      # concurrent deliveries at all times
KILLS = 40        # lock holders killed
MAX_MESSAGES = 150
STRESS_SECONDS = 50


def stress_message(i, rng):
    tag = b"stress-%03d" % i
    if rng.random() < 0.3:  # written in several 1 MiB write()s: a kill can cut it
        lines = rng.randrange(25000, 80000)  # ~1.8-5.8 MB
    else:
        lines = rng.randrange(700, 7000)  # ~50-500 KB
    body = b"%s %s\n" % (tag, b"s" * 60) * lines
    return tag, b"Subject: %s\nX-Tag: %s\nMessage-ID: <%s@stress>\n\n" % (tag, tag, tag) + body


class Killer(threading.Thread):
    """Watches ``<mbox>.lock`` (pymda's dotlock names its pid) and kills
    lock holders with SIGKILL: a quarter of those writing a small message,
    at a random point of their work; most of those writing a big one (in
    several write()s), just after the mbox started to grow."""

    def __init__(self, mbox, running, messages, rng):
        super().__init__(daemon=True)
        self.mbox, self.running, self.messages, self.rng = mbox, running, messages, rng
        self.killed_tags = {}  # tag -> times killed
        self.kills = 0
        self.seen = set()
        self.stop = False

    def run(self):
        lock = self.mbox.parent / (self.mbox.name + ".lock")
        rng = self.rng
        while not self.stop and self.kills < KILLS:
            time.sleep(0.0002)
            try:
                holder = int(lock.read_bytes().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            entry = self.running.get(holder)
            if entry is None or holder in self.seen:
                continue
            self.seen.add(holder)
            big = len(self.messages[entry[0]]) > (1 << 20)
            if rng.random() > (0.7 if big else 0.25):
                continue
            if not big:
                time.sleep(rng.uniform(0, 0.008))
            else:
                size = self.mbox.stat().st_size
                until = time.monotonic() + 0.05
                while self.mbox.stat().st_size == size and time.monotonic() < until:
                    pass
                time.sleep(rng.uniform(0, 0.0005))
            try:
                os.kill(holder, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills += 1
            self.killed_tags[entry[0]] = self.killed_tags.get(entry[0], 0) + 1


def test_stress_kill_lock_holder(test_user, tmp_path):
    rng = random.Random()
    mbox = test_user.path("mbox")
    test_user.write("mbox", b"")
    rcpt = recipient_of(test_user)
    messages = {}
    inputs = {}

    def new_message():
        tag, msg = stress_message(len(messages), rng)
        messages[tag] = msg
        inputs[tag] = tmp_path / tag.decode()
        inputs[tag].write_bytes(msg)
        return tag

    args = ["-v", "-f", SENDER, "-a", rcpt, "--mailbox", str(mbox), "-o", "lock_timeout=60"]

    def start(tag):
        proc = start_pymda(args, user=test_user, stdin_path=inputs[tag])
        running[proc.pid] = (tag, proc)

    running = {}  # pid -> (tag, Popen)
    killer = Killer(mbox, running, messages, random.Random(rng.random()))
    for _ in range(WRITERS):
        start(new_message())
    killer.start()
    outcomes = []  # (tag, exit code)
    undone = 0
    deadline = time.monotonic() + STRESS_SECONDS
    try:
        while running:
            assert time.monotonic() < deadline, f"stress run too slow: {len(running)} left"
            time.sleep(0.01)
            for pid, (tag, proc) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                out = proc.stdout.read()
                proc.stdout.close()
                del running[pid]
                outcomes.append((tag, code))
                assert b"Traceback" not in out, out
                undone += out.count(b"removed the unfinished message")
                if code == EX_OK:
                    if killer.kills < KILLS and len(messages) < MAX_MESSAGES:
                        start(new_message())  # keep WRITERS deliveries going
                    continue
                assert code in (-signal.SIGKILL, EX_TEMPFAIL), (tag, code, out)
                start(tag)  # deferred: the MTA retries it
    finally:
        killer.stop = True
        killer.join()
        for _, proc in running.values():
            proc.kill()
            proc.wait()
            proc.stdout.close()
    kills, killed_tags = killer.kills, killer.killed_tags
    assert kills >= KILLS // 3, f"only {kills} kills happened ({len(killer.seen)} holders seen)"
    assert undone, "no kill hit a write: the test did not test the recovery"

    data = mbox.read_bytes()
    parsed = mboxfmt.split_mbox(data)
    counts = {}
    for from_line, msg in parsed:
        assert from_line.startswith(b"From " + SENDER.encode() + b"  ")
        tag = next(line.split(b": ", 1)[1] for line in msg.split(b"\n")
                   if line.startswith(b"X-Tag: "))
        assert msg == mboxfmt.expected(messages[tag], SENDER, rcpt), f"{tag} not whole"
        counts[tag] = counts.get(tag, 0) + 1
    assert set(counts) == set(messages), set(messages) - set(counts)
    for tag, n in counts.items():
        # A delivery killed after its last byte was written (during its
        # fsync, or before it exited) leaves a whole message: the retry adds
        # a copy (docs/mbox.md).  Never-killed ones: exactly once.
        assert n <= 1 + killed_tags.get(tag, 0), (tag, n, killed_tags.get(tag, 0))

    box = mailbox.mbox(str(mbox), create=False)
    try:
        tags = sorted(m["X-Tag"] for m in box)
    finally:
        box.close()
    assert tags == sorted(t.decode() for t, n in counts.items() for _ in range(n))
    if shutil.which("formail"):
        split_dir = tmp_path / "formail"
        split_dir.mkdir()
        with open(mbox, "rb") as stdin:
            subprocess.run(["formail", "-s", "sh", "-c", f'cat > "{split_dir}/$FILENO"'],
                           stdin=stdin, check=True, timeout=60)
        pieces = sorted(split_dir.iterdir())
        assert len(pieces) == len(parsed)
        for piece, (from_line, msg) in zip(pieces, parsed):
            assert piece.read_bytes().rstrip(b"\n") == \
                (from_line + b"\n" + msg).rstrip(b"\n"), piece
    assert not (mbox.parent / "mbox.lock").exists()
    assert not record_active(mbox.parent / ".mbox.pymda-append")
    print(f"stress: {kills} kills, {undone} partial messages undone, {len(outcomes)} attempts, "
          f"{sum(counts.values()) - len(counts)} duplicate(s) from kills after fsync")
