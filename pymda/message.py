"""Intake: standard input -> one spooled, immutable Message.

Contract: ``read(source, limit)`` reads ALL of ``source`` (an fd or a
binary file object) - postfix counts an early exit 0 as delivered, and a
writer must not die of SIGPIPE - and returns a Message, or raises:
  PermFail 5.6.0  empty input
  PermFail 5.2.3  larger than ``limit`` (input is still drained first)
  TempFail        read or spool errors

SPEC 1.1, in the order applied:
- a leading ``From `` line is the MTA's envelope line: removed, its
  address kept as ``from_sender``;
- CRLF becomes LF (a lone CR is left alone, except at the very end,
  where it is taken as the line end it started); a missing final newline
  is added;
- nothing else is changed: pymda never re-serialises a message.

The header is scanned once for the *leading block* (the run of
Return-Path, X-Original-To and Delivered-To lines postfix puts on top),
every Delivered-To (loop control) and the Message-ID (logging).

DURABILITY / MEMORY: messages under SPOOL_IN_MEMORY stay in memory; larger
ones go to an unlinked temporary file (O_TMPFILE in $TMPDIR or /tmp), read
and written in CHUNK-sized pieces, so memory does not grow with size.

LIMITATIONS: header scanning stops after HEADER_SCAN_LIMIT bytes; a
Delivered-To further down a monster header is not seen.
"""

import time

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import PermFail, TempFail, from_oserror
from pymda.record import Record

CHUNK = 1 << 20
SPOOL_IN_MEMORY = 1 << 20
HEADER_SCAN_LIMIT = 1 << 20

_LEADING = (b"return-path", b"x-original-to", b"delivered-to")


class Message(Record):
    """A spooled message (normalised bytes) and what intake learnt of it."""

    __slots__ = (
        "size",  # bytes of the normalised message
        "lines",  # number of LF in it (maildir's W= counts bare LFs itself)
        "from_sender",  # address on the removed From_ line, or None
        "leading",  # ((name, value), ...) of the leading trace block
        "delivered_to",  # every Delivered-To value in the header, lower-case
        "message_id",
        "needs_quoting",  # some line may match ^>*From  (mbox quoting)
        "data",  # the bytes, when kept in memory
        "fd",  # the spool file, when not
    )
    _defaults = {"data": None, "fd": None}

    def chunks(self, size=CHUNK):
        """The normalised message, in pieces."""
        if self.data is not None:
            for i in range(0, len(self.data), size):
                yield self.data[i : i + size]
            return
        offset = 0
        while offset < self.size:
            piece = os.pread(self.fd, min(size, self.size - offset), offset)
            if not piece:
                raise TempFail("message spool file shrank", "4.3.0")
            offset += len(piece)
            yield piece

    def head(self, size=HEADER_SCAN_LIMIT):
        """The first ``size`` bytes (for header work)."""
        if self.data is not None:
            return self.data[:size]
        return os.pread(self.fd, min(size, self.size), 0)


# --- envelope lines ------------------------------------------------------


def parse_from_line(line):
    """Sender of a ``From sender  date`` line: '' for MAILER-DAEMON / <>,
    None when the line names no sender at all (SPEC 1: the next source of
    the -f chain decides then, not a null sender)."""
    parts = line[5:].split(None, 1)
    if not parts:
        return None
    text = parts[0].decode("utf-8", "surrogateescape")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if text.upper() == "MAILER-DAEMON":
        return ""
    return text


def format_from_line(sender, when=None):
    """``From sender  Tue Nov 24 22:08:05 2026`` as postfix writes it."""
    if when is None:
        when = time.time()
    who = sender or "MAILER-DAEMON"
    # No blanks in the address part: they would end it for every reader;
    # no CR/LF (a sender from -f): they would start a forged line.
    for c in " \t\r\n":
        who = who.replace(c, "_")
    return f"From {who}  {time.asctime(time.localtime(when))}\n".encode(
        "utf-8", "surrogateescape"
    )


def same_address(a, b):
    """Do two header or envelope addresses name the same mailbox?  Blanks
    and one layer of angle brackets aside, case-insensitively - the one
    comparison for Delivered-To and Return-Path (trace headers, LOOP
    CONTROL)."""
    return _bare(a) == _bare(b)


def _bare(address):
    return address.strip().strip("<>").strip().lower()


def trace_headers(message, envelope):
    """The Return-Path / X-Original-To / Delivered-To lines pymda puts on
    top (SPEC 1.1), in postfix local(8)'s order.

    Return-Path is added unless the leading block has one for this same
    sender; Delivered-To unless it has one for this recipient;
    X-Original-To only when the envelope carries an ``orcpt`` (LMTP's
    ORCPT=, SPEC 2) and the leading block has none for it.  The values
    are envelope data: CR and LF are removed so nobody can inject headers.
    """
    has_rp = has_dt = has_orcpt = False
    orcpt = getattr(envelope, "orcpt", "")
    for name, value in message.leading:
        if name == "return-path" and same_address(value, envelope.sender):
            has_rp = True
        elif name == "delivered-to" and same_address(value, envelope.recipient):
            has_dt = True
        elif name == "x-original-to" and orcpt and same_address(value, orcpt):
            has_orcpt = True
    out = []
    if not has_rp:
        out.append(f"Return-Path: <{_clean(envelope.sender)}>\n")
    if orcpt and not has_orcpt:
        out.append(f"X-Original-To: {_clean(orcpt)}\n")
    if not has_dt:
        out.append(f"Delivered-To: {_clean(envelope.recipient)}\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def _clean(value):
    return value.replace("\r", "").replace("\n", "")


# --- intake ----------------------------------------------------------------


def _reader(source):
    if isinstance(source, int):
        return lambda n: os.read(source, n)
    raw = getattr(source, "buffer", source)
    read = getattr(raw, "read1", None) or raw.read
    return read


def _open_spool():
    directory = os.environ.get("TMPDIR") or "/tmp"
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        return os.open(directory, flags | os.O_TMPFILE, 0o600)
    except OSError:
        pass
    for _ in range(100):
        name = os.path.join(directory, f".pymda-spool.{os.getpid()}.{os.urandom(6).hex()}")
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise from_oserror(exc, f"cannot create a spool file in {directory}") from None
        os.unlink(name)
        return fd
    raise TempFail(f"cannot create a spool file in {directory}", "4.3.0")


def read(source, limit=0, envelope_line=True):
    """Spool ``source`` and return its Message (see module docstring).

    ``envelope_line=False``: a first line starting with ``From `` is
    message content, not an MTA's envelope line (LMTP data: no client
    sends one, and dropping a line of a message is never right).
    """
    read_raw = _reader(source)
    intake = Intake(limit, envelope_line)
    try:
        while True:
            chunk = _read_some(read_raw)
            if not chunk:
                return intake.finish()
            intake.feed(chunk)
    finally:
        intake.close()


class Intake:
    """The I/O-free intake: ``feed(bytes)`` any number of times, then
    ``finish()`` -> Message (the errors of ``read``).  ``close()`` drops a
    spool file not handed over (always safe to call).

    pymda-lmtpd feeds DATA into one straight from the socket, so the
    message is spooled once, by the engine's own rules (SPEC 1.1).
    Pieces may split anything (a CRLF, the From_ line): the result is the
    same as for one piece.  ``write`` is ``feed`` (a file-like sink).
    """

    def __init__(self, limit=0, envelope_line=True):
        self.limit = limit
        self.envelope_line = envelope_line
        self.first = b""  # the start, until the first line is complete
        self.state = "first"  # "first", "envelope" (skipping it), "body"
        self.parts = []  # in-memory pieces while small
        self.fd = None  # spool file once large
        self.kept = 0  # bytes kept (memory or spool)
        self.lines = 0
        self.from_sender = None
        self.carry_cr = False
        self.tail = b"\n"  # last bytes kept: a quoting probe across pieces
        self.needs_quoting = False
        self.head = bytearray()
        self.too_big = False

    def feed(self, chunk):
        if self.state == "first":
            # The From_ line may arrive split: gather it whole (up to 64 KiB).
            chunk = self.first + chunk
            if b"\n" not in chunk and len(chunk) < 65536:
                self.first = chunk
                return
            self.first = b""
            chunk = self._envelope(chunk)
        if self.state == "envelope":
            # An absurdly long envelope line is still all envelope: skip
            # the rest of it, however long, without keeping it.
            end = chunk.find(b"\n")
            if end < 0:
                return
            self.state = "body"
            chunk = chunk[end + 1 :]
        self._body(chunk)

    write = feed

    def _envelope(self, chunk):
        self.state = "body"
        if not (self.envelope_line and chunk.startswith(b"From ")):
            return chunk
        end = chunk.find(b"\n")
        self.from_sender = parse_from_line(chunk[: end if end >= 0 else None].rstrip(b"\r"))
        if end < 0:
            self.state = "envelope"
            return b""
        return chunk[end + 1 :]

    def _body(self, chunk):
        if self.carry_cr:
            chunk = b"\r" + chunk
            self.carry_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self.carry_cr = True
        if not chunk or self.too_big:
            return
        if b"\r\n" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        kept = self.kept
        if self.limit and kept + len(chunk) > self.limit:
            self.too_big = True
            return
        self.lines += chunk.count(b"\n")
        if not self.needs_quoting:
            probe = self.tail + chunk
            self.needs_quoting = b"\nFrom " in probe or b"\n>" in probe
        # (a short piece keeps the bytes before it: "\nFro" + "m ")
        self.tail = chunk[-6:] if len(chunk) >= 6 else (self.tail + chunk)[-6:]
        head = self.head
        if len(head) < HEADER_SCAN_LIMIT and b"\n\n" not in head:
            head += chunk[: HEADER_SCAN_LIMIT - len(head)]
        if self.fd is None and kept + len(chunk) > SPOOL_IN_MEMORY:
            self.fd = _open_spool()
            _spool_write(self.fd, b"".join(self.parts))
            self.parts = None
        if self.fd is None:
            self.parts.append(chunk)
        else:
            _spool_write(self.fd, chunk)
        self.kept = kept + len(chunk)

    def finish(self):
        """The Message; its spool file (if any) now belongs to it."""
        if self.state == "first" and self.first:
            chunk, self.first = self.first, b""
            self._body(self._envelope(chunk))
        # SPEC 1.1: a missing final newline is added.  A CR at the very end
        # is the first half of a line end whose LF never came: it becomes
        # that LF.
        limit, kept = self.limit, self.kept
        ending = b""
        if self.carry_cr or (kept and self.tail[-1:] != b"\n"):
            ending = b"\n"
        if self.too_big or (limit and kept + len(ending) > limit):
            raise PermFail(f"Message is too large (limit {limit} bytes)", "5.2.3")
        if kept + len(ending) == 0:
            raise PermFail("Empty message refused", "5.6.0")
        if ending:
            if self.fd is None:
                self.parts.append(ending)
            else:
                _spool_write(self.fd, ending)
            kept += len(ending)
            self.lines += 1
            if len(self.head) < HEADER_SCAN_LIMIT:
                self.head += ending
        leading, delivered_to, message_id = scan_header(bytes(self.head))
        fd, self.fd = self.fd, None
        return Message(
            size=kept,
            lines=self.lines,
            from_sender=self.from_sender,
            leading=leading,
            delivered_to=delivered_to,
            message_id=message_id,
            needs_quoting=self.needs_quoting,
            data=b"".join(self.parts) if fd is None else None,
            fd=fd,
        )

    def close(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _read_some(read_raw):
    while True:
        try:
            return read_raw(CHUNK)
        except InterruptedError:
            continue
        except OSError as exc:
            raise from_oserror(exc, "reading the message") from None


def _spool_write(fd, data):
    """durable.write_all with the spool's status (errno kept for LMTP)."""
    from pymda.durable import write_all  # only past SPOOL_IN_MEMORY: not on every start

    try:
        write_all(fd, data)
    except OSError as exc:
        error = from_oserror(exc, "spooling the message")
        error.errno = exc.errno  # pymda-lmtpd: 452 4.3.1 for a full disk
        raise error from None


def from_bytes(data):
    """A Message from bytes already in memory (redelivery, tests)."""
    import io

    return read(io.BytesIO(data))


def scan_header(head):
    """(leading block, Delivered-To values, Message-ID) of a header.

    The header ends at the first empty line.  Folded lines continue the
    field before them.
    """
    end = head.find(b"\n\n")
    if head.startswith(b"\n"):
        end = 0
    block = head if end < 0 else head[: end + 1]
    leading = []
    in_leading = True
    delivered_to = []
    message_id = None
    fields = []
    for line in block.split(b"\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            # Not a header field (broken message): stop at it, as readers do.
            break
        fields.append((name.strip().lower(), [value]))
    for name, values in fields:
        value = b" ".join(v.strip() for v in values).decode("utf-8", "surrogateescape")
        text = name.decode("ascii", "replace")
        if in_leading and name in _LEADING:
            leading.append((text, value))
        else:
            in_leading = False
        if name == b"delivered-to":
            delivered_to.append(value.strip().lower())
        elif name == b"message-id" and message_id is None:
            message_id = value.strip()
    return tuple(leading), tuple(delivered_to), message_id
