"""Throw-away system users for tests (root only).

``create_user()`` makes ``pt<8 hex digits>`` with ``useradd`` (own group,
home under /home, /bin/sh) and returns a TestUser; ``delete_user()`` removes
the user, its group, its home and any /var/mail/<name>{,.lock} left behind.
Names are random, so two runs (or two engineers) never collide.

TestUser: name, uid, gid, home (Path), ``path(*parts)`` -> Path under
home, ``chown(path)``, ``mkdir(relpath, mode)`` (owned by the user),
``write(relpath, bytes, mode)`` (owned by the user).
"""

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

PREFIX = "pt"
HOME_BASE = "/home"


class TestUser:
    __test__ = False  # not a pytest test class

    def __init__(self, name, uid, gid, home):
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = Path(home)

    def __repr__(self):
        return f"TestUser({self.name!r}, uid={self.uid})"

    def path(self, *parts):
        return self.home.joinpath(*parts)

    def chown(self, path):
        os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def mkdir(self, rel, mode=0o700):
        """Create home/rel (and parents under home) owned by the user."""
        p = self.path(rel)
        todo = []
        q = p
        while not q.exists() and q != self.home:
            todo.append(q)
            q = q.parent
        for d in reversed(todo):
            d.mkdir(mode=mode)
            os.chmod(d, mode)
            self.chown(d)
        return p

    def write(self, rel, data, mode=0o600):
        p = self.path(rel)
        self.mkdir(os.path.dirname(rel)) if os.path.dirname(rel) else None
        p.write_bytes(data)
        os.chmod(p, mode)
        self.chown(p)
        return p


def create_user(prefix=PREFIX):
    if os.geteuid() != 0:
        raise PermissionError("creating users needs root")
    for _ in range(10):
        name = prefix + secrets.token_hex(4)
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            break
    home = os.path.join(HOME_BASE, name)
    subprocess.run(
        ["useradd", "--create-home", "--home-dir", home, "--shell", "/bin/sh",
         "--user-group", "--comment", "pymda test user", name],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    pw = pwd.getpwnam(name)
    os.chmod(home, 0o755)  # other test helpers (root) and readers traverse it
    return TestUser(name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def delete_user(user):
    subprocess.run(["pkill", "-KILL", "-u", user.name], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["userdel", "--force", "--remove", user.name], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["groupdel", user.name], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(user.home, ignore_errors=True)
    for p in (f"/var/mail/{user.name}", f"/var/mail/{user.name}.lock"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
