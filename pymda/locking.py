"""mbox locking: dotlock + fcntl, interoperable with postfix, procmail, mutt.

Contract: ``lock_mbox(path, fd, cfg, log)`` returns a Lock (``release()``)
once both configured locks (``mbox_locks``: "dotlock", "fcntl") are held,
or raises TempFail 4.2.0 after ``lock_timeout`` seconds.

DEADLOCK AVOIDANCE: postfix takes the dotlock first, Debian policy (and
procmail) the fcntl lock first.  pymda never waits while holding a lock:
it tries each without blocking, and when one is busy it drops what it
holds and retries both after a short randomized pause (1-50 ms, growing),
so it cannot deadlock with either order and wakes up soon after the
holder is done (procmail sleeps 8 s, maildrop 5 s).

DOTLOCK (``<mbox>.lock``): created NFS-safely by writing a unique file in
the same directory and link()ing it to the lock name (a link that returns
an error but left st_nlink == 2 also counts, as on NFS).  A lock whose
mtime is older than ``stale_lock_time`` is removed.  When the directory
does not let us create files (Debian's /var/mail is 2775 root:mail and
postfix runs mailbox_command without the mail group), the setgid helper
``dotlockfile`` (liblockfile-bin) makes the lock, as Debian policy 11.6
says; without it, fcntl alone is used and a warning logged.

The fcntl lock is a POSIX record lock on the whole file (what procmail
and postfix use, and what ``fcntl.lockf`` calls), on the open mbox fd.
"""

import errno
import fcntl
import time

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import TempFail

DOTLOCKFILE = "/usr/bin/dotlockfile"


def _pause(attempt):
    """A short randomized wait: 1-50 ms, growing with the attempt."""
    cap = min(0.05, 0.002 * (1 + attempt))
    r = int.from_bytes(os.urandom(2), "little") / 65535.0
    time.sleep(0.001 + cap * r)


class _NoDotlock(Exception):
    """The directory does not let us create the dotlock ourselves."""


def _hostname():
    return os.uname().nodename.replace("/", "_")


def try_dotlock(lockpath):
    """Create ``lockpath`` with link(); True if taken, False if busy."""
    directory, base = os.path.split(lockpath)
    tmp = os.path.join(
        directory or ".",
        f".{base}.{_hostname()}.{os.getpid()}.{os.urandom(4).hex()}",
    )
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _NoDotlock(exc.strerror) from None
        raise
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            os.link(tmp, lockpath)
            return True
        except FileExistsError:
            return False
        except OSError:
            # NFS: link() may report failure although it worked.
            return os.fstat(fd).st_nlink == 2
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def break_stale_dotlock(lockpath, stale_after):
    """Remove ``lockpath`` if its mtime is older than ``stale_after``."""
    try:
        st = os.lstat(lockpath)
    except FileNotFoundError:
        return True
    if time.time() - st.st_mtime <= stale_after:
        return False
    try:
        # Only remove the lock we judged: it must not have been replaced.
        again = os.lstat(lockpath)
        if (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):
            os.unlink(lockpath)
            return True
    except OSError:
        pass
    return False


def _run_dotlockfile(args):
    """Exit status of the setgid dotlockfile helper (no subprocess import)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        devnull = None
    actions = []
    if devnull is not None:
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                   (os.POSIX_SPAWN_DUP2, devnull, 2)]
    try:
        pid = os.posix_spawn(DOTLOCKFILE, [DOTLOCKFILE, *args], {"PATH": "/usr/bin:/bin"},
                             file_actions=actions)
    finally:
        if devnull is not None:
            os.close(devnull)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status)


class Lock:
    """Held mbox locks.  ``release()`` is idempotent."""

    def __init__(self, fd, lockpath, dotlock_how, fcntl_held):
        self.fd = fd
        self.lockpath = lockpath
        self.dotlock_how = dotlock_how  # None, "link" or "dotlockfile"
        self.fcntl_held = fcntl_held

    def release(self):
        if self.fcntl_held:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
            except OSError:
                pass
            self.fcntl_held = False
        how, self.dotlock_how = self.dotlock_how, None
        if how == "link":
            try:
                os.unlink(self.lockpath)
            except OSError:
                pass
        elif how == "dotlockfile":
            _run_dotlockfile(["-u", self.lockpath])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_mbox(path, fd, cfg, log=None):
    """Take the configured locks on mbox ``path`` (open as ``fd``)."""
    want_dot = "dotlock" in cfg.mbox_locks
    want_fcntl = "fcntl" in cfg.mbox_locks
    lockpath = path + ".lock"
    deadline = time.monotonic() + cfg.lock_timeout
    dot_mode = "link" if want_dot else None
    attempt = 0
    busy = "mailbox"
    while True:
        held_dot = None
        if dot_mode == "link":
            try:
                if try_dotlock(lockpath):
                    held_dot = "link"
                else:
                    busy = lockpath
                    if break_stale_dotlock(lockpath, cfg.stale_lock_time):
                        if log:
                            log.warning(f"removed stale lock {lockpath}")
                        continue
            except _NoDotlock as exc:
                if os.access(DOTLOCKFILE, os.X_OK):
                    dot_mode = "dotlockfile"
                else:
                    dot_mode = None
                    if log:
                        log.warning(
                            f"cannot create {lockpath} ({exc}) and no {DOTLOCKFILE}:"
                            " using fcntl locking only"
                        )
                continue
            except OSError as exc:
                raise TempFail(f"cannot create lock {lockpath}: {exc.strerror}", "4.2.0") from None
        elif dot_mode == "dotlockfile":
            code = _run_dotlockfile(["-l", "-r", "0", "-p", "-q", lockpath])
            if code == 0:
                held_dot = "dotlockfile"
            else:
                busy = lockpath
        if dot_mode is None or held_dot:
            lock = Lock(fd, lockpath, held_dot, False)
            if not want_fcntl:
                return lock
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                lock.fcntl_held = True
                return lock
            except OSError as exc:
                lock.release()
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise TempFail(f"cannot lock {path}: {exc.strerror}", "4.2.0") from None
                busy = f"{path} (fcntl)"
            except BaseException:  # SIGTERM's exception: leave no dotlock behind
                lock.release()
                raise
        if time.monotonic() >= deadline:
            raise TempFail(f"mailbox {path} is locked: timed out waiting for {busy}", "4.2.0")
        _pause(attempt)
        attempt += 1
