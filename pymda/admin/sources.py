"""Redelivery sources: recognise a SOURCE and read its messages one at a time.

Contract:
- ``open_source(name, mbox_quoting="mboxrd", stdin=None)`` recognises
  ``name`` by its content and validates ALL of it before returning a
  ``Source``: an mbox (plain, gzip, bzip2, xz/lzma), a Maildir directory
  (its ``cur/`` and ``new/``), a single RFC 5322 message file, or ``-``
  (standard input, spooled to an unlinked temporary file first).  Any
  problem -- unreadable, empty, binary junk, unrecognised type, a
  directory that is not a Maildir, truncated or corrupt compressed data, a
  first line that is neither a ``From `` line nor a header field --
  raises ``SourceError`` whose text names the source.  Because the whole
  source is checked before the first message is handed out, nothing is
  ever delivered from a broken source.
- ``Source.count`` is the number of messages; iterating ``Source.items()``
  yields one ``Item`` at a time: ``position`` (``"#17"`` for the 17th
  message of an mbox, ``"cur/NAME"`` in a Maildir), ``reader`` (an object
  with ``.read(n)`` giving the message bytes without any ``From `` line;
  valid only until the next item is requested), ``flags`` (the Maildir
  ``:2,`` flags of a ``cur/`` file, e.g. ``"RS"``, ``""`` for none;
  None for ``new/`` and for other sources) and ``from_sender`` (the address of the mbox
  ``From `` line, ``""`` for MAILER-DAEMON, None when there is none).
  Memory does not grow with the size of the source: only message
  boundaries (two integers and the From_ sender per message) are kept.
  A source that changes after the check (cut short, rewritten): the
  message that meets the change gets a reader raising OSError ("source
  changed while reading") and no item follows it.
- ``MboxSplitter`` is the mbox splitting alone, without I/O:
  ``feed(bytes)`` -> the ``Span``s (start, end, sender) complete so far,
  ``finish()`` -> the rest, ``SplitError`` for what is not an mbox.  It
  costs one pass over the bytes whatever the headers claim (see its
  docstring); ``MboxSource`` feeds it the decompressed stream.
- ``Source.stat()`` is the fstat of what was opened (None for ``-``), so
  a caller can tell a source that is also its target; ``Source.close()``
  releases the file descriptors.

mbox SPLITTING (decided here, see also LIMITATIONS):
- The first line must be a ``From `` line.  After it, a message ends at a
  ``From `` line that follows an empty line, or at one that carries an
  asctime date (``From sender Tue Nov 24 22:08:05 2026``, mutt's test:
  procmail adds only a newline, no empty line, after a message that
  lacked a final newline), or at the end of the file.  An empty line just
  before the ``From `` line is the separator and not part of the message.
  A well-written mbox quotes every ``^From `` body line, so the extra
  conditions only keep an unquoted ``From my point of view`` in the middle
  of a paragraph, from a careless writer, from splitting a message.
- ``Content-Length:`` (mboxcl/mboxcl2, Solaris and old SysV writers): when
  a message's header has one AND it is consistent -- exactly that many
  body bytes are followed by the end of the file, a ``From `` line, or an
  empty line and a ``From `` line -- the body is exactly that long, even
  if it contains unquoted ``From `` lines.  An inconsistent value (the
  usual case after someone edited the file) is ignored and the message is
  split by ``From `` lines as above.
- Un-quoting.  mboxrd writers (pymda's own default, mutt with
  mbox_type=mboxrd, mblaze) add one ``>`` to every ``^>*From `` line; mboxo
  writers (Python's ``mailbox``, procmail, postfix local(8), mutt's
  default) add one only to ``^From `` lines, so a stored ``>From `` is
  ambiguous there.  The file does not say which convention wrote it, so
  the reader follows the config key ``mbox_quoting`` (the convention pymda
  itself writes with): ``"mboxrd"`` (default) removes one ``>`` from every
  ``^>+From `` line; ``"mboxo"`` turns only ``^>From `` back into
  ``^From ``.  Both restore the overwhelmingly common case -- a body line
  that started with ``From `` -- byte for byte, whatever wrote the file.
  They differ only for lines starting ``>>From ``: reading an mboxo file
  in mboxrd mode loses one ``>`` from such a line.  A body line that was
  literally ``>From `` in the original becomes ``From `` under either
  rule when the file is mboxo: mboxo cannot represent it.

SECURITY: sources are opened read-only (``O_NOATIME`` where the kernel
allows it, i.e. as the owner or root, so a redelivery does not even change
access times; ``O_NOFOLLOW`` is NOT used: an admin may name a symlink).
Nothing here ever writes to a source.  Everything is opened with the
rights of the calling process: redeliver calls ``open_source`` after it
has switched to the user the mail is for, so every path component of a
source is resolved with that user's rights (docs/redeliver.md).

LIMITATIONS:
- A Maildir source is its own ``cur/`` and ``new/`` only: Maildir++
  sub-folders (``.Work/``) are separate sources, redelivered with ``-m``.
  ``tmp/`` is never read (files there are, by definition, incomplete).
- mboxo cannot tell a quoted ``From `` line from an original ``>From ``
  one (see above); no reader can.
- A message's file in a Maildir source is opened when its turn comes,
  relative to the directory opened by ``open_source``.
- Compressed sources are decompressed twice (once to check and find the
  message boundaries, once to read them): a CPU cost, no extra disk.
"""

import errno
import os
import stat

from pymda.message import parse_from_line
from pymda.record import Record

# How much of a file libmagic and the first-line check look at.
_HEAD = 65536
# Longest piece of a line read at once (longer lines come in pieces).
_PIECE = 65536
# How much of a source is read (decompressed) at once to split it.
_CHUNK = 1 << 18
# Read a message region in one piece below this size (then un-quote with
# one C-level pass); stream it line by line above it.
_WHOLE = 1 << 20

_COMPRESSED = {
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
    "application/x-bzip2": "bzip2",
    "application/x-xz": "xz",
    "application/x-lzma": "xz",
}


class SourceError(Exception):
    """A SOURCE that cannot be redelivered; str() names it and says why."""


class Item(Record):
    __slots__ = ("position", "reader", "flags", "from_sender")
    _defaults = {"flags": None, "from_sender": None}


# --- opening without touching atime ----------------------------------------


def open_readonly(path, dir_fd=None, directory=False):
    """fd of ``path`` opened read-only, O_NOATIME when permitted.

    O_NONBLOCK: opening a FIFO must not wait for a writer (the caller
    refuses what is not a regular file); on files it changes nothing.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    if directory:
        flags |= os.O_DIRECTORY
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime, dir_fd=dir_fd)
        except PermissionError:
            pass  # EPERM: O_NOATIME needs ownership (or CAP_FOWNER)
    return os.open(path, flags, dir_fd=dir_fd)


# --- recognition -------------------------------------------------------------


def _magic_mime(head):
    try:
        import magic
    except ImportError as exc:  # python-magic or libmagic1 missing
        raise SourceError(
            f"cannot recognise sources: python-magic/libmagic unavailable ({exc})"
        ) from None
    return magic.from_buffer(head, mime=True)


def is_from_line(line):
    """An mbox separator candidate: ``From `` and then something."""
    return line.startswith(b"From ") and len(line.strip()) > 5


def _is_header_line(line):
    """RFC 5322 field: printable ASCII name (no space, no colon), then ':'."""
    colon = line.find(b":")
    if colon <= 0:
        return False
    return all(33 <= c <= 126 for c in line[:colon])


def classify_text(head):
    """'mbox' | 'message' from the first line of decompressed content."""
    first = head.split(b"\n", 1)[0]
    if is_from_line(first):
        return "mbox"
    if _is_header_line(first):
        return "message"
    return None


# --- the mbox splitter (I/O-free) ---------------------------------------------------


class SplitError(Exception):
    """Not an mbox; str() says why (without the source's name)."""


class Span(Record):
    """One message of an mbox: bytes ``start``..``end`` of the (decompressed)
    stream, From_ line excluded; ``sender`` from that From_ line."""

    __slots__ = ("start", "end", "sender")


class _FromLine:
    """A line that starts with ``From ``: a possible message start."""

    __slots__ = ("pos", "end", "blank", "dated", "is_from", "sender", "cl", "body")

    def __init__(self, pos, head, blank, dated):
        self.pos = pos  # offset of the line
        self.end = None  # offset after it (None while a long line is skipped)
        self.blank = blank  # length of the empty line just before it, or 0
        self.dated = dated is not None
        self.is_from = is_from_line(head)
        self.sender = parse_from_line(head)
        self.cl = None  # Content-Length of the header after it, when valid
        self.body = None  # where that header ended: None open, -1 no body


class MboxSplitter:
    """Sans-I/O mbox splitter: ``feed(bytes)`` -> list of the ``Span``s
    complete so far, ``finish()`` -> the rest; ``SplitError`` when the
    stream is not an mbox.  The rules are the module's (mbox SPLITTING).

    LINEAR whatever the headers say: the bytes are looked at once, in
    order, and never again.  Only lines starting ``From `` (each with the
    Content-Length of the header that follows it) are remembered, from
    the message being split on; a message whose Content-Length is not
    settled yet waits, and is settled from that list alone (is there a
    From_ line, or an empty line and one, at body + length?), never by
    reading back.  So a source where every message claims
    ``Content-Length: 99999999`` costs one pass, plain or compressed (it
    used to rescan to the end for every message: quadratic).

    Memory: the current line's first ``_PIECE`` bytes, and the From_ lines
    of the messages not settled yet (all of them, in the worst case above:
    a few dozen bytes each, as the boundaries the caller keeps anyway).
    Body lines are found with ``bytes.find`` (a ``\\nFrom `` search), not
    line by line; header lines are examined one by one.
    """

    def __init__(self):
        import re

        # A From_ line with an asctime date (mutt's is_from() test).
        self._dated = re.compile(
            rb"From \S+ +(?:\S+ +)?[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d{1,2}:\d\d"
        ).match
        self._buf = b""
        self._base = 0  # stream offset of _buf[0]
        self._i = 0  # next index of _buf to look at
        self._mode = "first"  # "first" | "header" | "body"
        self._skip = None  # rest of a long line to skip: its _FromLine or True
        self._group = []  # From_ lines whose header is still open
        self._cl = (-1, None)  # (offset, value) of the group's last Content-Length
        self._lines = []  # From_ lines from the current message's on
        self._starts = []  # their offsets (for bisect)
        self._cur = 0  # index in _lines of the message being split
        self._scan = 1  # next index to test as a separator
        self._seen = 0  # every From_ line before this offset is in _lines
        self._eof = -1  # stream length, known at finish()
        self._tail_blank = 0  # length of an empty last line

    # -- public ---------------------------------------------------------------

    def feed(self, data):
        """Take the next bytes of the stream; Spans now complete."""
        self._buf += data
        self._process(final=False)
        return self._resolve(final=False)

    def finish(self):
        """End of the stream: the remaining Spans."""
        self._process(final=True)
        buf = self._buf
        self._eof = self._base + len(buf)
        self._tail_blank = 1 if buf.endswith(b"\n\n") else 2 if buf.endswith(b"\n\r\n") else 0
        if self._group:
            self._close_header(-1)
        if self._skip is not None:
            if self._skip is not True:
                self._skip.end = self._eof
            self._skip = None
        if self._mode == "first":
            raise SplitError("not an mbox: the first line is not a 'From ' line")
        self._seen = self._eof + 3
        return self._resolve(final=True)

    # -- finding the From_ lines ---------------------------------------------------

    def _process(self, final):
        buf = self._buf
        n = len(buf)
        i = self._i
        while i < n:
            if self._skip is not None:
                e = buf.find(b"\n", i)
                if e < 0:
                    i = n
                    break
                if self._skip is not True:
                    self._skip.end = self._base + e + 1
                self._skip = None
                i = e + 1
                continue
            if self._mode == "body":
                k = buf.find(b"\nFrom ", i - 1)
                if k < 0:
                    i = n if final else max(i, n - 4)
                    break
                i = k + 1
            # A line starts at i: its first piece.
            e = buf.find(b"\n", i, i + _PIECE)
            if e >= 0:
                head, nxt = buf[i : e + 1], e + 1
            elif n - i >= _PIECE:
                head, nxt = buf[i : i + _PIECE], None
            elif final:
                head, nxt = buf[i:], n
            else:
                break  # wait for the end of the line
            self._line(buf, i, head)
            if nxt is None:
                self._skip = self._skip or True
                i += _PIECE
            else:
                i = nxt
        self._i = i
        self._seen = self._base + i
        cut = max(0, i - 3)  # keep 3 bytes: is the line before a From_ line empty?
        if cut:
            self._buf = buf[cut:]
            self._base += cut
            self._i = i - cut

    def _line(self, buf, i, head):
        """Look at the line at ``buf[i]`` (``head``: its first piece)."""
        pos = self._base + i
        mode = self._mode
        if mode == "first":
            if not is_from_line(head):
                raise SplitError("not an mbox: the first line is not a 'From ' line")
            if not head.endswith(b"\n"):
                raise SplitError(
                    f"not an mbox: the first line is longer than {_PIECE} bytes or unended"
                )
            self._from_line(pos, head, 0)
        elif mode == "body":  # head starts with "From "
            blank = 1 if buf[i - 2 : i] == b"\n\n" else 2 if buf[i - 3 : i] == b"\n\r\n" else 0
            self._from_line(pos, head, blank)
        elif head in (b"\n", b"\r\n"):  # in a header, from here on
            self._close_header(pos + len(head))
            self._mode = "body"
        elif head.startswith(b"From "):
            self._from_line(pos, head, 0)
        elif head[:15].lower() == b"content-length:":
            value = head[15:].strip()
            self._cl = (pos, int(value) if value.isdigit() and len(value) <= 19 else None)

    def _from_line(self, pos, head, blank):
        line = _FromLine(pos, head, blank, self._dated(head))
        if head.endswith(b"\n"):
            line.end = pos + len(head)
        else:
            self._skip = line  # (or the end of the stream: finish())
        if self._mode != "header" or line.dated:
            # A new header starts after it (a dated From_ line inside a
            # header ends that header: it is a separator).
            if self._group:
                self._close_header(-1)
            self._mode = "header"
        self._group.append(line)
        self._lines.append(line)
        self._starts.append(pos)

    def _close_header(self, body):
        """The open header ends: its body starts at ``body`` (-1: none)."""
        cl_pos, cl = self._cl
        for line in self._group:
            line.body = body
            if body >= 0 and cl_pos > line.pos:
                line.cl = cl  # the last Content-Length after it wins
        self._group = []
        self._cl = (-1, None)

    # -- settling message boundaries ---------------------------------------------------

    def _resolve(self, final):
        out = []
        lines = self._lines
        while self._cur < len(lines):
            line = lines[self._cur]
            if line.end is None or line.body is None:
                break  # its header (or its own line) is not complete yet
            if line.cl is not None:
                after = self._after_content_length(line.body + line.cl, final)
                if after is None:
                    break  # not settled yet
                if after is not False:
                    out.append(Span(start=line.end, end=line.body + line.cl,
                                    sender=line.sender))
                    self._cur = after if after >= 0 else len(lines)
                    self._scan = self._cur + 1
                    continue
            # Split by From_ lines: the next one after an empty line, or dated.
            j = max(self._scan, self._cur + 1)
            while j < len(lines) and not (lines[j].blank or lines[j].dated):
                j += 1
            self._scan = j
            if j < len(lines):
                sep = lines[j]
                out.append(Span(start=line.end, end=sep.pos - sep.blank, sender=line.sender))
                self._cur, self._scan = j, j + 1
                continue
            if not final:
                break
            end, tail = self._eof, self._tail_blank
            if tail and end - tail > line.end:
                end -= tail
            out.append(Span(start=line.end, end=end, sender=line.sender))
            self._cur = len(lines)
        if self._cur > 1024 and self._cur * 2 > len(lines):
            del lines[: self._cur], self._starts[: self._cur]
            self._scan -= self._cur
            self._cur = 0
        return out

    def _after_content_length(self, end, final):
        """Is a body ending at ``end`` consistent?  The index of the From_
        line that follows it, -1 for the end of the stream, False when
        inconsistent, None when not known yet."""
        from bisect import bisect_left

        j = bisect_left(self._starts, end, self._cur + 1)
        if j < len(self._lines):
            line = self._lines[j]
            if line.is_from and (line.pos == end or (line.blank and line.pos - line.blank == end)):
                return j
        if final:
            tail = self._tail_blank
            if end == self._eof or (tail and end == self._eof - tail):
                return -1
            return False
        if self._seen > end + 2:
            return False  # every From_ line that could follow is known
        return None


# --- the decompressing stream ---------------------------------------------------


def _stream(fd, compression):
    """A seekable binary file object over fd (dup'ed), decompressing."""
    dup = os.dup(fd)  # shares the file offset: rewind it
    os.lseek(dup, 0, os.SEEK_SET)
    raw = open(dup, "rb", buffering=1 << 16)
    if compression is None:
        return raw
    if compression == "gzip":
        import gzip

        return _Closing(gzip.GzipFile(fileobj=raw, mode="rb"), raw)
    if compression == "bzip2":
        import bz2

        return _Closing(bz2.BZ2File(raw, "rb"), raw)
    import lzma

    return _Closing(lzma.LZMAFile(raw, "rb"), raw)


class _Closing:
    """A decompressing file that also closes the file under it (the
    gzip/bz2/lzma classes leave a passed file object open)."""

    def __init__(self, f, raw):
        self.f = f
        self.raw = raw
        self.read = f.read
        self.readline = f.readline
        self.seek = f.seek

    def close(self):
        try:
            self.f.close()
        finally:
            self.raw.close()


def _decode_errors():
    """Exceptions a corrupt or truncated compressed stream raises."""
    import zlib

    errors = [EOFError, zlib.error]
    try:
        import lzma

        errors.append(lzma.LZMAError)
    except ImportError:
        pass
    return tuple(errors)


# --- sources ---------------------------------------------------------------------


class Source:
    """What every source has: a name, a count and ``fd``, the descriptor of
    the file or directory read (closed by ``close``)."""

    kind = "?"

    def __init__(self, name, fd):
        self.name = name
        self.fd = fd
        self.count = 0

    def items(self):
        raise NotImplementedError

    def stat(self):
        """os.stat_result of the file or directory read (None for stdin)."""
        if self.fd is None or self.name == "-":
            return None
        return os.fstat(self.fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MessageSource(Source):
    """One RFC 5322 message in a regular file (or spooled stdin)."""

    kind = "message"

    def __init__(self, name, fd):
        super().__init__(name, fd)
        self.count = 1

    def items(self):
        os.lseek(self.fd, 0, os.SEEK_SET)
        with open(os.dup(self.fd), "rb", buffering=0) as f:
            yield Item(position="#1", reader=f)


class MboxSource(Source):
    """An mbox, possibly compressed; boundaries found by ``_scan``."""

    def __init__(self, name, fd, compression, mbox_quoting):
        super().__init__(name, fd)
        self.compression = compression
        self.kind = "mbox" + (f"+{compression}" if compression else "")
        self.rd = mbox_quoting != "mboxo"
        from array import array

        self.starts = array("q")
        self.ends = array("q")
        self.senders = []
        self._scan()
        self.count = len(self.starts)

    def _fail(self, why):
        raise SourceError(f"{self.name}: {why}")

    def _add(self, spans):
        for span in spans:
            self.starts.append(span.start)
            self.ends.append(span.end)
            self.senders.append(span.sender)

    def _scan(self):
        errors = _decode_errors()
        what = f"{self.compression} data" if self.compression else "file"
        try:
            f = _stream(self.fd, self.compression)
            try:
                splitter = MboxSplitter()
                while True:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        break
                    self._add(splitter.feed(chunk))
                self._add(splitter.finish())
            finally:
                f.close()
        except SplitError as exc:
            self._fail(str(exc))
        except errors as exc:
            self._fail(f"truncated or corrupt {what} ({exc})")
        except OSError as exc:
            self._fail(f"cannot read {what}: {exc.strerror or exc}")

    def items(self):
        """The messages in order (see the module docstring for a source
        that changed after _scan)."""
        f = _stream(self.fd, self.compression)
        errors = _decode_errors() + (OSError,)
        try:
            for i in range(self.count):
                start, end = self.starts[i], self.ends[i]
                try:
                    f.seek(start)  # forward only: cheap even when decompressing
                    reader = _Region(f, end - start, self.rd, errors)
                except errors as exc:
                    reader = _Failed(_changed(exc))
                yield Item(position=f"#{i + 1}", reader=reader, from_sender=self.senders[i])
                if isinstance(reader, _Failed) or reader.failed:
                    return
        finally:
            f.close()


def _changed(exc):
    """An OSError for what reading a checked source raised: a
    decompressor's error means the source changed since the check."""
    if isinstance(exc, OSError):
        return exc
    return OSError(f"source changed while reading ({exc})")


class _Region:
    """``.read(n)`` over ``length`` bytes of ``f``, un-quoting From_ lines.
    A short or corrupt read (``errors``) is OSError "source changed" and
    sets ``failed``."""

    def __init__(self, f, length, rd, errors=(OSError,)):
        self.f = f
        self.left = length
        self.rd = rd
        self.errors = errors
        self.failed = False
        self.at_line_start = True  # the next readline() piece starts a line

    def _unquote_whole(self, data):
        if b">From " not in data:
            return data
        if not self.rd:
            if data.startswith(b">From "):
                data = data[1:]
            return data.replace(b"\n>From ", b"\nFrom ")
        import re

        return re.sub(rb"(?m)^>(>*From )", rb"\1", data)

    def _unquote_line(self, line):
        if line.startswith(b">"):
            if self.rd:
                stripped = line.lstrip(b">")
                if stripped.startswith(b"From "):
                    return line[1:]
            elif line.startswith(b">From "):
                return line[1:]
        return line

    def read(self, n=-1):
        try:
            return self._read(n)
        except self.errors as exc:
            self.failed = True
            raise _changed(exc) from None

    def _read(self, n):
        if self.left <= 0:
            return b""
        if self.left <= _WHOLE:
            data = self.f.read(self.left)
            if len(data) != self.left:
                raise OSError(f"source changed while reading ({self.left} bytes expected)")
            self.left = 0
            return self._unquote_whole(data)
        # A large message: line by line, bounded memory.
        parts = []
        size = 0
        want = 65536 if n is None or n < 0 else max(n, 1)
        while self.left > 0 and size < want:
            line = self.f.readline(min(self.left, _PIECE))
            if not line:
                raise OSError("source changed while reading")
            self.left -= len(line)
            # A line longer than the piece comes in several pieces: only
            # the first one starts a line and may be un-quoted.
            if self.at_line_start:
                self.at_line_start = line.endswith(b"\n")
                line = self._unquote_line(line)
            else:
                self.at_line_start = line.endswith(b"\n")
            parts.append(line)
            size += len(line)
        return b"".join(parts)


class MaildirSource(Source):
    """A Maildir's ``cur/`` and ``new/`` (never ``tmp/``)."""

    kind = "maildir"

    def __init__(self, name, dir_fd):
        super().__init__(name, dir_fd)
        self.entries = []  # (subdir, name, flags)
        for sub in ("new", "cur"):
            try:
                sub_fd = open_readonly(sub, dir_fd=dir_fd, directory=True)
            except OSError as exc:
                self.fd = None  # open_source closes it
                raise SourceError(
                    f"{name}: not a Maildir: {sub}/: {exc.strerror}"
                ) from None
            try:
                names = [e.name for e in os.scandir(sub_fd) if not e.name.startswith(".")]
            finally:
                os.close(sub_fd)
            names.sort()
            for entry in names:
                flags = None
                if sub == "cur":
                    _, sep, info = entry.rpartition(":2,")
                    flags = info if sep else ""
                self.entries.append((sub, entry, flags))
        self.count = len(self.entries)

    def items(self):
        for sub, entry, flags in self.entries:
            path = f"{sub}/{entry}"
            try:
                fd = open_readonly(path, dir_fd=self.fd)
            except OSError as exc:
                yield Item(position=path, reader=_Failed(exc), flags=flags)
                continue
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, /dev/zero...
                os.close(fd)
                exc = OSError(errno.EINVAL, "not a regular file")
                yield Item(position=path, reader=_Failed(exc), flags=flags)
                continue
            with open(fd, "rb", buffering=0) as f:
                yield Item(position=path, reader=f, flags=flags)


class _Failed:
    """A reader that raises the error met opening the message."""

    def __init__(self, exc):
        self.exc = exc

    def read(self, n=-1):
        raise self.exc


# --- entry point -------------------------------------------------------------------


def _spool_stdin(stdin):
    """Standard input copied to an unlinked temporary file: an fd."""
    import tempfile

    f = tempfile.TemporaryFile()
    try:
        src = stdin.buffer if hasattr(stdin, "buffer") else stdin
        while True:
            chunk = src.read(1 << 16)
            if not chunk:
                break
            f.write(chunk)
        f.flush()
        fd = os.dup(f.fileno())
    except OSError as exc:
        raise SourceError(f"-: cannot read standard input: {exc.strerror or exc}") from None
    finally:
        f.close()
    return fd


def open_source(name, mbox_quoting="mboxrd", stdin=None):
    """Recognise and check ``name``; a Source or SourceError naming it."""
    if name == "-":
        if stdin is None:
            import sys

            stdin = sys.stdin
        fd = _spool_stdin(stdin)
        label = "-"
    else:
        label = name
        try:
            fd = open_readonly(name)
        except IsADirectoryError:
            fd = None
        except OSError as exc:
            raise SourceError(f"{name}: cannot open: {exc.strerror}") from None
        if fd is None:
            try:
                fd = open_readonly(name, directory=True)
            except OSError as exc:
                raise SourceError(f"{name}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            source = MaildirSource(label, fd)
            fd = None
            return source
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{label}: not a regular file, a Maildir or '-'")
        try:
            head = os.pread(fd, _HEAD, 0)
        except OSError as exc:
            raise SourceError(f"{label}: cannot read: {exc.strerror}") from None
        if not head:
            raise SourceError(f"{label}: empty file")
        mime = _magic_mime(head)
        compression = _COMPRESSED.get(mime)
        if compression:
            try:
                f = _stream(fd, compression)
                try:
                    inner = f.read(_HEAD)
                finally:
                    f.close()
            except _decode_errors() + (OSError,) as exc:
                raise SourceError(
                    f"{label}: truncated or corrupt {compression} data ({exc})"
                ) from None
            if not inner:
                raise SourceError(f"{label}: empty {compression} file")
            inner_mime = _magic_mime(inner)
            if inner_mime in _COMPRESSED:
                raise SourceError(f"{label}: compressed twice ({inner_mime} inside {mime})")
            kind = classify_text(inner)
            if kind is None:
                raise SourceError(
                    f"{label}: {compression} data holds no mbox "
                    f"(first line is not a 'From ' line; libmagic says {inner_mime})"
                )
            if kind == "message":
                raise SourceError(
                    f"{label}: compressed sources must be mboxes "
                    "(first line is not a 'From ' line)"
                )
            source = MboxSource(label, fd, compression, mbox_quoting)
            fd = None
            return source
        textual = (
            mime.startswith("text/") or mime.startswith("message/") or mime == "application/mbox"
        )
        kind = classify_text(head)
        if not textual:
            # libmagic calls 8-bit mail "data" now and then: accept it when
            # it still starts like mail (a From_ line, or two header fields).
            second = head.split(b"\n", 2)[1:2]
            if not (kind and second and _is_header_line(second[0])):
                raise SourceError(f"{label}: not a mailbox or a message (libmagic says {mime})")
        if kind is None:
            raise SourceError(
                f"{label}: not an mbox (the first line is not a 'From ' line) "
                f"and not a message (nor a header field); libmagic says {mime}"
            )
        if kind == "mbox":
            source = MboxSource(label, fd, None, mbox_quoting)
        else:
            source = MessageSource(label, fd)
        fd = None
        return source
    finally:
        if fd is not None:
            os.close(fd)
