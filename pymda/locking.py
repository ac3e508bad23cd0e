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

DOTLOCK (``<mbox>.lock``): on a file system on a block device (local)
created directly with O_EXCL (dovecot's default); elsewhere NFS-safely by
writing a unique file in the same directory and link()ing it to the lock
name (a link that returns an error but left st_nlink == 2 also counts, as
on NFS).  It holds
``<pid>\n<host>\n`` (liblockfile writes ``<pid>\n`` and reads the first
number; postfix writes nothing, procmail ``0``).  A lock is stale, and
removed, when
- its mtime is older than ``stale_lock_time`` (any lock, any host: NFS), or
- it names a pid that no longer exists on this host (liblockfile's rule):
  the host is the second line, or for a bare ``<pid>`` lock, the lock's
  file system is a local one (/proc/self/mountinfo; a device it does not
  list - the mounts above a chroot's root - is local when it is a block
  device, major != 0).  Empty, unreadable
  or foreign-host locks keep only the mtime rule.
When the directory does not let us create files (Debian's /var/mail is
2775 root:mail and postfix runs mailbox_command without the mail group),
the setgid helper ``dotlockfile`` (liblockfile-bin) makes the lock, as
Debian policy 11.6 says (``-p``: it applies the same pid rule itself).
Without the helper, or when the helper cannot create the lock either (it
exits 2 and the directory is not writable by its group: a permanent
condition), fcntl alone is used and a warning logged.

LIMITATIONS: a pid of another pid namespace (a container sharing the
spool over a bind mount) looks dead: such setups must use distinct host
names (our locks) or keep liblockfile's own locks out of it.

The fcntl lock is a POSIX record lock on the whole file (what procmail
and postfix use, and what ``fcntl.lockf`` calls), on the open mbox fd.
"""

import fcntl
import time

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.durable import write_all
from pymda.errors import TempFail
from pymda.users import switched_temporarily

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


def try_dotlock(lockpath, excl=False):
    """Create ``lockpath``; True if taken, False if busy.

    ``excl``: create it directly with O_EXCL (a local file system: what
    dovecot does by default, two file-name operations fewer); otherwise
    write a unique file and link() it to the lock name (NFS-safe).
    """
    if excl:
        return _dotlock_excl(lockpath)
    directory, base = os.path.split(lockpath)
    tmp = os.path.join(
        directory or ".",
        f".{base}.{_hostname()}.{os.getpid()}.{os.urandom(4).hex()}",
    )
    fd = _create(tmp)
    try:
        write_all(fd, f"{os.getpid()}\n{_hostname()}\n".encode())
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


def _create(path):
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o644)
    except OSError as exc:  # FileExistsError: the caller's (a busy lock)
        import errno  # a failure: not imported by every delivery

        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _NoDotlock(exc.strerror) from None
        raise


def _dotlock_excl(lockpath):
    try:
        fd = _create(lockpath)
    except FileExistsError:
        return False
    # Until the pid is written the lock is empty: others keep only the
    # mtime rule for it (never "dead"), so it is not broken meanwhile.
    try:
        write_all(fd, f"{os.getpid()}\n{_hostname()}\n".encode())
    except BaseException:
        os.close(fd)
        try:
            os.unlink(lockpath)
        except OSError:
            pass
        raise
    os.close(fd)
    return True


_LOCAL_FS = frozenset((
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs",
    "reiserfs", "jfs", "bcachefs", "nilfs2", "overlay", "vfat", "exfat", "ntfs3",
))
_local_devices = {}


def _on_local_fs(st):
    """Is the file of stat ``st`` on a local (not network) file system?"""
    dev = st.st_dev
    if dev not in _local_devices:
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        # not listed (a chroot: mountinfo leaves out the mounts above its
        # root): a block device's file system is local; network ones
        # (nfs, cifs, fuse) have an anonymous device, major 0
        local = os.major(dev) != 0
        try:
            with open("/proc/self/mountinfo", "rb") as f:
                for line in f:
                    fields = line.split(b" - ", 1)
                    left = fields[0].split()
                    if len(fields) == 2 and len(left) > 2 and left[2].decode() == wanted:
                        local = fields[1].split()[0].decode() in _LOCAL_FS
                        break
        except (OSError, UnicodeDecodeError, IndexError):
            local = False
        _local_devices[dev] = local
    return _local_devices[dev]


def process_gone(pid):
    """True when no process ``pid`` exists (on this host, this namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: it exists, another user's
    return False


def _holder_dead(lockpath, st):
    """Does the lock ``st`` name a process of this host that is gone?"""
    try:
        fd = os.open(lockpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return False
        data = os.read(fd, 512)
    except OSError:
        return False
    finally:
        os.close(fd)
    fields = data.split()
    if not fields or not fields[0].isdigit() or len(fields[0]) > 10:
        return False  # empty (postfix), "0" (procmail), garbage: mtime only
    pid = int(fields[0])
    if pid <= 1:
        return False
    if len(fields) > 1:
        if fields[1].decode("utf-8", "replace") != _hostname():
            return False  # another host's lock (NFS): its pid means nothing here
    elif not _on_local_fs(st):
        return False
    return process_gone(pid)


def break_stale_dotlock(lockpath, stale_after):
    """Remove ``lockpath`` if it is stale (see the module docstring).

    Returns the reason it was removed ("old", "dead pid") or None; a lock
    that vanished by itself counts as removed ("gone").  Raises _NoDotlock
    when the directory does not let us remove it.
    """
    try:
        st = os.lstat(lockpath)
    except FileNotFoundError:
        return "gone"
    if time.time() - st.st_mtime > stale_after:
        reason = f"older than {stale_after:g} s"
    elif _holder_dead(lockpath, st):
        reason = "its process is gone"
    else:
        return None
    try:
        # Only remove the lock we judged: it must not have been replaced.
        again = os.lstat(lockpath)
        if (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):
            os.unlink(lockpath)
            return reason
    except PermissionError as exc:
        # not our directory (Debian's /var/mail): the O_EXCL create found
        # the lock before it could find that out; the helper can remove it
        raise _NoDotlock(exc.strerror) from None
    except OSError:
        pass
    return None


def _helper_cannot_lock(lockpath):
    """After dotlockfile exit 2 (L_TMPLOCK: no temporary lock file): is it
    for good, the directory being writable neither by the helper's setgid
    group nor by everyone?  (A full disk is not for good.)"""
    import stat  # a rare path: not imported on every mbox delivery

    try:
        helper = os.stat(DOTLOCKFILE)
        directory = os.stat(os.path.dirname(lockpath) or ".")
    except OSError:
        return True
    if directory.st_mode & stat.S_IWOTH:
        return False
    return not (helper.st_mode & stat.S_ISGID and directory.st_gid == helper.st_gid
                and directory.st_mode & stat.S_IWGRP)


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
    # a file system on a block device is local: O_EXCL is atomic there
    # (NFS and other network file systems have an anonymous device, major 0)
    excl = os.major(os.fstat(fd).st_dev) != 0
    attempt = 0
    busy = "mailbox"
    while True:
        held_dot = None
        if dot_mode == "link":
            try:
                if try_dotlock(lockpath, excl):
                    held_dot = "link"
                else:
                    busy = lockpath
                    reason = break_stale_dotlock(lockpath, cfg.stale_lock_time)
                    if reason:
                        if log and reason != "gone":
                            log.warning(f"removed stale lock {lockpath}: {reason}")
                        continue
            except _NoDotlock as exc:
                # not under a temporary switch: the setgid helper would run
                # with root as its real uid (users.switched_temporarily)
                if os.access(DOTLOCKFILE, os.X_OK) and not switched_temporarily():
                    dot_mode = "dotlockfile"
                else:
                    dot_mode = None
                    if log:
                        log.warning(
                            f"cannot create {lockpath} ({exc}) and no {DOTLOCKFILE}"
                            " to run: using fcntl locking only"
                        )
                continue
            except OSError as exc:
                raise TempFail(f"cannot create lock {lockpath}: {exc.strerror}", "4.2.0") from None
        elif dot_mode == "dotlockfile":
            code = _run_dotlockfile(["-l", "-r", "0", "-p", "-q", lockpath])
            if code == 0:
                held_dot = "dotlockfile"
            elif code == 1 or (code == 2 and _helper_cannot_lock(lockpath)):
                dot_mode = None
                if log:
                    log.warning(
                        f"{DOTLOCKFILE} cannot create {lockpath} (exit {code}):"
                        " using fcntl locking only"
                    )
                continue
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
                import errno  # busy or failed: not imported by every delivery

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
