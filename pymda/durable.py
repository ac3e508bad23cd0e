"""Named durability helpers: the few ways pymda makes bytes stay written.

Contract (all raise the OSError of the failing call; callers map it to a
status with ``errors.from_oserror`` and the context only they know):

- ``write_all(fd, data)``: write every byte of ``data`` (``os.write``
  may write fewer than asked: a pipe, a signal, a nearly full disk).
- ``pwrite_all(fd, data, offset)``: the same at ``offset`` (a file
  rewritten in place: the mbox append record).
- ``fsync_file(fd)``: the file's data and metadata reach the disk.
- ``fsync_directory(path)``: a name just created, linked or renamed in
  directory ``path`` reaches the disk (a Maildir's ``new/``; the
  directory of a file replaced by rename).
- ``write_atomically(path, data, mode=0o600, owner=None, sync=True)``:
  readers see the old contents of ``path`` or the new ones, never a part:
  a unique tmp name in the same directory (exclusive create, no symlink
  followed), every byte, fsync (``sync``), rename over ``path``; on any
  failure the tmp file is removed and ``path`` is untouched.  ``owner``:
  an Identity the file is given to when root writes it for a user.
- ``read_all(fd, limit)``: the bytes from ``fd``'s offset to its end, or
  None when there are more than ``limit`` (a small file read whole - a
  config, a .forward, a subscriptions file - that may grow while read).
- ``flock_with_deadline(fd, timeout, busy, shared=False)``: an exclusive
  (or ``shared``) ``flock`` on ``fd`` within ``timeout`` seconds, polling
  with a growing sleep (also converts a lock already held);
  ``busy()`` is called (and what it raises propagates) when the time is
  up, so the caller names its own lock in its TempFail.

DURABILITY: the sequence every writer follows is exclusive create (no
symlink followed) -> write_all -> fsync_file -> link/rename ->
fsync_directory; a delivery is reported done only after the last step.

SECURITY: ``write_atomically`` never opens an existing file: a symlink
planted at the tmp name makes it fail (EEXIST), and rename() replaces a
symlink at ``path`` rather than writing through it.

The module is on the one-shot delivery path (maildir, message intake):
it imports only ``pymda.fastos``; ``fcntl`` and ``time`` are imported by
the one helper that needs them.

LIMITATIONS: ``flock_with_deadline`` polls (flock has no timeout of its
own; a SIGALRM would disturb the callers' signal handling).  The
``filelock`` package, not this module, guards pymda's own state files
(the redeliver record, the forward ledger).
"""

from pymda import fastos as os  # not os: ~1.2 ms of start-up


def write_all(fd, data):
    """Write all of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd, data, offset):
    """Write all of ``data`` to ``fd`` at ``offset`` (the file offset stays)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def read_all(fd, limit):
    """Read ``fd`` to its end: bytes, or None past ``limit`` bytes."""
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)


def fsync_file(fd):
    """Data and metadata of the open file ``fd`` on disk."""
    os.fsync(fd)


def fsync_directory(path):
    """The directory entries of ``path`` on disk (after link/rename/create)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path):
    import time

    host = os.uname().nodename.replace("/", "_")
    return f"{path}.{host}.{os.getpid()}.{time.time_ns()}.tmp"


def write_atomically(path, data, mode=0o600, owner=None, sync=True):
    """Replace ``path`` with ``data`` all at once (see the module docstring)."""
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        try:
            if owner is not None and os.geteuid() == 0 and owner.uid != 0:
                os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, mode)  # the umask must not narrow a shared cache file
            write_all(fd, data)
            if sync:
                fsync_file(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def flock_with_deadline(fd, timeout, busy, shared=False):
    """flock(LOCK_EX, or LOCK_SH) on ``fd`` within ``timeout`` seconds, else ``busy()``."""
    import fcntl
    import time

    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, operation)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                busy()
                raise  # busy() must raise; never return unlocked
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
