"""Configuration: /etc/pymda/pymda.toml -> frozen Config.

Contract: ``load(path, overrides)`` returns a Config whose attributes are the
SPEC 5 keys, plus ``users`` (name -> dict of per-user settings), ``sql``
(NAME -> dict of a ``[sql.NAME]`` table, SPEC 7), ``path``
(the file read, or None) and ``origins`` (key -> "default" | "file" |
"override").  Every problem (unreadable file, TOML syntax, unknown key,
wrong type) raises ConfigError naming the file and key: a delivery defers
(4.3.5, exit 75) rather than bounce on a broken config.

HOSTILE INPUT (issue 8): number keys refuse NaN, infinities, negatives
and values over their bound (MAX_SECONDS for timeouts, MAX_SIZE for
sizes, MAX_COUNT for counts), from the file and from ``-o`` alike.  The
file is opened non-blocking (a FIFO does not hang the open), must be a
regular file (symlinks to one are followed: /etc setups use them) of at
most MAX_CONFIG_SIZE bytes; TOML nested too deeply for the parser is a
ConfigError, not a RecursionError.  A ``-o`` value that starts like a
TOML string, array or table must parse as one.

PERFORMANCE: ``import tomllib`` costs ~14 ms (it imports re, typing,
datetime), twice what a whole dovecot-lda delivery takes.  So:
- with no config file nothing is parsed at all;
- a parsed file is cached with ``marshal`` in ``$PYMDA_CACHE_DIR``
  (default /var/cache/pymda), keyed by the file's device, inode, size,
  mtime and ctime.  Only a process that may write there (root: pymda -d,
  the daemons, ``pymda-admin check-config``) writes the cache; everyone
  reads it if it is owned by root (or by the config file's owner) and not
  writable by group or others.  A stale or untrusted cache is ignored.

``expand()`` substitutes $name / ${name} in path templates without ``re``;
``template_variables(envelope, identity, cfg)`` is the one set of names
every template gets, ``user_path(template, identity, envelope, cfg)`` the
one way a per-user path template becomes a path.
"""


from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import ConfigError
from pymda.record import Record

DEFAULT_PATH = "/etc/pymda/pymda.toml"
DEFAULT_CACHE_DIR = "/var/cache/pymda"

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# Bounds of number keys (issue 8 item 7): beyond them a value is a typo or
# an attack, and would overflow the C calls it reaches (OverflowError).
MAX_SIZE = 1 << 50  # bytes: 1 PiB
MAX_SECONDS = 7 * 86400  # timeouts and ages: a week
MAX_COUNT = (1 << 31) - 1  # counts (messages, connections)
MAX_NUMBER = 1 << 53  # any other number: still exact as a float
MAX_ID = (1 << 32) - 2  # uid/gid ((uid_t)-1 means "unchanged")


def parse_size(value):
    """Bytes from an int or a string like '10M' (K/M/G/T, powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("a size (bytes, or a string like \"10M\"), not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size of zero or more bytes")
        return _size_bound(value)
    if not isinstance(value, str):
        raise ValueError("a size: a number of bytes or a string like \"10M\"")
    text = value.strip().upper()
    if text.endswith("B"):
        text = text[:-1]
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    digits = text[: len(text) - len(unit)].strip()
    if not digits.isdigit() or len(digits) > 20:
        raise ValueError(f"a size like 1048576 or \"10M\" (got {value!r})")
    return _size_bound(int(digits) * _SIZE_UNITS[unit])


def _size_bound(size):
    if size > MAX_SIZE:
        raise ValueError(f"a size of at most {MAX_SIZE} bytes (1P), got {size}")
    return size


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _str(v):
    if not isinstance(v, str):
        raise ValueError("a string")
    return v


def _strlist(v):
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("a list of strings")
    return tuple(v)


def _number(v, most=MAX_NUMBER):
    """A finite number in [0, most]: NaN, infinities, negatives and absurd
    values are config errors (inf overflows C time arguments, NaN makes
    every deadline comparison false: a wait that never ends)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("a non-negative number")
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"a finite number (got {v})")
    if v < 0 or v > most:
        raise ValueError(f"a number from 0 to {most} (got {v})")
    return v


def _seconds(v):
    return _number(v, MAX_SECONDS)


def _count(v, most=MAX_COUNT):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("a non-negative integer")
    if v > most:
        raise ValueError(f"an integer from 0 to {most} (got {v})")
    return v


def _id(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > MAX_ID:
        raise ValueError("a numeric id")
    return v


def _enum(*choices):
    def check(v):
        if v not in choices:
            raise ValueError("one of " + ", ".join(f'"{c}"' for c in choices))
        return v

    return check


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(v):
    """Seconds: a number, or a string like "30s", "12h", "1d", "2w"."""
    if isinstance(v, str):
        text = v.strip().lower()
        unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
        digits = text[:-1] if text[-1:] in _DURATION_UNITS else text
        if not digits.strip().isdigit():
            raise ValueError(f'a duration like 86400 or "1d" (got {v!r})')
        return int(digits) * _DURATION_UNITS[unit]
    return _number(v)


# Sieve extensions pymda implements (pymda.sieve.validate.EXTENSIONS; a
# test keeps the two equal: config must not import the compiler)
SIEVE_EXTENSIONS = (
    "fileinto", "envelope", "encoded-character", "comparator-i;octet",
    "comparator-i;ascii-casemap", "comparator-i;ascii-numeric",
    "relational", "subaddress", "copy", "mailbox", "variables", "date",
    "index", "imap4flags", "body", "regex", "reject", "ereject",
    "vacation", "vacation-seconds", "include", "duplicate",
)


def _locks(v):
    v = _strlist(v)
    for name in v:
        if name not in ("dotlock", "fcntl"):
            raise ValueError('a list of "dotlock" and "fcntl"')
    return v


def _percentages(v):
    if not isinstance(v, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 100 for x in v):
        raise ValueError("a list of whole percentages from 1 to 100")
    return tuple(sorted(set(v)))


def _abspath(v):
    v = _str(v)
    if not v.startswith("/"):
        raise ValueError("an absolute path")
    return v


def _userdb(v):
    v = _strlist(v)
    for source in v:
        kind, sep, arg = source.partition(":")
        if source in ("config", "passwd", "dovecot") or (
            sep and kind == "sql" and arg
        ) or (sep and kind in ("passwd-file", "dovecot") and arg.startswith("/")):
            continue
        raise ValueError(
            'a list of "config", "passwd", "passwd-file:/PATH", "sql:NAME", '
            f'"dovecot:/PATH" (got {source!r})'
        )
    return v


# [sql.NAME] tables (SPEC 7): key -> validator; all three are required.
SQL_KEYS = {"driver": _enum("sqlite", "postgresql", "mysql"), "connect": _str,
            "user_query": _str}


# key -> (default, validator).  The single source of truth for SPEC 5.
KEYS = {
    "mailbox": ("", _str),
    "forward": (False, _bool),
    "mail_spool_directory": ("/var/mail", _abspath),
    "mbox_folder_directory": ("$home/mail", _str),
    "mbox_quoting": ("mboxrd", _enum("mboxrd", "mboxo")),
    "mbox_locks": (("dotlock", "fcntl"), _locks),
    "lock_timeout": (60, _seconds),
    "stale_lock_time": (500, _seconds),
    "recipient_delimiter": ("+", _str),
    "detail_folders": ("existing", _enum("existing", "create", "off")),
    "create_folders": (True, _bool),
    "folder_encoding": ("utf7", _enum("utf7", "utf8")),
    "forward_path": (
        ("$home/.forward$recipient_delimiter$extension", "$home/.forward"),
        _strlist,
    ),
    "allow_commands": (True, _bool),
    "allow_files": (True, _bool),
    "command_timeout": (300, _seconds),
    "default_privs": ("nobody", _str),
    "sendmail_command": (("/usr/sbin/sendmail", "-oi", "-f", "$sender"), _strlist),
    "quota_storage": (0, parse_size),
    "quota_messages": (0, _count),
    "quota_full_tempfail": (False, _bool),
    # issue 14 (quota.py, docs/quotas.md): warning thresholds in percent of
    # either limit, and the file with the warning's text ("" = built-in)
    "quota_warnings": ((), _percentages),
    "quota_warning_message": ("", _str),
    # issue 14 (subscriptions.py): Maildir++ folders pymda creates are
    # added to the Maildir's dovecot "subscriptions" file
    "subscribe_created_folders": (True, _bool),
    "message_size_limit": (0, parse_size),
    "lmtp_forward": (False, _bool),
    # pymda-lmtpd (lmtp/protocol.py, docs/lmtp.md): seconds without a byte from the
    # client before 421 and close (0 = never); concurrent connections
    "lmtp_idle_timeout": (300, _seconds),
    "lmtp_max_connections": (100, _count),
    # issue 8 item 11 (lmtp.py, docs/lmtp.md "Slow clients"): a command line
    # must be complete within lmtp_command_timeout seconds, DATA within
    # lmtp_command_timeout + bytes / lmtp_min_data_rate (0: no deadline);
    # concurrent connections from one client address on inet listeners
    "lmtp_command_timeout": (300, _seconds),
    "lmtp_min_data_rate": (500, parse_size),
    "lmtp_max_per_address": (50, _count),
    # issue 12 (lmtp/main.py, docs/lmtp.md "Workers"): worker processes
    # sharing the listening sockets; 0 = the number of CPUs
    "lmtp_workers": (0, _count),
    "policy_nouser": ("DUNNO", _str),
    # issue 15: pymda-policyd resolves recipients through postfix's alias maps
    # (aliases.py, docs/quotas.md "Aliases at SMTP time"), with postfix's tools
    "policy_aliases": (True, _bool),
    "policy_alias_cache_ttl": (60, _number),
    "postfix_command_directory": ("/usr/sbin", _abspath),
    # issue 3: per-user record of completed targets (state.py, README ".forward")
    "state_file": ("$home/.pymda-state.sqlite", _str),
    # issue 13: where users come from (SPEC 7, users.py, pymda/userdb/, docs/users.md)
    "userdb": (("config", "passwd"), _userdb),
    "virtual_uid": (0, _id),  # 0: none (a row without uid is then refused)
    "virtual_gid": (0, _id),
    "virtual_home": ("", _str),
    "first_valid_uid": (500, _id),
    "userdb_timeout": (10, _number),
    "userdb_cache_ttl": (60, _number),
    # issue 5: pymda-admin redeliver's record of redelivered messages
    # (redeliver.py, README "Redelivering mail"); its lock is this path + ".lock"
    "redeliver_record": ("$home/.pymda-redeliver", _str),
    # issues 10/11: Sieve (SPEC 6, docs/sieve.md)
    "sieve": (True, _bool),
    "sieve_script": ("$home/.dovecot.sieve", _str),
    "sieve_before": ((), _strlist),
    "sieve_after": ((), _strlist),
    "sieve_default": ("", _str),
    "sieve_extensions": (SIEVE_EXTENSIONS, _strlist),
    # "" = the sieve_script path + ".log" (dovecot's ~/.dovecot.sieve.log)
    "sieve_log": ("", _str),
    "sieve_fileinto_create": (False, _bool),
    "sieve_max_script_size": (1 << 20, parse_size),
    "sieve_max_actions": (32, _count),
    "sieve_max_redirects": (4, _count),
    "sieve_max_cpu_time": (30, _duration),
    "sieve_redirect_envelope_from": ("sender", _enum("sender", "recipient")),
    "sieve_vacation_min_period": (86400, _duration),
    "sieve_vacation_default_period": (7 * 86400, _duration),
    "sieve_vacation_max_period": (60 * 86400, _duration),
}

# Keys a [users."name"] table may set.
USER_KEYS = {
    "mailbox": _str,
    "quota_storage": parse_size,
    "quota_messages": _count,
    "uid": _id,
    "gid": _id,
    "home": _abspath,
}


class Config(Record):
    __slots__ = tuple(KEYS) + ("users", "sql", "path", "origins")
    _defaults = {k: d for k, (d, _) in KEYS.items()}
    _defaults.update(users={}, sql={}, path=None, origins={})

    def user(self, name):
        """Per-user table for ``name`` (exact, then lower-cased), or {}."""
        users = self.users
        return users.get(name) or users.get(name.lower()) or {}


def default_path(environ=os.environ):
    path = environ.get("PYMDA_CONFIG")
    if path:
        return path
    if os.path.exists(DEFAULT_PATH):
        return DEFAULT_PATH
    return None


def load(path=None, overrides=(), environ=os.environ, write_cache=None):
    """Build the Config.  ``path`` None means $PYMDA_CONFIG / default file."""
    if path is None:
        path = default_path(environ)
    raw = {}
    if path is not None:
        raw = read_file(path, environ, write_cache)
    values = {}
    origins = {}
    for key, (default, _) in KEYS.items():
        values[key] = default
        origins[key] = "default"
    users = {}
    sql = {}
    where = path or "built-in defaults"
    for key, value in raw.items():
        if key == "users":
            users = _validate_users(value, where)
            origins["users"] = "file"
            continue
        if key == "sql":
            sql = _validate_sql(value, where)
            origins["sql"] = "file"
            continue
        values[key] = _validate(key, value, where)
        origins[key] = "file"
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            from pymda.errors import UsageError

            raise UsageError(f"-o needs KEY=VALUE, got {item!r}")
        if key not in KEYS:
            raise ConfigError(f"-o {key}: unknown configuration key")
        values[key] = _validate(key, parse_value(text, f"-o {key}"), "-o")
        origins[key] = "override"
    for source in values["userdb"]:
        if source.startswith("sql:") and source[4:] not in sql:
            raise ConfigError(f"{where}: userdb {source!r} needs a [sql.{source[4:]}] table")
    return Config(users=users, sql=sql, path=path, origins=origins, **values)


def _validate(key, value, where):
    if key not in KEYS:
        raise ConfigError(f"{where}: unknown configuration key {key!r}")
    try:
        return KEYS[key][1](value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key} must be {exc}") from None


def _validate_users(table, where):
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: users must be a table of tables")
    users = {}
    for name, settings in table.items():
        if not isinstance(settings, dict):
            raise ConfigError(f'{where}: users."{name}" must be a table')
        clean = {}
        for key, value in settings.items():
            check = USER_KEYS.get(key)
            if check is None:
                raise ConfigError(f'{where}: users."{name}": unknown key {key!r}')
            try:
                clean[key] = check(value)
            except ValueError as exc:
                raise ConfigError(f'{where}: users."{name}".{key} must be {exc}') from None
        if ("uid" in clean) != ("gid" in clean) or ("uid" in clean) != ("home" in clean):
            if "uid" in clean or "gid" in clean:
                raise ConfigError(
                    f'{where}: users."{name}": a virtual user needs uid, gid and home'
                )
        if "@" in name and "uid" not in clean:
            # A recipient matching an address table IS that (virtual) user
            # (users.name_for_recipient): without uid/gid/home it would be
            # an unknown user, 5.1.1, and its mail would bounce.
            raise ConfigError(
                f'{where}: users."{name}": a table for an address is a virtual user and '
                f'needs uid, gid and home (a system user\'s table is keyed by login name)'
            )
        users[name] = clean
    return users


def _validate_sql(table, where):
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: sql must be a table of tables ([sql.NAME])")
    out = {}
    for name, settings in table.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: sql.{name} must be a table")
        clean = {}
        for key, check in SQL_KEYS.items():
            if key not in settings:
                raise ConfigError(f"{where}: sql.{name} needs {key}")
            try:
                clean[key] = check(settings[key])
            except ValueError as exc:
                raise ConfigError(f"{where}: sql.{name}.{key} must be {exc}") from None
        unknown = set(settings) - set(SQL_KEYS)
        if unknown:
            raise ConfigError(f"{where}: sql.{name}: unknown key {sorted(unknown)[0]!r}")
        out[name] = clean
    return out


def parse_value(text, where="-o"):
    """A -o value: a TOML value, or a bare word taken as a string.

    Text that starts like a TOML string, array or table must be one
    (ConfigError naming ``where`` otherwise)."""
    t = text.strip()
    if t in ("true", "false"):
        return t == "true"
    if not t or t[0] not in "[{\"'":
        # Numbers without tomllib (~14 ms to import); anything else that is
        # not a TOML string/array/table ("10G", words) is a bare string.
        try:
            return int(t, 10)
        except ValueError:
            pass
        if any(c in t for c in ".eE") and not t.isalpha():
            try:
                return float(t)
            except ValueError:
                pass
        return t
    # It looks like a TOML string, array or table: it must be one.  Taking
    # "[1," as a bare word would make it a path (an mbox named "[1,").
    shown = repr(t if len(t) <= 60 else t[:60] + "...")
    return _toml("v = " + t, f"{where}: value {shown} is not a TOML value")["v"]


def _toml(text, where):
    """tomllib.loads, its failures a ConfigError naming ``where``."""
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        # tomllib recurses once per nesting level: thousands of "[" are
        # an attack, not a configuration.
        raise ConfigError(f"{where}: arrays or tables nested too deeply") from None


# --- reading, with the marshal cache -------------------------------------


def _cache_path(path, environ):
    directory = environ.get("PYMDA_CACHE_DIR") or DEFAULT_CACHE_DIR
    name = os.path.abspath(path).replace("%", "%25").replace("/", "%")
    return os.path.join(directory, name + ".marshal")


MAX_CONFIG_SIZE = 1 << 20  # a config file is a few KiB; /dev/zero is not one


def _S_ISREG(mode):
    return mode & 0o170000 == 0o100000  # stat.S_ISREG without importing stat


def _stamp(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_file(path, environ=os.environ, write_cache=None):
    """The raw TOML table of ``path`` (cached), or ConfigError."""
    import marshal

    # O_NONBLOCK: opening a FIFO must not wait for a writer (fstat then
    # refuses it).  Symlinks are followed: /etc/pymda/pymda.toml -> a
    # managed file is normal, and the file is root's to choose.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"cannot open config {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not _S_ISREG(st.st_mode):
            raise ConfigError(f"config {path}: not a regular file")
        if st.st_size > MAX_CONFIG_SIZE:
            raise ConfigError(f"config {path}: larger than {MAX_CONFIG_SIZE} bytes")
        stamp = _stamp(st)
        cache = _cache_path(path, environ)
        try:
            # Non-blocking, regular files only: a FIFO planted as the cache
            # must not hang us either.
            cfd = os.open(cache, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
            with open(cfd, "rb") as f:
                cst = os.fstat(cfd)
                if _S_ISREG(cst.st_mode) and cst.st_uid in (0, st.st_uid) \
                        and not cst.st_mode & 0o022:
                    cached_stamp, table = marshal.load(f)
                    if tuple(cached_stamp) == stamp:
                        return table
        except (OSError, EOFError, ValueError, TypeError):
            pass
        from pymda.durable import read_all

        data = read_all(fd, MAX_CONFIG_SIZE)
        if data is None:  # it grew while we read
            raise ConfigError(f"config {path}: larger than {MAX_CONFIG_SIZE} bytes")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8") from None
    table = _toml(text, f"config {path}")
    if write_cache is None:
        write_cache = os.geteuid() == 0
    if write_cache:
        _write_cache(cache, stamp, table)
    return table


def _write_cache(cache, stamp, table):
    """Best effort: a failure only costs the next process a parse."""
    import marshal

    try:
        data = marshal.dumps((stamp, table))
    except ValueError:  # e.g. TOML dates: not cacheable, not valid either
        return
    write_cache_file(cache, data)


def write_cache_file(path, data):
    """Replace ``path`` (0644, its directory made) with ``data``, atomically;
    best effort: False on failure (also for pymda.userdb.passwdfile).  A
    cache: no fsync."""
    from pymda.durable import write_atomically

    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        write_atomically(path, data, mode=0o644, sync=False)
        return True
    except OSError:
        return False


# --- templates -------------------------------------------------------------


_ENVELOPE_VARIABLES = ("sender", "recipient", "local", "domain", "extension")


def template_variables(envelope=None, identity=None, cfg=None):
    """The $name values of every template (mailbox, mbox_folder_directory,
    forward_path, state_file, redeliver_record, sendmail_command):

    - ``user``, ``home``: the ``identity`` (without one: the envelope's
      user, no home);
    - ``sender``, ``recipient``, ``local``, ``domain``, ``extension``: the
      ``envelope`` (without one - a state file, a user check - ``local``
      and ``domain`` are the parts of the user's name);
    - ``recipient_delimiter``: ``cfg``'s.
    A name with no value is ''.
    """
    variables = dict.fromkeys(_ENVELOPE_VARIABLES, "")
    variables["recipient_delimiter"] = cfg.recipient_delimiter if cfg is not None else ""
    if envelope is not None:
        for name in _ENVELOPE_VARIABLES:
            variables[name] = getattr(envelope, name, "") or ""
    if identity is not None:
        variables["user"], variables["home"] = identity.name, identity.home
        if envelope is None:
            variables["local"], _, variables["domain"] = identity.name.partition("@")
    else:
        variables["user"] = (getattr(envelope, "user", "") or "") if envelope else ""
        variables["home"] = ""
    return variables


def user_path(template, identity, envelope=None, cfg=None):
    """``template`` expanded for ``identity`` (``template_variables``); a
    relative result is under the user's home.  SECURITY: ``$sender`` is ''
    here - the remote party's choice never names a file - and a recipient
    part with '/', NUL, or that is '.' or '..' is '' too."""
    variables = template_variables(envelope, identity, cfg)
    variables["sender"] = ""
    # The recipient's parts are the remote sender's choice too: one that
    # would add or climb a level ('/', '.', '..') or hold a NUL is ''
    # (postfix's local(8) skips such an extension for file names).
    for name in _ENVELOPE_VARIABLES:
        value = variables[name]
        if "/" in value or "\0" in value or value in (".", ".."):
            variables[name] = ""
    path = expand(template, variables)
    if not path.startswith("/"):
        path = os.path.join(identity.home, path)
    return path


def expand(template, variables):
    """Replace $name and ${name} with variables[name] ('' when unknown).

    ``$$`` is a literal dollar.  Used for mailbox, forward_path and
    sendmail_command templates; the values never reach a shell.
    """
    if "$" not in template:
        return template
    out = []
    i = 0
    n = len(template)
    while i < n:
        c = template[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        if i + 1 < n and template[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if i + 1 < n and template[i + 1] == "{":
            end = template.find("}", i + 2)
            if end < 0:
                out.append(template[i:])
                break
            out.append(str(variables.get(template[i + 2 : end], "")))
            i = end + 1
            continue
        j = i + 1
        while j < n and (template[j].isalnum() or template[j] == "_"):
            j += 1
        if j == i + 1:
            out.append("$")
            i += 1
            continue
        out.append(str(variables.get(template[i + 1 : j], "")))
        i = j
    return "".join(out)
