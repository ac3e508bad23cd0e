"""Debian's procmail, lockfile and dotlockfile, for locking interop tests.

- ``deliver(user, mbox, data)``: procmail (as ``user``, no supplementary
  groups, as postfix would run it) appends ``data`` to ``mbox`` through a
  private rcfile: ``DEFAULT=<mbox>``, so procmail takes its own
  ``<mbox>.lock`` dotlock (and a kernel lock) like it does for /var/mail.
  Returns Result(code, output).
- ``start_deliver(...)``: the same, without waiting (a Popen).
- ``hold_lockfile(lockpath, user=None)``: context manager; procmail's
  ``lockfile -r0 LOCK`` creates the dotlock, removed on exit.
- ``hold_dotlockfile(mbox, user=None)``: context manager; liblockfile's
  ``dotlockfile -p -l -r 0 MBOX.lock`` (setgid mail: works in /var/mail
  for any user), removed on exit.
"""

import contextlib
import os
import subprocess

from .run import Result

PROCMAIL = "/usr/bin/procmail"
LOCKFILE = "/usr/bin/lockfile"
DOTLOCKFILE = "/usr/bin/dotlockfile"


def installed():
    return all(os.access(p, os.X_OK) for p in (PROCMAIL, LOCKFILE, DOTLOCKFILE))


def write_rcfile(user, mbox, path=None):
    """A private rcfile delivering everything to ``mbox``; returns its path."""
    path = path or os.path.join(user.home, ".procmailrc-test")
    with open(path, "w") as f:
        f.write(
            f"SHELL=/bin/sh\nDEFAULT={mbox}\nLOGFILE={user.home}/procmail.log\n"
            "VERBOSE=no\nLOCKTIMEOUT=3600\n"
        )
    os.chmod(path, 0o644)
    os.chown(path, user.uid, user.gid)
    return path


def _argv(rcfile, sender):
    return [PROCMAIL, "-f", sender, rcfile]


def _kwargs(user):
    kw = {}
    if user is not None and os.geteuid() != user.uid:
        kw.update(user=user.uid, group=user.gid, extra_groups=[])
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    if user is not None:
        env.update(HOME=str(user.home), USER=user.name, LOGNAME=user.name)
    return kw, env


def start_deliver(user, mbox, data, sender="procmail-test@example.org", rcfile=None):
    rcfile = rcfile or write_rcfile(user, mbox)
    kw, env = _kwargs(user)
    proc = subprocess.Popen(
        _argv(rcfile, sender), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=env, cwd=str(user.home), **kw,
    )
    proc.pymda_input = data
    return proc


def deliver(user, mbox, data, sender="procmail-test@example.org", rcfile=None, timeout=60):
    proc = start_deliver(user, mbox, data, sender, rcfile)
    out, _ = proc.communicate(data, timeout=timeout)
    return Result(proc.returncode, out)


@contextlib.contextmanager
def _created_then_removed(argv, lock, user):
    """Run ``argv`` (it creates ``lock``); remove ``lock`` on the way out."""
    kw, env = _kwargs(user)
    subprocess.run(argv, check=True, env=env, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, **kw)
    try:
        yield lock
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass


def hold_lockfile(lockpath, user=None):
    """Hold a dotlock created by procmail's ``lockfile``."""
    return _created_then_removed([LOCKFILE, "-r0", str(lockpath)], lockpath, user)


def hold_dotlockfile(mbox, user=None):
    """Hold ``<mbox>.lock`` created by liblockfile's ``dotlockfile``.

    NOTE: dotlockfile's argument is the LOCK file's name, not the mailbox's
    (``dotlockfile -u /var/mail/x`` would delete the mailbox itself).
    The lock holds the pid of this (test) process (``-p``), so it is valid
    for liblockfile users as long as the test runs.
    """
    lock = f"{mbox}.lock"
    return _created_then_removed([DOTLOCKFILE, "-p", "-l", "-r", "0", lock], lock, user)
