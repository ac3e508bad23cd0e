"""Configuration, the parsing and checking half (pymda.config has the rest).

Contract:
- ``parse_file(data, path)`` -> the checked table of a config file's bytes
  (UTF-8 TOML), or ConfigError naming ``path`` and the key;
- ``check_table(table, where)`` -> the checked table of a parsed one
  (``users`` and ``sql`` tables included);
- ``parse_override(item)`` -> (key, checked value) of one ``-o KEY=VALUE``
  (UsageError without "=", ConfigError for an unknown key or a bad value);
- ``KEYS`` (key -> (default, check)): SPEC 5, the one table of keys for
  pymda-admin, the manual page and the tests; ``CHECKS`` (key -> check)
  and config.DEFAULTS are its two halves; ``USER_KEYS`` (a
  ``[users."name"]`` table) and ``SQL_KEYS`` (``[sql.NAME]``, SPEC 7);
- ``parse_size``, ``parse_value``: the conversions, also for other modules.

A check takes the TOML value and returns the value Config holds (lists
become tuples, sizes and durations numbers), or raises ValueError with
the text after "must be".

WHY A MODULE OF ITS OWN: a delivery with no config file, or with a cached
one (config.read_file), needs none of this; only a cache miss, ``-o`` and
pymda-admin import it (and ``tomllib`` only for a file or a TOML-looking
``-o`` value).
"""

from pymda.config import DEFAULTS
from pymda.errors import ConfigError

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
    # tuple: a checked table checked again (a cache owned by the config
    # file's owner, config._cached) must come out the same
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
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



def _locks(v):
    v = _strlist(v)
    for name in v:
        if name not in ("dotlock", "fcntl"):
            raise ValueError('a list of "dotlock" and "fcntl"')
    return v


def _percentages(v):
    if not isinstance(v, (list, tuple)) or not all(
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


# key -> check of its value: SPEC 5 (the defaults: config.DEFAULTS).
CHECKS = {
    "mailbox": _str,
    "forward": _bool,
    "mail_spool_directory": _abspath,
    "mbox_folder_directory": _str,
    "mbox_quoting": _enum("mboxrd", "mboxo"),
    "mbox_locks": _locks,
    "lock_timeout": _seconds,
    "stale_lock_time": _seconds,
    "recipient_delimiter": _str,
    "detail_folders": _enum("existing", "create", "off"),
    "create_folders": _bool,
    "folder_encoding": _enum("utf7", "utf8"),
    "forward_path": _strlist,
    "allow_commands": _bool,
    "allow_files": _bool,
    "command_timeout": _seconds,
    "default_privs": _str,
    "sendmail_command": _strlist,
    "quota_storage": parse_size,
    "quota_messages": _count,
    "quota_full_tempfail": _bool,
    "quota_warnings": _percentages,
    "quota_warning_message": _str,
    "subscribe_created_folders": _bool,
    "message_size_limit": parse_size,
    "lmtp_forward": _bool,
    "lmtp_idle_timeout": _seconds,
    "lmtp_max_connections": _count,
    "lmtp_command_timeout": _seconds,
    "lmtp_min_data_rate": parse_size,
    "lmtp_max_per_address": _count,
    "lmtp_workers": _count,
    "policy_nouser": _str,
    "policy_aliases": _bool,
    "policy_alias_cache_ttl": _number,
    "postfix_command_directory": _abspath,
    "state_file": _str,
    "userdb": _userdb,
    "virtual_uid": _id,
    "virtual_gid": _id,
    "virtual_home": _str,
    "first_valid_uid": _id,
    "userdb_timeout": _number,
    "userdb_cache_ttl": _number,
    "redeliver_record": _str,
    "sieve": _bool,
    "sieve_script": _str,
    "sieve_before": _strlist,
    "sieve_after": _strlist,
    "sieve_default": _str,
    "sieve_extensions": _strlist,
    "sieve_log": _str,
    "sieve_fileinto_create": _bool,
    "sieve_max_script_size": parse_size,
    "sieve_max_actions": _count,
    "sieve_max_redirects": _count,
    "sieve_max_cpu_time": _duration,
    "sieve_redirect_envelope_from": _enum("sender", "recipient"),
    "sieve_vacation_min_period": _duration,
    "sieve_vacation_default_period": _duration,
    "sieve_vacation_max_period": _duration,
}

# key -> (default, check).  The single source of truth for SPEC 5.
KEYS = {key: (default, CHECKS[key]) for key, default in DEFAULTS.items()}

# Keys a [users."name"] table may set.
USER_KEYS = {
    "mailbox": _str,
    "quota_storage": parse_size,
    "quota_messages": _count,
    "uid": _id,
    "gid": _id,
    "home": _abspath,
}


def check_table(table, where):
    """The checked form of a parsed config ``table`` (see the module docstring)."""
    out = {}
    for key, value in table.items():
        if key == "users":
            out[key] = _validate_users(value, where)
        elif key == "sql":
            out[key] = _validate_sql(value, where)
        else:
            out[key] = _validate(key, value, where)
    return out


def parse_file(data, path):
    """The checked table of config file ``path`` whose bytes are ``data``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8") from None
    return check_table(_toml(text, f"config {path}"), path)


def parse_override(item):
    """(key, checked value) of one ``-o KEY=VALUE``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        from pymda.errors import UsageError

        raise UsageError(f"-o needs KEY=VALUE, got {item!r}")
    if key not in CHECKS:
        raise ConfigError(f"-o {key}: unknown configuration key")
    return key, _validate(key, parse_value(text, f"-o {key}"), "-o")


def _validate(key, value, where):
    check = CHECKS.get(key)
    if check is None:
        raise ConfigError(f"{where}: unknown configuration key {key!r}")
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key} must be {exc}") from None


def _tables(table, where, what, label):
    """(name, settings) of each table in ``table``, the table of tables
    ``what`` ("users", "sql") whose tables ``label(name)`` names
    (``users."bob"``, ``sql.main``); ConfigError when it is not one."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {what} must be a table of tables ([{label('NAME')}])")
    for name, settings in table.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: {label(name)} must be a table")
        yield name, settings


def _validate_users(table, where):
    users = {}
    for name, settings in _tables(table, where, "users", lambda name: f'users."{name}"'):
        clean = {}
        for key, value in settings.items():
            check = USER_KEYS.get(key)
            if check is None:
                raise ConfigError(f'{where}: users."{name}": unknown key {key!r}')
            try:
                clean[key] = check(value)
            except ValueError as exc:
                raise ConfigError(f'{where}: users."{name}".{key} must be {exc}') from None
        if ("uid" in clean or "gid" in clean) and not {"uid", "gid", "home"} <= clean.keys():
            raise ConfigError(f'{where}: users."{name}": a virtual user needs uid, gid and home')
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
    out = {}
    for name, settings in _tables(table, where, "sql", lambda name: f"sql.{name}"):
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
