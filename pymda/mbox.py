"""mbox appender (SPEC 1.4).

Contract: ``append(path, message, prefix, cfg, uid, log)`` appends one
message to the mbox at ``path`` and returns the number of bytes written,
or raises a DeliveryError.  ``prefix`` is the trace header block
(Return-Path / Delivered-To) that goes before the message.

Format: ``From sender  asctime`` line, the message with ``^>*From `` lines
quoted by one more '>' (mboxrd; ``mbox_quoting = "mboxo"`` quotes only
``^From ``), then one empty line.  The From_ line itself is written by
this module (message.format_from_line).

SECURITY: the file is opened with O_NOFOLLOW|O_NONBLOCK and must be a
regular file with one link, owned by ``uid``; after locking, the path must
still name the same inode (a mail reader may have replaced the mbox while
we waited).  A missing mbox is created 0600 with O_EXCL.

DURABILITY: the write is undone on any error - the file is truncated back
to its length before the append, while still locked - and success is
reported only after fsync.  The existing file is never read (one pread of
its last two bytes to keep messages separated by an empty line), so
appending costs the same for a 2 GB mbox as for an empty one.

Mail readers see new mail when mtime > atime: after writing, an atime at
or past the new mtime is set back to just before it.
"""

import errno
import stat

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import TempFail, from_oserror
from pymda.locking import lock_mbox
from pymda.message import format_from_line

WRITE_BUFFER = 1 << 20


class MailboxRefused(TempFail):
    """The mbox is not a file pymda may write (SPEC 1.9: 4.2.0, exit 75)."""

    status = "4.2.0"


def open_mbox(path, uid, create=True, spool_dir=None):
    """Open (or create) the mbox ``path`` for appending, with the checks."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise MailboxRefused(f"mailbox {path} does not exist") from None
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return open_mbox(path, uid, create=False)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if spool_dir is None:
                try:
                    os.makedirs(parent, mode=0o700, exist_ok=True)
                    return open_mbox(path, uid, create, spool_dir)
                except OSError as exc:
                    raise from_oserror(exc, f"cannot create {parent}") from None
            raise MailboxRefused(f"mail spool directory {parent} does not exist") from None
        except PermissionError:
            hint = ""
            if spool_dir is not None:
                hint = (
                    f"; create it as root: install -m 600 -o {_user(uid)} -g mail"
                    f" /dev/null {path}"
                )
            raise MailboxRefused(f"cannot create mailbox {path}: permission denied{hint}") from None
        except OSError as exc:
            raise from_oserror(exc, f"cannot create mailbox {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MailboxRefused(f"mailbox {path} is a symbolic link") from None
        if exc.errno == errno.EISDIR:
            # SPEC 1.9: not a regular file -> 4.2.0 (a directory fails open()
            # for writing before check_mbox can see it).
            raise MailboxRefused(f"mailbox {path} is not a regular file") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise MailboxRefused(f"cannot open mailbox {path}: {exc.strerror}") from None
        raise from_oserror(exc, f"cannot open mailbox {path}") from None
    try:
        check_mbox(path, fd, uid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def precreate_spool_mbox(path, uid, gid):
    """As root: create a missing spool mbox for ``uid`` (0600), as local(8) does.

    Debian's /var/mail is 2775 root:mail and the user cannot create files
    there.  Only a missing file is created (O_EXCL, O_NOFOLLOW): an existing
    one is left for the checks made as the user.  Group: the spool
    directory's group (mail), else ``gid``.
    """
    try:
        group = os.stat(os.path.dirname(path)).st_gid
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise from_oserror(exc, f"cannot create mailbox {path}") from None
    try:
        os.fchown(fd, uid, group if group else gid)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True


def _user(uid):
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_mbox(path, fd, uid):
    """Refuse what postfix refuses: non-regular, hard-linked, foreign files."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise MailboxRefused(f"mailbox {path} is not a regular file")
    if st.st_nlink != 1:
        raise MailboxRefused(f"mailbox {path} has {st.st_nlink} hard links")
    if st.st_uid != uid:
        raise MailboxRefused(f"mailbox {path} is owned by uid {st.st_uid}, not {uid}")
    if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        raise MailboxRefused(f"mailbox {path} is executable")
    try:
        lst = os.lstat(path)
    except OSError as exc:
        raise from_oserror(exc, f"mailbox {path}") from None
    if (lst.st_dev, lst.st_ino) != (st.st_dev, st.st_ino):
        raise MailboxRefused(f"mailbox {path} changed while it was opened")
    return st


def quote_lines(chunks, style):
    """mboxrd (or mboxo) quoting over a stream of chunks."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield _quote_block(data[:cut], style)
    if carry:
        yield _quote_block(carry, style)


def _quote_block(block, style):
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        if style == "mboxo":
            if line.startswith(b"From "):
                lines[i] = b">" + line
        elif line[:1] in (b"F", b">") and line.lstrip(b">").startswith(b"From "):
            lines[i] = b">" + line
    return b"\n".join(lines)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def append(path, message, prefix, sender, cfg, uid, log=None, spool_dir=None):
    """Append ``message`` to the mbox at ``path``; see the module docstring."""
    while True:
        fd = open_mbox(path, uid, spool_dir=spool_dir)
        try:
            lock = lock_mbox(path, fd, cfg, log)
            try:
                # The mbox may have been replaced while we waited for the lock.
                try:
                    check_mbox(path, fd, uid)
                except MailboxRefused:
                    if os.path.lexists(path) and os.fstat(fd).st_nlink == 0:
                        continue  # our inode was unlinked: open the new one
                    raise
                return _append_locked(fd, path, message, prefix, sender, cfg)
            finally:
                lock.release()
        finally:
            os.close(fd)


def _append_locked(fd, path, message, prefix, sender, cfg):
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        raise from_oserror(exc, f"mailbox {path}") from None
    lead = b""
    if start:
        # Keep messages separated by an empty line whatever wrote before us.
        last = os.pread(fd, 2, max(0, start - 2))
        if not last.endswith(b"\n"):
            lead = b"\n\n"
        elif start >= 2 and last != b"\n\n":
            lead = b"\n"
    head = lead + format_from_line(sender) + prefix
    written = 0
    try:
        if message.needs_quoting:
            body = quote_lines(message.chunks(), cfg.mbox_quoting)
        else:
            body = message.chunks()
        buf = bytearray(head)
        for piece in body:
            buf += piece
            if len(buf) >= WRITE_BUFFER:
                _write_all(fd, buf)
                written += len(buf)
                buf.clear()
        buf += b"\n"
        _write_all(fd, buf)
        written += len(buf)
        os.fsync(fd)
    except BaseException as exc:
        _undo(fd, start)
        if isinstance(exc, OSError):
            raise from_oserror(exc, f"cannot write mailbox {path}") from None
        raise
    _show_new_mail(fd)
    return written


def _undo(fd, length):
    """Truncate back to ``length``; we still hold the locks."""
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    except OSError:
        pass


def _show_new_mail(fd):
    """Keep atime < mtime so mail readers (mutt, biff) report new mail."""
    try:
        st = os.fstat(fd)
        if st.st_atime_ns >= st.st_mtime_ns:
            os.utime(fd, ns=(st.st_mtime_ns - 1_000_000_000, st.st_mtime_ns))
    except OSError:
        pass
