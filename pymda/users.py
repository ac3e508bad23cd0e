"""Who mail is delivered as: Identity lookup and the one place ids change.

Contract:
- ``lookup(cfg, name)`` -> Identity for a virtual user (``[users."name"]``
  with uid, gid, home) or a system user (passwd); PermFail 5.1.1 when
  there is none.
- ``current()`` -> Identity of the invoking (real) user.
- ``switch_to(identity)`` drops root for good: supplementary groups, then
  gid, then uid.  Any failure raises TempFail (the MTA retries) and is
  fatal: nothing is delivered with the wrong ids.

SECURITY: pymda never delivers pipes or files as root.  A root caller
switches before reading .forward or touching any user file; an ordinary
user delivers only as itself (see ``authorise``).
"""


from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import PermFail, TempFail
from pymda.record import Record


class Identity(Record):
    """A user mail is delivered for.  ``name`` is the lookup key."""

    __slots__ = ("name", "uid", "gid", "home", "shell", "virtual")
    _defaults = {"shell": "/bin/sh", "virtual": False}


def _from_pwent(name, pw):
    return Identity(
        name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir, shell=pw.pw_shell
    )


def lookup(cfg, name):
    """Identity for ``name``: a virtual user first, then the passwd database."""
    table = cfg.user(name)
    if "uid" in table:
        return Identity(
            name=name,
            uid=table["uid"],
            gid=table["gid"],
            home=table["home"],
            virtual=True,
        )
    import pwd

    for candidate in (name, name.lower()):
        try:
            return _from_pwent(candidate, pwd.getpwnam(candidate))
        except KeyError:
            continue
        except (OSError, ValueError):
            break
    raise PermFail(f"User unknown: {name}", "5.1.1")


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
    wins; otherwise the local part names a system (or virtual) user.
    """
    if domain and cfg.user(f"{base}@{domain}"):
        return f"{base}@{domain}"
    return base


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
    """Become ``identity`` for good.  No-op when already that uid and not root."""
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
