"""A private MariaDB server for tests (root only).

``MariaServer().start()``: ``mariadb-install-db`` into a fresh datadir
under a temporary directory, then ``mariadbd`` as the ``mysql`` user (a
child that dies with this process: procs.start_server) with its own
socket and pid file and no TCP listener at all (``--skip-networking``:
no port to collide with another session's server; the tests connect
through the socket), no system service, no /etc/mysql options
(``--no-defaults``).  root connects through the socket without a
password; ``sql(text)`` runs SQL as root with the ``mariadb`` client.
``stop()`` / ``start()`` again (same data), ``destroy()``.
"""

import os
import pwd
import shutil
import subprocess
import time

from support.procs import private_top, start_server, tail, terminate

INSTALL_DB = "/usr/bin/mariadb-install-db"
SERVER = "/usr/sbin/mariadbd"
CLIENT = "/usr/bin/mariadb"


def installed():
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return False
    return all(os.access(p, os.X_OK) for p in (INSTALL_DB, SERVER, CLIENT))


class MariaServer:
    def __init__(self):
        self.top, self.uid, self.gid = private_top("pymda-mariadb-", "mysql")
        self.data = os.path.join(self.top, "data")
        self.socket_path = os.path.join(self.top, "mysqld.sock")
        self.pid_file = os.path.join(self.top, "mysqld.pid")
        self.log = os.path.join(self.top, "mysqld.log")
        self.proc = None
        proc = subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={self.data}", "--user=mysql",
             "--auth-root-authentication-method=socket", "--skip-test-db",
             "--skip-name-resolve"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.top, timeout=300,
            check=False)
        if proc.returncode != 0:
            raise AssertionError(f"mariadb-install-db: {proc.stdout.decode(errors='replace')}")

    def start(self, timeout=60):
        # started as mysql (a server that switches ids itself loses the
        # parent-death signal); it logs to stderr, our log file
        self.proc = start_server(
            [SERVER, "--no-defaults", f"--datadir={self.data}",
             f"--socket={self.socket_path}", f"--pid-file={self.pid_file}",
             "--skip-networking", "--skip-name-resolve",
             "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"],
            self.log, user=self.uid, group=self.gid, extra_groups=[], cwd=self.top)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mariadbd exited {self.proc.returncode}: {self._log()}")
            ping = subprocess.run([CLIENT, "--no-defaults", "-S", self.socket_path, "-u",
                                   "root", "-e", "SELECT 1"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, check=False)
            if ping.returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"mariadbd did not start: {self._log()}")

    def _log(self):
        return tail(self.log)

    def stop(self):
        terminate(self.proc)
        self.proc = None

    def sql(self, text, database=None):
        argv = [CLIENT, "--no-defaults", "-S", self.socket_path, "-u", "root"]
        if database:
            argv.append(database)
        proc = subprocess.run(argv, input=text.encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=60, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"mariadb: {proc.stdout.decode(errors='replace')}")
        return proc.stdout

    def destroy(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.top, ignore_errors=True)
