"""Subscribe Maildir++ folders pymda creates (SPEC 1.2, issue 14).

Contract: ``subscribe(root, folder_dir, timeout)`` adds the folder whose
directory is ``folder_dir`` (``<root>/.Work.Reports``) to
``<root>/subscriptions``, the file dovecot's Maildir++ layout reads for
IMAP LSUB / LIST (SUBSCRIBED).  Returns True when it added a line, False
when the folder was already there.  Raises TempFail (with the reason) when
the file cannot be updated; the caller logs it and goes on: the message
is already delivered, a missing subscription is not worth a retry (which
would duplicate the message).

FORMAT (as dovecot 2.3 writes it, checked with ``doveadm mailbox create
-s`` in the tests): a file that starts with the header ``V<TAB>2`` and an
empty line ("version 2") holds one folder per line with the hierarchy
levels separated by TAB (``Work<TAB>Reports``) and, inside a level, TAB,
CR, LF and \\x01 escaped as \\x01 followed by ``t``, ``r``, ``n``, ``1``.
A file without that header is version 1: one folder per line in the
namespace's own form (``Work.Reports``), and pymda keeps it version 1 as
dovecot does.  A missing file is created as version 2.  Names are the
directory's own (modified UTF-7 or UTF-8 as ``folder_encoding`` made
them), which is the form dovecot stores.

CONCURRENCY: the same protocol as dovecot, so pymda, dovecot and other
pymda processes never lose each other's subscriptions: the lock is
``subscriptions.lock`` created with O_EXCL; its holder writes the whole new
file into it, fsyncs it and renames it over ``subscriptions`` (the rename
releases the lock).  Waiters retry until ``timeout``; a lock file not
modified for LOCK_STALE_SECONDS is stale and removed (dovecot's rule,
30 seconds).

SECURITY: runs with the rights of the mailbox owner.  Every open is
O_NOFOLLOW; a ``subscriptions`` that is a symlink or not a regular file
is refused (TempFail), never read through or replaced; the file is read
up to MAX_FILE_SIZE.

LIMITATIONS: two processes that both find the same stale lock may race
(the second can remove the lock the first just made); stale locks are
rare (a writer died) and 30 seconds old, dovecot has the same window.
Dovecot with ``mail_location`` options that move the
subscriptions file (CONTROL=, SUBSCRIPTIONS=) or a namespace prefix is not
followed: the file is always ``<root>/subscriptions``.
"""

import time

from pymda import fastos as os
from pymda.errors import TempFail
from pymda.durable import fsync_directory, fsync_file, read_all, write_all

FILE_NAME = "subscriptions"
LOCK_SUFFIX = ".lock"
LOCK_STALE_SECONDS = 30
MAX_FILE_SIZE = 1 << 20
VERSION2_HEADER = b"V\t2\n\n"

_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}


def folder_levels(folder_dir):
    """``/m/.Work.Reports`` -> ["Work", "Reports"] (the Maildir++ name)."""
    name = os.path.basename(folder_dir.rstrip("/"))
    return name[1:].split(".")


def format_line(levels, version):
    """The subscriptions line for a folder (without the newline)."""
    if version < 2:
        return ".".join(levels)
    return "\t".join("".join(_ESCAPES.get(c, c) for c in level) for level in levels)


def subscribe(root, folder_dir, timeout=60):
    """Add ``folder_dir``'s folder to ``<root>/subscriptions``; see above."""
    path = os.path.join(root, FILE_NAME)
    lock_fd = _lock(path, timeout)
    lock_path = path + LOCK_SUFFIX
    try:
        old = _read(path)
        version = 2 if old is None or old.startswith(VERSION2_HEADER) else 1
        line = format_line(folder_levels(folder_dir), version).encode("utf-8", "surrogateescape")
        if old is None:
            old = VERSION2_HEADER
        body = old[len(VERSION2_HEADER):] if version == 2 else old
        if line in body.split(b"\n"):
            return False
        if old and not old.endswith(b"\n"):
            old += b"\n"
        data = old + line + b"\n"
        write_all(lock_fd, data)
        fsync_file(lock_fd)
        os.rename(lock_path, path)  # the new file; the lock is gone with it
        lock_path = None
        fsync_directory(root)
        return True
    except OSError as exc:
        raise TempFail(f"cannot update {path}: {exc.strerror}", "4.3.0") from None
    finally:
        os.close(lock_fd)
        if lock_path is not None:
            try:
                os.unlink(lock_path)
            except OSError:
                pass


def _read(path):
    """The file's bytes, None when missing; TempFail if a symlink or odd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP:
            raise TempFail(f"{path} is a symlink: not followed, not subscribed", "4.3.0") from None
        raise
    try:
        import stat

        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TempFail(f"{path} is not a regular file: not subscribed", "4.3.0")
        data = read_all(fd, MAX_FILE_SIZE) if st.st_size <= MAX_FILE_SIZE else None
        if data is None:
            raise TempFail(f"{path} is larger than {MAX_FILE_SIZE} bytes: not subscribed",
                           "4.3.0")
        return data
    finally:
        os.close(fd)


def _lock(path, timeout):
    """Create ``path.lock`` exclusively (dovecot's dotlock); its fd."""
    lock_path = path + LOCK_SUFFIX
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise TempFail(f"cannot lock {path}: {exc.strerror}", "4.3.0") from None
        try:
            st = os.stat(lock_path, follow_symlinks=False)
            if st.st_mtime < time.time() - LOCK_STALE_SECONDS:
                os.unlink(lock_path)  # stale: its writer died
                continue
        except FileNotFoundError:
            continue
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TempFail(f"{lock_path} busy", "4.2.0")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)

