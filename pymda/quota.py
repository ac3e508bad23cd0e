"""Quotas: Maildir++ ``maildirsize``, mbox file size, limits per user.

Contract (deliver.py, policy.py and admin_quota.py are the callers):

- ``limits(cfg, identity) -> (storage_bytes, messages)``: ``[users."name"]``
  overrides the global ``quota_storage`` / ``quota_messages``; 0 = none.
- ``check(target, size, cfg) -> Hold``: before ``size`` bytes go to a
  Maildir or mbox target, raise PermFail("Mailbox is full", "5.2.2")
  (exit 77), or TempFail(..., "4.2.2") with ``quota_full_tempfail``, when
  the message would exceed a limit.  No limit -> returns None at once: no
  file I/O, no import.  Other target kinds are not counted.  It returns
  a Hold (usage before the message; for a Maildir the quota lock, held
  shared) that the caller
  keeps until the message is written and its line appended
  (``record``/``maildir.account``), then gives to ``release(hold)``.  A
  Maildir that does not exist yet is created (root, tmp/new/cur) and gets
  its ``maildirsize``, as with dovecot.
- ``record(target, size, cfg)``: after a message of ``size`` bytes was
  written to a Maildir, append ``"<size> 1\\n"`` to its ``maildirsize``
  with one O_APPEND write, if that file exists.  Never raises: the mail
  is already delivered.
- ``usage(cfg, identity, target) -> (bytes, messages)``: read-only view
  for pymda-policyd and pymda-admin (``messages`` is None for mbox).
- ``recalculate(target, cfg) -> (bytes, messages)``: rebuild
  ``maildirsize`` now (``pymda-admin quota --recalc``).

``size`` is the number of bytes as stored (what ``,S=`` says), so that a
recalculation agrees with the appended lines.

BOUNDARY: a message that brings usage to exactly the limit is accepted,
one byte more is refused; with a message limit, the N-th message is
accepted and the N+1-th refused.  This is dovecot's rule (quota.c:
refuse when ``ceil < size`` where ``ceil = limit - used``) and courier's.

MAILDIRSIZE FORMAT (courier's README.maildirquota, as dovecot's
quota-maildir.c reads and writes it): the first line holds the limits,
``<bytes>S,<count>C`` (``0S`` when there is none, a zero part left
out); every further line is ``<bytes> <count>`` (signed), summed.  The
file is rebuilt by scanning ``new/`` and ``cur/`` of the Maildir root
and of every ``.Folder`` (size from ``,S=`` when the name has it, else
lstat) when it
  - is missing, unreadable as numbers, holds a NUL, or sums negative;
  - is 5120 bytes or larger (dovecot reads at most 5120 bytes and then
    recalculates; courier says "over 5120");
  - carries limits other than the configured ones (pymda's config is the
    authority, like dovecot's ``quota_rule = *:...``);
  - says the message being delivered would not fit (the mailbox would go
    over a limit; for read-only views: is over) and either has more than
    one ``<bytes> <count>`` line or is older than 15 minutes (courier's
    rule; so mail a client deleted without updating the file makes room
    before anything is refused, and a mailbox at exactly its limit is
    recounted too).
A final line without a newline is ignored (a writer may be mid-append).
Trash and every other folder count; nothing is exempt.

CONCURRENCY: appends are single ``write()`` calls on an O_APPEND
descriptor, atomic on a local file system.  A rebuild is written to a
temporary file and renamed over ``maildirsize``, so a reader sees the
old file or the new one, never a mix.  ``pymda-quota.lock`` in the
Maildir root (pymda-private; other MDAs do not take it) is an ``flock``
that a delivery with a limit holds SHARED from its check until its line
is appended, and a rebuild holds EXCLUSIVELY.  So a rebuild never runs
between a delivery's message write and its line: it either counts the
message (and the line goes to no file it replaces) or runs before the
message exists (and the line goes to the new file).  The file therefore
stays equal to a recount however many pymda deliveries and rebuilds
run at once.  A delivery that must rebuild converts its hold to
exclusive and back (not atomic, harmless: it has written nothing yet);
a second rebuilder re-reads the fresh file instead of scanning again.

SECURITY: every open is O_NOFOLLOW (a user's symlink cannot make a root
process read, truncate or create another file) and O_NONBLOCK (a FIFO
named ``maildirsize`` cannot hang a delivery or pymda-policyd); a
``maildirsize`` that is not a regular file is untrusted, and numbers in
it or in ``,S=`` names are ASCII decimals of at most 19 digits (anything
else is corrupt, never a crash); the scan uses lstat.
The lock is a small flock of our own rather than the ``filelock``
package: filelock 3.x opened its lock file with O_TRUNC, following
symlinks (unsafe in a directory the mail user controls; 4.x fixed it, and
pyproject does not pin a version), it cannot give a lock file created by
root to the mailbox owner, and it is one more import.  A root process
that rebuilds a user's file (``pymda-admin quota --recalc``) gives the
new file to the mailbox owner.

LIMITATIONS:
- check and write are not one atomic step: two deliveries racing near
  the limit may both pass and overshoot by one message, as with dovecot
  and courier (the Maildir++ quota is advisory by design).
- A rebuild racing with a delivery by another MDA (or a pymda delivery
  without any limit, which appends to an existing maildirsize without
  taking the lock, keeping the plain path lock-free) can lose that
  delivery's appended line until the next rebuild (Maildir++ accepts
  this; dovecot rechecks directory mtimes, pymda does not).
- A refused delivery into a Maildir that did not exist leaves the new,
  empty Maildir (and its maildirsize) behind, as dovecot does.
- mbox: only the target file's size counts (not other mbox folders);
  the message limit does not apply (counting means reading the file).
- NFS: O_APPEND is not atomic there (neither for dovecot).
"""

import errno
import os
import stat
import time

from pymda.record import Record

MAILDIRSIZE = "maildirsize"
LOCK_NAME = "pymda-quota.lock"
MAX_FILE_SIZE = 5120
STALE_SECONDS = 15 * 60

FULL_TEXT = "Mailbox is full"
FULL_PERM = "5.2.2"
FULL_TEMP = "4.2.2"


# --- limits ----------------------------------------------------------------


def limits(cfg, identity):
    """(storage_bytes, messages) for ``identity``; 0 means no limit."""
    from pymda.users import settings

    table = settings(cfg, identity)
    storage = table.get("quota_storage", cfg.quota_storage)
    messages = table.get("quota_messages", cfg.quota_messages)
    return storage, messages


def full_error(cfg):
    """The DeliveryError for a full mailbox (5.2.2, or 4.2.2 in tempfail mode)."""
    from pymda.errors import PermFail, TempFail

    if cfg.quota_full_tempfail:
        return TempFail(FULL_TEXT, FULL_TEMP)
    return PermFail(FULL_TEXT, FULL_PERM)


def exceeds(storage, messages, used_bytes, used_count, size, count=1):
    """Would ``size`` more bytes (``count`` more messages) pass a limit?

    At the limit is allowed; one byte or one message over is not.
    ``used_count`` None (mbox) skips the message limit.
    """
    if storage and used_bytes + size > storage:
        return True
    if messages and used_count is not None and used_count + count > messages:
        return True
    return False


# --- the delivery-path API ---------------------------------------------------


class Hold(Record):
    """What ``check()`` found: the quota lock's fd (Maildir, held shared;
    None for an mbox) and the usage before this delivery."""

    __slots__ = ("fd", "used_bytes", "used_count", "storage", "messages")


def check(target, size, cfg):
    """Raise the 'Mailbox is full' error if ``size`` bytes do not fit.

    Returns a Hold (None when no limit applies): the caller keeps it until
    the message is written and accounted, then ``release()``s it.
    """
    storage, messages = limits(cfg, target.identity)
    if not storage and not messages:
        return None
    kind = target.kind
    if kind == "mbox":
        used = mbox_size(target.path)
        if storage and exceeds(storage, 0, used, None, size):
            raise full_error(cfg)
        return Hold(fd=None, used_bytes=used, used_count=None, storage=storage, messages=0)
    if kind != "maildir":
        return None
    root = target.path
    fd = _hold(root, target.identity, cfg.lock_timeout)
    try:
        used_bytes, used_count = _usage_held(
            fd, root, storage, messages, size, target.identity, cfg.lock_timeout,
        )
        if exceeds(storage, messages, used_bytes, used_count, size):
            raise full_error(cfg)
    except BaseException:
        os.close(fd)
        raise
    return Hold(fd=fd, used_bytes=used_bytes, used_count=used_count, storage=storage,
                messages=messages)


def release(hold):
    """Give up a Hold from ``check()`` (None is fine)."""
    if hold is not None and hold.fd is not None:
        os.close(hold.fd)


def record(target, size, cfg=None):
    """Account one delivered message in ``maildirsize`` (if it exists)."""
    if target.kind == "maildir":
        from pymda.maildir import account

        account(target.path, size)


def usage(cfg, identity, target):
    """(bytes, messages) in use, read-only (messages None for mbox)."""
    if target.kind == "mbox":
        return mbox_size(target.path), None
    storage, messages = limits(cfg, identity)
    return maildir_usage(target.path, storage, messages, write=False)


def recalculate(target, cfg):
    """Rebuild ``maildirsize`` from a scan; returns (bytes, messages)."""
    if target.kind != "maildir":
        return usage(cfg, target.identity, target)
    storage, messages = limits(cfg, target.identity)
    return rebuild(target.path, storage, messages, owner=target.identity,
                   timeout=cfg.lock_timeout)


# --- mbox --------------------------------------------------------------------


def mbox_size(path):
    """Size of the mbox file, 0 when it does not exist yet."""
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


# --- maildirsize: parse and format (pure) ------------------------------------


MAX_DIGITS = 19  # int64, what courier and dovecot parse into


def parse_number(text):
    """A decimal from a maildirsize file or a ``,S=`` name, or None.

    ASCII digits only, an optional ``-``, at most MAX_DIGITS digits:
    ``int()`` alone takes ``+5``, ``1_0`` and non-ASCII digits, rejects
    ``'\u00b2'`` (which ``str.isdigit`` accepts) and raises on more than
    4300 digits - a user's file must be "corrupt", never a crash.
    """
    digits = text[1:] if text.startswith("-") else text
    if not 0 < len(digits) <= MAX_DIGITS or digits.strip("0123456789"):
        return None
    return int(text)


def parse_limits(line):
    """'<bytes>S,<count>C' -> (bytes, count); None if malformed."""
    storage = messages = 0
    for part in line.split(","):
        part = part.strip()
        value = parse_number(part[:-1])
        if value is None or value < 0:
            return None
        if part[-1] == "S":
            storage = value
        elif part[-1] == "C":
            messages = value
        else:
            return None
    return storage, messages


def format_limits(storage, messages):
    """The first line as dovecot writes it: '0S' when there is no limit."""
    parts = []
    if storage or not messages:
        parts.append(f"{storage}S")
    if messages:
        parts.append(f"{messages}C")
    return ",".join(parts)


def format_maildirsize(storage, messages, used_bytes, used_count):
    return f"{format_limits(storage, messages)}\n{used_bytes} {used_count}\n".encode()


def parse_maildirsize(data):
    """bytes of a maildirsize file -> (limits, total_bytes, total_count, lines).

    ``limits`` is (storage, messages) or None when the first line is not
    understood; ``lines`` counts the ``<bytes> <count>`` lines.  Returns
    None when the file is corrupt (NUL, a bad line, a negative sum).
    """
    if b"\0" in data:
        return None
    end = data.rfind(b"\n")
    if end < 0:
        return None
    try:
        text = data[:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    file_limits = parse_limits(lines[0])
    total_bytes = total_count = 0
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 2:
            return None
        n_bytes, n_count = parse_number(fields[0]), parse_number(fields[1])
        if n_bytes is None or n_count is None:
            return None
        total_bytes += n_bytes
        total_count += n_count
    if total_bytes < 0 or total_count < 0:
        return None
    return file_limits, total_bytes, total_count, len(lines) - 1


def read_maildirsize(root, storage, messages, size=0, count=0, now=None):
    """Trusted (bytes, count) from ``root/maildirsize``, or None to rebuild.

    ``size`` / ``count``: the message about to be delivered (0 / 0 for a
    read-only view).  A file by which it would not fit is trusted only
    when it has one usage line and is fresh (courier's rule).
    """
    # O_NONBLOCK: a FIFO in its place would block the open for ever
    # (and with it every pymda-policyd worker thread that asks).
    try:
        fd = os.open(os.path.join(root, MAILDIRSIZE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None  # a FIFO, a directory...: untrusted, rebuilt
        data = os.read(fd, MAX_FILE_SIZE)
        mtime = st.st_mtime
    finally:
        os.close(fd)
    if len(data) >= MAX_FILE_SIZE:
        return None
    parsed = parse_maildirsize(data)
    if parsed is None:
        return None
    file_limits, used_bytes, used_count, lines = parsed
    if file_limits != (storage, messages):
        return None
    if exceeds(storage, messages, used_bytes, used_count, size, count):
        # Would not fit: trust only a fresh single-line file (courier).
        if now is None:
            now = time.time()
        if lines > 1 or mtime < now - STALE_SECONDS:
            return None
    return used_bytes, used_count


# --- scanning and rebuilding -------------------------------------------------


def size_from_name(name):
    """The ',S=<size>' of a Maildir file name, or None."""
    at = name.find(",S=")
    if at < 0:
        return None
    digits = name[at + 3:]
    n = 0
    while n < len(digits) and digits[n] in "0123456789":
        n += 1
    if n == 0 or (n < len(digits) and digits[n] not in ":,"):
        return None
    return parse_number(digits[:n])


def _scan_dir(path):
    used_bytes = used_count = 0
    try:
        entries = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    with entries:
        for entry in entries:
            size = size_from_name(entry.name)
            if size is None:
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # expunged while we looked
            used_bytes += size
            used_count += 1
    return used_bytes, used_count


def folder_dirs(root):
    """The Maildir root and every Maildir++ ``.Folder`` directory in it."""
    dirs = [root]
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name not in (".", "..") and \
                        entry.is_dir(follow_symlinks=False):
                    dirs.append(os.path.join(root, name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return dirs


def scan(root):
    """(bytes, count) of every message in new/ and cur/ of every folder."""
    used_bytes = used_count = 0
    for folder in folder_dirs(root):
        for sub in ("new", "cur"):
            b, c = _scan_dir(os.path.join(folder, sub))
            used_bytes += b
            used_count += c
    return used_bytes, used_count


def maildir_usage(root, storage, messages, write=True, owner=None, timeout=60):
    """(bytes, count) from maildirsize; rebuild it when it cannot be trusted.

    ``write=False`` (policyd, admin without --recalc) never writes: an
    untrusted file is replaced by a scan in memory only.
    """
    found = read_maildirsize(root, storage, messages)
    if found is not None:
        return found
    if not write:
        return scan(root)
    return rebuild(root, storage, messages, owner=owner, timeout=timeout, reuse=True)


def rebuild(root, storage, messages, owner=None, timeout=60, reuse=False):
    """Scan and write a fresh maildirsize, holding the quota lock exclusively.

    ``reuse``: if another process rebuilt the file while we waited for the
    lock, take its numbers instead of scanning again.  A Maildir that does
    not exist yet is empty and gets no file.
    """
    if not os.path.isdir(root):
        return 0, 0
    lock_fd = _open_lock(root, owner)
    try:
        _flock(lock_fd, True, timeout, root)
        if reuse:
            found = read_maildirsize(root, storage, messages)
            if found is not None:
                return found
        return _rebuild_locked(root, storage, messages, owner)
    finally:
        os.close(lock_fd)


def _rebuild_locked(root, storage, messages, owner):
    used_bytes, used_count = scan(root)
    _write_atomically(
        os.path.join(root, MAILDIRSIZE),
        format_maildirsize(storage, messages, used_bytes, used_count),
        owner,
    )
    return used_bytes, used_count


def _hold(root, owner, timeout):
    """The quota lock of ``root`` held shared (creating the Maildir root).

    CONCURRENCY: a delivery holds it shared from its check until its line
    is in ``maildirsize``; a rebuild holds it exclusively.  So no rebuild
    ever runs between a delivery's message write and its line: a rebuild
    either counts the message and sees no line for it later, or does not
    see the message and the line goes to the new file.
    """
    fd = _open_lock(root, owner, create=True)
    try:
        _flock(fd, False, timeout, root)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _usage_held(fd, root, storage, messages, size, owner, timeout):
    """(bytes, count) with the shared hold ``fd``; rebuilds when untrusted.

    A rebuild converts the hold to exclusive and back (flock conversions
    are not atomic: another rebuild may run in between, which is harmless
    as this delivery has written nothing yet).
    """
    found = read_maildirsize(root, storage, messages, size, 1)
    if found is not None:
        return found
    _flock(fd, True, timeout, root)
    try:
        found = read_maildirsize(root, storage, messages, size, 1)
        if found is None:
            found = _rebuild_locked(root, storage, messages, owner)
    finally:
        _flock(fd, False, timeout, root)
    return found


def _chown_to(fd, owner):
    if owner is not None and os.geteuid() == 0 and owner.uid != 0:
        os.fchown(fd, owner.uid, owner.gid)


def _open_lock(root, owner, create=False):
    """The lock file's descriptor (created 0600, given to ``owner``).

    ``create``: a missing Maildir root is created first (the first
    delivery into a fresh Maildir creates maildirsize, as dovecot does).
    """
    path = os.path.join(root, LOCK_NAME)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            if not create:
                raise
            from pymda.maildir import ensure_maildir

            ensure_maildir(root)
            fd = os.open(path, flags, 0o600)
    except OSError as exc:
        from pymda.errors import from_oserror

        raise from_oserror(exc, f"quota lock {path}") from None
    try:
        _chown_to(fd, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _flock(fd, exclusive, timeout, root):
    """flock ``fd`` (exclusive or shared) within ``timeout`` seconds, or TempFail."""
    from pymda.durable import flock_with_deadline

    def busy():
        from pymda.errors import TempFail

        raise TempFail(f"quota lock {os.path.join(root, LOCK_NAME)} busy", "4.2.0") from None

    flock_with_deadline(fd, timeout, busy, shared=not exclusive)


def _write_atomically(path, data, owner):
    """durable.write_atomically with the status of ``path``."""
    from pymda.durable import write_atomically

    try:
        write_atomically(path, data, owner=owner)
    except OSError as exc:
        from pymda.errors import from_oserror

        raise from_oserror(exc, f"writing {path}") from None
