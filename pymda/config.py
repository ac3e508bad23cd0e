"""Configuration: /etc/pymda/pymda.toml -> frozen Config.

Contract: ``load(path, overrides)`` returns a Config whose attributes are the
SPEC 5 keys, plus ``users`` (name -> dict of per-user settings), ``path``
(the file read, or None) and ``origins`` (key -> "default" | "file" |
"override").  Every problem (unreadable file, TOML syntax, unknown key,
wrong type) raises ConfigError naming the file and key: a delivery defers
(4.3.5, exit 75) rather than bounce on a broken config.

PERFORMANCE: ``import tomllib`` costs ~14 ms (it imports re, typing,
datetime), twice what a whole dovecot-lda delivery takes.  So:
- with no config file nothing is parsed at all;
- a parsed file is cached with ``marshal`` in ``$PYMDA_CACHE_DIR``
  (default /var/cache/pymda), keyed by the file's device, inode, size,
  mtime and ctime.  Only a process that may write there (root: pymda -d,
  the daemons, ``pymda-admin check-config``) writes the cache; everyone
  reads it if it is owned by root (or by the config file's owner) and not
  writable by group or others.  A stale or untrusted cache is ignored.

``expand()`` substitutes $name / ${name} in path templates without ``re``.
"""


from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import ConfigError
from pymda.record import Record

DEFAULT_PATH = "/etc/pymda/pymda.toml"
DEFAULT_CACHE_DIR = "/var/cache/pymda"

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value):
    """Bytes from an int or a string like '10M' (K/M/G/T, powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("a size (bytes, or a string like \"10M\"), not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size of zero or more bytes")
        return value
    if not isinstance(value, str):
        raise ValueError("a size: a number of bytes or a string like \"10M\"")
    text = value.strip().upper()
    if text.endswith("B"):
        text = text[:-1]
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    digits = text[: len(text) - len(unit)].strip()
    if not digits.isdigit():
        raise ValueError(f"a size like 1048576 or \"10M\" (got {value!r})")
    return int(digits) * _SIZE_UNITS[unit]


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


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError("a non-negative number")
    return v


def _count(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("a non-negative integer")
    return v


def _id(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("a numeric id")
    return v


def _enum(*choices):
    def check(v):
        if v not in choices:
            raise ValueError("one of " + ", ".join(f'"{c}"' for c in choices))
        return v

    return check


def _locks(v):
    v = _strlist(v)
    for name in v:
        if name not in ("dotlock", "fcntl"):
            raise ValueError('a list of "dotlock" and "fcntl"')
    return v


def _abspath(v):
    v = _str(v)
    if not v.startswith("/"):
        raise ValueError("an absolute path")
    return v


# key -> (default, validator).  The single source of truth for SPEC 5.
KEYS = {
    "mailbox": ("", _str),
    "forward": (False, _bool),
    "mail_spool_directory": ("/var/mail", _abspath),
    "mbox_folder_directory": ("$home/mail", _str),
    "mbox_quoting": ("mboxrd", _enum("mboxrd", "mboxo")),
    "mbox_locks": (("dotlock", "fcntl"), _locks),
    "lock_timeout": (60, _number),
    "stale_lock_time": (500, _number),
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
    "command_timeout": (300, _number),
    "default_privs": ("nobody", _str),
    "sendmail_command": (("/usr/sbin/sendmail", "-oi", "-f", "$sender"), _strlist),
    "quota_storage": (0, parse_size),
    "quota_messages": (0, _count),
    "quota_full_tempfail": (False, _bool),
    "message_size_limit": (0, parse_size),
    "lmtp_forward": (False, _bool),
    # pymda-lmtpd (lmtp.py, README "LMTP: pymda-lmtpd"): seconds without a byte from the
    # client before 421 and close (0 = never); concurrent connections
    "lmtp_idle_timeout": (300, _number),
    "lmtp_max_connections": (100, _count),
    "policy_nouser": ("DUNNO", _str),
    # issue 3: per-user record of completed targets (state.py, README ".forward")
    "state_file": ("$home/.pymda-state.sqlite", _str),
    # issue 5: pymda-admin redeliver's record of redelivered messages
    # (redeliver.py, README "Redelivering mail"); its lock is this path + ".lock"
    "redeliver_record": ("$home/.pymda-redeliver", _str),
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
    __slots__ = tuple(KEYS) + ("users", "path", "origins")
    _defaults = {k: d for k, (d, _) in KEYS.items()}
    _defaults.update(users={}, path=None, origins={})

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
    where = path or "built-in defaults"
    for key, value in raw.items():
        if key == "users":
            users = _validate_users(value, where)
            origins["users"] = "file"
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
        values[key] = _validate(key, parse_value(text), "-o")
        origins[key] = "override"
    return Config(users=users, path=path, origins=origins, **values)


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


def parse_value(text):
    """A -o value: a TOML value, or a bare word taken as a string."""
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
    import tomllib

    try:
        return tomllib.loads("v = " + t)["v"]
    except tomllib.TOMLDecodeError:
        return t


# --- reading, with the marshal cache -------------------------------------


def _cache_path(path, environ):
    directory = environ.get("PYMDA_CACHE_DIR") or DEFAULT_CACHE_DIR
    name = os.path.abspath(path).replace("%", "%25").replace("/", "%")
    return os.path.join(directory, name + ".marshal")


def _stamp(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_file(path, environ=os.environ, write_cache=None):
    """The raw TOML table of ``path`` (cached), or ConfigError."""
    import marshal

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open config {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        stamp = _stamp(st)
        cache = _cache_path(path, environ)
        try:
            with open(cache, "rb") as f:
                cst = os.fstat(f.fileno())
                if cst.st_uid in (0, st.st_uid) and not cst.st_mode & 0o022:
                    cached_stamp, table = marshal.load(f)
                    if tuple(cached_stamp) == stamp:
                        return table
        except (OSError, EOFError, ValueError, TypeError):
            pass
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    import tomllib

    try:
        table = tomllib.loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
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
    from pymda.durable import write_atomically

    try:
        os.makedirs(os.path.dirname(cache), mode=0o755, exist_ok=True)
        write_atomically(cache, data, mode=0o644, sync=False)  # a cache: no fsync
    except OSError:
        pass


# --- templates -------------------------------------------------------------


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
