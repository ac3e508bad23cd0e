"""``sql:NAME``: users from SQLite, PostgreSQL or MySQL/MariaDB.

``[sql.NAME]``: ``driver`` ("sqlite", "postgresql", "mysql"), ``connect``
(sqlite: the database file; otherwise libpq's ``key=value`` form,
``'quoted values'`` allowed, keys ``host port dbname user password
socket``, plus ``sslmode`` etc. passed to psycopg as they are) and
``user_query``.

Contract: ``lookup(cfg, name, address)`` -> row dict (column name ->
value) or None when the query returns no row (or the address has a NUL
or bytes that are not UTF-8: no database can hold it); TempFail 4.3.0 when the
database cannot be reached, does not answer within ``userdb_timeout``,
returns more than one row, or anything else goes wrong.  ``probe(cfg,
name)`` connects and runs the query for a user that does not exist
(pymda-admin check-config).

SECURITY: ``$user``, ``$local``, ``$domain`` (also ``${user}``...) in
``user_query`` become the driver's bound-parameter placeholders: sqlite3
and psycopg bind on the server; PyMySQL escapes the value into the text,
safe only outside literals and comments.  A placeholder inside a quoted string or
identifier (``'$user'``) or a comment is a ConfigError: it would be a literal
(compile_query follows MySQL's quoting, backslashes and comments).  Only
reading: sqlite opens the file read-only.

DRIVERS (docs/users.md): sqlite3 (stdlib), psycopg 3 (``pymda[postgresql]``,
pure Python over the system's libpq), PyMySQL (``pymda[mysql]``, pure
Python).  Each is imported only when a source needs it.

CONNECTIONS: kept open per process and source (the daemons), one per
lookup running at the same time (pymda-lmtpd and pymda-policyd ask from
worker threads): a thread takes an idle one or connects, and gives it
back after the query; the lock guards only that list, so one slow or
unreachable database costs each waiting lookup its own
``userdb_timeout``, not the sum of those queued before it.  A connection
inherited through fork() is abandoned, never closed (closing would end
the parent's session) nor used.  A sqlite file that was replaced (rename
of a new version) or removed since it was opened is opened again.  A
failure on a kept connection is retried once on a new one when it came
at once (the server was restarted; not when it ran out of time: that
would double ``userdb_timeout``); a failure then is TempFail, and the
next lookup connects again: the daemons recover by themselves when the
database is back.
"""

import _thread
import time

from pymda import fastos as os
from pymda.errors import ConfigError, TempFail

_lock = _thread.allocate_lock()  # guards _idle (never held while talking to a database)
_idle = {}  # NAME -> [(pid, connection, sqlite file id or None)]: open, no thread uses them
_abandoned = []  # inherited connections: kept referenced, never closed
VARIABLES = ("user", "local", "domain")


def compile_query(query, style, mysql=False):
    """(SQL text with placeholders, [variable names in order]).

    ``style`` "qmark" (sqlite3: ``?``) or "format" (psycopg, PyMySQL:
    ``%s``, and a literal ``%`` doubled).  The scan skips what SQL does
    not read as code, so that a placeholder never lands inside a literal:
    ``'...'``, ``"..."`` and ```...``` (a backslash escapes the next
    character in the first two, as MySQL reads them), ``/* */`` (not
    MySQL's ``/*!`` and ``/*+``, which it runs), ``-- ``
    to the end of the line and, with ``mysql``, ``#`` comments.  A
    placeholder in any of them is a ConfigError.  PyMySQL pastes the
    escaped value into the text (PostgreSQL and sqlite bind on the
    server), so MySQL's reading is the one that must not be missed; where
    PostgreSQL reads otherwise (a backslash in a standard string) a query
    can only be refused or fail, never take the value as SQL.
    """
    out = []
    names = []
    i = 0
    n = len(query)
    end = None  # what closes the string or comment the scan is in
    while i < n:
        c = query[i]
        step = 1
        if end is None:
            name, length = _variable_at(query, i) if c == "$" else (None, 0)
            if name:
                names.append(name)
                out.append("?" if style == "qmark" else "%s")
                i += length
                continue
            if c in "'\"`":
                end = c
            elif query.startswith("/*", i) and not (mysql and query[i + 2:i + 3] in ("!", "+")):
                end, step = "*/", 2  # MySQL runs /*! */ and reads /*+ */: code
            elif query.startswith("--", i) and (query[i + 2:i + 3] or " ").isspace():
                end, step = "\n", 2
            elif mysql and c == "#":
                end = "\n"
        elif c == "$" and _variable_at(query, i)[0]:
            raise ConfigError(
                f"user_query: ${_variable_at(query, i)[0]} inside a quoted string or a "
                "comment is not a parameter: write it bare, it is passed as a bound parameter")
        elif c == "\\" and end in "'\"" and i + 1 < n:
            step = 2
        elif query.startswith(end, i):
            step = len(end)
            end = None
        text = query[i:i + step]
        out.append(text.replace("%", "%%") if style == "format" else text)
        i += step
    if not names:
        raise ConfigError("user_query must use $user, or $local and $domain")
    return "".join(out), names


def _variable_at(query, i):
    for name in VARIABLES:
        for form in ("$" + name, "${" + name + "}"):
            if query.startswith(form, i):
                end = i + len(form)
                if form.endswith("}") or end >= len(query) or not (
                        query[end].isalnum() or query[end] == "_"):
                    return name, len(form)
    return None, 0


def parse_connect(text):
    """libpq ``key=value`` pairs (values may be 'single quoted', \\ escapes)."""
    pairs = {}
    i = 0
    n = len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs
        eq = text.find("=", i)
        if eq < 0:
            raise ConfigError(f"connect: expected key=value at {text[i:]!r}")
        key = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i].isspace():
            i += 1
        quoted = text.startswith("'", i)
        i += quoted
        value = []
        # a quoted value ends at its quote, a bare one at white space
        while i < n and (text[i] != "'" if quoted else not text[i].isspace()):
            if text[i] == "\\" and i + 1 < n:
                i += 1
            value.append(text[i])
            i += 1
        if quoted:
            if i >= n:
                raise ConfigError("connect: unterminated quoted value")
            i += 1
        pairs[key] = "".join(value)


def _connect(cfg, table):
    driver = table["driver"]
    timeout = cfg.userdb_timeout or None
    if driver == "sqlite":
        import sqlite3

        path = table["connect"]
        for old, new in (("%", "%25"), ("?", "%3f"), ("#", "%23")):
            path = path.replace(old, new)
        uri = "file:" + path + "?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=timeout or 5,
                               check_same_thread=False, isolation_level=None)
    params = parse_connect(table["connect"])
    if driver == "postgresql":
        try:
            import psycopg
        except ImportError:
            raise ConfigError("sql driver postgresql needs psycopg: pip install "
                              "'pymda[postgresql]'") from None
        socket = params.pop("socket", None)
        if socket:
            # libpq takes the socket's directory as host (and the port
            # from its name, .s.PGSQL.5432)
            base = os.path.basename(socket)
            if base.startswith(".s.PGSQL."):
                params.setdefault("port", base[9:])
                socket = os.path.dirname(socket)
            params["host"] = socket
        if timeout:
            params.setdefault("connect_timeout", str(max(2, int(timeout + 0.999))))
            params.setdefault("options", f"-c statement_timeout={int(timeout * 1000)}")
        return psycopg.connect(autocommit=True, **params)
    try:
        import pymysql
    except ImportError:
        raise ConfigError("sql driver mysql needs PyMySQL: pip install 'pymda[mysql]'") from None
    kw = {"charset": "utf8mb4", "autocommit": True}
    names = {"host": "host", "port": "port", "dbname": "database", "user": "user",
             "password": "password", "socket": "unix_socket"}
    for key, value in params.items():
        if key not in names:
            raise ConfigError(f"connect: unknown key {key!r} for mysql "
                              f"(known: {', '.join(names)})")
        kw[names[key]] = int(value) if key == "port" else value
    if timeout:
        kw.update(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    return pymysql.connect(**kw)


def _table(cfg, name):
    table = cfg.sql.get(name)
    if table is None:
        raise ConfigError(f"userdb sql:{name}: no [sql.{name}] table")
    return table


def lookup(cfg, name, address):
    if "\0" in address or not _encodable(address):
        return None  # no database holds such a name; asking would be an error
    local, _, domain = address.partition("@")
    values = {"user": address, "local": local, "domain": domain}
    rows = _query(cfg, name, values)
    if not rows:
        return None
    if len(rows) > 1:
        raise TempFail(f"userdb sql:{name}: {len(rows)} rows for {address}", "4.3.0")
    return rows[0]


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 (surrogateescape)
        return False
    return True


def probe(cfg, name):
    """Connect and run the query once (for a user that cannot exist)."""
    _query(cfg, name, {"user": "pymda-check-config@invalid", "local": "pymda-check-config",
                       "domain": "invalid"})


def _query(cfg, name, values):
    table = _table(cfg, name)
    sql, names = compile_query(table["user_query"],
                               "qmark" if table["driver"] == "sqlite" else "format",
                               mysql=table["driver"] == "mysql")
    params = [values[v] for v in names]
    entry = _take(name, table)
    for _ in (0, 1):
        fresh = entry is None
        began = time.monotonic()
        try:
            if fresh:
                file_id = _file_id(table)  # before connecting: a later replacement shows
                entry = (os.getpid(), _connect(cfg, table), file_id)
            rows = _run(entry[1], sql, params)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - every driver error is temporary
            if entry is not None:
                _close(entry[1])
            entry = None
            # A kept connection that failed at once (the server restarted)
            # is tried again on a new one; one that ran out of time would
            # only double userdb_timeout.
            if fresh or (cfg.userdb_timeout and
                         time.monotonic() - began >= cfg.userdb_timeout / 2):
                raise TempFail(f"userdb sql:{name}: {type(exc).__name__}: "
                               f"{_first_line(exc)}", "4.3.0") from None
            continue
        with _lock:
            _idle.setdefault(name, []).append(entry)
        return rows


def _take(name, table):
    """A kept connection of this process for ``name`` that no thread uses,
    or None.  The lock is held only to pick it: lookups of several
    threads run at once, each within ``userdb_timeout``."""
    if not _idle.get(name):
        return None  # nothing kept (always so in the one-shot pymda): no stat
    file_id = _file_id(table)
    stale = []
    entry = None
    with _lock:
        idle = _idle.get(name, [])
        while idle:
            candidate = idle.pop()
            if candidate[0] != os.getpid():
                _abandoned.append(candidate)  # inherited through fork()
            elif candidate[2] != file_id:
                stale.append(candidate)  # the sqlite file was replaced (or removed)
            else:
                entry = candidate
                break
    for candidate in stale:
        _close(candidate[1])
    return entry


def _run(conn, sql, params):
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        columns = [d[0].lower() if isinstance(d[0], str) else str(d[0])
                   for d in cur.description or ()]
        rows = cur.fetchmany(2)
    finally:
        cur.close()
    return [dict(zip(columns, map(_text, row))) for row in rows]


def _text(value):
    """MySQL gives bytes for binary strings (CONCAT with a number...)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _file_id(table):
    """sqlite: the database file's identity (a replaced file is reopened)."""
    if table["driver"] != "sqlite":
        return None
    try:
        st = os.stat(table["connect"])
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


def _close(conn):
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close
        pass


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else "error"
