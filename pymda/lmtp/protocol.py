"""LMTP server protocol (RFC 2033), asyncio.  Knows nothing about delivery.

Contract: ``LMTPServer(handler, ...)`` serves LMTP on listening sockets
(``await server.start(sockets)``; ``server.stop()`` stops accepting and
lets transactions in flight finish; ``await server.wait_closed()``).  It
parses commands, spools DATA and calls the handler, an object with:

  ``async rcpt(session, recipient, size) -> str``
      The reply line for ``RCPT TO:<recipient>`` (``size``: the MAIL
      ``SIZE=`` value, 0 when not given).  A reply starting with "2"
      accepts the recipient; its ORCPT (or None) is then appended to
      ``transaction.original_recipients``, in step with
      ``transaction.recipients``.
  ``data(session, transaction, spool)`` -> async iterator of str
      After the final ".": one reply line per accepted recipient
      (``transaction.recipients``, in order), each yielded as soon as that
      recipient is done; the server sends it at once (RFC 2033 4.2).
      ``spool`` is a seekable binary file at offset 0 holding the message
      dot-unstuffed, with its line ends as received (see DATA below) -
      or, when the handler has one, what its ``open_spool`` returned.
  ``open_spool(session, transaction)`` (optional) -> a sink with
      ``write(bytes)`` and ``close()``: the server writes the decoded
      message into it as it arrives (pymda's engine intake, so the
      message is spooled once) and closes it after data() is done or
      the transfer failed.

Nothing a client sends can make the server raise: a handler that raises
or yields a malformed or missing reply costs that recipient a
``451 4.3.0`` (the client retries), never the connection, never a
traceback on the wire.

PROTOCOL (RFC 2033, RFC 5321, RFC 1870 SIZE, RFC 2920 PIPELINING,
RFC 2034/3463 ENHANCEDSTATUSCODES, RFC 6152 8BITMIME, RFC 3461 DSN):
- greeting ``220 <host> LMTP pymda ready``; ``LHLO`` answers with
  ``PIPELINING ENHANCEDSTATUSCODES 8BITMIME SIZE[ n] DSN``; HELO/EHLO are
  refused (RFC 2033 4.1: LMTP uses LHLO).
- ``MAIL FROM:<addr> [SIZE=n] [BODY=7BIT|8BITMIME] [RET=FULL|HDRS]
  [ENVID=xtext]``: a SIZE over ``max_size`` is refused at once (552
  5.3.4).  Other parameters: 555.
- ``RCPT TO:<addr> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY]
  [ORCPT=addr-type;xtext]``: at most MAX_RECIPIENTS per transaction
  (452 4.5.3).  An ``rfc822`` (or RFC 6533 ``utf-8``) ORCPT, decoded, is
  the recipient's original recipient; another addr-type is accepted
  and ignored.  Other parameters: 555.
- DSN (RFC 3461): a malformed or repeated NOTIFY/RET/ENVID/ORCPT (bad
  xtext, ENVID over 100 or ORCPT over 500 characters, NEVER combined
  with another keyword) is ``501 5.5.4``.  RET, ENVID and NOTIFY are
  kept on the Transaction but otherwise ignored: the MTA, not the
  delivery agent, sends notifications.
- ``DATA``: 503 when no recipient was accepted (RFC 2033 4.2); else 354,
  then one reply per accepted recipient.  The same address given twice
  is the handler's business (pymda delivers it once, answers twice).
- ``RSET``, ``NOOP``, ``QUIT``; VRFY, EXPN, HELP, ETRN, BDAT, STARTTLS,
  AUTH: 502 (not advertised); anything else 500.
- Replies to pipelined commands are sent together when no further
  complete command is waiting (RFC 2920 3.1).

DATA: decoded by DataDecoder (I/O-free) and streamed to the handler's
sink or an unlinked temporary file in ``spool_dir`` (or $TMPDIR) as it
arrives; memory does not grow with the message.  A line
starting with "." loses that dot (RFC 5321 4.5.2).  The end is
``CRLF . CRLF`` only, as dovecot's strict default (a ``.`` line after
a bare LF, or ended by a bare LF, is data: the SMTP smuggling trick
cannot split one message into two).  Bare LF ends a line for
unstuffing; a bare CR is data.  Line ends are NOT rewritten here: the
delivery engine's intake (message.read) turns CRLF into LF, the one
place that does it for every pymda program.  Bytes over ``max_size``
(counted with CRLF as one byte) are read and dropped; every recipient
then gets 552 5.3.4.

LIMITS (hostile input never crashes the server):
- a command line longer than MAX_COMMAND_LINE: 500 5.5.2, the line is
  skipped without being buffered; NUL or a bare CR in a command: 500;
- MAX_ERRORS error replies on one connection: 421, closed;
- ``idle_timeout`` seconds without a byte from the client (or without
  it reading our replies): 421, closed;
- DEADLINES (slow clients, issue 8 item 11): a command line must be
  complete within ``command_timeout`` seconds of the server starting to
  wait for it; the DATA transfer (up to CRLF.CRLF) within
  ``command_timeout + received / min_data_rate`` seconds of the 354
  (``received``: bytes so far, so a big message sent at least at
  ``min_data_rate`` bytes/s never hits it, and one byte a second gains a
  client nothing).  Past it: 421 4.4.2, closed.  0 turns a deadline off;
- ``max_connections`` concurrent connections: the next ones get 421 at
  once (postfix retries); on inet listeners, ``max_per_address``
  concurrent connections from one client address (a few slow clients on
  one host cannot take every slot): the next from it gets 421 4.7.0.
  With ``shared_count`` set (pymda-lmtpd's workers), ``max_connections``
  counts the connections of every process that shares the count.

SHUTDOWN: ``stop()`` closes the listeners; a connection waiting for a
command outside a transaction gets ``421 4.3.2`` and is closed; one in a
transaction finishes it (DATA, deliveries, replies) and is closed at its
next command.  ``wait_closed()`` returns when every connection is gone.

LIMITATIONS: no BDAT/CHUNKING, no SMTPUTF8, no STARTTLS/AUTH
(LMTP is for a local MTA: unix socket or loopback).
"""

import asyncio
import socket
import tempfile

MAX_COMMAND_LINE = 2048  # RFC 5321 4.5.3.1.4 says 512; extensions may need more
MAX_RECIPIENTS = 1000
MAX_ERRORS = 20
READ_SIZE = 65536
ACCEPT_RETRY = 0.002  # a worker that is not the least loaded looks again after this
ACCEPT_PATIENCE = 0.02  # ... and takes the connection anyway once it waited this long
SPOOL_BUFFER = 256 * 1024

# --- replies ------------------------------------------------------------------

GREETING = "220 {host} LMTP pymda ready"
OK = "250 2.0.0 Ok"
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
BYE = "221 2.0.0 Bye"

UNKNOWN_COMMAND = "500 5.5.2 Error: command not recognized"
LINE_TOO_LONG = "500 5.5.2 Error: line too long"
BAD_CHARACTERS = "500 5.5.2 Error: NUL or bare <CR> in command"
USE_LHLO = "500 5.5.1 Error: this is LMTP (RFC 2033): use LHLO"
NOT_IMPLEMENTED = "502 5.5.1 Error: command not implemented"
NEED_LHLO = "503 5.5.1 Error: send LHLO first"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NO_RECIPIENTS = "503 5.5.1 Error: no valid recipients"
SYNTAX_LHLO = "501 5.5.4 Syntax: LHLO hostname"
SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address>"
SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address>"
NO_ARGUMENTS = "501 5.5.4 Syntax: no arguments allowed"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
BAD_SIZE = "501 5.5.4 Bad SIZE= value"
BAD_BODY = "501 5.5.4 Bad BODY= value"
BAD_DSN_PARAMETER = "501 5.5.4 Bad {name}= value"
DUPLICATE_PARAMETER = "501 5.5.4 Duplicate {name}= parameter"
UNSUPPORTED_PARAMETER = "555 5.5.4 Unsupported option: {name}"
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
INTERNAL_ERROR = "451 4.3.0 Internal error"
SPOOL_FULL = "452 4.3.1 Insufficient system storage"
SPOOL_ERROR = "451 4.3.0 Error: cannot spool the message"
TOO_MANY_ERRORS = "421 4.7.0 {host} Error: too many errors"
TIMEOUT = "421 4.4.2 {host} Error: timeout exceeded"
SHUTTING_DOWN = "421 4.3.2 {host} Service shutting down"
TOO_MANY_CONNECTIONS = "421 4.3.2 {host} Error: too many connections"
TOO_MANY_FROM_ADDRESS = "421 4.7.0 {host} Error: too many connections from your address"

_NO_ARGS = ("RSET", "QUIT", "DATA")
_UNIMPLEMENTED = ("VRFY", "EXPN", "HELP", "ETRN", "TURN", "BDAT", "STARTTLS", "AUTH")
_END = b".\r\n"
# Replies that count towards MAX_ERRORS: the client's mistakes, not the
# handler's answers (a list of unknown users is not an attack).
_PROTOCOL_ERRORS = ("500", "501", "502", "503", "555")


def valid_reply(line):
    """A single reply line: three digits, a space, no control characters."""
    return (
        isinstance(line, str)
        and len(line) >= 4
        and line[:3].isdigit()
        and line[0] in "2345"
        and line[3] == " "
        and not any(c < " " or c == "\x7f" for c in line)
    )


def format_reply(line):
    """Bytes on the wire: one line, at most 512 octets with CRLF (RFC 5321)."""
    data = line.encode("utf-8", "replace")
    if len(data) > 510:
        data = data[:510]
    return data + b"\r\n"


# --- command syntax (pure) --------------------------------------------------------


class SyntaxProblem(Exception):
    """The reply line for a bad MAIL/RCPT argument."""


def parse_path(text, keyword, bad_address):
    """``FROM:<addr> PARAMS`` -> (address, [(NAME, value)]).

    The address comes back in internal form: no angle brackets, no
    source route (RFC 5321 4.1.1.3 says ignore it), a quoted local part
    unquoted.  ``<>`` is "".  Raises SyntaxProblem(reply).
    """
    head = keyword + ":"
    if text[: len(head)].upper() != head:
        raise SyntaxProblem(None)
    rest = text[len(head):].lstrip(" ")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        if end < 0:
            raise SyntaxProblem(bad_address)
        path, rest = rest[1:end], rest[end + 1:]
        if rest and not rest.startswith(" "):
            raise SyntaxProblem(None)
    else:
        # No brackets: tolerated as many servers do, the address ends at a space.
        path, _, rest = rest.partition(" ")
        if not path:
            raise SyntaxProblem(None)
    address = _internal_address(path)
    if address is None:
        raise SyntaxProblem(bad_address)
    params = []
    for word in rest.split(" "):
        if not word:
            continue
        name, eq, value = word.partition("=")
        params.append((name.upper(), value if eq else None))
    return address, params


def _closing_bracket(text):
    quoted = escaped = False
    for i, c in enumerate(text):
        if i == 0:
            continue
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
    return -1


def _internal_address(path):
    if any(c < " " or c == "\x7f" for c in path):
        return None
    if path.startswith("@"):  # source route: @a,@b:user@c
        colon = path.find(":")
        if colon < 0:
            return None
        path = path[colon + 1:]
    if not path.startswith('"'):
        return None if " " in path else path
    out = []
    i = 1
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path):
            out.append(path[i + 1])
            i += 2
            continue
        if c == '"':
            break
        out.append(c)
        i += 1
    else:
        return None  # unterminated quoted string
    rest = path[i + 1:]
    if rest and (not rest.startswith("@") or " " in rest):
        return None
    return "".join(out) + rest


def xtext_decode(text):
    """RFC 3461 4: xtext -> str, or None when malformed.  Printable
    US-ASCII except "+" and "=", and "+XX" (two upper-case hex digits)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "+":
            code = text[i + 1:i + 3]
            if len(code) != 2 or any(h not in "0123456789ABCDEF" for h in code):
                return None
            out.append(chr(int(code, 16)))
            i += 3
            continue
        if not "!" <= c <= "~" or c == "=":
            return None
        out.append(c)
        i += 1
    return "".join(out)


def _unitext_decode(text):
    """RFC 6533 utf-8-addr-xtext: ``\\x{HEX}`` escapes -> characters."""
    out = []
    i = 0
    while i < len(text):
        if text.startswith("\\x{", i):
            end = text.find("}", i)
            digits = text[i + 3:end] if end > 0 else ""
            if not 1 <= len(digits) <= 6 or any(h not in "0123456789ABCDEF" for h in digits):
                return None
            code = int(digits, 16)
            if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                return None  # no Unicode scalar value: it could never be stored (501)
            out.append(chr(code))
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")


def parse_dsn_value(name, value):
    """A DSN parameter's value (RFC 3461 4.1-4.4) -> (ok, kept value).

    RET: "FULL"/"HDRS"; ENVID: the decoded xtext; NOTIFY: a tuple of
    keywords (("NEVER",) alone, or some of SUCCESS/FAILURE/DELAY);
    ORCPT: the original recipient address for ``rfc822`` and ``utf-8``
    addr-types, None for other (valid) types.  ok is False when the
    value is malformed (the client's 501)."""
    if value is None or not value:
        return False, None
    if name == "RET":
        value = value.upper()
        return value in ("FULL", "HDRS"), value
    if name == "ENVID":
        decoded = xtext_decode(value)
        return decoded is not None and len(value) <= 100, decoded
    if name == "NOTIFY":
        words = tuple(w.upper() for w in value.split(","))
        if words == ("NEVER",):
            return True, words
        ok = all(w in _NOTIFY for w in words) and len(set(words)) == len(words)
        return ok, words
    # ORCPT = addr-type ";" xtext
    kind, semi, text = value.partition(";")
    decoded = xtext_decode(text)
    if not semi or not kind or not text or decoded is None or len(value) > 500:
        return False, None
    if not all(c.isalnum() or c == "-" for c in kind) or not kind.isascii():
        return False, None
    kind = kind.lower()
    if kind == "utf-8":
        decoded = _unitext_decode(decoded)
        if decoded is None:
            return False, None
    elif kind != "rfc822":
        return True, None
    if any(c < " " or c == "\x7f" for c in decoded):
        return False, None
    return True, decoded


def _dsn_parameter(seen, name, value):
    """Check one DSN parameter into ``seen``; the 501 reply or None."""
    if name in seen:
        return DUPLICATE_PARAMETER.format(name=name)
    ok, kept = parse_dsn_value(name, value)
    if not ok:
        return BAD_DSN_PARAMETER.format(name=name)
    seen[name] = kept
    return None


def parse_size(value):
    """A SIZE= value -> int, or None when it is not a number."""
    if value is None or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


# --- sessions ------------------------------------------------------------------------


class Transaction:
    """One MAIL ... DATA exchange: what the handler sees."""

    def __init__(self, sender, size=0, body=None):
        self.sender = sender  # "" is the null sender
        self.size = size  # the SIZE= the client declared, 0 if none
        self.body = body  # "7BIT", "8BITMIME" or None
        self.recipients = []  # accepted, in RCPT order
        self.original_recipients = []  # their ORCPT= addresses (or None), in step
        self.ret = None  # DSN RET= ("FULL"/"HDRS") or None: accepted, ignored
        self.envid = None  # DSN ENVID= (decoded) or None: accepted, ignored
        self.data_size = 0  # bytes received (CRLF counted as one)


class Session:
    """One connection: what the handler may look at."""

    def __init__(self, peer):
        self.peer = peer
        self.lhlo = None
        self.transaction = None


class _Closed(Exception):
    """The connection is over (EOF, timeout, QUIT, shutdown)."""


class _Connection:
    def __init__(self, server, reader, writer):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.out = []
        self.errors = 0
        self.session = Session(_peer(writer))
        self.deadline = None  # monotonic time the current line or DATA must end by
        self.idle_task = None  # the task while it waits for a command (fill)
        self.why_cancelled = None  # the reply when fill's task was cancelled by us
        self.address = _client_address(writer)  # inet peer's IP, else None

    # -- I/O -----------------------------------------------------------------

    async def fill(self):
        """Read more bytes into self.buf; _Closed on EOF/timeout/shutdown.

        No task and no asyncio.wait per read (they were a good part of a
        message's CPU): the read is awaited in the connection's own task,
        and a timer - or Server.stop(), for an idle connection - cancels
        that task, which this turns into the 421 reply."""
        server = self.server
        interruptible = self.session.transaction is None
        if interruptible and server.stopping.done():
            await self.say_and_close(SHUTTING_DOWN)
        timeout = server.idle_timeout
        loop = asyncio.get_running_loop()
        if self.deadline is not None:
            left = max(self.deadline - loop.time(), 0)
            timeout = left if timeout is None else min(timeout, left)
        task = asyncio.current_task()
        self.why_cancelled = None
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._cancel, task, TIMEOUT)
        if interruptible:
            self.idle_task = task  # Server.stop() cancels it with SHUTTING_DOWN
        try:
            data = await self.reader.read(READ_SIZE)  # ConnectionError propagates: closed
        except asyncio.CancelledError:
            why = self.why_cancelled
            if why is None:
                raise  # not ours: the server's own shutdown
            task.uncancel()
            self.idle_task = None  # no second interrupt during the 421
            await self.say_and_close(why)
        finally:
            self.idle_task = None
            if timer is not None:
                timer.cancel()
        if not data:
            raise _Closed("eof")
        self.buf += data

    def _cancel(self, task, why):
        if self.why_cancelled is None:
            self.why_cancelled = why
            task.cancel()

    def interrupt(self):
        """Server.stop(): an idle connection waiting for a command gets 421."""
        if self.idle_task is not None:
            self._cancel(self.idle_task, SHUTTING_DOWN)

    def reply(self, line):
        self.out.append(format_reply(line))
        if line[:3] in _PROTOCOL_ERRORS:
            self.errors += 1

    async def flush(self):
        if not self.out:
            return
        self.writer.write(b"".join(self.out))
        self.out = []
        if not self.writer.transport.get_write_buffer_size():
            return  # all sent: drain() would return at once (a task less)
        try:
            await asyncio.wait_for(self.writer.drain(), self.server.idle_timeout)
        except asyncio.TimeoutError:
            raise _Closed("client does not read") from None

    async def say_and_close(self, template):
        self.reply(template.format(host=self.server.hostname))
        try:
            await self.flush()
        except (_Closed, ConnectionError):
            pass
        raise _Closed(template)

    def set_deadline(self, seconds):
        self.deadline = None
        if seconds:
            self.deadline = asyncio.get_running_loop().time() + seconds

    async def read_command(self):
        """The next command line (str), CRLF/LF stripped."""
        skipping = False
        self.set_deadline(self.server.command_timeout)
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = self.buf[:end]
                self.buf = self.buf[end + 1:]
                if skipping:
                    return None  # rest of an over-long line: reply was sent
                if len(line) > MAX_COMMAND_LINE:
                    self.reply(LINE_TOO_LONG)
                    return None
                if line.endswith(b"\r"):
                    line = line[:-1]
                if b"\r" in line or b"\0" in line:
                    self.reply(BAD_CHARACTERS)
                    return None
                return line.decode("utf-8", "surrogateescape")
            if len(self.buf) > MAX_COMMAND_LINE:
                if not skipping:
                    self.reply(LINE_TOO_LONG)
                    skipping = True
                self.buf = b""
            await self.flush()
            await self.fill()

    # -- the conversation ------------------------------------------------------

    async def run(self):
        server = self.server
        self.reply(GREETING.format(host=server.hostname))
        await self.flush()
        while True:
            if server.stopping.done() and self.session.transaction is None:
                await self.say_and_close(SHUTTING_DOWN)
            line = await self.read_command()
            if line is not None:
                await self.command(line)
            if self.errors >= MAX_ERRORS:
                await self.say_and_close(TOO_MANY_ERRORS)
            if b"\n" not in self.buf:
                await self.flush()

    async def command(self, line):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        arg = arg.strip(" ")
        if verb in _NO_ARGS and arg:
            self.reply(NO_ARGUMENTS)
            return
        method = getattr(self, "do_" + verb, None) if verb.isalpha() else None
        if method is not None:
            await method(arg)
        elif verb in ("HELO", "EHLO"):
            self.reply(USE_LHLO)
        elif verb in _UNIMPLEMENTED:
            self.reply(NOT_IMPLEMENTED)
        else:
            self.reply(UNKNOWN_COMMAND)

    async def do_LHLO(self, arg):
        if not arg:
            self.reply(SYNTAX_LHLO)
            return
        self.session.lhlo = arg
        self.session.transaction = None  # LHLO resets, as EHLO does
        size = f"SIZE {self.server.max_size}" if self.server.max_size else "SIZE"
        lines = [self.server.hostname, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", size,
                 "DSN"]
        for line in lines[:-1]:
            self.out.append(format_reply("250-" + line))
        self.reply("250 " + lines[-1])

    def _path(self, arg, keyword, bad, syntax):
        """(address, params) of ``MAIL FROM:``/``RCPT TO:``, or None when
        answered with the problem (``bad`` address, ``syntax`` error)."""
        try:
            return parse_path(arg, keyword, bad)
        except SyntaxProblem as exc:
            self.reply(exc.args[0] or syntax)
            return None

    async def do_MAIL(self, arg):
        if self.session.lhlo is None:
            self.reply(NEED_LHLO)
            return
        if self.session.transaction is not None:
            self.reply(NESTED_MAIL)
            return
        parsed = self._path(arg, "FROM", BAD_SENDER, SYNTAX_MAIL)
        if parsed is None:
            return
        sender, params = parsed
        size = 0
        body = None
        dsn = {}
        for name, value in params:
            if name == "SIZE":
                size = parse_size(value)
                if size is None:
                    self.reply(BAD_SIZE)
                    return
            elif name == "BODY":
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):
                    self.reply(BAD_BODY)
                    return
            elif name in ("RET", "ENVID"):
                problem = _dsn_parameter(dsn, name, value)
                if problem:
                    self.reply(problem)
                    return
            else:
                self.reply(UNSUPPORTED_PARAMETER.format(name=name[:64]))
                return
        if self.server.max_size and size > self.server.max_size:
            self.reply(TOO_BIG)
            return
        txn = self.session.transaction = Transaction(sender, size, body)
        txn.ret = dsn.get("RET")
        txn.envid = dsn.get("ENVID")
        self.reply(MAIL_OK)

    def _transaction(self):
        """The open transaction, or None once ``503 need MAIL`` is said."""
        txn = self.session.transaction
        if txn is None:
            self.reply(NEED_MAIL)
        return txn

    async def do_RCPT(self, arg):
        txn = self._transaction()
        if txn is None:
            return
        parsed = self._path(arg, "TO", BAD_RECIPIENT, SYNTAX_RCPT)
        if parsed is None:
            return
        recipient, params = parsed
        if not recipient:
            self.reply(BAD_RECIPIENT)
            return
        dsn = {}
        for name, value in params:
            if name not in ("NOTIFY", "ORCPT"):
                self.reply(UNSUPPORTED_PARAMETER.format(name=name[:64]))
                return
            problem = _dsn_parameter(dsn, name, value)
            if problem:
                self.reply(problem)
                return
        if len(txn.recipients) >= MAX_RECIPIENTS:
            self.reply(TOO_MANY_RECIPIENTS)
            return
        try:
            answer = await self.server.handler.rcpt(self.session, recipient, txn.size)
        except Exception as exc:  # the handler's bug is a 451, not a crash
            self.server.log_error(f"rcpt <{recipient}>: {exc!r}")
            answer = INTERNAL_ERROR
        if not valid_reply(answer) or answer[0] == "3":
            self.server.log_error(f"rcpt <{recipient}>: bad reply {answer!r}")
            answer = INTERNAL_ERROR
        if answer.startswith("2"):
            txn.recipients.append(recipient)
            txn.original_recipients.append(dsn.get("ORCPT"))
        self.reply(answer)

    async def do_DATA(self, arg):
        txn = self._transaction()
        if txn is None:
            return
        if not txn.recipients:
            self.reply(NO_RECIPIENTS)
            return
        self.reply(START_DATA)
        await self.flush()
        spool, problem = self.open_spool(txn)
        try:
            problem = await self.receive(txn, spool, problem)
            if problem is not None:
                for _ in txn.recipients:
                    self.reply(problem)
            else:
                await self.deliver(txn, spool)
        finally:
            if spool is not None:
                spool.close()
            self.session.transaction = None
        await self.flush()

    async def do_RSET(self, arg):
        self.session.transaction = None
        self.reply(OK)

    async def do_NOOP(self, arg):
        self.reply(OK)

    async def do_QUIT(self, arg):
        self.session.transaction = None
        await self.say_and_close(BYE)

    # -- DATA ---------------------------------------------------------------------

    def open_spool(self, txn):
        """(sink, None) or (None, reply): the handler's intake when it has
        one (``open_spool``), else an unlinked temporary file."""
        opener = getattr(self.server.handler, "open_spool", None)
        try:
            if opener is not None:
                return opener(self.session, txn), None
            return tempfile.TemporaryFile(dir=self.server.spool_dir), None
        except Exception as exc:  # OSError, or the handler's bug: 45x, no crash
            self.server.log_error(f"cannot create a spool file: {exc}")
            return None, _spool_reply(exc)

    async def receive(self, txn, spool, problem):
        """Read the message up to CRLF.CRLF into ``spool``; a reply line on
        failure (too big, spool error) or None.  Every byte is read either
        way, so the conversation stays in step."""
        server = self.server
        decoder = DataDecoder(server.max_size)
        started = asyncio.get_running_loop().time()
        pending = []
        pending_size = 0
        while True:
            pieces, rest = decoder.feed(self.buf)
            self.buf = b""
            if problem is None:
                pending += pieces
                pending_size += sum(map(len, pieces))
                if pending and (decoder.done or pending_size >= SPOOL_BUFFER):
                    problem = self.write_spool(spool, pending)
                    pending = []
                    pending_size = 0
            if decoder.done:
                self.buf = rest
                break
            self.deadline = None
            if server.command_timeout and server.min_data_rate:
                self.deadline = (started + server.command_timeout
                                 + decoder.received / server.min_data_rate)
            await self.fill()
        txn.data_size = decoder.size
        if problem is None and decoder.too_big:
            problem = TOO_BIG
        if problem is None and hasattr(spool, "seek"):  # a file: rewind it for data()
            try:
                spool.flush()
                spool.seek(0)
            except OSError as exc:
                problem = _spool_reply(exc)
        return problem

    def write_spool(self, spool, pieces):
        try:
            spool.write(b"".join(pieces))
        except Exception as exc:  # OSError, or the handler's intake failing
            self.server.log_error(f"spooling the message: {exc}")
            return _spool_reply(exc)
        return None

    async def deliver(self, txn, spool):
        """One reply per accepted recipient, each sent the moment it is known."""
        sent = 0
        replies = self.server.handler.data(self.session, txn, spool)
        try:
            async for answer in replies:
                if sent >= len(txn.recipients):
                    self.server.log_error(f"handler gave more replies than recipients: {answer!r}")
                    break
                if not valid_reply(answer) or answer[0] == "3":
                    self.server.log_error(f"data <{txn.recipients[sent]}>: bad reply {answer!r}")
                    answer = INTERNAL_ERROR
                self.reply(answer)
                sent += 1
                await self.flush()
        except (_Closed, ConnectionError):
            raise
        except Exception as exc:  # the handler's bug: 451 for the rest
            self.server.log_error(f"data: {exc!r}")
        finally:
            # Connection gone or handler done: let it clean up (close its
            # copy of the message) now, not at garbage collection.
            aclose = getattr(replies, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as exc:  # noqa: BLE001
                    self.server.log_error(f"data: closing: {exc!r}")
        for _ in range(sent, len(txn.recipients)):
            self.reply(INTERNAL_ERROR)


class DataDecoder:
    """The DATA decoder, I/O-free: bytes after the 354 -> the message.

    ``feed(data)`` -> (pieces, rest): the message bytes found in ``data``
    (dot-unstuffed, line ends untouched) and, once the end marker was
    seen (``done``), the bytes after it (pipelined commands).  A "." or
    ".\r" at a line start that may begin the end marker is held until the
    next feed.  The rules (RFC 5321 4.5.2; docs/lmtp.md "DATA"):
    - the end is CRLF "." CRLF only: a "." line after a bare LF, or ended
      by a bare LF, is data (no SMTP smuggling);
    - a line (ended by CRLF or a bare LF) starting with "." loses that dot;
    - a bare CR is data.
    ``size`` counts message bytes with CRLF as one (the stored size);
    over ``limit`` (0: none) ``too_big`` is set and nothing more is given
    out, but the input is still consumed up to the end marker.
    ``received`` counts every byte fed (the DATA deadline's measure).
    """

    def __init__(self, limit=0):
        self.limit = limit
        self.size = 0
        self.received = 0
        self.too_big = False
        self.done = False
        self._held = b""
        self._at_start = True  # the next byte starts a line
        self._prev_cr = True  # the line before ended with CRLF (the DATA line did)
        self._last = b"\n"  # the byte before the buffer's first

    def feed(self, data):
        self.received += len(data)
        buf = self._held + data if self._held else data
        self._held = b""
        pieces = []
        i, n = 0, len(buf)
        while i < n:
            if self._at_start:
                if self._prev_cr and buf[i:i + 3] == _END:
                    self.done = True
                    return pieces, buf[i + 3:]
                if n - i < 3 and _END.startswith(buf[i:]):
                    self._held = buf[i:]  # "." or ".\r": wait for the rest
                    return pieces, b""
                self._at_start = False
                if buf[i:i + 1] == b"." and buf[i:i + 2] != b".\n" and buf[i:i + 3] != _END:
                    i += 1  # dot-unstuffing
                    self._last = b"."
                    continue
            nl = buf.find(b"\n.", i)
            stop = n if nl < 0 else nl + 1
            if buf[stop - 1:stop] == b"\n":
                self._at_start = True
                before = buf[stop - 2:stop - 1] if stop - 2 >= i else self._last
                self._prev_cr = before == b"\r"
            self._take(buf[i:stop], pieces)
            i = stop
        return pieces, b""

    def _take(self, piece, pieces):
        if not piece:
            return
        split_crlf = piece[:1] == b"\n" and self._last == b"\r"  # CR came in the last feed
        self._last = piece[-1:]
        self.size += len(piece) - piece.count(b"\r\n") - split_crlf
        if self.too_big:
            return
        if self.limit and self.size > self.limit:
            self.too_big = True
            return
        pieces.append(piece)


def _spool_reply(exc):
    import errno

    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return SPOOL_FULL
    return SPOOL_ERROR


def _client_address(writer):
    """The IP address of an inet peer (the per-address cap's key), else None."""
    try:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
    except Exception:  # noqa: BLE001
        return None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return peer[0] if isinstance(peer, tuple) and peer else None


def _peer(writer):
    try:
        peer = writer.get_extra_info("peername")
    except Exception:  # noqa: BLE001 - purely informative
        return "unknown"
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return peer or "local"


class _Listener:
    """A listening socket served by this process's event loop, one
    connection per wake-up.  With several workers (``shared_count``) a
    worker takes a connection only when it serves no more connections
    than any other worker, else it looks again ACCEPT_RETRY later (and
    takes it anyway after ACCEPT_PATIENCE: a worker never waits for a
    stuck one).  asyncio's own accept loop takes up to 100 pending
    connections at once: the first worker awake got them all, and four
    connections could all land on one of two workers."""

    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.waiting_since = None  # when this worker began to leave a connection
        self.last_pause = 0.0
        self.rearm = None
        self.closed = False
        self.loop.add_reader(self.fd, self._ready)

    def _ready(self):
        server = self.server
        shared = server.shared_count
        if shared is not None and not shared.least_loaded():
            now = self.loop.time()
            # a new wait when the last pause is long past (another worker
            # took that connection): the patience is per waiting connection
            if self.waiting_since is None or now - self.last_pause > 4 * ACCEPT_RETRY:
                self.waiting_since = now
            self.last_pause = now
            if now - self.waiting_since < ACCEPT_PATIENCE:
                self._pause(ACCEPT_RETRY)
                return
        self.waiting_since = None
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: wait, as asyncio does
            server.log_error(f"accept: {exc}")
            self._pause(1.0)
            return
        conn.setblocking(False)
        server.accepting += 1
        server.publish_count()
        self.loop.create_task(server._serve_socket(conn))

    def _pause(self, seconds):
        self.loop.remove_reader(self.fd)
        self.rearm = self.loop.call_later(seconds, self._arm)

    def _arm(self):
        self.rearm = None
        if not self.closed:
            self.loop.add_reader(self.fd, self._ready)

    def close(self):
        """Stop accepting and close this process's copy of the socket."""
        if self.closed:
            return
        self.closed = True
        if self.rearm is not None:
            self.rearm.cancel()
        self.loop.remove_reader(self.fd)
        self.sock.close()


class LMTPServer:
    """Accepts connections and runs one _Connection per client."""

    def __init__(self, handler, hostname=None, max_size=0, idle_timeout=300,
                 max_connections=100, spool_dir=None, log=None, command_timeout=300,
                 min_data_rate=500, max_per_address=50):
        self.handler = handler
        self.hostname = hostname or socket.gethostname()
        self.max_size = max_size
        self.idle_timeout = idle_timeout or None
        self.command_timeout = command_timeout or None
        self.min_data_rate = min_data_rate
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.per_address = {}  # inet client address -> open connections
        self.spool_dir = spool_dir
        self.log = log
        self.servers = []
        self.tasks = set()
        self.accepting = 0  # accepted connections whose task has not started yet
        self.connections = set()
        self.stopping = None
        # lmtp_workers: a main.SharedCount (set(n), total()) that counts the
        # connections of every worker against max_connections
        self.shared_count = None

    def socket_fds(self):
        """Descriptors of the listening sockets and of every connection.

        A handler that forks closes these in the child: a child holding
        them would keep a closed listener accepting, and a closed
        connection open for the client, until it exits."""
        fds = []
        for server in self.servers:
            fds.append(server.sock.fileno())
        for conn in self.connections:
            sock = conn.writer.get_extra_info("socket")
            if sock is not None:
                fds.append(sock.fileno())
        return [fd for fd in fds if fd >= 0]

    def log_error(self, text):
        if self.log is not None:
            self.log.error(text)

    async def start(self, sockets):
        self.stopping = asyncio.get_running_loop().create_future()
        for sock in sockets:
            sock.setblocking(False)
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.listen(128)  # a connected socket: OSError, the caller's 75
            self.servers.append(_Listener(self, sock))

    def stop(self):
        """Stop accepting; idle connections get 421, transactions finish."""
        for server in self.servers:
            server.close()
        if self.stopping is not None and not self.stopping.done():
            self.stopping.set_result(None)
        for conn in list(self.connections):
            conn.interrupt()

    async def wait_closed(self):
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    def _open_connections(self):
        if self.shared_count is not None:
            return self.shared_count.total()
        return len(self.tasks)

    async def _serve_socket(self, sock):
        """A connection _Listener accepted: streams, then _client."""
        try:
            if sock.family == socket.AF_UNIX:
                reader, writer = await asyncio.open_unix_connection(sock=sock)
            else:
                reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            self.accepting -= 1
            self.publish_count()  # no connection after all
            return
        except BaseException:
            self.accepting -= 1
            raise
        self.accepting -= 1  # _client counts it as a task from here
        await self._client(reader, writer)

    def publish_count(self):
        if self.shared_count is not None:
            self.shared_count.set(len(self.tasks) + self.accepting)

    async def _client(self, reader, writer):
        task = asyncio.current_task()
        self.tasks.add(task)
        address = None
        try:
            conn = _Connection(self, reader, writer)
            self.connections.add(conn)
            address = conn.address
            if address is not None:
                self.per_address[address] = self.per_address.get(address, 0) + 1
            self.publish_count()
            if self.max_connections and self._open_connections() > self.max_connections:
                await conn.say_and_close(TOO_MANY_CONNECTIONS)
            if address is not None and self.max_per_address and \
                    self.per_address[address] > self.max_per_address:
                self.log_error(f"too many connections from {address}")
                await conn.say_and_close(TOO_MANY_FROM_ADDRESS)
            if self.stopping.done():
                await conn.say_and_close(SHUTTING_DOWN)
            await conn.run()
        except (_Closed, ConnectionError):
            pass
        except Exception as exc:  # never a traceback to the client: close
            self.log_error(f"connection: {exc!r}")
        finally:
            self.tasks.discard(task)
            self.publish_count()
            self.connections = {c for c in self.connections if c.writer is not writer}
            if address is not None:
                left = self.per_address.pop(address) - 1
                if left:
                    self.per_address[address] = left
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
