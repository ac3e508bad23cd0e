"""The userdb lookup: sources in order, cache, rows -> Identity.

Contract:
- ``find(cfg, name)`` -> ``users.Identity`` or None (no source knows the
  user).  Raises TempFail 4.3.0 when a source cannot answer (the sources
  after it are not asked: a user must not silently move to another
  source while its database is down), PermFail 5.7.1 for a refused row
  (``users.check``).
- ``name_for(cfg, address)`` -> the name of the user ``address`` (no
  extension) belongs to; the answer is handed to the ``find`` that
  follows, so a one-shot delivery asks its database once.
- ``identity_from_row(cfg, name, source, row)``: a row is a dict with any
  of ``uid gid home mailbox quota_storage quota_messages`` (None or
  missing: ``virtual_uid`` / ``virtual_gid`` / ``virtual_home``, then the
  ``[users."name"]`` table and the global settings).
- ``dovecot_row(fields)``: dovecot's userdb fields (``uid gid home mail
  quota_rule quota_rule2``, ``userdb_`` prefix optional) and pymda's own
  (``mailbox quota_storage quota_messages``) -> row.

CACHE: answers are kept ``userdb_cache_ttl`` seconds per process
(daemons; 0 turns it off), keyed by the name asked and the name
answered, for the Config object that asked.  "Unknown" is not cached: a
mailbox created a moment ago must not bounce its first mail (5.1.1 is
permanent) for the rest of the TTL.  Failures are never cached.

LIMITATIONS: ``mail`` locations other than ``maildir:`` and ``mbox:`` with
``INBOX=`` (dbox, imapc...) are refused with a temporary failure: pymda
cannot write them.
"""

import time

from pymda.errors import TempFail
from pymda.users import Identity, check, from_config, from_passwd

# Entries hold the Config they were found with and count only for it (a
# reloaded or another configuration asks again).
_cache = {}  # name -> (expires, Identity, cfg)
_handoff = {}  # name -> (cfg, Identity or None), from name_for to the next find


def find(cfg, name):
    handed = _handoff.pop(name, None)
    if handed is not None and handed[0] is cfg:
        return handed[1]
    ttl = cfg.userdb_cache_ttl
    now = time.monotonic()
    if ttl:
        hit = _cache.get(name)
        if hit is not None and hit[0] > now and hit[2] is cfg:
            return hit[1]
    identity = _ask(cfg, name)
    if ttl and identity is not None:
        if len(_cache) > 100000:
            _cache.clear()
        _cache[name] = (now + ttl, identity, cfg)
        _cache[identity.name] = (now + ttl, identity, cfg)
    return identity


def name_for(cfg, address):
    identity = find(cfg, address)
    name = address if identity is None else identity.name
    _handoff[name] = (cfg, identity)
    return name


def _ask(cfg, name):
    for source in cfg.userdb:
        identity = ask_source(cfg, source, name)
        if identity is not None:
            return identity
    return None


def ask_source(cfg, source, name):
    """One source's answer for ``name``: Identity or None."""
    if source == "config":
        identity = from_config(cfg, name)
        if identity is None and "@" in name:
            identity = from_config(cfg, name.partition("@")[0])
        return identity
    if source == "passwd":
        return from_passwd(name)
    kind, _, arg = source.partition(":")
    if kind == "passwd-file":
        from pymda.userdb import passwdfile

        row = passwdfile.lookup(cfg, arg, name)
    elif kind == "sql":
        from pymda.userdb import sql

        row = sql.lookup(cfg, arg, name)
    else:
        from pymda.userdb import dovecot

        row = dovecot.lookup(cfg, arg or dovecot.DEFAULT_PATH, name)
    if row is None:
        return None
    return identity_from_row(cfg, name, source, row)


def _int(value, what, source, name):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TempFail(f"userdb {source}: {name}: {what} {value!r} is not a number",
                       "4.3.0") from None
    if number < 0:
        raise TempFail(f"userdb {source}: {name}: negative {what}", "4.3.0")
    return number


def identity_from_row(cfg, name, source, row):
    from pymda.config import expand, parse_size

    local, _, domain = name.partition("@")
    variables = {"user": name, "local": local, "domain": domain}
    uid = row.get("uid")
    gid = row.get("gid")
    home = row.get("home")
    uid = cfg.virtual_uid if uid in (None, "") else _int(uid, "uid", source, name)
    gid = cfg.virtual_gid if gid in (None, "") else _int(gid, "gid", source, name)
    if home in (None, ""):
        home = expand(cfg.virtual_home, variables)
    if not isinstance(home, str):
        raise TempFail(f"userdb {source}: {name}: home is not text", "4.3.0")
    values = dict(cfg.user(name))
    for key in ("uid", "gid", "home"):
        values.pop(key, None)
    mailbox = row.get("mailbox")
    if mailbox not in (None, ""):
        if not isinstance(mailbox, str):
            raise TempFail(f"userdb {source}: {name}: mailbox is not text", "4.3.0")
        values["mailbox"] = mailbox
    messages = row.get("quota_messages")
    if messages not in (None, ""):
        values["quota_messages"] = _int(messages, "quota_messages", source, name)
    storage = row.get("quota_storage")
    if storage not in (None, ""):
        if not isinstance(storage, str):  # a number column (int, Decimal, float)
            storage = _int(storage, "quota_storage", source, name)
        try:
            values["quota_storage"] = parse_size(storage)
        except ValueError as exc:
            raise TempFail(f"userdb {source}: {name}: quota_storage must be {exc}",
                           "4.3.0") from None
    identity = Identity(name=name, uid=uid, gid=gid, home=home, virtual=True,
                        settings=values, source=source)
    check(cfg, identity)
    return identity


# --- dovecot's field dialect -------------------------------------------------

_FIELDS = ("uid", "gid", "home", "mail", "quota_rule", "quota_rule2", "mailbox",
           "quota_storage", "quota_messages")


def dovecot_row(fields):
    """Row from dovecot/pymda ``key=value`` fields (a dict of str)."""
    row = {}
    for key, value in fields.items():
        if key.startswith("userdb_"):
            key = key[7:]
        if key in _FIELDS:
            row[key] = value
    for key in ("quota_rule", "quota_rule2"):
        rule = row.pop(key, None)
        if rule:
            _quota_rule(rule, row)
    mail = row.pop("mail", None)
    if mail and "mailbox" not in row:
        row["mailbox"] = _mail_location(mail)
    return row


def _quota_rule(rule, row):
    """``*:storage=1G`` (bare number: KiB), ``*:bytes=N``, ``*:messages=N``."""
    mailbox, _, limits = rule.partition(":")
    if mailbox != "*":
        return  # per-folder rules: pymda has one quota per user
    for item in limits.split(":"):
        key, _, value = item.partition("=")
        value = value.strip()
        if key == "storage":
            if value.isdigit():
                value = int(value) * 1024
            row["quota_storage"] = value
        elif key == "bytes":
            row["quota_storage"] = value
        elif key == "messages":
            row["quota_messages"] = value


def _mail_location(mail):
    """dovecot's ``mail`` (``maildir:~/Maildir``) -> pymda's ``mailbox``."""
    fmt, _, rest = mail.partition(":")
    parts = rest.split(":")
    path = parts[0]
    if fmt == "mbox":
        inbox = [p[6:] for p in parts[1:] if p.startswith("INBOX=")]
        if not inbox:
            raise TempFail(f"mail location {mail!r}: mbox without INBOX= is not supported",
                           "4.3.0")
        path = inbox[0]
    elif fmt != "maildir":
        raise TempFail(f"mail location {mail!r}: only maildir: and mbox: are supported",
                       "4.3.0")
    for old, new in (("%u", "$user"), ("%n", "$local"), ("%d", "$domain"), ("%h", "$home"),
                     ("%%", "%")):
        path = path.replace(old, new)
    if path == "~" or path.startswith("~/"):
        path = "$home" + path[1:]
    if fmt == "maildir" and not path.endswith("/"):
        path += "/"
    return path

