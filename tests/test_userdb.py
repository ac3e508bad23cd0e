"""Users from databases (SPEC 7, issue 13): every source against the real thing.

Sources: passwd-file, SQLite, a private PostgreSQL 15, a private MariaDB
(a real user with a password, over the unix socket) and a private
dovecot whose auth serves auth-userdb (tests/support/pgsql.py, mariadb.py,
dovecot_auth.py; started once per module, stopped afterwards).  For each:
the installed ``pymda`` run as root delivers into the user's home (created
as the user), enforces the quota from the database, answers 5.1.1 for an
unknown user and for an address full of SQL metacharacters, refuses uid-0
and low-uid rows (5.7.1), and defers (exit 75) while the database is
down; ``pymda-policyd`` and ``pymda-lmtpd`` defer too and recover when it
is back, without a restart.
"""

import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support import paths
from support.run import EX_NOPERM, EX_NOUSER, EX_OK, EX_TEMPFAIL, run_pymda
from support.users import create_user, delete_user

from pymda import config
from pymda.errors import ConfigError, PermFail, TempFail

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SENDER = "sender@example.org"
MESSAGE = b"From: sender@example.org\nSubject: userdb\nMessage-ID: <userdb@test>\n\nhello\n"
DEFER = b"action=DEFER_IF_PERMIT Service temporarily unavailable\n\n"
FULL = b"action=552 5.2.2 Mailbox is full\n\n"
DUNNO = b"action=DUNNO\n\n"
METACHARACTERS = ["x'or'1'='1", "a\"; DROP TABLE users; --", "%", "_", "\\'", "$user",
                  "x` OR 1=1 #"]


# --- sources -----------------------------------------------------------------------------


class Source:
    """One userdb source under test: ``add`` users, ``stop``/``start`` it."""

    kind = None
    server = None  # a private server (tests/support), or None: a file

    def __init__(self, top):
        self.top = Path(top)

    def config(self):
        raise NotImplementedError

    def stop(self):
        if self.server is None:  # a file: take it away
            os.rename(self.path, str(self.path) + ".away")
        else:
            self.server.stop()

    def start(self):
        if self.server is None:
            os.rename(str(self.path) + ".away", self.path)
        else:
            self.server.start()

    def close(self):
        if self.server is not None:
            self.server.destroy()


class PasswdFileSource(Source):
    kind = "passwd-file"

    def __init__(self, top):
        super().__init__(top)
        self.path = self.top / "users.passwd"
        self.path.write_text("# pymda test users\n")
        os.chmod(self.path, 0o644)

    def line(self, user, uid, gid, home, mailbox=None, quota_storage=None):
        extra = []
        if mailbox:
            extra.append(f"mailbox={mailbox}")
        if quota_storage:
            extra.append(f"userdb_quota_rule=*:storage={quota_storage // 1024}")
        return f"{user}:{{PLAIN}}secret:{uid}:{gid}::{home}::{' '.join(extra)}\n"

    def add(self, user, uid, gid, home, mailbox=None, quota_storage=None):
        with open(self.path, "a") as f:
            f.write(self.line(user, uid, gid, home, mailbox, quota_storage))

    def config(self):
        return f'userdb = ["passwd-file:{self.path}"]\n'


class SqlSource(Source):
    COLUMNS = "(username, uid, gid, home, mailbox, quota_storage)"
    QUERY = ("SELECT uid, gid, home, mailbox, quota_storage FROM users "
             "WHERE username = $user AND $local <> '' AND $domain = domain")

    def add(self, user, uid, gid, home, mailbox=None, quota_storage=None):
        domain = user.partition("@")[2]
        self.execute("INSERT INTO users (username, domain, uid, gid, home, mailbox, "
                     "quota_storage) VALUES (" + ", ".join(
                         _literal(v) for v in (user, domain, uid, gid, home, mailbox,
                                               quota_storage)) + ")")

    def execute(self, sql):
        self.server.sql(sql, database="mail")

    def config(self):
        return (f'userdb = ["sql:mail"]\n[sql.mail]\ndriver = "{self.driver}"\n'
                f'connect = "{self.connect}"\nuser_query = "{self.QUERY}"\n')


def _literal(value):
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


TABLE = ("CREATE TABLE users (username VARCHAR(255) PRIMARY KEY, domain VARCHAR(255), "
         "uid INTEGER, gid INTEGER, home VARCHAR(255), mailbox VARCHAR(255), "
         "quota_storage BIGINT)")


class SqliteSource(SqlSource):
    kind = driver = "sqlite"

    def __init__(self, top):
        super().__init__(top)
        self.path = self.top / "users.sqlite"
        self.connect = str(self.path)
        self.execute(TABLE)
        os.chmod(self.path, 0o644)

    def execute(self, sql):
        with sqlite3.connect(self.path) as db:
            db.execute(sql)
        db.close()


class PostgresSource(SqlSource):
    kind = driver = "postgresql"

    def __init__(self, top):
        super().__init__(top)
        from support.pgsql import PgServer

        self.server = PgServer().start()
        self.server.sql("CREATE ROLE pymda LOGIN PASSWORD 'se cret''s';"
                        "CREATE DATABASE mail OWNER postgres;")
        self.server.sql(TABLE + "; GRANT SELECT ON users TO pymda;", database="mail")
        # TCP, with a password that needs libpq quoting
        self.connect = (f"host=127.0.0.1 port={self.server.port} dbname=mail user=pymda "
                        f"password='se cret\\\\'s'")


class MariaSource(SqlSource):
    kind = "mysql"
    driver = "mysql"

    def __init__(self, top):
        super().__init__(top)
        from support.mariadb import MariaServer

        self.server = MariaServer().start()
        self.server.sql("CREATE DATABASE mail; "
                        "CREATE USER 'pymda'@'localhost' IDENTIFIED BY 'pw-x';"
                        "GRANT SELECT ON mail.* TO 'pymda'@'localhost';")
        self.server.sql(TABLE, database="mail")
        # the unix socket, a real password
        self.connect = f"socket={self.server.socket_path} dbname=mail user=pymda password=pw-x"


class DovecotSource(PasswdFileSource):
    kind = "dovecot"

    def __init__(self, top):
        Source.__init__(self, top)
        from support.dovecot_auth import DovecotAuth

        self.lines = ""
        self.server = DovecotAuth("").start()

    def add(self, user, uid, gid, home, mailbox=None, quota_storage=None):
        # dovecot answers a userdb lookup with the userdb_ fields only
        line = self.line(user, uid, gid, home, mailbox, quota_storage)
        self.lines += line.replace(" mailbox=", " userdb_mailbox=").replace(
            "::mailbox=", "::userdb_mailbox=")
        self.server.write_users(self.lines)
        if 0 not in (uid, gid):  # dovecot never serves those: nothing to wait for
            self.wait_known(user)

    def wait_known(self, user, timeout=15):
        """Until dovecot has re-read its file (a loaded machine may take a while)."""
        from pymda.userdb import dovecot

        class Cfg:
            userdb_timeout = 5

        deadline = time.monotonic() + timeout
        while dovecot.lookup(Cfg, self.server.socket_path, user) is None:
            assert time.monotonic() < deadline, f"dovecot did not pick up {user}"
            time.sleep(0.2)

    def config(self):
        return f'userdb = ["dovecot:{self.server.socket_path}"]\n'


def _available(kind):
    if kind == "postgresql":
        from support import pgsql

        return pgsql.installed()
    if kind == "mysql":
        from support import mariadb

        return mariadb.installed()
    if kind == "dovecot":
        from support import dovecot_auth

        return dovecot_auth.installed()
    return True


SOURCES = {"passwd-file": PasswdFileSource, "sqlite": SqliteSource,
           "postgresql": PostgresSource, "mysql": MariaSource, "dovecot": DovecotSource}


@pytest.fixture(scope="module")
def vmail():
    """The system account that owns the virtual mailboxes, and their base dir."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    user = create_user()
    yield user
    delete_user(user)


def _public_dir(prefix):
    """A fresh directory the vmail user can traverse (pytest's tmp_path is 0700)."""
    top = tempfile.mkdtemp(prefix=prefix)
    os.chmod(top, 0o755)
    return Path(top)


@pytest.fixture(scope="module", params=list(SOURCES))
def source(request, vmail):
    if not _available(request.param):
        pytest.skip(f"{request.param} is not installed")
    top = _public_dir(f"pymda-userdb-{request.param}-")
    src = SOURCES[request.param](top)
    yield src
    src.close()
    shutil.rmtree(top, ignore_errors=True)


class Site:
    """A config file for one source plus a domain directory owned by vmail."""

    def __init__(self, source, vmail, tmp_path, extra=""):
        self.source = source
        self.vmail = vmail
        self.dir = tmp_path
        self.domain = f"d{secrets.token_hex(3)}.example"
        self.base = tmp_path / "vmail" / self.domain
        self.base.mkdir(parents=True)
        os.chown(self.base, vmail.uid, vmail.gid)
        self.cache = tmp_path / "cache"
        self.cfg = tmp_path / "pymda.toml"
        self.cfg.write_text('mailbox = "Maildir/"\nuserdb_cache_ttl = 0\nuserdb_timeout = 5\n'
                            + extra + source.config())
        os.chmod(self.cfg, 0o644)

    def user(self, local=None, uid=None, gid=None, home=None, **kw):
        local = local or f"u{secrets.token_hex(4)}"
        address = f"{local}@{self.domain}"
        home = home or str(self.base / local)
        self.source.add(address, self.vmail.uid if uid is None else uid,
                        self.vmail.gid if gid is None else gid, home, **kw)
        return address, Path(home)

    def pymda(self, recipient, message=MESSAGE, *args):
        return run_pymda(["-c", self.cfg, "-f", SENDER, "-a", recipient, *args], message,
                         env={"PYMDA_CACHE_DIR": self.cache})


@pytest.fixture
def site(source, vmail):
    top = _public_dir("pymda-userdb-site-")
    yield Site(source, vmail, top)
    shutil.rmtree(top, ignore_errors=True)


def delivered(home):
    new = home / "Maildir" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


# --- every source, through the real pymda -------------------------------------------------


@needs_root
def test_delivery_into_the_home_created_as_the_user(site, vmail):
    address, home = site.user()
    assert not home.exists()
    local, domain = address.split("@")
    r = site.pymda(f"{local}+tag@{domain}")
    assert (r.code, r.output) == (EX_OK, b"")
    st = home.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (vmail.uid, vmail.gid, 0o700)
    (msg,) = delivered(home)
    assert msg.stat().st_uid == vmail.uid
    assert msg.read_bytes().endswith(MESSAGE)
    assert f"Delivered-To: {local}+tag@{domain}\n".encode() in msg.read_bytes()


@needs_root
def test_quota_from_the_database_is_enforced(site):
    address, home = site.user(quota_storage=1024)
    assert site.pymda(address).code == EX_OK
    r = site.pymda(address, MESSAGE + b"x" * 1024)
    assert r.code == EX_NOPERM, r.output
    assert r.output.startswith(b"5.2.2 Mailbox is full")
    assert len(delivered(home)) == 1


@needs_root
def test_per_user_mailbox_from_the_database(site):
    address, home = site.user(mailbox="Other/")
    assert site.pymda(address).code == EX_OK
    assert len(list((home / "Other" / "new").iterdir())) == 1
    assert not (home / "Maildir").exists()


@needs_root
def test_unknown_user(site):
    r = site.pymda(f"nobody-{secrets.token_hex(3)}@{site.domain}")
    assert r.code == EX_NOUSER
    assert r.output.startswith(b"5.1.1 User unknown")


@needs_root
@pytest.mark.parametrize("uid,gid", [(0, None), (None, 0), (100, None)])
def test_root_and_low_uid_rows_are_refused(site, vmail, uid, gid):
    address, home = site.user(uid=uid, gid=gid)
    r = site.pymda(address)
    if site.source.kind == "dovecot" and 0 in (uid, gid):
        # dovecot's own passwd-file refuses the line ("invalid UID/GID 0")
        # and answers NOTFOUND: never written as root either way
        assert (r.code, r.output[:6]) == (EX_NOUSER, b"5.1.1 ")
        assert not home.exists()
        return
    assert r.code == EX_NOPERM, r.output
    assert r.output.startswith(b"5.7.1 userdb ")
    assert b"refused" in r.output
    assert not home.exists()


@needs_root
def test_relative_home_and_mailbox_outside_home_are_refused(site):
    address, _ = site.user(home="relative/home")
    assert site.pymda(address).output.startswith(b"5.7.1 ")
    address, home = site.user(mailbox="../escape/")
    r = site.pymda(address)
    assert (r.code, r.output[:6]) == (EX_NOPERM, b"5.7.1 ")
    assert not home.exists() and not (home.parent / "escape").exists()


@needs_root
def test_sql_metacharacters_are_just_an_unknown_user(site):
    address, home = site.user()
    for local in METACHARACTERS:
        r = site.pymda(f"{local}@{site.domain}")
        assert (r.code, r.output[:6]) == (EX_NOUSER, b"5.1.1 "), (local, r.output)
    # the table is still there and unchanged
    assert site.pymda(address).code == EX_OK


@needs_root
def test_missing_home_parent_defers(site, vmail):
    address, home = site.user(home=str(site.base / "no" / "such" / "home"))
    r = site.pymda(address)
    assert (r.code, r.output[:6]) == (EX_TEMPFAIL, b"4.2.0 "), r.output


@needs_root
def test_database_down_defers_and_delivery_resumes(site):
    address, home = site.user()
    site.source.stop()
    try:
        r = site.pymda(address)
        assert r.code == EX_TEMPFAIL, r.output
        assert r.output.startswith(b"4.3.0 userdb ")
    finally:
        site.source.start()
    assert site.pymda(address).code == EX_OK
    assert len(delivered(home)) == 1


# --- the daemons ---------------------------------------------------------------------------


def _start_policyd(cfg):
    """The installed pymda-policyd (its caches in the test's directory)."""
    from support.policyd import start_policyd

    return start_policyd(cfg, env={"PATH": "/usr/bin:/bin",
                                   "PYMDA_CACHE_DIR": str(Path(cfg).parent / "cache")})


def _policy(policyd, recipient, size):
    return policyd.ask({"request": "smtpd_access_policy", "recipient": recipient, "size": size})


@needs_root
def test_daemons_defer_while_down_and_recover_without_restart(site, vmail):
    from test_e2e_lmtp import BODY, SENDER as LMTP_SENDER, Daemon

    address, home = site.user()
    full, full_home = site.user(quota_storage=1024)
    lmtpd = Daemon(site.cfg).wait_ready()
    policyd = _start_policyd(site.cfg)
    try:
        big = 4096
        # all three agree on the over-quota user
        assert _policy(policyd, full, big) == FULL
        with lmtpd.connect() as c:
            assert c.cmd(f"MAIL FROM:<{LMTP_SENDER}> SIZE={big}").startswith("250")
            assert c.cmd(f"RCPT TO:<{full}>") == "552 5.2.2 Mailbox is full"
        r = site.pymda(full, MESSAGE + b"x" * big)
        assert (r.code, r.output[:6]) == (EX_NOPERM, b"5.2.2 ")
        assert _policy(policyd, address, 10) == DUNNO

        site.source.stop()
        try:
            assert _policy(policyd, address, 10) == DEFER
            with lmtpd.connect() as c:
                assert c.cmd(f"MAIL FROM:<{LMTP_SENDER}>").startswith("250")
                reply = c.cmd(f"RCPT TO:<{address}>")
                assert reply.startswith("451 4.3.0 userdb "), reply
        finally:
            site.source.start()
        assert _policy(policyd, full, big) == FULL
        with lmtpd.connect() as c:
            c.cmd(f"MAIL FROM:<{LMTP_SENDER}>")
            assert c.cmd(f"RCPT TO:<{address}>") == "250 2.1.5 Ok"
            assert c.cmd("DATA").startswith("354")
            c.send(BODY + b".\r\n")
            assert c.line() == "250 2.0.0 Ok: delivered"
        (msg,) = delivered(home)
        assert msg.stat().st_uid == vmail.uid
    finally:
        lmtpd.stop()
        policyd.stop()


# --- the private servers themselves -----------------------------------------------------


@needs_root
@pytest.mark.parametrize("kind", ["postgresql", "mysql", "dovecot"])
def test_a_killed_session_leaves_no_server_running(kind):
    """A pytest killed outright (SIGKILL, a CI timeout) runs no teardown:
    the kernel stops its private servers (procs.start_server)."""
    if not _available(kind):
        pytest.skip(f"{kind} is not installed")
    make = {"postgresql": "pgsql.PgServer()", "mysql": "mariadb.MariaServer()",
            "dovecot": "dovecot_auth.DovecotAuth()"}[kind]
    code = (f"import sys, time; from support import {make.split('.')[0]} as m; "
            f"s = m.{make.split('.')[1]}.start(); "
            "print(s.proc.pid, s.top, flush=True); time.sleep(600)")
    with subprocess.Popen([str(paths.prefix() / "bin" / "python3"), "-c", code],
                          cwd=Path(__file__).parent, stdout=subprocess.PIPE) as session:
        try:
            pid, top = session.stdout.readline().decode().split()
        finally:
            session.kill()
    try:
        deadline = time.monotonic() + 60
        while _running(int(pid)):
            assert time.monotonic() < deadline, f"{kind} server {pid} outlived its session"
            time.sleep(0.1)
    finally:
        shutil.rmtree(top, ignore_errors=True)


@needs_root
def test_a_port_another_session_took_is_traded_for_a_free_one():
    import socket as socketmod

    from support.pgsql import PgServer

    if not _available("postgresql"):
        pytest.skip("postgresql is not installed")
    with socketmod.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = PgServer()
        try:
            server.port = taken.getsockname()[1]  # as if taken after free_port()
            server.start()
            assert server.port != taken.getsockname()[1]
            assert b"1" in server.sql("SELECT 1", database="postgres")
        finally:
            server.destroy()


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# --- config source: uid 0 --------------------------------------------------------------


@needs_root
def test_config_table_with_uid_0_is_refused(tmp_path):
    """Before issue 13 this delivered as root into the table's home."""
    home = tmp_path / "roothome"
    cfg = tmp_path / "pymda.toml"
    cfg.write_text('mailbox = "Maildir/"\n[users."boss@example.org"]\n'
                   f'uid = 0\ngid = 0\nhome = "{home}"\n')
    r = run_pymda(["-c", cfg, "-f", SENDER, "-a", "boss@example.org"], MESSAGE,
                  env={"PYMDA_CACHE_DIR": tmp_path / "cache"})
    assert (r.code, r.output[:6]) == (EX_NOPERM, b"5.7.1 "), r.output
    assert not (home / "Maildir").exists()


# --- passwd-file: 100,000 users ------------------------------------------------------------


@pytest.fixture(scope="module")
def big_passwd_file(tmp_path_factory):
    top = tmp_path_factory.mktemp("bigpasswd")
    os.chmod(top, 0o755)
    path = top / "users"
    with open(path, "w") as f:
        for i in range(100000):
            f.write(f"user{i}@big.example::{5000 + i % 7}:5000::/srv/big/user{i}::"
                    f"userdb_quota_rule=*:storage={i} userdb_mail=maildir:~/Mail{i % 3}\n")
    os.chmod(path, 0o644)
    return path


def _time_lookups(cfg, names):
    from pymda.userdb.core import ask_source

    source = cfg.userdb[0]
    start = time.perf_counter()
    found = [ask_source(cfg, source, n) for n in names]
    return (time.perf_counter() - start) / len(names), found


def test_passwd_file_index_makes_lookups_cheap(big_passwd_file, tmp_path, monkeypatch,
                                               capsys):
    from pymda.userdb import passwdfile

    monkeypatch.setenv("PYMDA_CACHE_DIR", str(tmp_path / "cache"))
    cfg = config.load(None, [f'userdb=["passwd-file:{big_passwd_file}"]', "first_valid_uid=1"],
                      environ={})
    index = Path(passwdfile.index_path(str(big_passwd_file)))
    names = [f"user{i}@big.example" for i in (0, 49999, 99999)]
    misses = [f"nobody{i}@big.example" for i in range(3)]
    slow, found = _time_lookups(cfg, names[:1])  # no index: reads the file
    if os.geteuid() == 0:
        assert index.exists() and not index.stat().st_mode & 0o022
    else:
        passwdfile._write_index(str(big_passwd_file), passwdfile._stamp(
            big_passwd_file.stat()), {b"user0@big.example": 0})
        pytest.skip("the index is written by root")
    hit, found = _time_lookups(cfg, names)
    miss, none = _time_lookups(cfg, misses)
    assert none == [None, None, None]
    i = found[2]
    assert (i.uid, i.gid, i.home) == (5000 + 99999 % 7, 5000, "/srv/big/user99999")
    assert i.settings["quota_storage"] == 99999 * 1024
    assert i.settings["mailbox"] == "$home/Mail0/"
    with capsys.disabled():
        print(f"\npasswd-file 100,000 lines: without index {slow * 1000:.1f} ms, "
              f"index hit {hit * 1000:.3f} ms, miss {miss * 1000:.3f} ms per lookup")
    assert hit < slow / 5 and miss < slow / 5
    # the file changes: the stale index is not used, a new one is written
    with open(big_passwd_file, "a") as f:
        f.write("late@big.example::6000:6000::/srv/big/late\n")
    old = index.stat().st_ino
    assert _time_lookups(cfg, ["late@big.example"])[1][0].uid == 6000
    assert index.stat().st_ino != old
    assert _time_lookups(cfg, ["late@big.example"])[1][0].uid == 6000


@needs_root
def test_passwd_file_big_delivery_through_pymda(big_passwd_file, vmail, tmp_path):
    tmp_path = _public_dir("pymda-userdb-big-")
    path = tmp_path / "users"
    home = tmp_path / "home"
    home.mkdir()
    vmail.chown(home)
    shutil.copy(big_passwd_file, path)
    with open(path, "a") as f:
        f.write(f"Last@Big.Example::{vmail.uid}:{vmail.gid}::{home}\n")
    cfg = tmp_path / "pymda.toml"
    cfg.write_text(f'userdb = ["passwd-file:{path}"]\nmailbox = "Maildir/"\n')
    env = {"PYMDA_CACHE_DIR": tmp_path / "cache"}
    try:
        for _ in range(2):  # the first builds the index, the second uses it
            r = run_pymda(["-c", cfg, "-f", SENDER, "-a", "last@big.example"], MESSAGE,
                          env=env)
            assert (r.code, r.output) == (EX_OK, b"")
        assert len(delivered(home)) == 2
        assert list((tmp_path / "cache").glob("*.pwindex"))
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


# --- passwd-file details, no root needed ------------------------------------------------


def _cfg(tmp_path, *overrides):
    return config.load(None, ["first_valid_uid=1000", *overrides], environ={})


def test_passwd_file_fields_defaults_and_domains(tmp_path, monkeypatch):
    from pymda import users

    monkeypatch.setenv("PYMDA_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a.example").write_text(
        "# comment\n\n"
        "alice@a.example:{PLAIN}pw:2001:2002::/h/alice::userdb_quota_rule=*:storage=10M "
        "userdb_quota_rule2=*:messages=7 userdb_mail=maildir:~/Mail\n"
        "bob::::::\n"
        "carol:x:2003:2003::/h/carol:/bin/sh:mailbox=mbox quota_storage=5K\n")
    cfg = _cfg(tmp_path, f'userdb=["passwd-file:{tmp_path}/$domain", "config"]',
               "virtual_uid=3000", "virtual_gid=3001", 'virtual_home="/v/$domain/$local"')
    alice = users.lookup(cfg, users.name_for_recipient(cfg, "Alice", "A.example"))
    assert (alice.name, alice.uid, alice.gid, alice.home) == (
        "Alice@A.example", 2001, 2002, "/h/alice")
    assert alice.settings == {"quota_storage": 10 << 20, "quota_messages": 7,
                              "mailbox": "$home/Mail/"}
    assert alice.source == f"passwd-file:{tmp_path}/$domain"
    bob = users.lookup(cfg, "bob@a.example")  # local part only, empty fields: defaults
    assert (bob.uid, bob.gid, bob.home) == (3000, 3001, "/v/a.example/bob")
    carol = users.lookup(cfg, "carol@a.example")
    assert carol.settings == {"mailbox": "mbox", "quota_storage": 5 << 10}
    for name in ("dave@a.example", "alice@b.example", "alice@../a.example", "alice@.",
                 "alice"):
        with pytest.raises(PermFail) as exc:
            users.lookup(cfg, name)
        assert exc.value.status == "5.1.1"


def test_passwd_file_fixed_path_missing_or_garbage_is_temporary(tmp_path, monkeypatch):
    from pymda import users

    monkeypatch.setenv("PYMDA_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, f'userdb=["passwd-file:{tmp_path}/users"]')
    with pytest.raises(TempFail) as exc:
        users.lookup(cfg, "a@b.example")
    assert exc.value.status == "4.3.0"
    (tmp_path / "users").write_text("a@b.example::notanumber:5000::/h\n")
    with pytest.raises(TempFail):
        users.lookup(cfg, "a@b.example")


def test_passwd_file_per_domain_without_its_directory_is_temporary(tmp_path, monkeypatch):
    """No file for a domain: unknown.  No directory for any domain (an
    unmounted volume, a typo): 4.3.0, not 5.1.1 for every recipient."""
    from pymda import users

    monkeypatch.setenv("PYMDA_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "domains").mkdir()
    cfg = _cfg(tmp_path, f'userdb=["passwd-file:{tmp_path}/domains/$domain"]')
    with pytest.raises(PermFail) as exc:
        users.lookup(cfg, "a@b.example")
    assert exc.value.status == "5.1.1"
    for template in (f"{tmp_path}/missing/$domain", f"{tmp_path}/missing/${{domain}}/users"):
        cfg = _cfg(tmp_path, f'userdb=["passwd-file:{template}"]')
        with pytest.raises(TempFail) as exc:
            users.lookup(cfg, "a@b.example")
        assert exc.value.status == "4.3.0"
    cfg = _cfg(tmp_path, f'userdb=["passwd-file:{tmp_path}/${{domain}}/users"]')
    with pytest.raises(PermFail):  # a directory per domain: a missing one is unknown
        users.lookup(cfg, "a@b.example")


def test_a_forged_index_cannot_invent_a_user(tmp_path, monkeypatch):
    from pymda import users
    from pymda.userdb import passwdfile

    monkeypatch.setenv("PYMDA_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "users"
    path.write_text("alice::2000:2000::/h/a\nmallory::2001:2001::/h/m\n")
    # an index pointing every bucket at mallory's line
    stamp = passwdfile._stamp(path.stat())
    passwdfile._write_index(str(path), stamp, {b"alice": 0, b"x": 0})
    index = Path(passwdfile.index_path(str(path)))
    data = bytearray(index.read_bytes())
    offset = (len("alice::2000:2000::/h/a\n") + 1).to_bytes(8, "little")
    for i in range(passwdfile.HEADER, len(data), 8):
        data[i:i + 8] = offset
    index.write_bytes(bytes(data))
    os.chmod(index, 0o644)
    cfg = _cfg(tmp_path, f'userdb=["passwd-file:{path}"]')
    with pytest.raises(PermFail):
        users.lookup(cfg, "alice@x.example")  # mallory's line is not alice's
    assert users.lookup(cfg, "mallory@x.example").uid == 2001


# --- SQL details --------------------------------------------------------------------------


def test_placeholders_are_bound_never_spliced():
    from pymda.userdb.sql import compile_query

    assert compile_query("SELECT 1 FROM t WHERE u = $user AND d = ${domain} AND l = $local",
                         "qmark") == (
        "SELECT 1 FROM t WHERE u = ? AND d = ? AND l = ?", ["user", "domain", "local"])
    assert compile_query("SELECT '50%' FROM t WHERE u = $user AND $username2 = 1",
                         "format") == (
        "SELECT '50%%' FROM t WHERE u = %s AND $username2 = 1", ["user"])
    for bad in ("SELECT 1 FROM t WHERE u = '$user'", 'SELECT "$local" FROM t',
                "SELECT 1 FROM t"):
        with pytest.raises(ConfigError):
            compile_query(bad, "qmark")


def test_placeholders_in_literals_and_comments_are_refused_as_mysql_reads_them():
    """PyMySQL pastes the escaped value into the SQL text: a placeholder the
    scan wrongly takes for code, inside a literal, lets the address out of
    it.  Found: an apostrophe in a comment made '$user' look bare, and the
    address ' UNION SELECT 5001, 0x2f726f6f74 -- @evil.example' then chose
    its own uid and home (/root) on MariaDB."""
    from pymda.userdb.sql import compile_query

    for bad, mysql in [("SELECT uid FROM t -- the admin's note\nWHERE u = '$user'", False),
                       ("SELECT uid FROM t /* don't */ WHERE u = '$user'", False),
                       ("SELECT uid FROM t # it's\nWHERE u = '$user'", True),
                       ("SELECT uid FROM t WHERE a = 'x\\' AND u = $user'", False),
                       ('SELECT uid FROM t WHERE a = "x\\" AND u = $user"', False),
                       ("SELECT uid FROM t WHERE u = 1 -- $user", False),
                       ("SELECT uid FROM t WHERE u = 1 /* $user */", False),
                       ("SELECT uid FROM t /*! it's */ WHERE u = $user", True)]:
        for style in ("format", "qmark"):
            with pytest.raises(ConfigError):
                compile_query(bad, style, mysql=mysql)
    assert compile_query("SELECT 1 /* it's */ FROM t WHERE a = 'it''s' AND b = 'x\\\\' "
                         "AND u = $user -- done: 100%", "format", mysql=True) == (
        "SELECT 1 /* it's */ FROM t WHERE a = 'it''s' AND b = 'x\\\\' AND u = %s "
        "-- done: 100%%", ["user"])
    # not comments: a minus sign before a number; '#' outside MySQL (XOR in PostgreSQL)
    assert compile_query("SELECT 1 FROM t WHERE a = 1--1\nAND f # 1 = 0 AND u = $user",
                         "format")[1] == ["user"]


def test_connect_strings():
    from pymda.userdb.sql import parse_connect

    assert parse_connect("host=db port = 5432 password='a b\\'c' user=x\\ y") == {
        "host": "db", "port": "5432", "password": "a b'c", "user": "x y"}
    assert parse_connect("  a='' b= c=\\' ") == {"a": "", "b": "c='"}  # as libpq
    for bad in ("host", "password='x", "password='x\\'"):
        with pytest.raises(ConfigError):
            parse_connect(bad)


def test_config_validates_userdb_and_sql_tables(tmp_path):
    def load(text):
        path = tmp_path / "c.toml"
        path.write_text(text)
        return config.load(str(path), environ={"PYMDA_CACHE_DIR": str(tmp_path)},
                           write_cache=False)

    cfg = load('userdb = ["sql:pfa", "passwd"]\n[sql.pfa]\ndriver = "sqlite"\n'
               'connect = "/x.db"\nuser_query = "SELECT 1 WHERE $user"\n')
    assert cfg.sql["pfa"]["driver"] == "sqlite"
    for bad in ('userdb = ["sql:none"]\n', 'userdb = ["ldap"]\n',
                'userdb = ["passwd-file:relative"]\n',
                '[sql.x]\ndriver = "oracle"\nconnect = ""\nuser_query = ""\n',
                '[sql.x]\ndriver = "sqlite"\nconnect = ""\n'):
        with pytest.raises(ConfigError):
            load(bad)


def test_sqlite_answers_rows_and_failures(tmp_path):
    from pymda import users

    db = tmp_path / "u.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE u (email TEXT, uid INT, home TEXT, q TEXT, two INT)")
        c.execute("INSERT INTO u VALUES ('a@x.example', 4000, '/h/a', '2M', 1)")
        c.execute("INSERT INTO u VALUES ('dup@x.example', 4000, '/h/a', NULL, 1)")
        c.execute("INSERT INTO u VALUES ('dup@x.example', 4001, '/h/b', NULL, 1)")
        c.execute("INSERT INTO u VALUES ('bad@x.example', 'abc', '/h/a', NULL, 1)")
    c.close()
    (tmp_path / "c.toml").write_text(
        'userdb = ["sql:s"]\nvirtual_gid = 4000\n[sql.s]\ndriver = "sqlite"\n'
        f'connect = "{db}"\n'
        'user_query = "SELECT uid, home, q AS quota_storage FROM u WHERE email = $user"\n')
    cfg = config.load(str(tmp_path / "c.toml"), environ={"PYMDA_CACHE_DIR": str(tmp_path)},
                      write_cache=False)
    a = users.lookup(cfg, "a@x.example")
    assert (a.uid, a.gid, a.home, a.settings, a.source) == (
        4000, 4000, "/h/a", {"quota_storage": 2 << 20}, "sql:s")
    for name in ("dup@x.example", "bad@x.example"):
        with pytest.raises(TempFail) as exc:
            users.lookup(cfg, name)
        assert exc.value.status == "4.3.0"


def test_garbage_columns_are_a_temporary_failure():
    """Whatever type a driver hands back (a PostgreSQL date, array or json
    column, bytes that are not UTF-8), a row pymda cannot read is 4.3.0,
    never a TypeError (pymda-policyd would close without an answer)."""
    import datetime

    from pymda.userdb.core import identity_from_row

    cfg = config.load(None, ["first_valid_uid=1000", "virtual_uid=4000", "virtual_gid=4000",
                             'virtual_home="/v/$local"'], environ={})
    garbage = [datetime.date(2024, 1, 1), [1], {"a": 1}, b"\xff", "lots", -1]
    for key in ("uid", "gid", "quota_storage", "quota_messages"):
        for value in garbage:
            with pytest.raises(TempFail) as exc:
                identity_from_row(cfg, "a@x.example", "sql:s", {key: value})
            assert exc.value.status == "4.3.0", (key, value)
    for key in ("home", "mailbox"):
        for value in garbage[:4]:
            with pytest.raises(TempFail):
                identity_from_row(cfg, "a@x.example", "sql:s", {key: value})
    ok = identity_from_row(cfg, "a@x.example", "sql:s",
                           {"quota_storage": 2048.0, "quota_messages": "7"})
    assert ok.settings == {"quota_storage": 2048, "quota_messages": 7}


def test_default_userdb_does_not_import_the_package():
    code = ("import sys; from pymda import config, users; cfg = config.load(None, environ={}); "
            "users.name_for_recipient(cfg, 'root', 'example.org'); users.lookup(cfg, 'root'); "
            "assert 'pymda.userdb' not in sys.modules, sorted(sys.modules)")
    subprocess.run([str(paths.prefix() / "bin" / "python3"), "-c", code], check=True,
                   cwd="/")


# --- pymda-admin -------------------------------------------------------------------------


def _admin(*args, env=None):
    proc = subprocess.run([str(paths.prefix() / "bin" / "pymda-admin"), *map(str, args)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_admin_user_and_check_config(tmp_path):
    db = tmp_path / "u.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE u (email TEXT, uid INT, gid INT, home TEXT, mailbox TEXT, "
                  "quota_storage INT, quota_messages INT)")
        c.execute("INSERT INTO u VALUES ('a@x.example', 4000, 4001, '/h/a', 'Maildir/', "
                  "1048576, 50)")
    c.close()
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'userdb = ["sql:s", "passwd", "dovecot:{tmp_path}/no-socket"]\n'
        '[sql.s]\ndriver = "sqlite"\n'
        f'connect = "{db}"\nuser_query = "SELECT * FROM u WHERE email = $user"\n')
    env = {"PYMDA_CACHE_DIR": str(tmp_path / "cache")}
    code, out, err = _admin("user", "-c", cfg, "a+tag@x.example", env=env)
    assert (code, err) == (0, "")
    assert out == ("user:     a@x.example\nsource:   sql:s\nuid:      4000\ngid:      4001\n"
                   "home:     /h/a\nmailbox:  /h/a/Maildir/ (maildir)\n"
                   "storage:  limit 1.0 MiB [1048576 bytes]\nmessages: limit 50\n")
    code, out, err = _admin("user", "-c", cfg, "nobody-here@x.example", env=env)
    assert code == EX_TEMPFAIL and err.startswith("pymda-admin: 4.3.0 userdb dovecot:")  # passwd: no
    code, out, err = _admin("check-config", "-c", cfg, env=env)
    assert code == EX_TEMPFAIL, err
    assert "# userdb sql:s: ok, connected, query ran" in out
    assert "# userdb passwd: ok" in out
    assert f"# userdb dovecot:{tmp_path}/no-socket: 4.3.0 " in out


# --- contrib -------------------------------------------------------------------------------


CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "userdb"


@pytest.mark.parametrize("name", ["postfixadmin-mysql.toml", "postfixadmin-postgresql.toml"])
def test_postfixadmin_examples_are_valid(tmp_path, name):
    from pymda.userdb.sql import compile_query

    cfg = config.load(str(CONTRIB / name), environ={"PYMDA_CACHE_DIR": str(tmp_path)},
                      write_cache=False)
    sql, names = compile_query(cfg.sql["postfixadmin"]["user_query"], "format")
    assert names == ["user"] and "%s" in sql


def test_postfixadmin_query_against_its_schema_in_sqlite(tmp_path, monkeypatch):
    """The PostgreSQL example's query, run on postfixadmin's mailbox table."""
    from pymda import users

    db = tmp_path / "postfix.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE mailbox (username TEXT PRIMARY KEY, password TEXT, name TEXT, "
                  "maildir TEXT, quota BIGINT, local_part TEXT, domain TEXT, "
                  "active BOOLEAN)")
        c.execute("INSERT INTO mailbox VALUES ('alice@example.org', 'x', 'Alice', "
                  "'example.org/alice/', 1073741824, 'alice', 'example.org', 1)")
        c.execute("INSERT INTO mailbox VALUES ('gone@example.org', 'x', 'Gone', "
                  "'example.org/gone/', 0, 'gone', 'example.org', 0)")
    c.close()
    text = (CONTRIB / "postfixadmin-postgresql.toml").read_text()
    text = text.replace('driver = "postgresql"', 'driver = "sqlite"')
    text = "\n".join(f'connect = "{db}"' if line.startswith("connect =") else line
                     for line in text.splitlines())
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = config.load(str(path), environ={"PYMDA_CACHE_DIR": str(tmp_path)}, write_cache=False)
    alice = users.lookup(cfg, "alice@example.org")
    assert (alice.uid, alice.home) == (5000, "/srv/vmail/example.org/alice/")
    assert alice.settings == {"mailbox": "/srv/vmail/example.org/alice/",
                              "quota_storage": 1 << 30}
    with pytest.raises(PermFail):
        users.lookup(cfg, "gone@example.org")


def test_passwd_file_example(tmp_path, monkeypatch):
    from pymda import users

    monkeypatch.setenv("PYMDA_CACHE_DIR", str(tmp_path))
    cfg = config.load(None, [f'userdb=["passwd-file:{CONTRIB}/users.passwd"]',
                             "virtual_uid=5000", "virtual_gid=5000",
                             'virtual_home="/srv/vmail/$domain/$local"'], environ={})
    alice = users.lookup(cfg, "alice@example.org")
    assert alice.settings == {"quota_storage": 1 << 30, "mailbox": "$home/Maildir/"}
    bob = users.lookup(cfg, "bob@example.org")
    assert (bob.uid, bob.home) == (5000, "/srv/vmail/example.org/bob")
    assert bob.settings == {"quota_messages": 10000, "quota_storage": 500 << 20}
    assert users.lookup(cfg, "postmaster@example.net").home == "/srv/vmail/postmaster"


@needs_root
def test_passwd_file_delivery_imports_nothing_heavy(vmail):
    from test_cli import heavy_in

    top = _public_dir("pymda-userdb-imports-")
    try:
        home = top / "home"
        home.mkdir()
        vmail.chown(home)
        (top / "users").write_text(f"v@x.example::{vmail.uid}:{vmail.gid}::{home}\n")
        cfg = top / "pymda.toml"
        cfg.write_text(f'userdb = ["passwd-file:{top}/users"]\nmailbox = "Maildir/"\n')
        env = {"PYMDA_CACHE_DIR": str(top / "cache"), "PATH": "/usr/bin:/bin"}
        argv = [str(paths.prefix() / "bin" / "python3"), "-X", "importtime", "-I", "-S",
                str(paths.pymda_bin()), "-c", str(cfg), "-f", SENDER, "-a", "v@x.example"]
        names = set()
        for _ in range(2):  # the first writes the config cache and the index
            proc = subprocess.run(argv, input=MESSAGE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, cwd="/", timeout=60)
            assert proc.returncode == EX_OK, proc
        for line in proc.stderr.decode().splitlines():
            if line.startswith("import time:") and "|" in line:
                names.add(line.rsplit("|", 1)[1].strip())
        assert "pymda.userdb.passwdfile" in names
        assert heavy_in(names) == []
        assert len(delivered(home)) == 2
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- a database that does not answer --------------------------------------------------


def _config_file(tmp_path, text):
    """The Config of ``text`` written to tmp_path/c.toml (no cache written)."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.load(str(path), environ={"PYMDA_CACHE_DIR": str(tmp_path)},
                       write_cache=False)


def _seconds_to_fail(cfg, name="a@x.example"):
    """How long ``users.lookup`` took to fail, with TempFail 4.3.0."""
    from pymda import users

    start = time.monotonic()
    with pytest.raises(TempFail) as exc:
        users.lookup(cfg, name)
    assert exc.value.status == "4.3.0"
    return time.monotonic() - start


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "dovecot"])
def test_a_silent_server_is_a_temporary_failure_within_the_timeout(tmp_path, kind):
    """A server that accepts the connection and then says nothing."""
    import socket as socketmod

    if kind == "dovecot":
        listener = socketmod.socket(socketmod.AF_UNIX)
        listener.bind(str(tmp_path / "auth-userdb"))
        userdb = f'["dovecot:{tmp_path}/auth-userdb"]'
        extra = False
    else:
        listener = socketmod.socket()
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        userdb = '["sql:s"]'
        extra = True
    listener.listen(5)
    try:
        text = f"userdb = {userdb}\nuserdb_timeout = 1\n"
        if extra:
            text += ("[sql.s]\n" f'driver = "{kind}"\n'
                     f'connect = "host=127.0.0.1 port={port} dbname=x user=y password=z"\n'
                     'user_query = "SELECT 1 WHERE $user"\n')
        elapsed = _seconds_to_fail(_config_file(tmp_path, text))
        assert elapsed < 15, elapsed  # connect_timeout is at least 2 s for libpq
    finally:
        listener.close()


def test_a_dovecot_that_trickles_fails_within_the_timeout(tmp_path):
    """userdb_timeout bounds the whole answer: a server sending a byte
    now and then (each read within the timeout) is still cut off."""
    import socket as socketmod
    import threading

    listener = socketmod.socket(socketmod.AF_UNIX)
    listener.bind(str(tmp_path / "auth-userdb"))
    listener.listen(1)
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"VERSION\t1\t2\n")
            end = time.monotonic() + 6  # then close: "no answer" (too late)
            while not stop.wait(0.3) and time.monotonic() < end:
                conn.sendall(b"S")

    server = threading.Thread(target=trickle)
    server.start()
    try:
        elapsed = _seconds_to_fail(_config_file(
            tmp_path, f'userdb = ["dovecot:{tmp_path}/auth-userdb"]\nuserdb_timeout = 1\n'))
    finally:
        stop.set()
        server.join(10)
        listener.close()
    assert elapsed < 2.5, elapsed


def test_lookups_at_once_each_fail_within_the_timeout(tmp_path):
    """The daemons ask from several threads.  With the database silent,
    each lookup fails after its own userdb_timeout; one lock held over the
    connect made the k-th wait k timeouts (4 threads: 1.1, 2.1, 3.1, 4.2 s)."""
    import socket as socketmod
    import threading

    from pymda import users

    pytest.importorskip("pymysql")
    with socketmod.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        cfg = _config_file(tmp_path, 'userdb = ["sql:s"]\nuserdb_timeout = 1\n'
                           'userdb_cache_ttl = 0\n[sql.s]\ndriver = "mysql"\n'
                           f'connect = "host=127.0.0.1 port={port} dbname=x user=y '
                           'password=z"\nuser_query = "SELECT 1 WHERE $user"\n')
        start = time.monotonic()
        failed = []

        def lookup(n):
            with pytest.raises(TempFail) as exc:
                users.lookup(cfg, f"u{n}@x.example")
            failed.append((exc.value.status, time.monotonic() - start))

        threads = [threading.Thread(target=lookup, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert [status for status, _ in failed] == ["4.3.0"] * 4
    assert max(elapsed for _, elapsed in failed) < 3, failed


@needs_root
def test_a_slow_query_on_a_kept_connection_is_not_asked_twice(tmp_path):
    """A kept connection is retried on a new one when it fails at once (the
    server restarted), not when the query ran out of time: that took two
    userdb_timeouts and a connect (4.0 s here with a 2 s timeout)."""
    from pymda import users
    from support.pgsql import PgServer

    if not _available("postgresql"):
        pytest.skip("postgresql is not installed")
    server = PgServer().start()
    try:
        server.sql("CREATE ROLE pymda LOGIN PASSWORD 'pw'")
        cfg = _config_file(
            tmp_path,
            'userdb = ["sql:s"]\nuserdb_timeout = 2\nuserdb_cache_ttl = 0\n'
            'virtual_uid = 5000\nvirtual_gid = 5000\n[sql.s]\ndriver = "postgresql"\n'
            f'connect = "host=127.0.0.1 port={server.port} dbname=postgres user=pymda '
            'password=pw"\n'
            "user_query = \"SELECT '/h/' || $local AS home FROM (SELECT CASE WHEN $local = "
            "'slow' THEN pg_sleep(30) END) AS s\"\n")
        assert users.lookup(cfg, "fast@x.example").home == "/h/fast"  # kept now
        elapsed = _seconds_to_fail(cfg, "slow@x.example")
        assert elapsed < 3.5, elapsed
        assert users.lookup(cfg, "fast@x.example").home == "/h/fast"
        server.stop()  # a restart under a kept connection: that one is retried
        server.start()
        assert users.lookup(cfg, "fast@x.example").home == "/h/fast"
    finally:
        server.destroy()


def test_sql_address_no_database_can_hold_is_unknown(tmp_path):
    from pymda.userdb import sql

    db = tmp_path / "u.db"
    sqlite3.connect(db).close()
    cfg = config.load(None, environ={}).replace(userdb=("sql:s",), sql={"s": {
        "driver": "sqlite", "connect": str(db), "user_query": "SELECT * FROM nothing "
        "WHERE x = $user"}})
    # the table does not exist: asking at all would be a temporary failure
    assert sql.lookup(cfg, "s", "a\0b@x.example") is None
    assert sql.lookup(cfg, "s", "a\udcffb@x.example") is None
    with pytest.raises(TempFail):
        sql.lookup(cfg, "s", "ab@x.example")


def test_daemon_cache_keeps_answers_not_unknown(tmp_path):
    """userdb_cache_ttl: a known user is answered from the cache while the
    database is away; an unknown one is asked again (it may exist now)."""
    source = SqliteSource(tmp_path)
    cfg = tmp_path / "pymda.toml"
    cfg.write_text('policy_nouser = "550 5.1.1 User unknown"\nuserdb_cache_ttl = 600\n'
                   'virtual_uid = 4000\nvirtual_gid = 4000\n'
                   'virtual_home = "/nonexistent/$local"\n' + source.config())
    policyd = _start_policyd(cfg)
    try:
        assert _policy(policyd, "new@x.example", 10) == b"action=550 5.1.1 User unknown\n\n"
        source.add("new@x.example", None, None, None)
        assert _policy(policyd, "new@x.example", 10) == DUNNO
        source.add("root@x.example", 0, 0, "/root")  # refused: as policy_nouser says
        assert _policy(policyd, "root@x.example", 10) == b"action=550 5.1.1 User unknown\n\n"
        source.stop()  # the file is gone: only the cache can answer
        assert _policy(policyd, "new@x.example", 10) == DUNNO
        assert _policy(policyd, "other@x.example", 10) == DEFER
        source.start()
    finally:
        policyd.stop()
