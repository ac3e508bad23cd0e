#!/usr/bin/python3
"""bench_userdb.py — what a userdb source costs a one-shot ``pymda`` delivery.

Usage (as root; needs the test venv's drivers and the Debian servers):

    PYMDA_PREFIX=/opt/pymda-userdb /usr/bin/python3 bench/bench_userdb.py [--n 30]

One throw-away user owns every mailbox.  For each source the installed
``pymda`` (fast launcher) is run as root with ``-a user@bench.example``,
the way a root ``mailbox_command``/``virtual`` pipe would run it, into a
Maildir: ``passwd`` (the default ``["config", "passwd"]``, the user by
local part), ``config`` (a ``[users."..."]`` table), ``passwd-file`` (a
100,000-line file, its index built before timing), ``sqlite``,
``postgresql`` and ``mysql`` (private servers from tests/support, one
connection per delivery: that is what a one-shot process pays) and
``dovecot`` (a private dovecot's auth-userdb socket).  Rounds are
interleaved; median and p90 wall time per delivery (posix_spawn to
wait4).  Then the import time of each driver under ``python3 -I -S``
(min of N, ``-X importtime``, cumulative).
"""

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from common import Spawner, create_user, delete_user, summarize  # noqa: E402

MESSAGE = b"From: a@example.org\nSubject: bench\nMessage-ID: <b@bench>\n\n" + b"x" * 3000 + b"\n"
QUERY = "SELECT uid, gid, home FROM users WHERE username = $user"


def prefix():
    return os.environ.get("PYMDA_PREFIX", "/opt/pymda")


def import_cost(module, n):
    py = os.path.join(prefix(), "bin", "python3")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    best = None
    for _ in range(n):
        err = subprocess.run([py, "-I", "-S", "-X", "importtime", "-c",
                              f"import sys; sys.path.insert(0, {site!r}); import {module}"],
                             stderr=subprocess.PIPE, text=True, check=True).stderr
        us = int(err.strip().splitlines()[-1].split("|")[1])
        best = us if best is None else min(best, us)
    return best / 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_userdb: run as root")
    from support.dovecot_auth import DovecotAuth
    from support.mariadb import MariaServer
    from support.pgsql import PgServer

    user = create_user("pbud")
    top = tempfile.mkdtemp(prefix="pymda-bench-userdb-")
    os.chmod(top, 0o755)
    servers = []
    try:
        address = f"{user.name}@bench.example"
        line = f"{address}::{user.uid}:{user.gid}::{user.home}\n"
        configs = {}

        def write(name, text):
            path = os.path.join(top, f"{name}.toml")
            with open(path, "w") as f:
                f.write('mailbox = "Maildir/"\n' + text)
            configs[name] = path

        write("passwd", "")
        write("config", f'[users."{address}"]\nuid = {user.uid}\ngid = {user.gid}\n'
                        f'home = "{user.home}"\n')
        pwfile = os.path.join(top, "users")
        with open(pwfile, "w") as f:
            for i in range(100000):
                f.write(f"u{i}@bench.example::{user.uid}:{user.gid}::/srv/u{i}\n")
            f.write(line)
        write("passwd-file", f'userdb = ["passwd-file:{pwfile}"]\n')
        table = ("CREATE TABLE users (username VARCHAR(255) PRIMARY KEY, uid INT, gid INT, "
                 "home VARCHAR(255))")
        insert = f"INSERT INTO users VALUES ('{address}', {user.uid}, {user.gid}, '{user.home}')"
        db = os.path.join(top, "users.sqlite")
        with sqlite3.connect(db) as c:
            c.execute(table)
            c.execute(insert)
        c.close()
        sql = '[sql.s]\ndriver = "{}"\nconnect = "{}"\nuser_query = "{}"\n'
        write("sqlite", 'userdb = ["sql:s"]\n' + sql.format("sqlite", db, QUERY))
        pg = PgServer().start()
        servers.append(pg)
        pg.sql("CREATE ROLE pymda LOGIN PASSWORD 'pw'; CREATE DATABASE mail;")
        pg.sql(f"{table}; {insert}; GRANT SELECT ON users TO pymda;", database="mail")
        write("postgresql", 'userdb = ["sql:s"]\n' + sql.format(
            "postgresql", f"host=127.0.0.1 port={pg.port} dbname=mail user=pymda password=pw",
            QUERY))
        maria = MariaServer().start()
        servers.append(maria)
        maria.sql("CREATE DATABASE mail; CREATE USER 'pymda'@'localhost' IDENTIFIED BY 'pw';"
                  "GRANT SELECT ON mail.* TO 'pymda'@'localhost';")
        maria.sql(f"{table}; {insert};", database="mail")
        write("mysql", 'userdb = ["sql:s"]\n' + sql.format(
            "mysql", f"socket={maria.socket_path} dbname=mail user=pymda password=pw", QUERY))
        dc = DovecotAuth(line).start()
        servers.append(dc)
        write("dovecot", f'userdb = ["dovecot:{dc.socket_path}"]\n')

        stdin = os.path.join(top, "message")
        with open(stdin, "wb") as f:
            f.write(MESSAGE)
        env = {"PATH": "/usr/bin:/bin", "PYMDA_CACHE_DIR": os.path.join(top, "cache")}
        spawner = Spawner(env, top)
        pymda = os.path.join(prefix(), "bin", "pymda")
        times = {name: [] for name in configs}
        for rnd in range(args.n + 1):
            for name, cfg in configs.items():
                code, secs, out = spawner.run([pymda, "-c", cfg, "-f", "a@example.org", "-a",
                                               address], stdin)
                if code != 0:
                    raise SystemExit(f"{name}: exit {code}: {out}")
                if rnd:  # round 0 warms the config cache and builds the index
                    times[name].append(secs)
        spawner.close()
        print(f"one-shot delivery as root, median / p90 ms over {args.n} (Maildir, 3 KB):")
        base = summarize(times["passwd"])["median_ms"]
        for name, secs in times.items():
            s = summarize(secs)
            print(f"  {name:12} {s['median_ms']:7.2f} {s['p90_ms']:7.2f}   "
                  f"(+{s['median_ms'] - base:.2f} ms)")
        print("driver import under python3 -I -S, min of 10 (ms):")
        for module in ("sqlite3", "psycopg", "pymysql"):
            print(f"  {module:12} {import_cost(module, 10):7.2f}")
    finally:
        for server in servers:
            server.destroy()
        shutil.rmtree(top, ignore_errors=True)
        delete_user(user)


if __name__ == "__main__":
    main()
