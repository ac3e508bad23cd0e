"""Who mail is delivered as: Identity lookup and the one place ids change.

Contract:
- ``lookup(cfg, name)`` -> Identity from the first ``userdb`` source that
  knows ``name`` (SPEC 7): ``config`` (a ``[users."name"]`` table with uid,
  gid, home), ``passwd`` (system users), or a database source of the
  ``pymda.userdb`` package.  PermFail 5.1.1 when none does; TempFail 4.3.0
  when a source cannot answer; PermFail 5.7.1 for a refused row.
- ``name_for_recipient(cfg, base, domain)`` -> the name ``lookup`` takes.
- ``settings(cfg, identity)`` -> the user's own ``mailbox`` /
  ``quota_storage`` / ``quota_messages`` (the database row's, else the
  ``[users."name"]`` table).
- ``check(cfg, identity)`` refuses (5.7.1) a database user with a uid
  below ``first_valid_uid``, uid or gid 0, a relative home, or a mailbox
  outside its home.
- ``current()`` -> Identity of the invoking (real) user.
- ``switch_to(identity)`` drops root for good: supplementary groups, then
  gid, then uid.  Any failure raises TempFail (the MTA retries) and is
  fatal: nothing is delivered with the wrong ids.
- ``switch_temporarily(identity)`` / ``switch_back()``: the same switch of
  the *effective* ids only (setgroups, setegid, seteuid; real and saved
  ids stay root), for a root pymda-lmtpd delivering a plain mailbox
  without a fork (recipient.deliver decides when).  A failed switch is
  undone and raises TempFail 4.3.0.  ``switch_back`` restores root's
  ids and groups and verifies them (getresuid, getresgid, getgroups);
  when that fails the process exits at once (EX_SOFTWARE): it never
  goes on with the wrong ids.  The ids of a process are shared by its
  threads (glibc applies set*id to every thread): the caller makes sure
  nothing else in the process opens files while the switch is on -
  unless ``use_thread_ids`` gave a per-thread switcher (a root
  pymda-lmtpd on Linux, pymda/lmtp/threadids.py): then the switch and
  its verification are the calling thread's alone.

PERFORMANCE: with the default ``userdb = ["config", "passwd"]`` both
sources are answered here and ``pymda.userdb`` is not imported.

SECURITY: pymda never delivers pipes or files as root, nor as a uid below
``first_valid_uid`` for a user from a database (``check``).  A root caller
switches before reading .forward or touching any user file; an ordinary
user delivers only as itself (see ``authorise``).
"""


from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import EX_SOFTWARE, PermFail, TempFail
from pymda.record import Record


class Identity(Record):
    """A user mail is delivered for.  ``name`` is the lookup key."""

    # settings: the user's mailbox/quota dict (None: the [users] table);
    # source: the userdb source that answered (pymda-admin user/explain).
    __slots__ = ("name", "uid", "gid", "home", "shell", "virtual", "settings", "source")
    _defaults = {"shell": "/bin/sh", "virtual": False, "settings": None, "source": "passwd"}


DEFAULT_SOURCES = ("config", "passwd")


def _from_pwent(name, pw):
    return Identity(
        name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir, shell=pw.pw_shell
    )


def lookup(cfg, name):
    """Identity for ``name`` from the ``userdb`` sources, first hit wins."""
    if cfg.userdb == DEFAULT_SOURCES:
        identity = from_config(cfg, name) or from_passwd(name)
    else:
        from pymda.userdb.core import find

        identity = find(cfg, name)
    if identity is None:
        raise PermFail(f"User unknown: {name}", "5.1.1")
    return identity


def from_config(cfg, name):
    """The ``config`` source: a ``[users."name"]`` table with uid/gid/home."""
    table = cfg.user(name)
    if "uid" not in table:
        return None
    identity = Identity(name=name, uid=table["uid"], gid=table["gid"], home=table["home"],
                        virtual=True, source="config")
    check(cfg, identity)
    return identity


def from_passwd(name):
    """The ``passwd`` source: a system user named by the local part."""
    import pwd

    name = name.partition("@")[0] if "@" in name else name
    for candidate in (name, name.lower()):
        try:
            return _from_pwent(candidate, pwd.getpwnam(candidate))
        except KeyError:
            continue
        except (OSError, ValueError):
            break
    return None


def settings(cfg, identity):
    """The user's own mailbox/quota settings ({} when none)."""
    if identity is None:
        return {}
    if identity.settings is None:
        return cfg.user(identity.name)
    return identity.settings


def check(cfg, identity):
    """Refuse (5.7.1) a database user pymda must never write as."""
    problem = None
    if identity.uid == 0 or identity.gid == 0:
        problem = "uid or gid 0"
    elif identity.uid < cfg.first_valid_uid:
        problem = f"uid {identity.uid} below first_valid_uid {cfg.first_valid_uid}"
    elif not identity.home.startswith("/"):
        problem = f"home {identity.home!r} is not absolute"
    else:
        mailbox = settings(cfg, identity).get("mailbox", "")
        if mailbox and _escapes(mailbox, identity, cfg):
            problem = f"mailbox {mailbox!r} is outside the home {identity.home}"
    if problem:
        raise PermFail(f"userdb {identity.source}: user {identity.name} refused: {problem}",
                       "5.7.1")


def _escapes(mailbox, identity, cfg):
    from pymda.config import user_path

    path = user_path(mailbox, identity, cfg=cfg)
    if "/../" in path + "/" or "/./" in path + "/":
        return True
    home = identity.home.rstrip("/") + "/"
    return not (path + "/").startswith(home)


def default_privs(cfg):
    """Identity that root's pipes and files run as (``default_privs``).

    ConfigError (defer) when it is unknown or root itself.
    """
    from pymda.errors import ConfigError

    identity = by_name_or_none(cfg.default_privs)
    if identity is None:
        raise ConfigError(f"default_privs: unknown user {cfg.default_privs!r}")
    if identity.uid == 0:
        raise ConfigError("default_privs must not be root")
    return identity


def name_for_recipient(cfg, base, domain):
    """The user a recipient (extension already stripped) is delivered to.

    A virtual user configured by full address (``[users."bob@example.org"]``)
    wins; otherwise the local part names a system (or virtual) user.  With
    database sources in ``userdb``, the name of the user they find for
    ``base@domain`` (which ``lookup`` then answers without asking again).
    """
    if domain and cfg.user(f"{base}@{domain}"):
        return f"{base}@{domain}"
    if cfg.userdb == DEFAULT_SOURCES or not domain:
        return base
    from pymda.userdb.core import name_for

    return name_for(cfg, f"{base}@{domain}")


def current():
    """The invoking user (real uid)."""
    import pwd

    uid = os.getuid()
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        raise TempFail(f"no passwd entry for uid {uid}") from None
    return _from_pwent(pw.pw_name, pw)


def by_name_or_none(name):
    import pwd

    try:
        return _from_pwent(name, pwd.getpwnam(name))
    except KeyError:
        return None


def authorise(identity):
    """May the running process deliver as ``identity``?  5.7.1 if not."""
    if os.geteuid() == 0:
        return
    if identity.uid != os.geteuid():
        raise PermFail(
            f"delivering for {identity.name} needs root (running as uid {os.geteuid()})",
            "5.7.1",
        )


def switch_to(identity):
    """Become ``identity`` for good.  No-op when already that uid and not root.

    A database user's missing home is then created (0700, as the user)
    when its parent lets the user do so, else TempFail 4.2.0 (SPEC 7).
    """
    _switch(identity)
    if identity.virtual:
        ensure_home(identity)


def _switch(identity):
    if os.geteuid() != 0:
        if os.geteuid() != identity.uid:
            raise PermFail(f"cannot deliver as {identity.name} without root", "5.7.1")
        return
    if identity.uid == 0:
        # root's own mailbox is written as root, as postfix local(8) does;
        # its pipes and files run as default_privs (pipe.run_as,
        # deliver.write_as), never as root.
        return
    try:
        os.setgroups([])
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as exc:
        raise TempFail(f"cannot switch to {identity.name}: {exc.strerror}", "4.3.0") from None
    if os.getuid() != identity.uid or os.geteuid() != identity.uid:
        raise TempFail(f"cannot switch to {identity.name}", "4.3.0")


def ensure_home(identity):
    """Create a missing home as the (already switched-to) user."""
    home = identity.home
    try:
        os.mkdir(home, 0o700)
    except FileExistsError:
        return
    except OSError as exc:
        raise TempFail(
            f"home {home} of {identity.name} is missing and cannot be created: "
            f"{exc.strerror}", "4.2.0") from None


# -- the temporary switch (root pymda-lmtpd, plain mailbox deliveries) ------------

_saved = []  # [(resuid, resgid, groups)] while a temporary switch is on


def switched_temporarily():
    """Is the calling thread under a root pymda-lmtpd's temporary switch
    (real uid root, effective uid the user's)?  Then no program may start
    as it is: it would keep root as its real uid and could take root back
    (forward.pipe.program_ids starts it with the user's real and saved
    ids; locking does not run the setgid dotlockfile helper at all)."""
    ruid, euid, _suid = os.getresuid()
    return ruid == 0 and euid != 0
_thread_ids = None  # a lmtp.threadids.ThreadIds: switch the calling thread only


def use_thread_ids(ids):
    """From now on the temporary switch changes the calling thread's ids
    only (``ids``: a pymda.lmtp.threadids.ThreadIds; a root pymda-lmtpd)."""
    global _thread_ids
    _thread_ids = ids


def switch_temporarily(identity):
    """Take ``identity``'s effective ids until ``switch_back()``.

    Not root (the mail user's own server): only the uid is verified, as
    ``switch_to`` does.  Root's own mail: nothing changes.
    """
    saved = _saved if _thread_ids is None else _thread_ids.saved()
    if saved:
        _fatal("a temporary switch is already on")
    if os.geteuid() != 0 or identity.uid == 0:
        _switch(identity)  # verifies only (PermFail: nothing is on); nothing to undo
        saved.append((os.getresuid(), os.getresgid(), os.getgroups()))
    else:
        saved.append((os.getresuid(), os.getresgid(), os.getgroups()))
        try:
            if _thread_ids is None:
                os.setgroups([])
                os.setegid(identity.gid)
                os.seteuid(identity.uid)
            else:
                _thread_ids.to_user(identity.gid, identity.uid)
        except (OSError, OverflowError) as exc:  # OverflowError: an id past 2**32
            switch_back()
            raise TempFail(f"cannot switch to {identity.name}: "
                           f"{getattr(exc, 'strerror', None) or exc}", "4.3.0") from None
        if os.getresuid()[1] != identity.uid or os.getresgid()[1] != identity.gid \
                or os.getgroups():
            switch_back()
            raise TempFail(f"cannot switch to {identity.name}", "4.3.0")
    if identity.virtual:
        try:
            ensure_home(identity)
        except TempFail:
            switch_back()
            raise


def switch_back():
    """Undo ``switch_temporarily`` and verify it; exit the process if not."""
    saved = _saved if _thread_ids is None else _thread_ids.saved()
    if not saved:
        _fatal("switch_back without a temporary switch")
    resuid, resgid, groups = saved[0]
    try:
        if _thread_ids is not None:
            if (os.getresuid(), os.getresgid(), sorted(os.getgroups())) \
                    != (resuid, resgid, sorted(groups)):
                _thread_ids.to_root(groups, resgid[1], resuid[1])
        else:
            if os.geteuid() != resuid[1]:
                os.seteuid(resuid[1])
            if os.getresgid() != resgid:
                os.setegid(resgid[1])
            if sorted(os.getgroups()) != sorted(groups):
                os.setgroups(groups)
    except OSError as exc:
        _fatal(f"cannot switch back to uid {resuid[1]}: {exc.strerror}")
    if os.getresuid() != resuid or os.getresgid() != resgid \
            or sorted(os.getgroups()) != sorted(groups):
        _fatal(f"switching back left ids {os.getresuid()} {os.getresgid()}")
    saved.clear()


def _fatal(text):
    """SECURITY: never deliver another message with the wrong ids: exit now."""
    try:
        os.write(2, f"pymda: fatal: {text}\n".encode("utf-8", "replace"))
        import syslog

        syslog.syslog(syslog.LOG_MAIL | syslog.LOG_CRIT, f"fatal: {text}")
    finally:
        os._exit(EX_SOFTWARE)
