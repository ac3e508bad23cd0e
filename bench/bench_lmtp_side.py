#!/usr/bin/python3
"""bench_lmtp_side.py — pymda-lmtpd and dovecot-lmtp side by side, one command.

Usage (as root; stdlib only, plus the install's psycopg for the pg rows):

    PYMDA_PREFIX=/opt/pymda /usr/bin/python3 bench/bench_lmtp_side.py \\
        [--sizes 4000,100000] [--connections 1,4] [--modes root,user,pg,pguser] \\
        [--markdown FILE] [--json FILE]

One throw-away unprivileged user (``pblmtp<hex>``) owns every mailbox.
For each mode, message count and number of connections, the same
messages go first to pymda-lmtpd, then to dovecot-lmtp, each on a unix
socket, each into an empty ``~/Maildir``:

- ``root``: the installed ``pymda-lmtpd`` running as root delivers to the
  user as a system user (``USER@localhost``, found in passwd).
- ``user``: ``pymda-lmtpd`` running as that user serves a virtual user
  (``vbench@example.org``, a ``[users]`` table with the user's uid, gid
  and home) - the virtual-users setup.
- ``pg`` / ``pguser``: ``pymda-lmtpd`` as root / as the user with
  ``userdb = ["sql:pg"]`` against a private PostgreSQL
  (tests/support/pgsql.py, 10,000 rows, TCP with a password), against
  dovecot's SQL userdb (``driver = pgsql``, Debian's dovecot-pgsql) on
  the same database, each with its default cache (pymda: answers kept
  ``userdb_cache_ttl`` = 60 s per process; dovecot: ``auth_cache_size``
  = 0, no cache).
- dovecot: a private instance of Debian's dovecot (its own base_dir,
  state_dir and log, ``protocols = lmtp``, the master as root, the lmtp
  service on a 0666 unix socket in its base_dir, default process model:
  one lmtp process per connection).  For ``root`` and ``user`` its
  userdb is ``static`` (every recipient is the user), for ``pg`` SQL.
  dovecot's defaults otherwise (``mail_fsync = optimized``, its index
  files, Received: header).

Each transaction is MAIL, RCPT, DATA pipelined, then the message, as
postfix's LMTP client sends it: no Return-Path, X-Original-To or
Delivered-To (stripped from the corpus message), a unique
``Message-ID: <run.n@bench>`` on top.  Five warm-up messages per run are
not timed.  After each run EVERY message is checked in ``Maildir/new``:
the set of Message-IDs is exactly the one sent and each file ends with
the message's body.  Connections run in parallel client processes, each
sending its share.  The load average (/proc/loadavg) is recorded before
and after each cell: the machine is shared.

Exit status 0 when every run completed and verified, 1 otherwise.
"""

import argparse
import datetime
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import bench_lmtp  # noqa: E402
import common  # noqa: E402

PREFIX = os.environ.get("PYMDA_PREFIX", "/opt/pymda")
LMTPD = os.path.join(PREFIX, "bin", "pymda-lmtpd")
DOVECOT = "/usr/sbin/dovecot"
VIRTUAL = "vbench@example.org"
WARMUP = 5
_TRACE = re.compile(rb"^(return-path|x-original-to|delivered-to|message-id):", re.I)
_ID = re.compile(rb"^Message-ID: <(\d+)\.(\d+)@bench>$", re.M)

DOVECOT_CONF = """\
base_dir = {top}/run
state_dir = {top}/state
log_path = {top}/dovecot.log
instance_name = pymda-bench-{name}
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:~/Maildir
first_valid_uid = 1
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = static
  args = password=unused
}}
userdb {{
{userdb}
}}
"""


def lmtp_message(raw):
    """The corpus message as postfix's LMTP client would pass it: no
    From_ line, no trace lines of an earlier delivery, no Message-ID
    (each transaction gets its own)."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1]
    raw = raw.replace(b"\r\n", b"\n")
    head, sep, body = raw.partition(b"\n\n")
    kept = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = bool(_TRACE.match(line))
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for(path, proc, what, timeout=30):
    """Until the server at unix socket ``path`` answers with its greeting."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise common.BenchError(f"{what} did not start (exit {proc.poll()})")
        try:
            conn = bench_lmtp.Conn(path)
            try:
                if conn.lines(1)[0].startswith("220 "):
                    return
            finally:
                conn.sock.close()
        except (OSError, common.BenchError):
            pass
        time.sleep(0.05)


class Pymda:
    """The installed pymda-lmtpd on a unix socket, as root or as ``user``."""

    def __init__(self, top, config, user=None):
        self.dir = os.path.join(top, "pymda-" + ("user" if user else "root"))
        os.makedirs(self.dir, 0o755, exist_ok=True)
        cache = os.path.join(self.dir, "cache")
        os.makedirs(cache, 0o700, exist_ok=True)
        cfg = os.path.join(self.dir, "pymda.toml")
        with open(cfg, "w") as f:
            f.write(config)
        os.chmod(cfg, 0o644)
        kwargs = {}
        if user is not None:
            for path in (self.dir, cache):
                os.chown(path, user.uid, user.gid)
            kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
        self.socket = os.path.join(self.dir, "lmtp.sock")
        self.log = open(os.path.join(self.dir, "lmtpd.log"), "ab")
        self.proc = subprocess.Popen([LMTPD, "-c", cfg, "--listen", f"unix:{self.socket}"],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd="/",
                                     env={"PATH": "/usr/bin:/bin", "PYMDA_CACHE_DIR": cache},
                                     **kwargs)
        wait_for(self.socket, self.proc, "pymda-lmtpd")

    def close(self):
        common.terminate(self.proc)
        self.log.close()


class Dovecot:
    """A private dovecot (master as root) serving LMTP on a unix socket."""

    def __init__(self, top, name, userdb):
        self.dir = os.path.join(top, "dovecot-" + name)
        shutil.rmtree(self.dir, ignore_errors=True)  # a stopped dovecot leaves its sockets
        for sub in ("", "run", "state"):
            os.makedirs(os.path.join(self.dir, sub), 0o755, exist_ok=True)
        conf = os.path.join(self.dir, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(DOVECOT_CONF.format(top=self.dir, name=f"{name}-{os.getpid()}",
                                        userdb=userdb))
        self.socket = os.path.join(self.dir, "run", "lmtp")
        # the master stays root: it stops with this process, however it ends
        procs = common._support("procs")
        log = os.path.join(self.dir, "dovecot.log")
        self.proc = procs.start_server([DOVECOT, "-F", "-c", conf], log, cwd=self.dir)
        try:
            wait_for(self.socket, self.proc, "dovecot")
        except common.BenchError:
            self.close()
            raise common.BenchError(f"dovecot did not start: {procs.tail(log, 2000)}") from None

    def close(self):
        common.terminate(self.proc)


def run_clients(socket_path, recipient, body, total, connections, seed):
    """Send ``total`` messages over ``connections`` connections at once.
    -> (seconds, [seconds per transaction], expected ids)."""
    per = total // connections
    expected = set()
    for k in range(connections):
        expected |= {(seed + k, i) for i in range(per)}
    start = time.perf_counter()
    if connections == 1:
        times = bench_lmtp.client(socket_path, [recipient], body, per, seed)
    else:
        queue = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=bench_lmtp._client_proc,
                                         args=((socket_path, [recipient], body, per, seed + k),
                                               queue))
                 for k in range(connections)]
        for p in procs:
            p.start()
        times = []
        try:
            for _ in procs:
                status, value = queue.get(timeout=3600)
                if status != "ok":
                    raise common.BenchError(value)
                times += value
        finally:
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
    return time.perf_counter() - start, times, expected


def verify(maildir, expected, body_tail):
    """Every message sent is in Maildir/new exactly once, whole."""
    new = os.path.join(maildir, "new")
    found = set()
    names = os.listdir(new)
    for name in names:
        with open(os.path.join(new, name), "rb") as f:
            data = f.read()
        ids = _ID.findall(data[:65536])
        if len(ids) != 1:
            raise common.BenchError(f"{name}: {len(ids)} bench Message-IDs")
        key = (int(ids[0][0]), int(ids[0][1]))
        if key in found:
            raise common.BenchError(f"{name}: message {key} stored twice")
        if not data.endswith(body_tail):
            raise common.BenchError(f"{name}: the message does not end with its body")
        found.add(key)
    if found != expected:
        missing = len(expected - found)
        extra = len(found - expected)
        raise common.BenchError(f"{len(names)} files: {missing} missing, {extra} unexpected")
    return len(names)


def one_run(server_socket, user, recipient, body, body_tail, count, connections, seed):
    maildir = user.path("Maildir")
    shutil.rmtree(maildir, ignore_errors=True)
    # warm-up (own seed, verified too)
    bench_lmtp.client(server_socket, [recipient], body, WARMUP, seed + 900)
    expected = {(seed + 900, i) for i in range(WARMUP)}
    seconds, times, sent = run_clients(server_socket, recipient, body, count, connections, seed)
    stored = verify(maildir, expected | sent, body_tail)
    shutil.rmtree(maildir, ignore_errors=True)
    stats = common.summarize(times)
    return {"messages": len(sent), "seconds": round(seconds, 2),
            "per_second": round(len(sent) / seconds, 1), "median_ms": stats["median_ms"],
            "p90_ms": stats["p90_ms"], "verified": stored}


def setup_pg(top, user, rows):
    from support.pgsql import PgServer

    pg = PgServer().start()
    pg.sql("CREATE ROLE pymda LOGIN PASSWORD 'pw'; CREATE DATABASE mail;")
    values = ",".join(f"('u{i}@example.org', {user.uid}, {user.gid}, '/srv/u{i}')"
                      for i in range(rows))
    pg.sql("CREATE TABLE users (username VARCHAR(255) PRIMARY KEY, uid INT, gid INT, "
           f"home VARCHAR(255)); INSERT INTO users VALUES {values}, "
           f"('{VIRTUAL}', {user.uid}, {user.gid}, '{user.home}'); "
           "GRANT SELECT ON users TO pymda; ANALYZE users;", database="mail")
    return pg


MODES = {
    "root": "LMTP as root delivering to a system user",
    "user": "LMTP as the mail user (virtual users)",
    "pg": "LMTP as root, PostgreSQL userdb",
    "pguser": "LMTP as the mail user, PostgreSQL userdb",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4000,100000")
    ap.add_argument("--connections", default="1,4")
    ap.add_argument("--modes", default="root,user,pg,pguser")
    ap.add_argument("--pg-rows", type=int, default=10000)
    ap.add_argument("--pymda-extra", default="",
                    help="top-level TOML lines added to pymda's config, e.g. 'lmtp_workers = 4'")
    ap.add_argument("--message", help="message file (default: a corpus message)")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--json", help="write every result to this file")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_lmtp_side.py: run as root (it creates a user and runs dovecot)")
    for path in (LMTPD, DOVECOT):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench_lmtp_side.py: {path} is not installed")
    sizes = [int(x) for x in opts.sizes.split(",")]
    conns = [int(x) for x in opts.connections.split(",")]
    modes = opts.modes.split(",")
    if opts.message:
        with open(opts.message, "rb") as f:
            raw, source = f.read(), opts.message
    else:
        raw, source = bench_lmtp.default_message()
    message = lmtp_message(raw)
    body = bench_lmtp.wire_body(message)
    body_tail = message.partition(b"\n\n")[2][-200:]

    user = common.create_user("pblmtp")
    top = tempfile.mkdtemp(prefix="bench-lmtp-side-")
    os.chmod(top, 0o755)
    pg = None
    results = []
    failed = False
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        head = 'mailbox = "Maildir/"\n' + (opts.pymda_extra.replace("\\n", "\n") + "\n"
                                           if opts.pymda_extra else "")
        virtual = (f'[users."{VIRTUAL}"]\nuid = {user.uid}\ngid = {user.gid}\n'
                   f'home = "{user.home}"\nmailbox = "Maildir/"\n')
        static = (f"  driver = static\n  args = uid={user.uid} gid={user.gid} "
                  f"home={user.home} allow_all_users=yes")
        setups = {}
        if "root" in modes:
            setups["root"] = (lambda: Pymda(top, head),
                              lambda: Dovecot(top, "static", static), f"{user.name}@localhost")
        if "user" in modes:
            setups["user"] = (lambda: Pymda(top, head + virtual, user),
                              lambda: Dovecot(top, "static", static), VIRTUAL)
        if "pg" in modes or "pguser" in modes:
            pg = setup_pg(top, user, opts.pg_rows)
            connect = f"host=127.0.0.1 port={pg.port} dbname=mail user=pymda password=pw"
            sqlconf = os.path.join(top, "dovecot-sql.conf.ext")
            with open(sqlconf, "w") as f:
                f.write(f"driver = pgsql\nconnect = {connect}\nuser_query = SELECT home, uid, "
                        "gid FROM users WHERE username = '%u'\n")
            os.chmod(sqlconf, 0o600)
            pymda_sql = (head + 'userdb = ["sql:pg"]\n[sql.pg]\n'
                         f'driver = "postgresql"\nconnect = "{connect}"\n'
                         'user_query = "SELECT uid, gid, home FROM users WHERE username = $user"\n')
            dovecot_sql = f"  driver = sql\n  args = {sqlconf}"
            setups["pg"] = (lambda: Pymda(top, pymda_sql),
                            lambda: Dovecot(top, "pgsql", dovecot_sql), VIRTUAL)
            setups["pguser"] = (lambda: Pymda(top, pymda_sql, user),
                                lambda: Dovecot(top, "pgsql", dovecot_sql), VIRTUAL)
        seed = 1000
        for mode in modes:
            start_pymda, start_dovecot, recipient = setups[mode]
            for count in sizes:
                for n in conns:
                    cell = {"mode": mode, "count": count, "connections": n,
                            "load_before": loadavg()}
                    for name, starter in (("pymda", start_pymda), ("dovecot", start_dovecot)):
                        server = None
                        try:
                            server = starter()
                            cell[name] = one_run(server.socket, user, recipient, body,
                                                 body_tail, count, n, seed)
                        except (common.BenchError, OSError) as exc:
                            failed = True
                            cell[name] = {"error": str(exc)[:500]}
                            print(f"{mode} {count} x{n} {name}: FAILED {exc}", file=sys.stderr)
                        finally:
                            if server is not None:
                                server.close()
                        seed += 1000
                    cell["load_after"] = loadavg()
                    results.append(cell)
                    print(json.dumps(cell), flush=True)
    finally:
        if pg is not None:
            pg.destroy()
        common.delete_user(user)
        shutil.rmtree(top, ignore_errors=True)
    table = render(results, source, len(message), started)
    common.write_table(table, opts.markdown, opts.json,
                       {"results": results, "machine": common.machine()})
    sys.exit(1 if failed else 0)


def render(results, source, size, started):
    machine = common.machine()
    command = " ".join(["bench/bench_lmtp_side.py"] + sys.argv[1:])
    lines = [
        f"Run {started:%Y-%m-%d %H:%M} UTC, `{command}`"
        f" ({PREFIX}), {machine.get('nproc')} CPUs ({machine.get('cpu')}), "
        f"{size}-byte message ({os.path.basename(str(source))}); messages/s, every message "
        "verified in the Maildir; load average before → after each cell.",
        "",
        "| | messages | connections | pymda | dovecot | ratio | load |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for cell in results:
        p, d = cell.get("pymda", {}), cell.get("dovecot", {})
        pr, dr = p.get("per_second"), d.get("per_second")
        ratio = f"{pr / dr:.2f}×" if pr and dr else "–"
        lines.append(f"| {MODES[cell['mode']]} | {cell['count']} | {cell['connections']} | "
                     f"{pr or 'failed'} | {dr or 'failed'} | {ratio} | "
                     f"{cell['load_before']:.1f} → {cell['load_after']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
