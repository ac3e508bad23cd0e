"""Tests for pymda.policy.service and the pymda-policyd program (SPEC 3).

The server tests run the installed ``pymda-policyd`` as a real process and
talk to it over real sockets (and with ``nc``, as SPEC 3 shows).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pymda import config, daemon, quota, recipient
from pymda.policy import service as policy
from pymda.users import Identity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import paths  # noqa: E402
from support.procs import free_port, run_clients, socket_activation  # noqa: E402
from support.users import create_user, delete_user  # noqa: E402

DUNNO = b"action=DUNNO\n\n"
FULL = b"action=552 5.2.2 Mailbox is full\n\n"
FULL_TEMP = b"action=452 4.2.2 Mailbox is full\n\n"
NOUSER_SETTING = "550 5.1.1 User unknown"
VIRTUAL = "usuario@example.net"
LIMIT = 100 * 1024 * 1024          # usuario's quota: a 1 GB message does not fit
EX_OK = 0

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users)")


def policyd_bin():
    return paths.prefix() / "bin" / "pymda-policyd"


# --- the parser ----------------------------------------------------------------


def test_parser_splits_requests_across_reads_and_ignores_lines_without_equals():
    p = policy.RequestParser()
    assert p.feed(b"request=smtpd_access_policy\nrecip") == []
    assert p.feed(b"ient=a@b\r\nnonsense\nsize=10\n") == []
    assert p.feed(b"\nrecipient=c@d\n\n") == [
        {"request": "smtpd_access_policy", "recipient": "a@b", "size": "10"},
        {"recipient": "c@d"},
    ]


def test_parser_values_may_contain_equals_and_binary():
    p = policy.RequestParser()
    (req,) = p.feed(b"ccert_subject=CN=x=y\nrecipient=\xff\xfe@x\n\n")
    assert req["ccert_subject"] == "CN=x=y"
    assert req["recipient"].encode("utf-8", "surrogateescape") == b"\xff\xfe@x"


@pytest.mark.parametrize("data", [
    b"x" * (policy.MAX_LINE + 1),
    b"recipient=" + b"a" * policy.MAX_LINE + b"\n",
    b"".join(b"a%d=%s\n" % (i, b"v" * 100) for i in range(policy.MAX_ATTRIBUTES + 1)),
])
def test_parser_limits(data):
    with pytest.raises(policy.ProtocolError):
        policy.RequestParser().feed(data)


@pytest.mark.parametrize("spec,parsed", [
    ("inet:127.0.0.1:12340", ("inet", "127.0.0.1", 12340)),
    ("inet:[::1]:12340", ("inet", "::1", 12340)),
    ("unix:/run/pymda/policy", ("unix", "/run/pymda/policy")),
])
def test_parse_listen(spec, parsed):
    assert daemon.parse_listen(spec) == parsed


@pytest.mark.parametrize("spec", ["inet:host", "inet:h:0", "inet:h:99999", "tcp:h:1", "unix:"])
def test_parse_listen_rejects(spec):
    with pytest.raises(ValueError):
        daemon.parse_listen(spec)


# --- decisions -----------------------------------------------------------------


@pytest.fixture
def virtual_home(tmp_path_factory):
    """A world-traversable home for the virtual user (owned by nobody)."""
    home = Path(tempfile_dir()) / "usuario"
    md = home / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True)
    yield home
    shutil.rmtree(home.parent, ignore_errors=True)


def tempfile_dir():
    import tempfile

    d = tempfile.mkdtemp(prefix="pymda-policy-")
    os.chmod(d, 0o755)
    return d


def write_config(directory, home, extra=""):
    path = Path(directory) / "pymda.toml"
    path.write_text(textwrap.dedent(f"""
        mailbox = "Maildir/"
        {extra}
        [users."{VIRTUAL}"]
        uid = 65534
        gid = 65534
        home = "{home}"
        quota_storage = {LIMIT}
    """))
    os.chmod(path, 0o644)
    return path


def load(path, *overrides):
    return config.load(str(path), list(overrides), environ={"PYMDA_CACHE_DIR": "/nonexistent"},
                       write_cache=False)


def fill(home, used_bytes, used_count=1):
    """Say, through maildirsize, that the Maildir holds used_bytes."""
    (home / "Maildir" / "maildirsize").write_text(f"{LIMIT}S\n{used_bytes} {used_count}\n")


def test_decide(virtual_home):
    cfg = load(write_config(virtual_home.parent, virtual_home))
    fill(virtual_home, LIMIT - 1000)
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": "1000"}) == "DUNNO"
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": "1001"}) == policy.FULL_PERM
    assert policy.decide(cfg, {"recipient": "usuario+lists@example.net", "size": "1001"}) \
        == policy.FULL_PERM
    assert policy.decide(cfg, {"recipient": f"<{VIRTUAL}>", "size": "1001"}) == policy.FULL_PERM
    assert policy.decide(cfg, {"size": "1001"}) == "DUNNO"
    assert policy.decide(cfg, {"recipient": "", "size": "1001"}) == "DUNNO"
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": "junk"}) == "DUNNO"
    assert policy.decide(cfg, {"recipient": "no-such-user-xyz@example.net"}) == "DUNNO"
    # a different domain is a different (unknown) user: virtual users go by address
    assert policy.decide(cfg, {"recipient": "usuario@example.com", "size": "10"}) == "DUNNO"


def test_decide_modes(virtual_home):
    path = write_config(virtual_home.parent, virtual_home)
    fill(virtual_home, LIMIT)
    cfg = load(path, "quota_full_tempfail=true", f'policy_nouser="{NOUSER_SETTING}"')
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": "1"}) == policy.FULL_TEMP
    assert policy.decide(cfg, {"recipient": "no-such-user-xyz@x", "size": "1"}) == NOUSER_SETTING


def test_decide_counts_messages_and_mbox(tmp_path, virtual_home):
    path = write_config(virtual_home.parent, virtual_home, extra="quota_messages = 2")
    cfg = load(path)
    (virtual_home / "Maildir" / "maildirsize").write_text(f"{LIMIT}S,2C\n10 2\n")
    # usuario's own table sets storage only: the global count limit applies
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": "1"}) == policy.FULL_PERM
    mbox = virtual_home / "mbox"
    mbox.write_bytes(b"x" * 100)
    cfg = load(path, f'mailbox="{mbox}"', "quota_storage=150")
    # mbox: the file size; the count limit does not apply
    cfg = cfg.replace(users={VIRTUAL: {"uid": 65534, "gid": 65534, "home": str(virtual_home)}})
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": "50"}) == "DUNNO"
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": "51"}) == policy.FULL_PERM


def test_decide_reads_nothing_without_a_limit(virtual_home):
    cfg = load(write_config(virtual_home.parent, virtual_home))
    cfg = cfg.replace(users={VIRTUAL: {"uid": 65534, "gid": 65534, "home": str(virtual_home)}})
    (virtual_home / "Maildir" / "maildirsize").write_text("garbage\n")
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": str(10**12)}) == "DUNNO"
    assert (virtual_home / "Maildir" / "maildirsize").read_text() == "garbage\n"


def test_decide_never_writes(virtual_home):
    cfg = load(write_config(virtual_home.parent, virtual_home))
    md = virtual_home / "Maildir"
    (md / "new" / "1,S=5000").write_bytes(b"x")
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": str(LIMIT - 5000)}) == "DUNNO"
    assert policy.decide(cfg, {"recipient": VIRTUAL, "size": str(LIMIT - 4999)}) == policy.FULL_PERM
    assert sorted(os.listdir(md)) == ["cur", "new", "tmp"]


@needs_root
def test_decide_system_user_by_local_part(tmp_path):
    user = create_user()
    try:
        md = user.home / "Maildir"
        for sub in ("new", "cur", "tmp"):
            user.mkdir(f"Maildir/{sub}")
        user.write("Maildir/maildirsize", b"1000S\n1000 3\n")
        cfg_path = tmp_path / "pymda.toml"
        cfg_path.write_text('mailbox = "Maildir/"\nquota_storage = 1000\n')
        cfg = load(cfg_path)
        for rcpt in (f"{user.name}@localhost", f"{user.name}+x@example.org", user.name):
            assert policy.decide(cfg, {"recipient": rcpt, "size": "1"}) == policy.FULL_PERM, rcpt
        assert policy.decide(cfg, {"recipient": f"{user.name}@localhost", "size": "0"}) == "DUNNO"
        assert md.is_dir()
    finally:
        delete_user(user)


# --- the server ----------------------------------------------------------------


def wait_port(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read()
            proc.stdout.close()
            raise AssertionError(f"pymda-policyd exited {proc.returncode}: {out}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("pymda-policyd did not listen")


class Server:
    def __init__(self, cfg_path, *listen, user=None):
        self.port = free_port()
        argv = [str(policyd_bin()), "-c", str(cfg_path), "--listen", f"inet:127.0.0.1:{self.port}"]
        for spec in listen:
            argv += ["--listen", spec]
        kwargs = {}
        if user is not None:
            kwargs.update(user=user, group=user, extra_groups=[])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={"PATH": "/usr/bin:/bin"}, **kwargs)
        wait_port(self.port, self.proc)

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return s

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.output = self.proc.stdout.read()
        self.proc.stdout.close()
        return self.proc.returncode


def exchange(sock, data, answers=1):
    sock.sendall(data)
    out = b""
    while out.count(b"\n\n") < answers:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


@pytest.fixture
def server(virtual_home):
    cfg = write_config(virtual_home.parent, virtual_home)
    srv = Server(cfg)
    yield srv
    assert srv.stop() == EX_OK


def test_spec_example_with_nc(server):
    """SPEC 3, byte for byte."""
    cmd = f'printf "recipient={VIRTUAL}\\nsize=1000000000\\n\\n" | nc -q1 localhost {server.port}'
    out = subprocess.run(["sh", "-c", cmd], stdout=subprocess.PIPE, timeout=30).stdout
    assert out == FULL


def test_several_requests_on_one_connection(server, virtual_home):
    fill(virtual_home, LIMIT - 10)
    with server.connect() as s:
        assert exchange(s, f"recipient={VIRTUAL}\nsize=10\n\n".encode()) == DUNNO
        assert exchange(s, "recipient=usuario+ext@example.net\nsize=11\n\n".encode()) == FULL
        assert exchange(s, b"request=smtpd_access_policy\nsize=11\n\n") == DUNNO
        # pipelined: answered in order
        data = (f"recipient={VIRTUAL}\nsize=11\n\n"
                "recipient=unknown-user-xyz@example.net\nsize=1\n\n"
                f"recipient={VIRTUAL}\nsize=1\n\n").encode()
        assert exchange(s, data, 3) == FULL + DUNNO + DUNNO


def test_a_real_postfix_request(server, virtual_home):
    fill(virtual_home, LIMIT)
    request = textwrap.dedent(f"""\
        request=smtpd_access_policy
        protocol_state=END-OF-MESSAGE
        protocol_name=ESMTP
        client_address=127.0.0.1
        client_name=localhost
        reverse_client_name=localhost
        helo_name=client.example
        sender=someone@example.org
        recipient={VIRTUAL}
        recipient_count=1
        queue_id=4F1A2B3C
        instance=1a2b.5f6e7d8c.12345.0
        size=1234
        etrn_domain=
        stress=
        sasl_method=
        sasl_username=
        sasl_sender=
        ccert_subject=
        ccert_issuer=
        ccert_fingerprint=
        encryption_protocol=
        encryption_cipher=
        encryption_keysize=0
        policy_context=

    """).encode()
    with server.connect() as s:
        assert exchange(s, request) == FULL


def test_garbage_never_crashes_the_server(server):
    junk = [
        b"\x00\x01\x02\xff\xfe\n\n",
        b"no equals sign here\n\n",
        b"=\n==\n\n",
        os.urandom(4096) + b"\n\n",
        b"recipient=" + b"A" * 100000 + b"\n\n",     # over the line limit
        b"x" * 200000,                               # no newline at all
        b"".join(b"a%d=b\n" % i for i in range(5000)) + b"\n",
    ]
    for data in junk:
        with server.connect() as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except ConnectionError:
                pass
    with server.connect() as s:
        assert exchange(s, f"recipient={VIRTUAL}\nsize=1000000000\n\n".encode()) == FULL
    assert server.proc.poll() is None


def test_a_fifo_named_maildirsize_does_not_hang_the_server(server, virtual_home):
    """A user's FIFO in place of maildirsize once blocked every worker thread
    (open() waits for a writer): then no request of anyone was answered."""
    os.mkfifo(virtual_home / "Maildir" / "maildirsize")
    socks = [server.connect() for _ in range(12)]
    try:
        for s in socks:
            s.sendall(f"recipient={VIRTUAL}\nsize=10\n\n".encode())
        for s in socks:
            assert exchange(s, b"", 1) == DUNNO          # scanned: the Maildir is empty
        with server.connect() as s:
            assert exchange(s, f"recipient={VIRTUAL}\nsize={LIMIT + 1}\n\n".encode()) == FULL
    finally:
        for s in socks:
            s.close()


def test_fifty_concurrent_connections(server, virtual_home):
    fill(virtual_home, LIMIT - 100)
    errors = []
    barrier = threading.Barrier(50)

    def client(n):
        try:
            with server.connect() as s:
                barrier.wait(timeout=30)
                for i in range(20):
                    size = 100 + (i + n) % 2          # 100 fits, 101 does not
                    want = DUNNO if size == 100 else FULL
                    got = exchange(s, f"recipient={VIRTUAL}\nsize={size}\n\n".encode())
                    if got != want:
                        errors.append((n, i, got))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append((n, repr(exc)))

    run_clients(client, 50, 60)
    assert errors == []


def test_unix_socket_and_sigterm(virtual_home):
    cfg = write_config(virtual_home.parent, virtual_home)
    path = virtual_home.parent / "policy.sock"
    srv = Server(cfg, f"unix:{path}")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            assert exchange(s, f"recipient={VIRTUAL}\nsize=1000000000\n\n".encode()) == FULL
    finally:
        assert srv.stop() == EX_OK


def test_stdin_stdout_mode_for_spawn(virtual_home):
    cfg = write_config(virtual_home.parent, virtual_home)
    proc = subprocess.run(
        [str(policyd_bin()), "-c", str(cfg)],
        input=f"recipient={VIRTUAL}\nsize=1000000000\n\nrecipient={VIRTUAL}\nsize=1\n\n".encode(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
    )
    assert (proc.returncode, proc.stdout) == (EX_OK, FULL + DUNNO), proc.stderr


def test_stdin_mode_client_gone_is_a_clean_exit(virtual_home):
    """postfix closed its end (EPIPE on the answer): exit 0, no traceback."""
    cfg = write_config(virtual_home.parent, virtual_home)
    r, w = os.pipe()
    os.close(r)  # nobody will read the answer
    try:
        proc = subprocess.run(
            [str(policyd_bin()), "-c", str(cfg)],
            input=f"recipient={VIRTUAL}\nsize=1\n\n".encode(),
            stdout=w, stderr=subprocess.PIPE, timeout=30,
        )
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (EX_OK, b"")


def test_systemd_socket_activation(virtual_home):
    cfg = write_config(virtual_home.parent, virtual_home)
    listener, port, prefix = socket_activation()
    proc = subprocess.Popen([*prefix, str(policyd_bin()), "-c", str(cfg)],
                            pass_fds=[listener.fileno()],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    listener.close()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert exchange(s, f"recipient={VIRTUAL}\nsize=1000000000\n\n".encode()) == FULL
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        out = proc.stdout.read()
        proc.stdout.close()
        assert code == EX_OK, out


@needs_root
def test_internal_error_closes_without_an_answer(tmp_path):
    """Run as an unprivileged user that cannot read the mailbox."""
    user = create_user()
    try:
        for sub in ("new", "cur", "tmp"):
            user.mkdir(f"Maildir/{sub}")
        os.chmod(user.home / "Maildir", 0o700)
        cfg_dir = Path(tempfile_dir())
        cfg = cfg_dir / "pymda.toml"
        cfg.write_text('mailbox = "Maildir/"\nquota_storage = 1000\n')
        os.chmod(cfg, 0o644)
        srv = Server(cfg, user=65534)
        try:
            with srv.connect() as s:
                s.sendall(f"recipient={user.name}@localhost\nsize=1\n\n".encode())
                assert s.recv(65536) == b""          # closed, no answer
            with srv.connect() as s:                   # and still serving
                assert exchange(s, b"recipient=no-such-user-xyz@x\nsize=1\n\n") == DUNNO
        finally:
            assert srv.stop() == EX_OK
        shutil.rmtree(cfg_dir, ignore_errors=True)
    finally:
        delete_user(user)


@pytest.mark.parametrize("kind, text", [
    ("datagram", "pymda-policyd: cannot listen: systemd passed fd 3, which is not a stream"),
    ("connected", "pymda-policyd: 4.3.0 internal error: OSError:"),
])
def test_a_bad_systemd_socket_is_one_line_and_75(tmp_path, kind, text):
    """Never a traceback: a datagram socket is refused at start; a
    connected one fails in listen() and meets the one broad catch."""
    if kind == "datagram":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        other = None
    else:
        sock, other = socket.socketpair()
    listener, _, prefix = socket_activation()
    listener.close()  # only its wrapper command is wanted, with our fd
    prefix = prefix[:-1] + [str(sock.fileno())]
    cfg = tmp_path / "pymda.toml"
    cfg.write_text("")
    try:
        proc = subprocess.run([*prefix, str(policyd_bin()), "-c", str(cfg)],
                              pass_fds=[sock.fileno()], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})
    finally:
        sock.close()
        if other is not None:
            other.close()
    out = proc.stdout.decode()
    assert proc.returncode == 75, out
    assert text in out and "Traceback" not in out


def test_bad_listen_is_a_usage_error(tmp_path):
    proc = subprocess.run([str(policyd_bin()), "--listen", "bogus"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 64 and b"inet:HOST:PORT" in proc.stdout


def test_policyd_does_not_import_quota_heavy_modules_per_request():
    """The decision path is the delivery path's quota code: no click there."""
    code = ("import sys; from pymda.policy import service as policy; "
            "assert 'click' not in sys.modules and 'asyncio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=paths.REPO)


def test_identity_and_mailbox_come_from_resolve(virtual_home):
    cfg = load(write_config(virtual_home.parent, virtual_home))
    identity, target = recipient.mailbox_for(cfg, "usuario+ext@example.net")
    assert identity == Identity(name=VIRTUAL, uid=65534, gid=65534, home=str(virtual_home),
                                virtual=True, source="config")
    assert (target.kind, target.path, target.folder) == (
        "maildir", f"{virtual_home}/Maildir/", "INBOX")
    assert quota.usage(cfg, identity, target) == (0, 0)
