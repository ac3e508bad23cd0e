"""A private PostgreSQL 15 server for tests (root only).

``PgServer().start()`` runs Debian's ``initdb`` and then ``postgres`` in
the foreground (a child that dies with this process: procs.start_server)
as the ``postgres`` user on a fresh data directory under a temporary
directory, with its own unix socket directory and a free port on
127.0.0.1 only; no system cluster or service is touched.  A port another
session took between ``free_port`` and the first start is traded for a
new one.  Local (socket) connections are ``trust`` for the ``postgres``
superuser; TCP connections need a password (scram-sha-256).
``sql(text)`` runs SQL through ``psql`` as postgres; ``stop()`` (a fast
shutdown: open sessions, e.g. a daemon's kept connection, are ended) /
``start()`` again (same data, same port) and ``destroy()``.
"""

import os
import pwd
import shutil
import signal
import subprocess
import time

from support.procs import free_port, private_top, start_server, tail, terminate

BIN = "/usr/lib/postgresql/15/bin"


def installed():
    return os.access(os.path.join(BIN, "initdb"), os.X_OK) and _has_user("postgres")


def _has_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class PgServer:
    def __init__(self):
        self.top, self.uid, self.gid = private_top("pymda-pgsql-", "postgres")
        self.data = os.path.join(self.top, "data")
        self.sockdir = os.path.join(self.top, "sock")
        os.mkdir(self.sockdir, 0o755)
        os.chown(self.sockdir, self.uid, self.gid)
        self.port = free_port()
        self.log = os.path.join(self.top, "postgres.log")
        self.proc = None
        self.started = False
        self._as_postgres([f"{BIN}/initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8",
                           "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"])

    def _as_postgres(self, argv, input_bytes=None, timeout=120):
        proc = subprocess.run(argv, input=input_bytes, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, user=self.uid, group=self.gid,
                              extra_groups=[], cwd=self.top, timeout=timeout,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {proc.returncode}: "
                                 f"{proc.stdout.decode(errors='replace')}")
        return proc.stdout

    @property
    def socket_path(self):
        return os.path.join(self.sockdir, f".s.PGSQL.{self.port}")

    def start(self, timeout=60):
        for _ in range(5):
            logged = os.path.getsize(self.log) if os.path.exists(self.log) else 0
            # SIGINT: a fast shutdown when this process dies
            self.proc = start_server(
                [f"{BIN}/postgres", "-D", self.data, "-c", "listen_addresses=127.0.0.1",
                 "-p", str(self.port), "-k", self.sockdir, "-c", "fsync=off"],
                self.log, "INT", user=self.uid, group=self.gid, extra_groups=[], cwd=self.top,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
            if self._ready(timeout):
                self.started = True
                return self
            with open(self.log, "rb") as f:
                f.seek(logged)
                lost_port = b"Address already in use" in f.read()
            if self.started or not lost_port:
                raise AssertionError(f"postgres did not start: {tail(self.log)}")
            self.port = free_port()  # another session took it: nothing knows this one yet
        raise AssertionError(f"postgres found no free port: {tail(self.log)}")

    def _ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            ping = subprocess.run(["/usr/bin/pg_isready", "-q", "-h", self.sockdir, "-p",
                                   str(self.port)], check=False)
            if ping.returncode == 0:
                return True
            time.sleep(0.1)
        terminate(self.proc, 10, signal.SIGQUIT)
        return False

    def stop(self):
        terminate(self.proc, 60, signal.SIGINT)  # fast shutdown, as pg_ctl -m fast
        self.proc = None

    def sql(self, text, database="postgres"):
        return self._as_postgres(["/usr/bin/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                  "-h", self.sockdir, "-p", str(self.port), "-U", "postgres",
                                  "-d", database, "-f", "-"], input_bytes=text.encode())

    def destroy(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.top, ignore_errors=True)
