"""pymda-lmtpd as root: the temporary user switch and the worker processes.

Real users, the installed server, real sockets (tests/test_e2e_lmtp.py's
Daemon).  What is checked: every delivered file belongs to its user while
recipients of two users interleave over several connections and workers;
a Maildir that is a symlink into root's directory is refused (4.2.0,
nothing written); after 1,000 mixed deliveries every worker's real and
saved ids are still root; a worker killed mid-transaction costs only that
transaction (no 250) and is replaced; SIGTERM drains every worker;
lmtp_max_connections counts for the whole server; switch_back() that
cannot restore root exits the process.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from support import paths
from support.lmtpclient import Client, transaction
from test_e2e_lmtp import (
    BODY, DELIVERED, EX_OK, RCPT_OK, SENDER, SHUTTING_DOWN_START, START_DATA, daemons,  # noqa: F401
    maildir_messages, write_config,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

TOO_MANY = "421 4.3.2 "


def wait_workers(d, count, timeout=20, exclude=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [p for p in d.children() if p not in exclude]
        if len(workers) == count:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"workers: {d.children()}; {d.output()}")


def ids(pid):
    """{"Uid": [...], "Gid": [...], "Groups": [...]} from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = value.split()
    return out


def thread_ids(pid):
    """ids() of every thread of ``pid`` (a switch may be one thread's)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.append(ids(f"{pid}/task/{task.name}"))
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return found


def worker_of(client, workers):
    """The worker pid holding the server end of ``client``'s connection."""
    here = client.sock.getsockname()
    port = f"{here[1]:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(":" + port) and fields[2].startswith("0100007F"):
            inodes.add(fields[9])
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    raise AssertionError(f"no worker holds {here}")


def one_connection_per_worker(d, workers):
    """{worker pid: an open connection that worker holds}, one for each."""
    held = {}
    for _ in range(200):
        c = d.connect()
        pid = worker_of(c, workers)
        if pid in held:
            c.close()
            continue
        held[pid] = c
        if len(held) == len(workers):
            return held
    raise AssertionError(f"no connection reached every worker: {held}")


def start_data(c, recipients):
    """MAIL, RCPT..., DATA and half a message: a transaction in flight."""
    c.cmd(f"MAIL FROM:<{SENDER}>")
    for r in recipients:
        assert c.cmd(f"RCPT TO:<{r}>") == RCPT_OK
    assert c.cmd("DATA") == START_DATA
    c.send(BODY[:20])


def owners(user):
    """(uid, gid) of everything under the user's Maildir."""
    found = set()
    for root, dirs, files in os.walk(user.path("Maildir")):
        for name in dirs + files + ["."]:
            st = os.lstat(os.path.join(root, name))
            found.add((st.st_uid, st.st_gid))
    return found


def in_parallel(count, session, timeout=300):
    """Run ``session(n, errors)`` in ``count`` threads; what they found wrong."""
    errors = []

    def run(n):
        try:
            session(n, errors)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


@needs_root
def test_interleaved_users_over_connections_and_workers(tmp_path, daemons, make_user):
    alice, bob = make_user(), make_user()
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_workers = 2\n'))

    def client(n, errors):
        with d.connect() as c:
            for i in range(12):
                first, second = (alice, bob) if (n + i) % 2 else (bob, alice)
                rcpts = [f"{first.name}@localhost", f"{second.name}+x@localhost",
                         f"{first.name}+y@localhost"]
                body = b"Message-ID: <%d.%d@test>\r\n\r\nx\r\n" % (n, i)
                replies = transaction(c, SENDER, rcpts, body)[1]
                if replies != [DELIVERED] * 3:
                    errors.append(replies)

    assert in_parallel(6, client) == []
    # each transaction: the first user twice (two addresses), the second once
    assert len(maildir_messages(alice)) + len(maildir_messages(bob)) == 6 * 12 * 3
    assert owners(alice) == {(alice.uid, alice.gid)}
    assert owners(bob) == {(bob.uid, bob.gid)}
    assert "Delivery process" not in d.output()


@needs_root
def test_maildir_symlink_into_roots_directory_is_refused(tmp_path, daemons, test_user):
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    for sub in ("tmp", "new", "cur"):
        (private / sub).mkdir(mode=0o700)
    os.symlink(private, test_user.path("Maildir"))
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    with d.connect() as c:
        _, replies = transaction(c, SENDER, [f"{test_user.name}@localhost"], BODY)
    assert len(replies) == 1 and replies[0].startswith("4") and " 4.2.0 " in replies[0], replies
    assert [p for p in private.rglob("*") if p.is_file()] == []
    for pid in d.children():
        assert ids(pid)["Uid"] == ["0"] * 4


@needs_root
def test_a_thousand_mixed_deliveries_leave_every_worker_root(tmp_path, daemons, make_user):
    maildir, mbox, full = make_user(), make_user(), make_user()
    cfg = write_config(tmp_path, f"""\
        mailbox = "Maildir/"
        lmtp_workers = 2
        [users."{mbox.name}"]
        mailbox = ""
        [users."{full.name}"]
        quota_storage = 1
    """)
    d = daemons(cfg)
    workers = wait_workers(d, 2)
    before = {pid: ids(pid) for pid in workers}
    assert all(v["Uid"] == ["0"] * 4 and v["Gid"] == ["0"] * 4 for v in before.values())
    rcpts = [f"{maildir.name}@localhost", f"{mbox.name}@localhost",
             f"{full.name}@localhost", f"{maildir.name}+z@localhost"]

    def client(n, errors):
        with d.connect() as c:
            for i in range(63):
                body = b"Message-ID: <%d.%d@test>\r\n\r\nx\r\n" % (n, i)
                c.cmd(f"MAIL FROM:<{SENDER}>")
                for r in rcpts:
                    c.cmd(f"RCPT TO:<{r}>")
                assert c.cmd("DATA") == START_DATA
                c.send(body + b".\r\n")
                replies = [c.line() for _ in rcpts]
                if [r[:3] for r in replies] != ["250", "250", "552", "250"]:
                    errors.append(replies)

    assert in_parallel(4, client) == []  # 4 x 63 x 4 = 1008 deliveries
    assert len(maildir_messages(maildir)) == 4 * 63 * 2
    assert Path(f"/var/mail/{mbox.name}").read_bytes().count(b"\nMessage-ID: <") == 4 * 63
    assert owners(maildir) == {(maildir.uid, maildir.gid)}
    assert maildir_messages(full) == []
    assert wait_workers(d, 2) == workers  # none died
    for pid in workers:
        for now in thread_ids(pid):  # the switch is per thread on Linux
            assert now["Uid"] == ["0"] * 4 and now["Gid"] == ["0"] * 4, now
            assert now["Groups"] == before[pid]["Groups"]
    assert "switching each delivering thread to its user" in d.output()


@needs_root
def test_killed_worker_costs_its_transaction_only(tmp_path, daemons, make_user):
    alice, bob = make_user(), make_user()
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_workers = 2\n'))
    workers = wait_workers(d, 2)
    held = one_connection_per_worker(d, workers)
    victim, other = workers
    doomed, survivor = held[victim], held[other]
    start_data(doomed, [f"{alice.name}@localhost"])
    start_data(survivor, [f"{bob.name}@localhost"])
    os.kill(victim, signal.SIGKILL)
    try:
        doomed.send(BODY[20:] + b".\r\n")
        got = doomed.line()
    except (OSError, EOFError):  # the connection died with the worker
        got = ""
    assert not got.startswith("250")
    doomed.close()
    survivor.send(BODY[20:] + b".\r\n")
    assert survivor.line() == DELIVERED
    survivor.close()
    replaced = wait_workers(d, 2, exclude=(victim,))
    assert victim not in replaced and len(set(replaced) & set(workers)) == 1
    assert maildir_messages(alice) == []
    for _ in range(6):  # the server goes on, whichever worker answers
        with d.connect() as c:
            assert transaction(c, SENDER, [f"{alice.name}@localhost"], BODY)[1] == [DELIVERED]
    assert len(maildir_messages(alice)) == 6
    assert "was killed by signal 9: starting a new one" in d.output()


@needs_root
def test_sigterm_drains_every_worker(tmp_path, daemons, make_user):
    alice, bob = make_user(), make_user()
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_workers = 2\n'))
    workers = wait_workers(d, 2)
    conns = list(one_connection_per_worker(d, workers).values())
    for c, user in zip(conns, (alice, bob)):
        start_data(c, [f"{user.name}@localhost"])
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert d.proc.poll() is None  # transactions in flight: still serving them
    for c in conns:
        c.send(BODY[20:] + b".\r\n")
        c.sock.settimeout(30)
        assert c.line() == DELIVERED
        assert c.line().startswith(SHUTTING_DOWN_START)
        c.close()
    assert d.proc.wait(timeout=30) == EX_OK
    assert len(maildir_messages(alice)) == len(maildir_messages(bob)) == 1
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()


@needs_root
def test_max_connections_counts_every_worker(tmp_path, daemons):
    d = daemons(write_config(tmp_path, "lmtp_max_connections = 3\nlmtp_workers = 2\n"))
    workers = wait_workers(d, 2)
    open_ = [d.connect() for _ in range(3)]
    assert len({worker_of(c, workers) for c in open_}) >= 1
    with Client(("127.0.0.1", d.port)) as extra:
        assert extra.line().startswith(TOO_MANY)
    open_.pop().close()
    deadline = time.monotonic() + 10
    while True:  # the slot is freed once the worker saw the close
        with Client(("127.0.0.1", d.port)) as again:
            if again.line().startswith("220 "):
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for c in open_:
        c.close()


SWITCH_SCRIPT = """
import os, sys
from pymda.users import Identity, switch_temporarily, switch_back
uid, gid, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.setgroups([0, 4])
who = Identity(name="x", uid=uid, gid=gid, home="/nonexistent")
switch_temporarily(who)
print(os.getresuid(), os.getresgid(), os.getgroups(), flush=True)
if mode == "lose-root":
    os.setresuid(uid, uid, uid)  # the saved root id is gone: no way back
switch_back()
print(os.getresuid(), os.getresgid(), sorted(os.getgroups()), flush=True)
"""


@needs_root
@pytest.mark.parametrize("mode", ["normal", "lose-root"])
def test_switch_back_restores_root_or_exits(test_user, mode):
    python = paths.prefix() / "bin" / "python3"
    proc = subprocess.run([str(python), "-c", SWITCH_SCRIPT, str(test_user.uid),
                           str(test_user.gid), mode], capture_output=True, text=True,
                          timeout=30)
    lines = proc.stdout.splitlines()
    u, g = test_user.uid, test_user.gid
    assert lines[0] == f"(0, {u}, 0) (0, {g}, 0) []"
    if mode == "normal":
        assert proc.returncode == 0, proc.stderr
        assert lines[1] == "(0, 0, 0) (0, 0, 0) [0, 4]"
    else:
        assert proc.returncode == 70 and len(lines) == 1
        assert "pymda: fatal: " in proc.stderr and "Traceback" not in proc.stderr


THREAD_SWITCH_SCRIPT = """
import ctypes, os, sys, threading
from pymda import users
from pymda.lmtp.threadids import ThreadIds
from pymda.users import Identity, switch_temporarily, switch_back
(u1, g1, u2, g2), where, mode = map(int, sys.argv[1:5]), sys.argv[5], sys.argv[6]
os.setgroups([0, 4])
ids = ThreadIds.start()
users.use_thread_ids(ids)
both, checked = threading.Barrier(3, timeout=10), threading.Barrier(3, timeout=10)
seen = {}
def deliver(name, uid, gid):
    switch_temporarily(Identity(name=name, uid=uid, gid=gid, home="/nonexistent"))
    both.wait()
    os.close(os.open(os.path.join(where, name), os.O_CREAT | os.O_WRONLY, 0o600))
    seen[name] = (os.getresuid(), os.getresgid(), os.getgroups())
    checked.wait()
    if mode == "lose-root" and name == "one":
        ids._call(ids.nr_uid, *(ctypes.c_long(uid),) * 3)  # no way back
    switch_back()
    seen[name + " back"] = (os.getresuid(), os.getresgid(), sorted(os.getgroups()))
threads = [threading.Thread(target=deliver, args=a) for a in (("one", u1, g1), ("two", u2, g2))]
for t in threads:
    t.start()
both.wait()
seen["main"] = (os.getresuid(), os.getresgid(), sorted(os.getgroups()))
checked.wait()
for t in threads:
    t.join()
for key in sorted(seen):
    print(key, *seen[key], flush=True)
"""


@needs_root
@pytest.mark.parametrize("mode", ["normal", "lose-root"])
def test_thread_switches_are_each_threads_own(make_user, mode):
    """pymda-lmtpd's per-thread switch (pymda/lmtp/threadids.py): two
    threads switched to two users at once each create files as their own
    user while the main thread stays root; both come back to root; a
    thread that cannot come back ends the process (70)."""
    one, two = make_user(), make_user()
    where = Path(tempfile.mkdtemp(prefix="pymda-threadids-", dir="/tmp"))  # both may write
    where.chmod(0o1777)
    python = paths.prefix() / "bin" / "python3"
    try:
        proc = subprocess.run([str(python), "-c", THREAD_SWITCH_SCRIPT, str(one.uid),
                               str(one.gid), str(two.uid), str(two.gid), str(where), mode],
                              capture_output=True, text=True, timeout=30)
        owners = {name: ((where / name).stat().st_uid, (where / name).stat().st_gid)
                  for name in ("one", "two")}
    finally:
        shutil.rmtree(where)
    assert owners == {"one": (one.uid, one.gid), "two": (two.uid, two.gid)}, proc.stderr
    if mode == "lose-root":
        assert proc.returncode == 70, proc.stdout + proc.stderr
        assert "pymda: fatal: " in proc.stderr and "Traceback" not in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "main (0, 0, 0) (0, 0, 0) [0, 4]",
        f"one (0, {one.uid}, 0) (0, {one.gid}, 0) []",
        "one back (0, 0, 0) (0, 0, 0) [0, 4]",
        f"two (0, {two.uid}, 0) (0, {two.gid}, 0) []",
        "two back (0, 0, 0) (0, 0, 0) [0, 4]",
    ]


PROGRAM_SCRIPT = """
import os, subprocess, sys
from pymda import locking
from pymda.forward import pipe
from pymda.users import Identity, switch_temporarily, switch_back
uid, gid = int(sys.argv[1]), int(sys.argv[2])
print(pipe.program_ids(), locking.switched_temporarily(), flush=True)
switch_temporarily(Identity(name="x", uid=uid, gid=gid, home="/nonexistent"))
print(pipe.program_ids(), locking.switched_temporarily(), flush=True)
code, first, _ = pipe.run_argv(["/bin/sh", "-c", "grep -E '^(Uid|Gid):' /proc/self/status"],
                               [b""], env={"PATH": "/usr/bin:/bin"}, ids=None, cwd="/",
                               timeout=30, what="test")
switch_back()
print(code, first, flush=True)
"""


@needs_root
def test_no_program_starts_with_root_as_its_real_uid_under_a_temporary_switch(test_user):
    """The one rule for every program pymda starts (forward.pipe.program_ids):
    under a temporary switch the child takes the user's real and saved ids
    before the exec (a shell whose real uid is root would run as root),
    and the setgid dotlockfile helper is not run at all (locking)."""
    python = paths.prefix() / "bin" / "python3"
    proc = subprocess.run([str(python), "-c", PROGRAM_SCRIPT, str(test_user.uid),
                           str(test_user.gid)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    u, g = test_user.uid, test_user.gid
    assert proc.stdout.splitlines() == [
        "None False",
        f"({u}, {g}, None) True",
        f"0 Uid: {u} {u} {u} {u}",
    ]


REFUSED_SWITCH_SCRIPT = """
import os
from pymda.errors import PermFail
from pymda.users import Identity, switch_temporarily, switch_back
me = os.geteuid()
other = Identity(name="other", uid=me + 1, gid=os.getegid(), home="/nonexistent")
try:
    switch_temporarily(other)
except PermFail as exc:
    print("refused", exc.status, flush=True)
switch_temporarily(Identity(name="me", uid=me, gid=os.getegid(), home="/nonexistent"))
switch_back()
print("again ok", flush=True)
"""


@needs_root
def test_a_refused_temporary_switch_leaves_nothing_switched(test_user):
    """Not root (the mail user's own server): a switch to another uid is
    refused (5.7.1) and leaves no switch 'on' - the next one must not find
    one and end the process."""
    python = paths.prefix() / "bin" / "python3"
    proc = subprocess.run([str(python), "-c", REFUSED_SWITCH_SCRIPT], capture_output=True,
                          text=True, timeout=30, user=test_user.uid, group=test_user.gid,
                          extra_groups=[], cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["refused 5.7.1", "again ok"]


FORK_FAILS_ONCE = """
import os, signal, threading, time
from pymda.lmtp import workers
real_fork, calls = os.fork, []
def fork():
    calls.append(1)
    if len(calls) == 1:
        raise OSError(11, "Resource temporarily unavailable")
    return real_fork()
workers.os.fork = fork
workers.RESTART_PAUSE = 0.1
class Log:
    def error(self, text): print("error:", text, flush=True)
    def info(self, text): pass
    def warning(self, text): pass
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
print("rc", workers.supervise(1, lambda slot, shared: time.sleep(10), Log()), len(calls), flush=True)
"""


def test_a_failed_fork_is_retried_not_fatal():
    """fork() failing (EAGAIN) must not end the supervisor (its running
    workers would be orphaned): it is logged and tried again."""
    python = paths.prefix() / "bin" / "python3"
    proc = subprocess.run([str(python), "-c", FORK_FAILS_ONCE], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("error: cannot start worker 0: Resource temporarily unavailable")
    assert lines[-1] == "rc 0 2"
