"""pymda-lmtpd end to end: the installed program, real users, a real postfix.

The server runs as a process (``/opt/pymda/bin/pymda-lmtpd``); the tests
talk LMTP to it byte for byte (support.lmtpclient), or let postfix do it
with ``mailbox_transport = lmtp:...``.  Most tests need root (they create
users and the server forks a child per delivery that becomes the user).
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import paths
from support.lmtpclient import Client, transaction
from support.procs import free_port, run_clients, socket_activation

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

GREETING_START = "220 "
RCPT_OK = "250 2.1.5 Ok"
DELIVERED = "250 2.0.0 Ok: delivered"
NOOP_OK = "250 2.0.0 Ok"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
USER_UNKNOWN = "550 5.1.1 User unknown: {}"
FULL = "552 5.2.2 Mailbox is full"
FULL_TEMP = "452 4.2.2 Mailbox is full"
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
LOOP = "554 5.4.6 Mail forwarding loop for {}"
CHILD_KILLED = "451 4.3.0 Delivery process died (killed by signal 9)"
NOT_MINE = "550 5.7.1 delivering for {} needs root (running as uid {})"
SHUTTING_DOWN_START = "421 4.3.2 "
EX_OK = 0
EX_USAGE = 64
EX_TEMPFAIL = 75

SENDER = "sender@example.org"
BODY = (b"From: sender@example.org\r\nSubject: lmtp test\r\nMessage-ID: <lmtp@test>\r\n\r\n"
        b"line one\r\n..a stuffed dot\r\nFrom here\r\n")
STORED = (b"From: sender@example.org\nSubject: lmtp test\nMessage-ID: <lmtp@test>\n\n"
          b"line one\n.a stuffed dot\nFrom here\n")


def lmtpd_bin():
    return paths.prefix() / "bin" / "pymda-lmtpd"


def write_config(directory, text):
    path = Path(directory) / "pymda.toml"
    path.write_text(textwrap.dedent(text))
    os.chmod(path, 0o644)
    return path


class Daemon:
    """The installed pymda-lmtpd on 127.0.0.1:<free port> (plus ``listen``)."""

    def __init__(self, cfg_path, *listen, user=None, inet=True, argv_prefix=(), pass_fds=(),
                 env=None):
        self.port = free_port() if inet else None
        self.output_path = Path(cfg_path).parent / f"lmtpd-{time.monotonic_ns()}.log"
        argv = [*argv_prefix, str(lmtpd_bin()), "-v", "-c", str(cfg_path)]
        if inet:
            argv += ["--listen", f"inet:127.0.0.1:{self.port}"]
        for spec in listen:
            argv += ["--listen", spec]
        kwargs = {}
        if user is not None:
            kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
        # a root server writes the parsed-config cache: keep it in the test's directory
        full_env = {"PATH": "/usr/bin:/bin",
                    "PYMDA_CACHE_DIR": str(Path(cfg_path).parent / "config-cache")}
        full_env.update(env or {})
        with open(self.output_path, "wb") as out:
            os.chmod(self.output_path, 0o666)
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=full_env,
                                         pass_fds=pass_fds, cwd="/", **kwargs)

    def wait_ready(self, address=None, timeout=15):
        address = address or ("127.0.0.1", self.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pymda-lmtpd exited {self.proc.returncode}: {self.output()}")
            try:
                with Client(address, timeout=5) as c:
                    assert c.line().startswith(GREETING_START)
                    c.cmd("QUIT")
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"pymda-lmtpd did not listen: {self.output()}")

    def connect(self, address=None):
        c = Client(address or ("127.0.0.1", self.port))
        assert c.line().startswith(GREETING_START)
        assert c.cmd("LHLO client.test")[-1] == "250 DSN"
        return c

    def output(self):
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def children(self):
        """Pids whose parent is the server (its delivery children)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.proc.pid:
                pids.append(int(entry.name))
        return pids

    def send_and_wait_for_children(self, c, *recipients, timeout=15):
        """One transaction to ``recipients`` on connection ``c`` up to the
        end of DATA; the delivery children once they run."""
        c.cmd(f"MAIL FROM:<{SENDER}>")
        for recipient in recipients:
            assert c.cmd(f"RCPT TO:<{recipient}>") == RCPT_OK
        assert c.cmd("DATA") == START_DATA
        c.send(BODY + b".\r\n")
        deadline = time.monotonic() + timeout
        while not self.children() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.children()


@pytest.fixture
def daemons():
    started = []

    def start(*args, ready=True, **kwargs):
        d = Daemon(*args, **kwargs)
        started.append(d)
        return d.wait_ready() if ready and d.port else d

    yield start
    for d in started:
        d.stop()
        d.output_path.unlink(missing_ok=True)


@pytest.fixture
def two_users(make_user):
    return make_user(), make_user()


def maildir_messages(user, folder=""):
    new = user.path("Maildir", folder, "new")
    if not new.is_dir():
        return []
    return sorted(new.iterdir())


def expected(recipient, sender=SENDER, stored=STORED):
    return f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode() + stored


# --- the protocol against the real engine ---------------------------------------------


@needs_root
def test_several_recipients_one_reply_each_in_order(tmp_path, daemons, two_users):
    alice, bob = two_users
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    with d.connect() as c:
        rcpts = [f"{alice.name}@localhost", "no-such-user-xyz@localhost",
                 f"{bob.name}+lists@localhost", f"{alice.name}@localhost"]
        rcpt_replies, replies = transaction(c, SENDER, rcpts, BODY, " SIZE=%d" % len(BODY))
        assert rcpt_replies == [RCPT_OK, USER_UNKNOWN.format("no-such-user-xyz"), RCPT_OK,
                                RCPT_OK]
        assert replies == [DELIVERED] * 3
        assert c.cmd("NOOP") == NOOP_OK
    # alice twice in the envelope: one copy (and two replies)
    (a,) = maildir_messages(alice)
    assert a.read_bytes() == expected(f"{alice.name}@localhost")
    st = a.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (alice.uid, alice.gid, 0o600)
    # bob+lists: no folder "lists" -> INBOX (detail_folders = "existing")
    (b,) = maildir_messages(bob)
    assert b.read_bytes() == expected(f"{bob.name}+lists@localhost")
    assert b.stat().st_uid == bob.uid
    assert ",S=%d," % len(b.read_bytes()) in b.name


@needs_root
def test_a_first_line_starting_with_from_is_kept(tmp_path, daemons, test_user):
    """LMTP data has no envelope line: nothing of the message is dropped."""
    body = b"From nowhere in particular\r\nSubject: odd\r\n\r\nbody\r\n"
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    with d.connect() as c:
        _, replies = transaction(c, SENDER, [f"{test_user.name}@localhost"], body)
        assert replies == [DELIVERED]
    (m,) = maildir_messages(test_user)
    assert m.read_bytes() == expected(
        f"{test_user.name}@localhost",
        stored=b"From nowhere in particular\nSubject: odd\n\nbody\n")


@needs_root
def test_null_sender_and_folder_from_extension(tmp_path, daemons, test_user):
    test_user.mkdir("Maildir/.work/new")
    test_user.mkdir("Maildir/.work/cur")
    test_user.mkdir("Maildir/.work/tmp")
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    with d.connect() as c:
        _, replies = transaction(c, "", [f"{test_user.name}+work@localhost"], BODY)
        assert replies == [DELIVERED]
    (m,) = maildir_messages(test_user, ".work")
    assert m.read_bytes() == expected(f"{test_user.name}+work@localhost", sender="")


@needs_root
def test_spool_mbox_is_created_by_root_for_the_user(tmp_path, daemons, test_user):
    spool = Path(f"/var/mail/{test_user.name}")
    assert not spool.exists()
    d = daemons(write_config(tmp_path, ""))  # mailbox = "": /var/mail/$user
    with d.connect() as c:
        _, replies = transaction(c, SENDER, [f"{test_user.name}@localhost"], BODY)
        assert replies == [DELIVERED]
    data = spool.read_bytes()
    assert data.startswith(b"From sender@example.org  ")
    assert b"\n>From here\n" in data and data.endswith(b"\n\n")
    assert spool.stat().st_uid == test_user.uid


@needs_root
def test_quota_at_rcpt_with_size_and_at_data(tmp_path, daemons, two_users):
    alice, bob = two_users
    cfg = write_config(tmp_path, f"""\
        mailbox = "Maildir/"
        [users."{alice.name}"]
        quota_storage = 1000
    """)
    d = daemons(cfg)
    big = BODY + b"x" * 2000 + b"\r\n"
    with d.connect() as c:
        rcpt_replies, replies = transaction(
            c, SENDER, [f"{alice.name}@localhost", f"{bob.name}@localhost"], big,
            f" SIZE={len(big)}")
        assert rcpt_replies == [FULL, RCPT_OK]
        assert replies == [DELIVERED]
        # no SIZE= given: the quota is checked again at delivery
        rcpt_replies, replies = transaction(
            c, SENDER, [f"{alice.name}@localhost", f"{bob.name}@localhost"], big)
        assert rcpt_replies == [RCPT_OK, RCPT_OK]
        assert replies == [FULL, DELIVERED]
        # a small one fits
        _, replies = transaction(c, SENDER, [f"{alice.name}@localhost"], BODY, " SIZE=100")
        assert replies == [DELIVERED]
    assert len(maildir_messages(alice)) == 1
    assert len(maildir_messages(bob)) == 2


@needs_root
def test_quota_full_tempfail(tmp_path, daemons, test_user):
    cfg = write_config(tmp_path, f"""\
        mailbox = "Maildir/"
        quota_full_tempfail = true
        [users."{test_user.name}"]
        quota_storage = 1000
    """)
    d = daemons(cfg)
    big = BODY + b"x" * 2000 + b"\r\n"
    with d.connect() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE={len(big)}") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{test_user.name}@localhost>") == FULL_TEMP
        assert c.cmd("RSET") == NOOP_OK
        _, replies = transaction(c, SENDER, [f"{test_user.name}@localhost"], big)
        assert replies == [FULL_TEMP]
    assert maildir_messages(test_user) == []


@needs_root
def test_message_size_limit(tmp_path, daemons, test_user):
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\nmessage_size_limit = 1000\n'))
    big = BODY + b"x" * 2000 + b"\r\n"
    with d.connect() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE=1001") == TOO_BIG
        _, replies = transaction(c, SENDER, [f"{test_user.name}@localhost"] * 2, big)
        assert replies == [TOO_BIG, TOO_BIG]
        _, replies = transaction(c, SENDER, [f"{test_user.name}@localhost"], BODY)
        assert replies == [DELIVERED]
    assert len(maildir_messages(test_user)) == 1


@needs_root
def test_loop_is_refused(tmp_path, daemons, two_users):
    alice, bob = two_users
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    looped = f"Delivered-To: {alice.name}@localhost\r\n".encode() + BODY
    with d.connect() as c:
        _, replies = transaction(c, SENDER, [f"{alice.name}@localhost", f"{bob.name}@localhost"],
                                 looped)
        assert replies == [LOOP.format(f"{alice.name}@localhost"), DELIVERED]
    assert maildir_messages(alice) == [] and not alice.path("Maildir").exists()
    assert len(maildir_messages(bob)) == 1


@needs_root
def test_dead_child_is_451_and_the_connection_goes_on(tmp_path, daemons, two_users):
    alice, bob = two_users
    alice.write(".forward", b'"|/bin/sleep 60"\n', 0o644)
    cfg = write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_forward = true\nlmtp_workers = 1\n')
    d = daemons(cfg)
    with d.connect() as c:
        (child,) = d.send_and_wait_for_children(c, f"{alice.name}@localhost",
                                                f"{bob.name}@localhost")
        os.kill(child, signal.SIGKILL)
        assert c.line() == CHILD_KILLED
        assert c.line() == DELIVERED  # bob
        assert c.cmd("NOOP") == NOOP_OK
    assert len(maildir_messages(bob)) == 1
    assert "delivery process killed by signal 9" in d.output()


@needs_root
def test_sigterm_finishes_the_transaction_in_flight(tmp_path, daemons, test_user):
    # .forward: the mailbox and a pipe that takes a while
    test_user.write(".forward", f'\\{test_user.name}, "|/bin/sleep 2"\n'.encode(), 0o644)
    cfg = write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_forward = true\nlmtp_workers = 1\n')
    d = daemons(cfg)
    idle = d.connect()
    with d.connect() as c:
        assert d.send_and_wait_for_children(c, f"{test_user.name}@localhost")
        d.proc.send_signal(signal.SIGTERM)
        # the idle connection is told at once; no new connections
        assert idle.line().startswith(SHUTTING_DOWN_START) and idle.closed()
        idle.close()
        with pytest.raises(OSError):
            Client(("127.0.0.1", d.port))
        assert d.proc.poll() is None
        assert c.line() == DELIVERED
        assert c.line().startswith(SHUTTING_DOWN_START)
    assert d.proc.wait(timeout=15) == EX_OK
    assert len(maildir_messages(test_user)) == 1


@needs_root
def test_a_busy_child_does_not_hold_other_connections_open(tmp_path, daemons, test_user):
    """The child closes the server's sockets: QUIT on another connection
    is seen as EOF at once, not when the child is done."""
    test_user.write(".forward", b'"|/bin/sleep 5"\n', 0o644)
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_forward = true\nlmtp_workers = 1\n'))
    other = d.connect()
    with d.connect() as c:
        assert d.send_and_wait_for_children(c, f"{test_user.name}@localhost")
        start = time.monotonic()
        assert other.cmd("QUIT") == "221 2.0.0 Bye"
        assert other.closed()
        assert time.monotonic() - start < 2
        other.close()
        c.sock.settimeout(30)
        assert c.line() == DELIVERED


@needs_root
def test_single_user_server_serves_virtual_users_without_root(tmp_path, daemons, two_users):
    vmail, other = two_users
    home = vmail.path("vhome")
    vmail.mkdir("vhome", 0o700)
    cfg = write_config(vmail.home, f"""\
        [users."bob@example.org"]
        uid = {vmail.uid}
        gid = {vmail.gid}
        home = "{home}"
        mailbox = "Maildir/"
    """)
    sock_path = vmail.path("lmtp.sock")
    d = daemons(cfg, f"unix:{sock_path}", user=vmail, inet=False, ready=False)
    d.wait_ready(str(sock_path))
    with d.connect(str(sock_path)) as c:
        rcpt_replies, replies = transaction(
            c, SENDER, ["bob+x@example.org", f"{other.name}@localhost"], BODY)
        assert rcpt_replies == [RCPT_OK, NOT_MINE.format(other.name, vmail.uid)]
        assert replies == [DELIVERED]
    (m,) = sorted((home / "Maildir" / "new").iterdir())
    assert m.stat().st_uid == vmail.uid
    assert m.read_bytes() == expected("bob+x@example.org")
    assert f"as uid {vmail.uid}" in d.output()
    assert d.stop() == EX_OK
    assert not sock_path.exists()  # removed at exit


def proc_number(pid, name, field):
    """The number of ``field:`` in /proc/PID/NAME."""
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/{name}")


@needs_root
def test_memory_does_not_grow_with_message_size(tmp_path, daemons, test_user):
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_workers = 1\n'))

    def peak_kib():
        return proc_number(d.proc.pid, "status", "VmHWM")

    with d.connect() as c:  # warm up: every module the server needs is loaded
        _, replies = transaction(c, SENDER, [f"{test_user.name}@localhost"], BODY)
        assert replies == [DELIVERED]
    before = peak_kib()
    mib = 64
    line = b"x" * 1022 + b"\r\n"
    with d.connect() as c:
        c.cmd(f"MAIL FROM:<{SENDER}> SIZE={mib << 20}")
        assert c.cmd(f"RCPT TO:<{test_user.name}@localhost>") == RCPT_OK
        assert c.cmd("DATA") == START_DATA
        c.send(b"Subject: big\r\n\r\n")
        chunk = line * 1024
        for _ in range(mib):
            c.send(chunk)
        c.send(b".\r\n")
        c.sock.settimeout(120)
        assert c.line() == DELIVERED
    grown = peak_kib() - before
    assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB for a {mib} MiB message"
    big = max(maildir_messages(test_user), key=lambda p: p.stat().st_size)
    assert big.stat().st_size == len(expected(f"{test_user.name}@localhost", stored=b"")) + \
        len(b"Subject: big\n\n") + mib * 1024 * 1023


@needs_root
def test_a_big_message_is_spooled_once(tmp_path, daemons, test_user):
    """DATA goes straight into the engine's intake (issue 9 item 5): the
    server writes a message over 1 MiB to disk once (its spool) and once
    more for the Maildir file (under a temporary switch, or in a child): about 2x its size in write()
    bytes, where spooling twice made it 3x."""
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\nlmtp_workers = 1\n'))

    def written():
        return proc_number(d.proc.pid, "io", "wchar")

    rcpt = f"{test_user.name}@localhost"
    with d.connect() as c:  # warm up
        assert transaction(c, SENDER, [rcpt], BODY)[1] == [DELIVERED]
    time.sleep(0.5)  # the warm-up child is reaped (its writes count for us then)
    size = 8 << 20
    line = b"x" * 1022 + b"\r\n"
    with d.connect() as c:
        before = written()
        c.cmd(f"MAIL FROM:<{SENDER}>")
        assert c.cmd(f"RCPT TO:<{rcpt}>") == RCPT_OK
        assert c.cmd("DATA") == START_DATA
        c.send(b"Subject: big\r\n\r\n" + line * (size // len(line)) + b".\r\n")
        c.sock.settimeout(120)
        assert c.line() == DELIVERED
        deadline = time.monotonic() + 20
        while d.children() and time.monotonic() < deadline:
            time.sleep(0.05)  # reaped: the child's writes are added to ours
        time.sleep(0.2)
        grown = written() - before
    assert 1.8 * size < grown < 2.5 * size, f"{grown / size:.2f} x the message size written"


@needs_root
def test_concurrent_connections(tmp_path, daemons, two_users):
    """Forks and RCPT worker threads at the same time (lmtp_deliver's ForkGuard)."""
    alice, bob = two_users
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    errors = []

    def client(n):
        try:
            with d.connect() as c:
                for i in range(5):
                    body = b"Message-ID: <%d.%d@test>\r\n\r\nx\r\n" % (n, i)
                    _, replies = transaction(
                        c, SENDER, [f"{alice.name}@localhost", "nobody-xyz@localhost",
                                    f"{bob.name}@localhost"], body)
                    if replies != [DELIVERED, DELIVERED]:
                        errors.append(replies)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    run_clients(client, 8, 120)
    assert errors == []
    assert len(maildir_messages(alice)) == len(maildir_messages(bob)) == 40


def test_fork_guard():
    import threading

    from pymda.lmtp.handler import ForkGuard

    guard = ForkGuard()
    inside = threading.Event()
    leave = threading.Event()

    def worker():
        with guard:
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    held = threading.Event()
    h = threading.Thread(target=lambda: (guard.hold(), held.set()))
    h.start()
    assert not held.wait(0.2)  # a worker is inside: the fork waits
    leave.set()
    assert held.wait(10)
    entered = threading.Event()
    w2 = threading.Thread(target=lambda: guard.__enter__() or entered.set())
    w2.start()
    assert not entered.wait(0.2)  # forking: new workers wait
    guard.release()
    assert entered.wait(10)
    guard.__exit__(None, None, None)
    for thread in (t, h, w2):
        thread.join(10)
    assert (guard.active, guard.held, guard.waiting) == (0, False, 0)


# --- the command ---------------------------------------------------------------------


def test_systemd_socket_activation(tmp_path, daemons):
    cfg = write_config(tmp_path, "")
    listener, port, prefix = socket_activation()
    d = daemons(cfg, inet=False, ready=False, pass_fds=[listener.fileno()], argv_prefix=prefix)
    listener.close()
    d.wait_ready(("127.0.0.1", port))
    with d.connect(("127.0.0.1", port)) as c:
        assert c.cmd("NOOP") == NOOP_OK
        assert c.cmd("RSET") == NOOP_OK
    assert d.stop() == EX_OK
    assert "listening on systemd sockets" in d.output()


def test_sighup_is_ignored(tmp_path, daemons):
    d = daemons(write_config(tmp_path, ""))
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    with d.connect() as c:
        assert c.cmd("NOOP") == NOOP_OK
    assert "SIGHUP ignored" in d.output()
    assert d.stop() == EX_OK


def test_unix_socket(tmp_path, daemons):
    cfg = write_config(tmp_path, "")
    path = tmp_path / "lmtp.sock"
    d = daemons(cfg, f"unix:{path}", inet=False, ready=False)
    d.wait_ready(str(path))
    assert oct(path.stat().st_mode & 0o777) == oct(0o666)
    with d.connect(str(path)) as c:
        c.cmd(f"MAIL FROM:<{SENDER}>")
        assert c.cmd("RCPT TO:<no-such-user-xyz@localhost>") == \
            USER_UNKNOWN.format("no-such-user-xyz")
    assert d.stop() == EX_OK
    assert not path.exists()


@pytest.mark.parametrize("args,code,text", [
    (["--listen", "bogus"], EX_USAGE, "inet:HOST:PORT"),
    ([], EX_USAGE, "nothing to serve"),
    (["-c", "/nonexistent/pymda.toml", "--listen", "inet:127.0.0.1:1"], EX_TEMPFAIL,
     "4.3.5 cannot open config /nonexistent/pymda.toml"),
])
def test_command_errors(tmp_path, args, code, text):
    proc = subprocess.run([str(lmtpd_bin()), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30,
                          env={"PATH": "/usr/bin:/bin",
                               "PYMDA_CACHE_DIR": str(tmp_path / "config-cache")})
    assert proc.returncode == code and text in proc.stdout.decode(), proc.stdout


def run_activated(tmp_path, sock, config_text):
    """pymda-lmtpd given ``sock`` as systemd's socket (fd 3): (exit, output)."""
    listener, _, prefix = socket_activation()
    listener.close()  # only its wrapper command is wanted, with our fd
    prefix = prefix[:-1] + [str(sock.fileno())]
    proc = subprocess.run([*prefix, str(lmtpd_bin()), "-c",
                           str(write_config(tmp_path, config_text))],
                          pass_fds=[sock.fileno()], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30,
                          env={"PATH": "/usr/bin:/bin",
                               "PYMDA_CACHE_DIR": str(tmp_path / "config-cache")})
    return proc.returncode, proc.stdout.decode()


def test_a_datagram_socket_from_systemd_is_refused_at_start(tmp_path):
    """A socket unit with ListenDatagram=: one line and 75, checked before
    any worker starts (a worker would die and be restarted for ever)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        code, out = run_activated(tmp_path, sock, "")
    assert code == EX_TEMPFAIL, out
    assert "pymda-lmtpd: cannot listen: systemd passed fd 3, which is not a stream socket" \
        in out
    assert "Traceback" not in out


def test_an_unexpected_failure_is_one_line_and_75(tmp_path):
    """The one broad catch: a connected stream socket cannot listen()."""
    here, there = socket.socketpair()
    with here, there:
        code, out = run_activated(tmp_path, here, "lmtp_workers = 1\n")
    assert code == EX_TEMPFAIL, out
    assert "pymda-lmtpd: 4.3.0 internal error: OSError:" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("text, key", [
    ("lmtp_idle_timeout = -1\n", "lmtp_idle_timeout"),
    ("lmtp_command_timeout = inf\n", "lmtp_command_timeout"),
    ("lmtp_idle_timeout = nan\n", "lmtp_idle_timeout"),
    ("lmtp_max_per_address = -3\n", "lmtp_max_per_address"),
])
def test_bad_config_key_names_file_and_key(tmp_path, text, key):
    cfg = write_config(tmp_path, text)
    proc = subprocess.run([str(lmtpd_bin()), "-c", str(cfg), "--listen", "inet:127.0.0.1:1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30,
                          env={"PATH": "/usr/bin:/bin",
                               "PYMDA_CACHE_DIR": str(tmp_path / "config-cache")})
    assert proc.returncode == EX_TEMPFAIL
    assert f"{cfg}: {key} must be" in proc.stdout.decode()


def test_slow_clients_config_keys(tmp_path, daemons):
    """lmtp_command_timeout cuts a dribbling client with 421;
    lmtp_max_per_address refuses the next one from its address (counted
    per worker process: one here)."""
    d = daemons(write_config(tmp_path, "lmtp_command_timeout = 2\n"
                                       "lmtp_max_per_address = 2\nlmtp_workers = 1\n"))
    with d.connect() as slow, d.connect():
        with Client(("127.0.0.1", d.port)) as third:
            assert third.line().startswith("421 4.7.0 ")
        started = time.monotonic()
        slow.sock.settimeout(30)
        for byte in b"NOOP":
            slow.send(bytes([byte]))
            time.sleep(0.2)
        assert slow.line().startswith("421 4.4.2 ")
        assert 1 < time.monotonic() - started < 15
    with Client(("127.0.0.1", d.port), source="127.0.0.2") as other:
        assert other.line().startswith(GREETING_START)
    assert d.stop() == EX_OK


def test_python_m_and_the_delivery_path_stay_apart():
    """pymda (one-shot) never imports the LMTP modules; they import fine."""
    code = ("import sys; import pymda.cli, pymda.deliver; "
            "assert not [m for m in sys.modules if m.startswith('pymda.lmtp.protocol')]; "
            "import pymda.lmtp.main, pymda.lmtp.protocol, pymda.lmtp.handler")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=paths.REPO)


def test_contrib_files_agree():
    """The postfix snippet, the socket unit and the service unit fit together."""
    contrib = paths.REPO / "contrib"
    main_cf = (contrib / "postfix-lmtp.main.cf").read_text()
    socket_unit = (contrib / "systemd" / "pymda-lmtpd.socket").read_text()
    service = (contrib / "systemd" / "pymda-lmtpd.service").read_text()
    transport = [line for line in main_cf.splitlines()
                 if line.startswith("mailbox_transport = ")]
    assert transport == ["mailbox_transport = lmtp:unix:private/pymda-lmtp"]
    assert "ListenStream=/var/spool/postfix/private/pymda-lmtp\n" in socket_unit
    assert "SocketUser=postfix\n" in socket_unit
    assert "ExecStart=/usr/local/bin/pymda-lmtpd -c /etc/pymda/pymda.toml\n" in service
    assert "KillMode=mixed\n" in service  # children finish what they deliver
    assert "\nNoNewPrivileges=yes" not in service  # dotlockfile is setgid


# --- through a real postfix ------------------------------------------------------------


def postfix_transaction(postfix, recipients, body):
    postfix.send(SENDER, recipients, body)
    for rcpt in recipients:
        postfix.wait_status(rcpt, "sent")


@needs_root
def test_postfix_delivers_through_lmtp_inet(tmp_path, daemons, postfix, two_users):
    alice, bob = two_users
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    postfix.set(mailbox_transport=f"lmtp:inet:127.0.0.1:{d.port}")
    message = b"Subject: via postfix\n\nhello\n.lonely dot line\n"
    recipients = [f"{alice.name}@localhost", f"{bob.name}+x@localhost"]
    postfix_transaction(postfix, recipients, message)
    for user, rcpt in zip((alice, bob), recipients):
        (m,) = maildir_messages(user)
        data = m.read_bytes()
        # DSN is advertised: postfix sends ORCPT, here the address as given
        assert data.startswith(f"Return-Path: <{SENDER}>\nX-Original-To: {rcpt}\n"
                               f"Delivered-To: {rcpt}\n".encode())
        assert data.endswith(b"\n\nhello\n.lonely dot line\n")
        assert b"\r" not in data
        assert m.stat().st_uid == user.uid
    entries = postfix.deliveries(recipients[0])
    assert entries[-1][1:3] == ("2.0.0", "sent") and DELIVERED in entries[-1][3]


@needs_root
def test_postfix_passes_the_alias_as_orcpt(tmp_path, daemons, postfix, two_users):
    """SPEC 2 DSN: behind a virtual_alias_maps alias postfix's LMTP client
    sends ORCPT=rfc822;<alias>; the stored message names the alias in
    X-Original-To (postfix local(8)'s place: between Return-Path and
    Delivered-To), Delivered-To the final recipient."""
    alice, bob = two_users
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    alias = "team+sales@localhost"  # xtext: the "+" travels as "+2B"
    postfix.set(mailbox_transport=f"lmtp:inet:127.0.0.1:{d.port}",
                virtual_alias_maps=f"inline:{{ {{ {alias}={alice.name}@localhost,"
                                   f"{bob.name}@localhost }} }}")
    postfix.send(SENDER, [alias, f"{bob.name}@localhost"], b"Subject: alias\n\nto the team\n")
    for user in (alice, bob):
        postfix.wait_status(f"{user.name}@localhost", "sent")
    (m,) = maildir_messages(alice)
    assert m.read_bytes().startswith(
        f"Return-Path: <{SENDER}>\nX-Original-To: {alias}\n"
        f"Delivered-To: {alice.name}@localhost\n".encode())
    assert m.stat().st_uid == alice.uid
    # bob was given twice, through the alias and by name: with
    # enable_original_recipient (the default) postfix keeps both, each
    # with its own ORCPT, and delivers a copy for each
    copies = [m.read_bytes() for m in maildir_messages(bob)]
    assert sorted(c.split(b"\n")[1] for c in copies) == sorted(
        [f"X-Original-To: {alias}".encode(), f"X-Original-To: {bob.name}@localhost".encode()])
    for copy in copies:
        assert copy.split(b"\n")[2] == f"Delivered-To: {bob.name}@localhost".encode()
        assert copy.endswith(b"\n\nto the team\n")


@needs_root
def test_orcpt_is_the_original_recipient_and_x_original_to(tmp_path, daemons, test_user):
    """The engine sees ORCPT as the original recipient (here through a
    .forward-free Sieve-less delivery: X-Original-To on disk); without
    ORCPT nothing is added; a leading X-Original-To naming the same
    address is not doubled."""
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    rcpt = f"{test_user.name}@localhost"
    with d.connect() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}> RET=HDRS ENVID=e+2B1") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{rcpt}> NOTIFY=FAILURE ORCPT=rfc822;Old+2BName@example.org") \
            == RCPT_OK
        assert c.cmd("DATA") == START_DATA
        c.send(BODY + b".\r\n")
        assert c.reply()[0].startswith(DELIVERED)
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{rcpt}>") == RCPT_OK
        assert c.cmd("DATA") == START_DATA
        c.send(BODY + b".\r\n")
        assert c.reply()[0].startswith(DELIVERED)
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{rcpt}> ORCPT=rfc822;a@example.org") == RCPT_OK
        assert c.cmd("DATA") == START_DATA
        c.send(b"X-Original-To: A@example.org\r\n" + BODY + b".\r\n")
        assert c.reply()[0].startswith(DELIVERED)
    got = [m.read_bytes() for m in maildir_messages(test_user)]
    assert sorted(got) == sorted([
        f"Return-Path: <{SENDER}>\nX-Original-To: Old+Name@example.org\n"
        f"Delivered-To: {rcpt}\n".encode() + STORED,
        expected(rcpt),
        f"Return-Path: <{SENDER}>\nDelivered-To: {rcpt}\nX-Original-To: A@example.org\n".encode()
        + STORED,
    ])


@needs_root
def test_postfix_unix_socket_in_its_chroot(tmp_path, daemons, postfix, test_user):
    name = f"pymda-lmtp-test-{os.getpid()}"
    path = Path("/var/spool/postfix/private") / name
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'), f"unix:{path}",
                inet=False, ready=False)
    try:
        d.wait_ready(str(path))
        postfix.set(mailbox_transport=f"lmtp:unix:private/{name}")
        postfix_transaction(postfix, [f"{test_user.name}@localhost"], b"Subject: u\n\nunix\n")
        (m,) = maildir_messages(test_user)
        assert m.read_bytes().endswith(b"\n\nunix\n")
    finally:
        d.stop()
        path.unlink(missing_ok=True)


@needs_root
@pytest.mark.parametrize("tempfail,status,dsn", [(False, "bounced", "5.2.2"),
                                                  (True, "deferred", "4.2.2")])
def test_postfix_full_mailbox(tmp_path, daemons, postfix, test_user, tempfail, status, dsn):
    cfg = write_config(tmp_path, f"""\
        mailbox = "Maildir/"
        quota_full_tempfail = {"true" if tempfail else "false"}
        [users."{test_user.name}"]
        quota_storage = 100
    """)
    d = daemons(cfg)
    postfix.set(mailbox_transport=f"lmtp:inet:127.0.0.1:{d.port}")
    rcpt = f"{test_user.name}@localhost"
    postfix.send(SENDER, rcpt, b"Subject: full\n\n" + b"x" * 500 + b"\n")
    entry = postfix.wait_status(rcpt, status)
    assert entry[1] == dsn and "Mailbox is full" in entry[3]
    assert maildir_messages(test_user) == []
