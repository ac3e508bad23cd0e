"""In-process helpers for the engine's tests (test_resolve, test_deliver,
test_recipient): they run as whoever runs pytest, root or not.

The trick that needs no root: a virtual user (``[users."NAME"]`` in a
real config file) whose uid and gid are the test process's own, with its
home in a temporary directory.  pymda then authorises the delivery (same
uid), its switch is a no-op (users.switch_to: already that uid, or root
delivering root's own mail), and every byte lands under ``tmp_path``.

- ``config_file(directory, *overrides, users=...)`` -> pymda Config read
  from a real TOML file (no cache written anywhere);
- ``own_user(home, name)`` -> the Identity such a config defines;
- ``envelope(...)`` -> resolve.Envelope for ``name@example.org``;
- ``message_of(data)`` -> message.Message (the real intake);
- ``collecting_log()`` -> the real pymda.log.Log with verbose on: its
  lines are kept in ``.lines`` (syslog gets them too, when there is one);
- ``maildir_new(directory)`` -> {name: bytes} of ``new/``;
- ``tree(root)`` -> every path under ``root`` with its bytes (files) or
  None (directories): equal before and after means nothing was written.

Fixtures (import them into the test module): ``cfg`` - a config whose
``mailbox`` is ``Maildir/`` with one such user, ``alice``; ``me`` - her
Identity; ``tmp_path`` - pytest's, except as root: then the test runs
with the effective uid and gid of ``nobody`` in a directory of its own
(root's uid 0 would make the virtual user a uid-0 database user, which
pymda refuses - SPEC 7 - and a delivery as root would switch the test
process to the user for good).  Real and saved uid stay root, so the
ids come back after the test.
"""

import os
from pathlib import Path

import pytest

from pymda import config, message
from pymda.log import Log
from pymda.resolve import Envelope
from pymda.users import Identity

USER = "alice"
DOMAIN = "example.org"
SENDER = "sender@example.net"
MESSAGE = b"Subject: in-process\nMessage-ID: <in-process@example.net>\n\nbody line\n"


def user_table(name, home):
    return (f'[users."{name}"]\nuid = {os.geteuid()}\ngid = {os.getegid()}\n'
            f'home = "{home}"\n')


def config_file(directory, *lines, users=((USER, None),)):
    """A Config from a real file in ``directory``: ``lines`` are top-level
    ``key = value`` TOML lines, ``users`` (name, home) pairs of virtual
    users owned by the running uid (home None: ``directory/name``)."""
    directory = Path(directory)
    text = "".join(line + "\n" for line in lines)
    for name, home in users:
        home = home or directory / name.replace("@", "_at_")
        Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
        text += "\n" + user_table(name, home)
    path = directory / "pymda.toml"
    path.write_text(text)
    return config.load(str(path), (), environ={}, write_cache=False)


def own_user(cfg, name=USER):
    """The Identity of virtual user ``name`` of ``cfg``."""
    table = cfg.user(name)
    return Identity(name=name, uid=table["uid"], gid=table["gid"], home=table["home"],
                    virtual=True, source="config")


def envelope(user=USER, extension="", domain=DOMAIN, sender=SENDER):
    local = f"{user}+{extension}" if extension else user
    recipient = f"{local}@{domain}"
    return Envelope(sender=sender, recipient=recipient, original_recipient=recipient,
                    user=user, local=local, domain=domain, extension=extension)


def message_of(data=MESSAGE):
    return message.from_bytes(data)


def collecting_log():
    return Log(verbose=True, ident="pymda-test")


def maildir_new(directory):
    new = Path(directory) / "new"
    if not new.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in new.iterdir()}


def tree(root):
    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


def _import_all_of_pymda():
    """Import every pymda module while still root: the engine imports
    lazily, and the tests may run from a checkout that nobody cannot read
    (CI's clone under root's home)."""
    import importlib
    import pkgutil

    import pymda

    for info in pkgutil.walk_packages(pymda.__path__, "pymda."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


@pytest.fixture
def tmp_path(tmp_path_factory):
    """pytest's tmp_path; as root, owned by nobody and run as nobody (above)."""
    if os.geteuid() != 0:
        yield tmp_path_factory.mktemp("engine")
        return
    import pwd
    import tempfile

    nobody = pwd.getpwnam("nobody")
    _import_all_of_pymda()  # as nobody, a checkout under a 0700 home cannot be read
    top = Path(tempfile.mkdtemp(prefix="pymda-engine-"))
    os.chmod(top, 0o755)
    path = top / "t"
    path.mkdir()
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield path
    finally:
        os.seteuid(0)
        os.setegid(0)
        import shutil

        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def cfg(tmp_path):
    return config_file(tmp_path, 'mailbox = "Maildir/"')


@pytest.fixture
def me(cfg):
    return own_user(cfg)
