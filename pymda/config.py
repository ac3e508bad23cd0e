"""Configuration: /etc/pymda/pymda.toml -> frozen Config.

Contract: ``load(path, overrides)`` returns a Config whose attributes are the
SPEC 5 keys, plus ``users`` (name -> dict of per-user settings), ``sql``
(NAME -> dict of a ``[sql.NAME]`` table, SPEC 7), ``path``
(the file read, or None) and ``origins`` (key -> "default" | "file" |
"override").  Every problem (unreadable file, TOML syntax, unknown key,
wrong type) raises ConfigError naming the file and key: a delivery defers
(4.3.5, exit 75) rather than bounce on a broken config.

This module holds what every delivery needs: the defaults (DEFAULTS),
Config, the cached read of the file, and the path templates.  Parsing and
validation - TOML, the checks of every key (``KEYS``: key -> (default,
check), ``USER_KEYS``, ``SQL_KEYS``), ``parse_size``, ``parse_value`` -
are pymda.config_keys, imported only on a cache miss, for ``-o`` and by
pymda-admin; those names stay reachable as ``config.NAME``.

HOSTILE INPUT (issue 8): number keys refuse NaN, infinities, negatives
and values over their bound (config_keys.MAX_*), from the file and from
``-o`` alike.  The file is opened non-blocking (a FIFO does not hang the
open), must be a regular file (symlinks to one are followed: /etc setups
use them) of at most MAX_CONFIG_SIZE bytes; TOML nested too deeply for
the parser is a ConfigError, not a RecursionError.  A ``-o`` value that
starts like a TOML string, array or table must parse as one.

PERFORMANCE: ``import tomllib`` costs ~14 ms (it imports re, typing,
datetime), twice what a whole dovecot-lda delivery takes.  So:
- with no config file nothing is parsed or checked at all;
- a parsed and checked file is cached with ``marshal`` in
  ``$PYMDA_CACHE_DIR`` (default /var/cache/pymda), keyed by the file's
  device, inode, size, mtime and ctime and by CACHE_FORMAT.  Only a
  process that may write there (root: pymda -d, the daemons,
  ``pymda-admin check-config``) writes the cache; everyone reads it if it
  is owned by root (or by the config file's owner) and not writable by
  group or others.  A stale or untrusted cache is ignored.  The cache
  holds the checked values: one owned by root is used as it is (its keys
  must be known); one owned by the file's owner is checked again.

``expand()`` substitutes $name / ${name} in path templates without ``re``;
``template_variables(envelope, identity, cfg)`` is the one set of names
every template gets, ``user_path(template, identity, envelope, cfg)`` the
one way a per-user path template becomes a path.
"""

from pymda import __version__
from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import ConfigError
from pymda.record import Record

DEFAULT_PATH = "/etc/pymda/pymda.toml"
DEFAULT_CACHE_DIR = "/var/cache/pymda"

# Sieve extensions pymda implements (pymda.sieve.validate.EXTENSIONS; a
# test keeps the two equal: config must not import the compiler)
SIEVE_EXTENSIONS = (
    "fileinto", "envelope", "encoded-character", "comparator-i;octet",
    "comparator-i;ascii-casemap", "comparator-i;ascii-numeric",
    "relational", "subaddress", "copy", "mailbox", "variables", "date",
    "index", "imap4flags", "body", "regex", "reject", "ereject",
    "vacation", "vacation-seconds", "include", "duplicate",
)



# key -> default: SPEC 5.  Each key's check is config_keys.CHECKS[key] (a
# test holds the two tables to the same keys); config_keys.KEYS joins them.
DEFAULTS = {
    "mailbox": "",
    "forward": False,
    "mail_spool_directory": "/var/mail",
    "mbox_folder_directory": "$home/mail",
    "mbox_quoting": "mboxrd",
    "mbox_locks": ("dotlock", "fcntl"),
    "lock_timeout": 60,
    "stale_lock_time": 500,
    "recipient_delimiter": "+",
    "detail_folders": "existing",
    "create_folders": True,
    "folder_encoding": "utf7",
    "forward_path": ("$home/.forward$recipient_delimiter$extension", "$home/.forward"),
    "allow_commands": True,
    "allow_files": True,
    "command_timeout": 300,
    "default_privs": "nobody",
    "sendmail_command": ("/usr/sbin/sendmail", "-oi", "-f", "$sender"),
    "quota_storage": 0,
    "quota_messages": 0,
    "quota_full_tempfail": False,
    # issue 14 (quota.py, docs/quotas.md): warning thresholds in percent of
    # either limit, and the file with the warning's text ("" = built-in)
    "quota_warnings": (),
    "quota_warning_message": "",
    # issue 14 (subscriptions.py): Maildir++ folders pymda creates are
    # added to the Maildir's dovecot "subscriptions" file
    "subscribe_created_folders": True,
    "message_size_limit": 0,
    "lmtp_forward": False,
    # pymda-lmtpd (lmtp/protocol.py, docs/lmtp.md): seconds without a byte from the
    # client before 421 and close (0 = never); concurrent connections
    "lmtp_idle_timeout": 300,
    "lmtp_max_connections": 100,
    # issue 8 item 11 (lmtp.py, docs/lmtp.md "Slow clients"): a command line
    # must be complete within lmtp_command_timeout seconds, DATA within
    # lmtp_command_timeout + bytes / lmtp_min_data_rate (0: no deadline);
    # concurrent connections from one client address on inet listeners
    "lmtp_command_timeout": 300,
    "lmtp_min_data_rate": 500,
    "lmtp_max_per_address": 50,
    # issue 12 (lmtp/main.py, docs/lmtp.md "Workers"): worker processes
    # sharing the listening sockets; 0 = the number of CPUs
    "lmtp_workers": 0,
    "policy_nouser": "DUNNO",
    # issue 15: pymda-policyd resolves recipients through postfix's alias maps
    # (aliases.py, docs/quotas.md "Aliases at SMTP time"), with postfix's tools
    "policy_aliases": True,
    "policy_alias_cache_ttl": 60,
    "postfix_command_directory": "/usr/sbin",
    # issue 3: per-user record of completed targets (state.py, README ".forward")
    "state_file": "$home/.pymda-state.sqlite",
    # issue 13: where users come from (SPEC 7, users.py, pymda/userdb/, docs/users.md)
    "userdb": ("config", "passwd"),
    "virtual_uid": 0,  # 0: none (a row without uid is then refused)
    "virtual_gid": 0,
    "virtual_home": "",
    "first_valid_uid": 500,
    "userdb_timeout": 10,
    "userdb_cache_ttl": 60,
    # issue 5: pymda-admin redeliver's record of redelivered messages
    # (redeliver.py, README "Redelivering mail"); its lock is this path + ".lock"
    "redeliver_record": "$home/.pymda-redeliver",
    # issues 10/11: Sieve (SPEC 6, docs/sieve.md)
    "sieve": True,
    "sieve_script": "$home/.dovecot.sieve",
    "sieve_before": (),
    "sieve_after": (),
    "sieve_default": "",
    "sieve_extensions": SIEVE_EXTENSIONS,
    # "" = the sieve_script path + ".log" (dovecot's ~/.dovecot.sieve.log)
    "sieve_log": "",
    "sieve_fileinto_create": False,
    "sieve_max_script_size": 1 << 20,
    "sieve_max_actions": 32,
    "sieve_max_redirects": 4,
    "sieve_max_cpu_time": 30,
    "sieve_redirect_envelope_from": "sender",
    "sieve_vacation_min_period": 86400,
    "sieve_vacation_default_period": 7 * 86400,
    "sieve_vacation_max_period": 60 * 86400,
}


class Config(Record):
    __slots__ = tuple(DEFAULTS) + ("users", "sql", "path", "origins")
    _defaults = dict(DEFAULTS, users={}, sql={}, path=None, origins={})

    def user(self, name):
        """Per-user table for ``name`` (exact, then lower-cased), or {}."""
        users = self.users
        return users.get(name) or users.get(name.lower()) or {}


def __getattr__(name):
    """KEYS, USER_KEYS, SQL_KEYS, parse_size, parse_value, MAX_*, ...: the
    parsing and validation half, pymda.config_keys (imported on first use)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from pymda import config_keys

    try:
        return getattr(config_keys, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


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
    table = {}
    if path is not None:
        table = read_file(path, environ, write_cache)
    values = dict(DEFAULTS)
    origins = dict.fromkeys(DEFAULTS, "default")
    for key, value in table.items():
        values[key] = value
        origins[key] = "file"
    users = values.pop("users", {})
    sql = values.pop("sql", {})
    if overrides:
        from pymda.config_keys import parse_override

        for item in overrides:
            key, values[key] = parse_override(item)
            origins[key] = "override"
    for source in values["userdb"]:
        if source.startswith("sql:") and source[4:] not in sql:
            where = path or "built-in defaults"
            raise ConfigError(f"{where}: userdb {source!r} needs a [sql.{source[4:]}] table")
    return Config(users=users, sql=sql, path=path, origins=origins, **values)


# --- reading, with the marshal cache -------------------------------------

# Part of every cache entry's key: a cache written by another pymda (or in
# another format) is stale.  Bump the number when a check's output changes.
CACHE_FORMAT = f"pymda {__version__} checked/1"


def _cache_path(path, environ):
    directory = environ.get("PYMDA_CACHE_DIR") or DEFAULT_CACHE_DIR
    name = os.path.abspath(path).replace("%", "%25").replace("/", "%")
    return os.path.join(directory, name + ".marshal")


MAX_CONFIG_SIZE = 1 << 20  # a config file is a few KiB; /dev/zero is not one


def _S_ISREG(mode):
    return mode & 0o170000 == 0o100000  # stat.S_ISREG without importing stat


def _stamp(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, CACHE_FORMAT)


def read_file(path, environ=os.environ, write_cache=None):
    """The checked table of ``path`` (cached), or ConfigError: the file's
    keys with checked values, ``users`` and ``sql`` included."""
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
            try:
                cst = os.fstat(cfd)
                cached = None
                if _S_ISREG(cst.st_mode) and cst.st_uid in (0, st.st_uid) \
                        and not cst.st_mode & 0o022:
                    cached = marshal.loads(os.read(cfd, cst.st_size + 1))
            finally:
                os.close(cfd)
            cached_stamp, table = cached  # None (untrusted): TypeError
            if tuple(cached_stamp) == stamp and type(table) is dict:
                return _cached(table, cst.st_uid, path)
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
    from pymda.config_keys import parse_file

    table = parse_file(data, path)
    if write_cache is None:
        write_cache = os.geteuid() == 0
    if write_cache:
        _write_cache(cache, stamp, table)
    return table


def _cached(table, owner, path):
    """A cached table as load() takes it: root's, with known keys only, as
    it is; any other (the config file's owner's) checked again."""
    if owner == 0 and all(key in DEFAULTS or key in ("users", "sql") for key in table):
        return table
    from pymda.config_keys import check_table

    return check_table(table, path)


def _write_cache(cache, stamp, table):
    """Best effort: a failure only costs the next process a parse."""
    import marshal

    try:
        data = marshal.dumps((stamp, table))
    except ValueError:  # not marshallable: the next process parses again
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
