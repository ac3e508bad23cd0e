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

IMAP STATE HEADERS: ``X-IMAP``, ``X-IMAPbase``, ``X-UID``, ``Status``,
``X-Status``, ``X-Keywords`` and ``Content-Length`` fields (any case,
with their folded lines) are removed from the message header before the
append, so that a sender cannot set dovecot's flags, keywords or UIDs.
Only the header is read for it (streamed, in windows); the body and
Maildir deliveries are untouched.  ``stored_chunks`` is that form (also
used by redeliver to recognise a message already appended).

DURABILITY: the write is undone on any error - the file is truncated back
to its length before the append, while still locked - and success is
reported only after fsync.  The existing file is never read (one pread of
its last two bytes to keep messages separated by an empty line), so
appending costs the same for a 2 GB mbox as for an empty one.
A kill -9 cannot undo its own write: a durable append record (start,
length, pid, host, where its bytes hold "From ") is written before the
data and marked done after the fsync; the next append, under the lock,
undoes a dead writer's partial message when nothing else was appended
after it (``recover``; the exact rule and its limits: docs/mbox.md).

Mail readers see new mail when mtime > atime: after writing, an atime at
or past the new mtime is set back to just before it.
"""

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.durable import fsync_file, pwrite_all, write_all
from pymda.errors import TempFail, from_oserror
from pymda.locking import _hostname, lock_mbox, process_gone
from pymda.message import CHUNK, format_from_line

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
        import errno  # a failure: not imported by every delivery

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


def _is_regular(st):
    return st.st_mode & 0o170000 == 0o100000  # stat.S_ISREG: no "stat" import (~0.1 ms)


def check_mbox(path, fd, uid):
    """Refuse what postfix refuses: non-regular, hard-linked, foreign files."""
    st = os.fstat(fd)
    if not _is_regular(st):
        raise MailboxRefused(f"mailbox {path} is not a regular file")
    if st.st_nlink != 1:
        raise MailboxRefused(f"mailbox {path} has {st.st_nlink} hard links")
    if st.st_uid != uid:
        raise MailboxRefused(f"mailbox {path} is owned by uid {st.st_uid}, not {uid}")
    if st.st_mode & 0o111:  # S_IXUSR | S_IXGRP | S_IXOTH
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
    if b"From " not in block:
        return block  # no line can match ^>*From
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        if style == "mboxo":
            if line.startswith(b"From "):
                lines[i] = b">" + line
        elif line[:1] in (b"F", b">") and line.lstrip(b">").startswith(b"From "):
            lines[i] = b">" + line
    return b"\n".join(lines)


# --- IMAP-server headers (SPEC 1.4, last bullet) ---------------------------

# Fields an IMAP server keeps its own state in when it serves an mbox
# (flags, UIDs, keywords, message boundaries): a sender must not set them.
IMAP_STATE_FIELDS = (
    b"x-imapbase", b"x-imap", b"x-uid", b"status", b"x-status", b"x-keywords",
    b"content-length",
)
_FIELD_PEEK = 1024  # bytes of a line enough to decide whether it is one of them
_SCAN_WINDOW = 1 << 16


def _state_field(line):
    """Does ``line`` (its first bytes) start one of IMAP_STATE_FIELDS?

    The name may be followed by blanks before the colon (RFC 5322 obs-syntax;
    readers strip them).  A line cut short by the peek window while still
    in the blanks counts as a match: it is dropped rather than risk it.
    """
    if not line or line[:1] not in b"xXsScC":
        return False
    low = line[:16].lower()
    for name in IMAP_STATE_FIELDS:
        if low.startswith(name):
            rest = line[len(name):].lstrip(b" \t")
            if rest[:1] == b":" or (not rest and len(line) >= _FIELD_PEEK):
                return True
    return False


def _read_at(message, offset, size):
    if message.data is not None:
        return message.data[offset:offset + size]
    return os.pread(message.fd, size, offset)


def _lines(message):
    """(start, first bytes, end) of each line, from the message's start.

    Streamed: windows of _SCAN_WINDOW bytes; a longer line is skipped
    through without being kept.  The caller stops at the header's end.
    """
    size = message.size
    base = 0
    buf = _read_at(message, 0, _SCAN_WINDOW)
    pos = 0
    while base + pos < size:
        nl = buf.find(b"\n", pos)
        if nl < 0 and pos and base + len(buf) < size and len(buf) - pos < _FIELD_PEEK:
            base += pos  # refill so that the line's start is in the window
            buf = _read_at(message, base, _SCAN_WINDOW)
            pos = 0
            continue
        start = base + pos
        peek = buf[pos:pos + _FIELD_PEEK]
        while nl < 0 and base + len(buf) < size:
            base += len(buf)
            buf = _read_at(message, base, _SCAN_WINDOW)
            pos = 0
            nl = buf.find(b"\n")
        end = base + (nl + 1 if nl >= 0 else len(buf))
        yield start, peek, end
        pos = end - base


def _kept_ranges(message):
    """(start, end) byte ranges of the message that go into the mbox.

    Everything but the IMAP_STATE_FIELDS lines of the header (with their
    folded continuation lines).  The header ends at the first empty line;
    only the header is read.
    """
    keep_from = 0  # start of the run of kept lines (while not dropping)
    dropping = False
    header_end = message.size  # no empty line: all header
    for start, peek, _ in _lines(message):
        if peek[:1] == b"\n":
            header_end = start
            break
        if peek[:1] in (b" ", b"\t"):
            drop = dropping  # a folded line belongs to the field above it
        else:
            drop = _state_field(peek)
        if drop and not dropping and start > keep_from:
            yield keep_from, start
        elif dropping and not drop:
            keep_from = start
        dropping = drop
    if dropping:
        keep_from = header_end
    if message.size > keep_from:
        yield keep_from, message.size


def _kept_chunks(message):
    for start, end in _kept_ranges(message):
        if start == 0 and end == message.size:
            yield from message.chunks()
            return
        while start < end:
            piece = _read_at(message, start, min(CHUNK, end - start))
            if not piece:
                raise TempFail("message spool file shrank", "4.3.0")
            start += len(piece)
            yield piece


def stored_chunks(message, cfg):
    """The message as it goes into an mbox after its From_ line and trace
    headers: IMAP state fields removed from the header, From-quoted."""
    chunks = _kept_chunks(message)
    if message.needs_quoting:
        return quote_lines(chunks, cfg.mbox_quoting)
    return chunks


def append(path, message, prefix, sender, cfg, uid, log=None, spool_dir=None, home=None):
    """Append ``message`` to the mbox at ``path``; see the module docstring.

    ``home``: the user's home, where the append record goes when the
    mbox's directory does not let the user create it (Debian's /var/mail).
    """
    while True:
        fd = open_mbox(path, uid, spool_dir=spool_dir)
        try:
            lock = lock_mbox(path, fd, cfg, log)
            try:
                # The mbox may have been replaced while we waited for the lock.
                try:
                    st = check_mbox(path, fd, uid)
                except MailboxRefused:
                    if os.path.lexists(path) and os.fstat(fd).st_nlink == 0:
                        continue  # our inode was unlinked: open the new one
                    raise
                records = _record_paths(path, st, home)
                recover(fd, path, st, records, log)
                return _append_locked(fd, path, st, records, message, prefix, sender, cfg)
            finally:
                lock.release()
        finally:
            os.close(fd)


def _append_locked(fd, path, st, records, message, prefix, sender, cfg):
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
    if message.data is not None:  # small: transform it once
        body = (b"".join(stored_chunks(message, cfg)),)
        marks = FromMarks((head, body[0], b"\n"))
    else:  # spooled: one more pass (the record must come before the data)
        body = None
        marks = FromMarks(_chain(head, stored_chunks(message, cfg)))
    record = _write_record(records, st, start, len(lead), marks, head)
    written = 0
    try:
        buf = bytearray(head)
        for piece in body or stored_chunks(message, cfg):
            buf += piece
            if len(buf) >= WRITE_BUFFER:
                write_all(fd, buf)
                written += len(buf)
                buf.clear()
        buf += b"\n"
        write_all(fd, buf)
        written += len(buf)
        fsync_file(fd)
    except BaseException as exc:
        _undo(fd, start)
        if isinstance(exc, OSError):
            raise from_oserror(exc, f"cannot write mailbox {path}") from None
        raise
    finally:
        _drop_record(record)
    _show_new_mail(fd)
    return written


def _undo(fd, length):
    """Truncate back to ``length``; we still hold the locks."""
    try:
        os.ftruncate(fd, length)
        fsync_file(fd)
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


# --- crash-safe append (SPEC 1.4; the rule is in docs/mbox.md) -------------

RECORD_MAGIC = b"pymda-append/1"
_RECORD_HEAD = 4096  # first bytes of the append kept in the record


RECORD_DONE = b"done\n"  # the first line of a record with no append under way
# What recovery reads of a record: one is under 30 KB (4 KiB of head in hex,
# at most 256 From marks); a longer file's first line does not parse, and an
# unparsable record never cuts the mbox.
_RECORD_READ = 1 << 16


def _record_paths(path, st, home):
    """Where the append record of mbox ``path`` goes, in order of choice:
    ``.<name>.pymda-append`` beside it (hidden: mbox folder listings skip
    it; kept between appends and rewritten in place: an overwrite and an
    fdatasync cost a third of creating, fsyncing and removing a file),
    else ``~/.pymda-append.<dev>.<inode>`` of the mbox (created and
    removed for each append: its name follows the mbox's inode).
    -> [(path, kept)]: ``kept`` True for the one kept between appends."""
    directory, base = os.path.split(path)
    paths = [(os.path.join(directory or ".", f".{base}.pymda-append"), True)]
    if home:
        paths.append((os.path.join(home, f".pymda-append.{st.st_dev}.{st.st_ino}"), False))
    return paths


def _start_time(pid):
    """Start time of process ``pid`` in clock ticks since boot (or 0)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _chain(head, chunks):
    yield head
    yield from chunks
    yield b"\n"


class FromMarks:
    """Where the bytes of one append hold ``From `` (anywhere, not only at
    a line start), with the 16 bytes after each: what the recovery accepts
    after the append's start.  ``length``: the append's size.  More than
    MAX marks: ``marks`` is None (the recovery then accepts none but the
    From_ line)."""

    MAX = 256
    AFTER = 16

    def __init__(self, pieces):
        marks = []
        done = 0  # absolute offset: occurrences starting before it are in marks
        base = 0  # absolute offset of buf
        buf = b""
        keep = 5 + self.AFTER - 1
        for piece in pieces:
            buf += piece
            i = buf.find(b"From ")
            while i >= 0 and marks is not None and i + 5 + self.AFTER <= len(buf):
                if base + i >= done:
                    marks.append((base + i, buf[i + 5:i + 5 + self.AFTER]))
                    done = base + i + 1
                    if len(marks) > self.MAX:
                        marks = None
                        break
                i = buf.find(b"From ", i + 1)
            cut = max(0, len(buf) - keep)
            base += cut
            buf = buf[cut:]
        i = buf.find(b"From ")
        while i >= 0 and marks is not None:
            if base + i >= done:
                marks.append((base + i, buf[i + 5:i + 5 + self.AFTER]))
                done = base + i + 1
            i = buf.find(b"From ", i + 1)
        self.length = base + len(buf)
        self.marks = marks

    def encode(self):
        if self.marks is None or len(self.marks) > self.MAX:
            return b"many"
        return b",".join(b"%d:%s" % (pos, after.hex().encode()) for pos, after in self.marks) \
            or b"none"

    @staticmethod
    def decode(text):
        if text == b"many":
            return None
        if text == b"none":
            return {}
        marks = {}
        for item in text.split(b","):
            pos, _, after = item.partition(b":")
            marks[int(pos)] = bytes.fromhex(after.decode("ascii"))
        return marks


def _write_record(records, st, start, lead, marks, head):
    """Write the record of the append about to start and make it durable.

    Returns (path, fd, kept) or None when no place would take it (the
    append then goes ahead unprotected, as before this existed).
    """
    pid = os.getpid()
    text = (b"%s dev=%d ino=%d start=%d lead=%d length=%d pid=%d since=%d host=%s head=%s"
            b" froms=%s\n") % (
        RECORD_MAGIC, st.st_dev, st.st_ino, start, lead, marks.length, pid, _start_time(pid),
        _hostname().encode("utf-8", "surrogateescape"), head[:_RECORD_HEAD].hex().encode(),
        marks.encode())
    for rpath, kept in records:
        rfd, size = _open_record(rpath, kept)
        if rfd is None:
            continue  # not ours to write there (or a foreign record in the way)
        try:
            if size:
                # in place: a shorter record leaves old bytes after its
                # newline (only the first line counts); the size rarely
                # changes, so fdatasync writes the data block alone
                pwrite_all(rfd, text, 0)
                os.fdatasync(rfd)
            else:
                write_all(rfd, text)
                fsync_file(rfd)
        except OSError:
            _drop_record((rpath, rfd, kept))
            continue
        return rpath, rfd, kept
    return None


def _open_record(rpath, kept):
    """(fd, size) of the record file to write, or (None, 0): a new file in
    the home; the kept file beside the mbox only when it is ours."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        if not kept:
            return os.open(rpath, flags | os.O_EXCL, 0o600), 0
        rfd = os.open(rpath, flags | os.O_NONBLOCK, 0o600)
    except OSError:
        return None, 0
    try:
        rst = os.fstat(rfd)
        if _is_regular(rst) and rst.st_uid == os.geteuid() and rst.st_nlink == 1:
            return rfd, rst.st_size
    except OSError:
        pass
    os.close(rfd)
    return None, 0


def _drop_record(record):
    """Mark our record done (the kept one) or remove it - only ours: the
    path must still be our inode.  Not made durable: a record that comes
    back after a power cut describes a complete append, which recovery
    leaves as it is."""
    if record is None:
        return
    rpath, rfd, kept = record
    try:
        if kept:
            pwrite_all(rfd, RECORD_DONE, 0)
        elif os.fstat(rfd).st_ino == os.lstat(rpath).st_ino:
            os.unlink(rpath)
    except OSError:
        pass  # left behind: harmless, it describes a complete append
    finally:
        os.close(rfd)


def _parse_record(data):
    fields = data.split(b"\n", 1)[0].split()
    if not fields or fields[0] != RECORD_MAGIC:
        return None
    rec = {}
    for field in fields[1:]:
        key, _, value = field.partition(b"=")
        rec[key.decode("ascii", "replace")] = value
    try:
        for key in ("dev", "ino", "start", "lead", "length", "pid", "since"):
            rec[key] = int(rec[key])
        rec["host"] = rec["host"].decode("utf-8", "surrogateescape")
        rec["head"] = bytes.fromhex(rec["head"].decode("ascii"))
        rec["froms"] = FromMarks.decode(rec["froms"])
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return rec


def _writer_alive(rec):
    if rec["pid"] <= 1 or process_gone(rec["pid"]):
        return False
    return not rec["since"] or _start_time(rec["pid"]) in (0, rec["since"])


def recover(fd, path, st, records, log=None):
    """Undo a dead writer's unfinished append to the (locked) mbox ``fd``.

    For each record found (normally the kept one beside the mbox, marked
    done, and one failed open() in the home): settle it, then mark it done
    (the kept one) or remove it.  Raises TempFail 4.2.0 when the record's
    writer is still running (it lost its lock, or is stopped).
    """
    for rpath, kept in records:
        try:
            rfd = os.open(rpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            rst = os.fstat(rfd)
            data = os.read(rfd, _RECORD_READ)
        except OSError:
            data = rst = None
        finally:
            os.close(rfd)
        if rst is None or not _is_regular(rst) or rst.st_uid != os.geteuid():
            if log:
                log.warning(f"ignoring {rpath}: not a record pymda wrote as this user")
            continue
        if data.startswith(RECORD_DONE):
            continue
        _settle(fd, path, st, rpath, _parse_record(data), log)
        try:
            if kept:
                rfd = os.open(rpath, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    pwrite_all(rfd, RECORD_DONE, 0)
                finally:
                    os.close(rfd)
            else:
                os.unlink(rpath)
        except OSError:
            pass


def _only_our_froms(fd, start, size, rec):
    marks = rec["froms"]
    if marks is None:  # too many to record: only our From_ line may be there
        marks = {rec["lead"]: rec["head"][rec["lead"] + 5:rec["lead"] + 5 + FromMarks.AFTER]}
    after = FromMarks.AFTER
    pos = start
    while pos < size:
        piece = os.pread(fd, min(CHUNK + 4 + after, size - pos), pos)
        if not piece:
            break
        i = piece.find(b"From ")
        while 0 <= i < CHUNK:
            ours = marks.get(pos + i - start)
            seen = piece[i + 5:i + 5 + after]
            if ours is None or ours[:len(seen)] != seen:
                return False
            i = piece.find(b"From ", i + 1)
        pos += CHUNK
    return True


def _settle(fd, path, st, rpath, rec, log):
    def warn(text):
        if log:
            log.warning(f"{path}: {text} ({rpath})")

    if rec is None:
        warn("unreadable append record removed")
        return
    if (rec["dev"], rec["ino"]) != (st.st_dev, st.st_ino):
        return  # about a file that is no longer this mbox
    if rec["host"] != _hostname():
        warn(f"unfinished append of host {rec['host']} left as it is: its writer"
             " cannot be checked from here")
        return
    if _writer_alive(rec):
        raise MailboxRefused(f"mailbox {path} has an unfinished append by running process"
                             f" {rec['pid']}")
    start, length = rec["start"], rec["length"]
    size = os.fstat(fd).st_size
    tail = size - start
    if tail <= 0 or tail >= length:
        return  # nothing written, or complete (or more appended: not ours to judge)
    head = rec["head"]
    got = os.pread(fd, min(tail, len(head)), start)
    if got != head[:len(got)]:
        warn("unfinished append record does not match the mailbox: left as it is")
        return
    # Whoever appends to an mbox starts with "From " - at a line start or
    # not (procmail and postfix do not end a cut line first): any "From "
    # that is not one of ours, at its place with the bytes after it, means
    # someone appended after the crash.
    if not _only_our_froms(fd, start, size, rec):
        warn("unfinished append followed by other mail: left as it is")
        return
    try:
        os.ftruncate(fd, start)
        fsync_file(fd)
    except OSError as exc:
        raise from_oserror(exc, f"cannot undo the unfinished append in {path}") from None
    warn(f"removed the unfinished message ({tail} of {length} bytes) that process"
         f" {rec['pid']} left when it died")
