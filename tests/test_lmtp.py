"""Tests for pymda.lmtp.protocol: the LMTP protocol (RFC 2033), in-process.

The server runs on its own event loop in a thread, with a fake handler
that records what it was given; the tests talk to it over a real unix
socket with blocking sockets, byte for byte.  The delivery handler and
the real program are tested in test_e2e_lmtp.py.
"""

import asyncio
import os
import random
import socket
import threading
import time

import pytest
from support.lmtpclient import Client, transaction

from pymda.lmtp import protocol as lmtp

HOST = "lmtp.test"
MAX_SIZE = 100_000

# Replies (named so a change of wording is a change of the tests)
GREETING = f"220 {HOST} LMTP pymda ready"
LHLO_REPLY = [f"250-{HOST}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-8BITMIME",
              f"250-SIZE {MAX_SIZE}", "250 DSN"]
OK = "250 2.0.0 Ok"
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
BYE = "221 2.0.0 Bye"
USER_UNKNOWN = "550 5.1.1 User unknown"
FULL = "552 5.2.2 Mailbox is full"
DELIVERED = "250 2.0.0 Ok: delivered to {}"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_LHLO = "503 5.5.1 Error: send LHLO first"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
NO_RECIPIENTS = "503 5.5.1 Error: no valid recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
LINE_TOO_LONG = "500 5.5.2 Error: line too long"
BAD_CHARACTERS = "500 5.5.2 Error: NUL or bare <CR> in command"
UNKNOWN_COMMAND = "500 5.5.2 Error: command not recognized"
USE_LHLO = "500 5.5.1 Error: this is LMTP (RFC 2033): use LHLO"
NOT_IMPLEMENTED = "502 5.5.1 Error: command not implemented"
INTERNAL_ERROR = "451 4.3.0 Internal error"
SHUTTING_DOWN = f"421 4.3.2 {HOST} Service shutting down"
TIMEOUT = f"421 4.4.2 {HOST} Error: timeout exceeded"
TOO_MANY_ERRORS = f"421 4.7.0 {HOST} Error: too many errors"
TOO_MANY_CONNECTIONS = f"421 4.3.2 {HOST} Error: too many connections"
TOO_MANY_FROM_ADDRESS = f"421 4.7.0 {HOST} Error: too many connections from your address"


def test_reply_constants_are_the_modules():
    """The names above are what the module sends (one place to change)."""
    assert lmtp.GREETING.format(host=HOST) == GREETING
    for name in ("OK", "MAIL_OK", "RCPT_OK", "START_DATA", "BYE", "NEED_MAIL", "NEED_LHLO",
                 "NESTED_MAIL", "NO_RECIPIENTS", "TOO_BIG", "LINE_TOO_LONG", "BAD_CHARACTERS",
                 "UNKNOWN_COMMAND", "USE_LHLO", "NOT_IMPLEMENTED", "INTERNAL_ERROR"):
        assert getattr(lmtp, name) == globals()[name], name
    for name in ("SHUTTING_DOWN", "TIMEOUT", "TOO_MANY_ERRORS", "TOO_MANY_CONNECTIONS",
                 "TOO_MANY_FROM_ADDRESS"):
        assert getattr(lmtp, name).format(host=HOST) == globals()[name], name


# --- the fake handler and the server in a thread ------------------------------------


class FakeHandler:
    """Recipients by prefix: unknown* 550, full* 552 when SIZE > 100,
    crash* raises in rcpt, bad* gets a malformed reply after DATA, boom*
    makes data() raise, slow* waits for ``release`` before its reply."""

    def __init__(self):
        self.messages = []  # (sender, recipients, body, data_size)
        self.transactions = []  # every Transaction given to data()
        self.rcpts = []  # (recipient, size)
        self.release = threading.Event()
        self.delivering = threading.Event()

    async def rcpt(self, session, recipient, size):
        self.rcpts.append((recipient, size))
        if recipient.startswith("unknown"):
            return USER_UNKNOWN
        if recipient.startswith("full") and size > 100:
            return FULL
        if recipient.startswith("crash"):
            raise RuntimeError("handler bug")
        if recipient.startswith("liar"):
            return "yes\r\nplease"
        if recipient.startswith("three"):
            return "354 go ahead"
        return RCPT_OK

    async def data(self, session, txn, spool):
        body = spool.read()
        self.transactions.append(txn)
        self.messages.append((txn.sender, list(txn.recipients), body, txn.data_size))
        for rcpt in txn.recipients:
            if rcpt.startswith("slow"):
                self.delivering.set()
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self.release.wait, 20)
            if rcpt.startswith("bad"):
                yield "fine thanks"
            elif rcpt.startswith("boom"):
                raise RuntimeError("delivery bug")
            else:
                yield DELIVERED.format(rcpt)


class Harness:
    def __init__(self, tmp_path, inet=False, **options):
        self.handler = FakeHandler()
        if inet:  # loopback TCP: clients can come from 127.0.0.x addresses
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            self.path = sock.getsockname()
        else:
            self.path = str(tmp_path / "lmtp.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.path)
        sock.listen(64)
        options.setdefault("max_size", MAX_SIZE)
        options.setdefault("idle_timeout", 30)
        self.server = lmtp.LMTPServer(self.handler, hostname=HOST, spool_dir=str(tmp_path),
                                      **options)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start([sock]))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    def connect(self, greet=True, source=None):
        client = Client(self.path, source=source)
        if greet:
            assert client.reply() == [GREETING]
        return client

    def call(self, func):
        """Run ``func()`` on the server's loop (thread-safe)."""
        async def wrapper():
            return func()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def stop(self, timeout=20):
        async def stop():
            self.server.stop()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout)

    def close(self):
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def server(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


@pytest.fixture
def client(server):
    with server.connect() as c:
        assert c.cmd("LHLO client.test") == LHLO_REPLY
        yield c


# --- conversation ---------------------------------------------------------------------


def test_lhlo_advertises_the_spec_extensions(server):
    with server.connect() as c:
        assert c.cmd("LHLO client.test") == LHLO_REPLY
        assert c.cmd("NOOP") == OK
        assert c.cmd("QUIT") == BYE
        assert c.closed()


def test_size_without_a_limit_is_bare(tmp_path):
    h = Harness(tmp_path, max_size=0)
    try:
        with h.connect() as c:
            assert c.cmd("LHLO x")[-2:] == ["250-SIZE", "250 DSN"]
    finally:
        h.close()


def test_one_reply_per_accepted_recipient_in_order(server, client):
    rcpts, replies = transaction(client, "sender@example.org",
                                 ["alice@x", "unknown@x", "bob@x", "carol@x"],
                                 b"Subject: hi\r\n\r\nbody\r\n")
    assert rcpts == [RCPT_OK, USER_UNKNOWN, RCPT_OK, RCPT_OK]
    assert replies == [DELIVERED.format(r) for r in ("alice@x", "bob@x", "carol@x")]
    (msg,) = server.handler.messages
    assert msg[:3] == ("sender@example.org", ["alice@x", "bob@x", "carol@x"],
                       b"Subject: hi\r\n\r\nbody\r\n")
    # and the connection goes on: a second transaction
    _, replies = transaction(client, "", ["dave@x"], b"S: 2\r\n\r\nx\r\n")
    assert replies == [DELIVERED.format("dave@x")]
    assert server.handler.messages[1][0] == ""  # <> is the null sender


def test_each_reply_is_sent_when_that_recipient_is_done(server, client):
    """RFC 2033 4.2: the first reply must not wait for the second delivery."""
    assert client.cmd("MAIL FROM:<s@x>") == MAIL_OK
    assert client.cmd("RCPT TO:<alice@x>") == RCPT_OK
    assert client.cmd("RCPT TO:<slow@x>") == RCPT_OK
    assert client.cmd("DATA") == START_DATA
    client.send(b"S: x\r\n\r\nb\r\n.\r\n")
    assert client.line() == DELIVERED.format("alice@x")
    assert server.handler.delivering.wait(10)
    client.sock.settimeout(0.3)
    assert not client.closed() and client.buf == b""  # slow@x: nothing yet
    client.sock.settimeout(20)
    server.handler.release.set()
    assert client.line() == DELIVERED.format("slow@x")


def test_pipelining(server, client):
    """postfix sends MAIL, every RCPT and DATA in one write (RFC 2920)."""
    client.send("MAIL FROM:<s@x> SIZE=20 BODY=8BITMIME\r\nRCPT TO:<a@x>\r\n"
                "RCPT TO:<unknown@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    assert [client.line() for _ in range(5)] == [MAIL_OK, RCPT_OK, USER_UNKNOWN, RCPT_OK,
                                                 START_DATA]
    client.send(b"S: x\r\n\r\n\xc3\xa9t\xc3\xa9\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    assert [client.line() for _ in range(5)] == [DELIVERED.format("a@x"),
                                                 DELIVERED.format("b@x"), OK, OK, BYE]
    assert server.handler.rcpts[0] == ("a@x", 20)
    assert server.handler.messages[0][2] == b"S: x\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"


def test_data_with_no_accepted_recipient_is_503(server, client):
    rcpts, replies = transaction(client, "s@x", ["unknown@x"], b"")
    assert rcpts == [USER_UNKNOWN] and replies == [NO_RECIPIENTS]
    assert client.cmd("MAIL FROM:<s@x>") == NESTED_MAIL  # the transaction is still open
    assert client.cmd("RSET") == OK
    assert client.cmd("DATA") == NEED_MAIL
    assert server.handler.messages == []


def test_command_order(server):
    with server.connect() as c:
        assert c.cmd("MAIL FROM:<s@x>") == NEED_LHLO
        assert c.cmd("RCPT TO:<a@x>") == NEED_MAIL
        assert c.cmd("DATA") == NEED_MAIL
        assert c.cmd("LHLO x") == LHLO_REPLY
        assert c.cmd("MAIL FROM:<s@x>") == MAIL_OK
        assert c.cmd("MAIL FROM:<s@x>") == NESTED_MAIL
        assert c.cmd("LHLO again") == LHLO_REPLY  # LHLO resets the transaction
        assert c.cmd("RCPT TO:<a@x>") == NEED_MAIL
        assert c.cmd("MAIL FROM:<s@x>") == MAIL_OK
        assert c.cmd("RSET") == OK
        assert c.cmd("RCPT TO:<a@x>") == NEED_MAIL


@pytest.mark.parametrize("line,reply", [
    ("HELO x", USE_LHLO),
    ("EHLO x", USE_LHLO),
    ("VRFY root", NOT_IMPLEMENTED),
    ("STARTTLS", NOT_IMPLEMENTED),
    ("BDAT 10 LAST", NOT_IMPLEMENTED),
    ("XYZZY", UNKNOWN_COMMAND),
    ("", UNKNOWN_COMMAND),
    ("do_LHLO x", UNKNOWN_COMMAND),
    ("__init__", UNKNOWN_COMMAND),
    ("LHLO", "501 5.5.4 Syntax: LHLO hostname"),
    ("RSET now", "501 5.5.4 Syntax: no arguments allowed"),
    ("QUIT now", "501 5.5.4 Syntax: no arguments allowed"),
    ("NOOP with words", OK),
    ("MAIL FROM:<s@x> SIZE=abc", "501 5.5.4 Bad SIZE= value"),
    ("MAIL FROM:<s@x> SIZE=", "501 5.5.4 Bad SIZE= value"),
    ("MAIL FROM:<s@x> BODY=BINARYMIME", "501 5.5.4 Bad BODY= value"),
    ("MAIL FROM:<s@x> RET=EVERYTHING", "501 5.5.4 Bad RET= value"),
    ("MAIL FROM:<s@x> RET=", "501 5.5.4 Bad RET= value"),
    ("MAIL FROM:<s@x> RET", "501 5.5.4 Bad RET= value"),
    ("MAIL FROM:<s@x> RET=FULL RET=HDRS", "501 5.5.4 Duplicate RET= parameter"),
    ("MAIL FROM:<s@x> ENVID=a+2", "501 5.5.4 Bad ENVID= value"),
    ("MAIL FROM:<s@x> ENVID=a=b", "501 5.5.4 Bad ENVID= value"),
    ("MAIL FROM:<s@x> ENVID=" + "x" * 101, "501 5.5.4 Bad ENVID= value"),
    ("MAIL FROM:<s@x> NOTIFY=NEVER", "555 5.5.4 Unsupported option: NOTIFY"),
    ("MAIL FROM:<s@x> ORCPT=rfc822;a@x", "555 5.5.4 Unsupported option: ORCPT"),
    ("MAIL FROM:<s@x> SMTPUTF8", "555 5.5.4 Unsupported option: SMTPUTF8"),
    (f"MAIL FROM:<s@x> SIZE={MAX_SIZE + 1}", TOO_BIG),
    ("MAIL FROM:<s@x> SIZE=99999999999999999999999", "501 5.5.4 Bad SIZE= value"),
    ("MAIL TO:<s@x>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("MAIL FROM:", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("MAIL FROM:<s@x", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<s@x>SIZE=1", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("MAIL FROM:<a\x01b@x>", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<a b@x>", "501 5.1.7 Bad sender address syntax"),
])
def test_command_errors(server, client, line, reply):
    assert client.cmd(line) == reply
    assert client.cmd("NOOP") == OK  # still talking


@pytest.mark.parametrize("line,reply", [
    ("RCPT TO:<>", "501 5.1.3 Bad recipient address syntax"),
    ("RCPT TO:<a@x> NOTIFY=NEVER,SUCCESS", "501 5.5.4 Bad NOTIFY= value"),
    ("RCPT TO:<a@x> NOTIFY=SOMETIMES", "501 5.5.4 Bad NOTIFY= value"),
    ("RCPT TO:<a@x> NOTIFY=SUCCESS,SUCCESS", "501 5.5.4 Bad NOTIFY= value"),
    ("RCPT TO:<a@x> NOTIFY=SUCCESS,", "501 5.5.4 Bad NOTIFY= value"),
    ("RCPT TO:<a@x> NOTIFY=", "501 5.5.4 Bad NOTIFY= value"),
    ("RCPT TO:<a@x> NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Duplicate NOTIFY= parameter"),
    ("RCPT TO:<a@x> ORCPT=a@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rfc822;", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=;a@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rfc822;a+4@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rfc822;a+zz@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rfc822;a+0A@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rfc822;a=b@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rf/c;a@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rfc822;" + "a" * 500, "501 5.5.4 Bad ORCPT= value"),
    # no Unicode scalar value: it could never be written into X-Original-To
    ("RCPT TO:<a@x> ORCPT=utf-8;a\\x{D800}@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=utf-8;a\\x{110000}@x", "501 5.5.4 Bad ORCPT= value"),
    ("RCPT TO:<a@x> ORCPT=rfc822;a@x ORCPT=rfc822;b@x", "501 5.5.4 Duplicate ORCPT= parameter"),
    ("RCPT TO:<a@x> RET=FULL", "555 5.5.4 Unsupported option: RET"),
    ("RCPT TO:<a@x> ENVID=x", "555 5.5.4 Unsupported option: ENVID"),
    ("RCPT TO:<a@x> FOO=bar", "555 5.5.4 Unsupported option: FOO"),
    ("RCPT FROM:<a@x>", "501 5.5.4 Syntax: RCPT TO:<address>"),
    ("RCPT TO:<\"unterminated@x>", "501 5.1.3 Bad recipient address syntax"),
    ("RCPT TO:<crash@x>", INTERNAL_ERROR),
    ("RCPT TO:<liar@x>", INTERNAL_ERROR),
    ("RCPT TO:<three@x>", INTERNAL_ERROR),
])
def test_rcpt_errors(server, client, line, reply):
    assert client.cmd("MAIL FROM:<s@x>") == MAIL_OK
    assert client.cmd(line) == reply
    assert client.cmd("DATA") == NO_RECIPIENTS


def test_dsn_parameters_are_accepted_and_kept(server, client):
    """RFC 3461: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT are accepted; an
    rfc822 or utf-8 ORCPT reaches the handler decoded, in step with the
    recipients (another addr-type is accepted and carries nothing)."""
    assert client.cmd("MAIL FROM:<s@x> RET=hdrs ENVID=QQ+2B314159 SIZE=10") == MAIL_OK
    assert client.cmd("RCPT TO:<a@x> NOTIFY=SUCCESS,FAILURE,DELAY "
                      "ORCPT=rfc822;alias+2Bext@x") == RCPT_OK
    assert client.cmd("RCPT TO:<unknown@x> ORCPT=rfc822;other@x") == USER_UNKNOWN
    assert client.cmd("RCPT TO:<b@x>") == RCPT_OK
    assert client.cmd("RCPT TO:<c@x> notify=never orcpt=x400;c+3Dfr+3Ba+3Dx") == RCPT_OK
    assert client.cmd("RCPT TO:<d@x> ORCPT=utf-8;J\\x{F6}rg@x") == RCPT_OK
    assert client.cmd("RCPT TO:<e@x> ORCPT=RFC822;E@X") == RCPT_OK
    assert client.cmd("DATA") == START_DATA
    client.send(b"Subject: dsn\r\n\r\nhi\r\n.\r\n")
    for r in "abcde":
        assert client.reply() == [DELIVERED.format(r + "@x")]
    (txn,) = server.handler.transactions
    assert txn.recipients == ["a@x", "b@x", "c@x", "d@x", "e@x"]
    assert txn.original_recipients == ["alias+ext@x", None, None, "J\u00f6rg@x", "E@X"]
    assert (txn.ret, txn.envid, txn.size) == ("HDRS", "QQ+314159", 10)


@pytest.mark.parametrize("value,decoded", [
    ("abc", "abc"),
    ("a+2Bb+3D", "a+b="),
    ("+41+42", "AB"),
    ("", ""),
    ("a+2b", None),
    ("a+", None),
    ("a b", None),
    ("a=b", None),
    ("\u00e9", None),
])
def test_xtext_decode(value, decoded):
    assert lmtp.xtext_decode(value) == decoded


@pytest.mark.parametrize("text,address,params", [
    ("FROM:<a@x>", "a@x", []),
    ("FROM: <a@x>", "a@x", []),
    ("from:<a@x> size=10 body=8bitmime", "a@x", [("SIZE", "10"), ("BODY", "8bitmime")]),
    ("FROM:<>", "", []),
    ("FROM:a@x", "a@x", []),
    ("FROM:<@relay.example,@b.example:a@x>", "a@x", []),
    ('FROM:<"john doe"@x>', "john doe@x", []),
    ('FROM:<"a\\"q>"@x> SIZE=1', 'a"q>@x', [("SIZE", "1")]),
    ("FROM:<o'brien+ext@x>", "o'brien+ext@x", []),
])
def test_parse_path(text, address, params):
    assert lmtp.parse_path(text, "FROM", "bad") == (address, params)


@pytest.mark.parametrize("text", ["FROM:<a@x", "FROM:<a\x00@x>", 'FROM:<"a@x>',
                                  "FROM:<@relay>", 'FROM:<"a"b@x>', "FROM:<a\r@x>"])
def test_parse_path_rejects(text):
    with pytest.raises(lmtp.SyntaxProblem):
        lmtp.parse_path(text, "FROM", "bad")


def test_quoted_local_part_reaches_the_handler_unquoted(server, client):
    assert client.cmd("MAIL FROM:<s@x>") == MAIL_OK
    assert client.cmd('RCPT TO:<"john doe"@x>') == RCPT_OK
    assert server.handler.rcpts[-1] == ("john doe@x", 0)


# --- DATA -------------------------------------------------------------------------------


def deliver_body(server, client, body):
    _, replies = transaction(client, "s@x", ["a@x"], body)
    assert replies == [DELIVERED.format("a@x")]
    return server.handler.messages[-1][2]


def test_dot_unstuffing(server, client):
    body = b"S: x\r\n\r\n..one dot\r\n...two dots\r\n.x\r\n. \r\nend\r\n"
    assert deliver_body(server, client, body) == \
        b"S: x\r\n\r\n.one dot\r\n..two dots\r\nx\r\n \r\nend\r\n"


def test_empty_message(server, client):
    assert deliver_body(server, client, b"") == b""


def test_end_marker_only_after_crlf(server, client):
    """CRLF.CRLF ends DATA; a '.' line after a bare LF, or ended by a bare
    LF, is data (no SMTP smuggling: one message stays one message)."""
    body = (b"S: x\r\n\r\nbare lf\n.\r\nMAIL FROM:<evil@x>\r\nnext\r\n.\n"
            b"RCPT TO:<victim@x>\r\nlast\r\n")
    assert deliver_body(server, client, body) == body
    assert len(server.handler.messages) == 1
    assert client.cmd("NOOP") == OK


def test_bare_lf_ends_lines_for_unstuffing_and_bare_cr_is_data(server, client):
    body = b"S: x\n\n..dot\nmid\rline\r\n\r\r\n.\rx\r\n"
    assert deliver_body(server, client, body) == b"S: x\n\n.dot\nmid\rline\r\n\r\r\n\rx\r\n"


def test_data_split_at_every_byte(server, client):
    """The end marker and stuffed dots may arrive in pieces."""
    body = b"S: x\r\n\r\n..a\r\nb\r\n.\r\n"
    assert client.cmd("MAIL FROM:<s@x>") == MAIL_OK
    assert client.cmd("RCPT TO:<a@x>") == RCPT_OK
    assert client.cmd("DATA") == START_DATA
    for i in range(len(body)):
        client.send(body[i:i + 1])
        time.sleep(0.002)
    assert client.line() == DELIVERED.format("a@x")
    assert server.handler.messages[-1][2] == b"S: x\r\n\r\n.a\r\nb\r\n"


def test_long_data_lines_are_kept_whole(server, client):
    line = b"." + b"x" * 70_000 + b"\r\n"  # over a read, starts with a dot
    body = b"S: x\r\n\r\n" + line + b"..\r\n"
    assert deliver_body(server, client, body) == b"S: x\r\n\r\n" + line[1:] + b".\r\n"


def test_message_over_the_size_limit(server, client):
    big = b"S: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * 101  # 101,000 bytes counted with LF
    rcpts, replies = transaction(client, "s@x", ["a@x", "b@x"], big)
    assert replies == [TOO_BIG, TOO_BIG]
    assert server.handler.messages == []
    # exactly at the limit passes (CRLF counts as one byte, as stored)
    exact = b"S: x\r\n\r\n" + b"z" * (MAX_SIZE - 7) + b"\r\n"
    assert deliver_body(server, client, exact) == exact
    assert server.handler.messages[-1][3] == MAX_SIZE
    _, replies = transaction(client, "s@x", ["a@x"], exact[:-2] + b"z\r\n")
    assert replies == [TOO_BIG]


def test_the_spool_is_a_file_not_memory(server, client):
    """The handler gets a real file (the message was streamed to disk)."""
    seen = {}

    async def data(session, txn, spool):
        seen["fileno"] = spool.fileno()
        seen["stat"] = os.fstat(spool.fileno())
        yield DELIVERED.format(txn.recipients[0])

    server.handler.data = data
    deliver_body_only = transaction(client, "s@x", ["a@x"], b"S: x\r\n\r\n" + b"q" * 50_000 + b"\r\n")
    assert deliver_body_only[1] == [DELIVERED.format("a@x")]
    assert seen["stat"].st_size == 50_010 and seen["stat"].st_nlink == 0  # unlinked


# --- hostile input ----------------------------------------------------------------------


def test_over_long_command_line_is_refused_without_buffering(server, client):
    client.send(b"NOOP " + b"x" * 1_000_000 + b"\r\n")
    assert client.reply() == [LINE_TOO_LONG]
    assert client.cmd("NOOP") == OK
    sizes = server.call(lambda: [len(c.buf) for c in server.server.connections])
    assert sizes and max(sizes) < lmtp.MAX_COMMAND_LINE


def test_command_line_at_the_limit_is_fine(server, client):
    line = "NOOP " + "x" * (lmtp.MAX_COMMAND_LINE - 7)
    assert len(line) + 2 == lmtp.MAX_COMMAND_LINE
    assert client.cmd(line) == OK


def test_bare_cr_and_nul_in_commands(server, client):
    assert client.cmd("NOOP\rQUIT") == BAD_CHARACTERS
    assert client.cmd("NO\x00OP") == BAD_CHARACTERS
    assert client.cmd("NOOP") == OK


def test_bare_lf_commands_are_accepted(server):
    with server.connect() as c:
        c.send(b"LHLO x\nNOOP\nQUIT\n")
        assert c.reply() == LHLO_REPLY
        assert c.reply() == [OK]
        assert c.reply() == [BYE]


def test_too_many_errors_closes(server, client):
    client.send("".join(f"BOGUS{i}\r\n" for i in range(lmtp.MAX_ERRORS + 5)))
    replies = []
    while True:
        try:
            replies.append(client.line())
        except (EOFError, ConnectionResetError):
            break
    assert replies == [UNKNOWN_COMMAND] * lmtp.MAX_ERRORS + [TOO_MANY_ERRORS]


def test_handler_reply_errors_do_not_count_as_client_errors(server, client):
    assert client.cmd("MAIL FROM:<s@x>") == MAIL_OK
    for i in range(lmtp.MAX_ERRORS + 5):
        assert client.cmd(f"RCPT TO:<unknown{i}@x>") == USER_UNKNOWN
    assert client.cmd("RCPT TO:<a@x>") == RCPT_OK


def test_too_many_recipients(server, client):
    assert client.cmd("MAIL FROM:<s@x>") == MAIL_OK
    client.send("".join(f"RCPT TO:<r{i}@x>\r\n" for i in range(lmtp.MAX_RECIPIENTS + 1)))
    replies = [client.line() for _ in range(lmtp.MAX_RECIPIENTS + 1)]
    assert replies[:-1] == [RCPT_OK] * lmtp.MAX_RECIPIENTS
    assert replies[-1] == "452 4.5.3 Error: too many recipients"


def test_garbage_never_crashes_the_server(server):
    junk = [
        os.urandom(100_000),
        b"\x00" * 5000 + b"\r\n",
        b"\r" * 10_000,
        b"\n" * 10_000,
        b"LHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n" + os.urandom(50_000),
        b"LHLO x\r\nMAIL FROM:<" + b"a" * 5000 + b">\r\n",
        "LHLO \u00e9\u00e9\r\nMAIL FROM:<\u00e9@x>\r\n".encode(),
        b"\xff\xfe\r\n" * 100,
    ]
    for data in junk:
        with server.connect(greet=False) as c:
            try:
                c.send(data)
                c.sock.shutdown(socket.SHUT_WR)
                c.closed()
            except (ConnectionError, OSError):
                pass
    with server.connect() as c:
        assert c.cmd("LHLO x") == LHLO_REPLY
        _, replies = transaction(c, "s@x", ["a@x"], b"S: ok\r\n\r\n")
        assert replies == [DELIVERED.format("a@x")]


def open_data(c):
    """LHLO, MAIL, one RCPT and DATA on ``c``: the next bytes are the message."""
    c.cmd("LHLO x")
    c.cmd("MAIL FROM:<s@x>")
    c.cmd("RCPT TO:<a@x>")
    assert c.cmd("DATA") == START_DATA


def test_connection_lost_mid_data(server):
    with server.connect() as c:
        open_data(c)
        c.send(b"S: half a message\r\n")
    with server.connect() as c:
        assert c.cmd("LHLO x") == LHLO_REPLY
    assert server.handler.messages == []


# --- handler failures -------------------------------------------------------------------


def test_handler_failures_become_451_for_that_recipient(server, client):
    rcpts, replies = transaction(client, "s@x", ["a@x", "bad@x", "b@x", "boom@x", "c@x"],
                                 b"S: x\r\n\r\n")
    assert rcpts == [RCPT_OK] * 5
    assert replies == [DELIVERED.format("a@x"), INTERNAL_ERROR, DELIVERED.format("b@x"),
                       INTERNAL_ERROR, INTERNAL_ERROR]
    assert client.cmd("NOOP") == OK


def test_a_handler_with_too_few_replies(server, client):
    async def data(session, txn, spool):
        yield DELIVERED.format(txn.recipients[0])

    server.handler.data = data
    _, replies = transaction(client, "s@x", ["a@x", "b@x"], b"S: x\r\n\r\n")
    assert replies == [DELIVERED.format("a@x"), INTERNAL_ERROR]


# --- limits and shutdown ----------------------------------------------------------------


def test_idle_timeout(tmp_path):
    h = Harness(tmp_path, idle_timeout=0.5)
    try:
        with h.connect() as c:
            assert c.cmd("LHLO x") == LHLO_REPLY
            time.sleep(1)
            assert c.line() == TIMEOUT
            assert c.closed()
    finally:
        h.close()


def test_idle_timeout_applies_inside_data(tmp_path):
    h = Harness(tmp_path, idle_timeout=0.5)
    try:
        with h.connect() as c:
            open_data(c)
            c.send(b"S: x\r\n")
            assert c.line() == TIMEOUT
            assert c.closed()
        assert h.handler.messages == []
    finally:
        h.close()


def test_connection_limit(tmp_path):
    h = Harness(tmp_path, max_connections=2)
    try:
        with h.connect() as a, h.connect() as b:
            with h.connect(greet=False) as c:
                assert c.line() == TOO_MANY_CONNECTIONS
                assert c.closed()
            assert a.cmd("NOOP") == OK and b.cmd("NOOP") == OK
        deadline = time.monotonic() + 10
        while h.call(lambda: len(h.server.tasks)) and time.monotonic() < deadline:
            time.sleep(0.05)
        with h.connect() as d:
            assert d.cmd("NOOP") == OK
    finally:
        h.close()


def test_stop_lets_transactions_in_flight_finish(server):
    idle = server.connect()
    idle.cmd("LHLO x")
    busy = server.connect()
    busy.cmd("LHLO x")
    assert busy.cmd("MAIL FROM:<s@x>") == MAIL_OK
    assert busy.cmd("RCPT TO:<slow@x>") == RCPT_OK
    assert busy.cmd("DATA") == START_DATA
    busy.send(b"S: x\r\n\r\nbody\r\n.\r\n")
    assert server.handler.delivering.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    try:
        assert idle.line() == SHUTTING_DOWN and idle.closed()  # between transactions
        with pytest.raises(OSError):
            server.connect()  # no longer accepting
        assert stopper.is_alive()  # waits for the transaction in flight
        server.handler.release.set()
        assert busy.line() == DELIVERED.format("slow@x")
        # transaction over: 421 at once (no need to wait for its next command)
        assert busy.line() == SHUTTING_DOWN and busy.closed()
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        server.handler.release.set()
        idle.close()
        busy.close()


def test_valid_reply():
    assert lmtp.valid_reply("250 2.0.0 Ok")
    for bad in ("", "250", "250-x", "ok 2.0.0", "250 a\r\nb", "650 x", None, 250):
        assert not lmtp.valid_reply(bad), bad
    assert lmtp.format_reply("250 " + "x" * 1000).endswith(b"\r\n")
    assert len(lmtp.format_reply("250 " + "x" * 1000)) == 512


# --- slow clients (issue 8 item 11): deadlines and the per-address cap -----------------


def dribble(client, data, pause, stop_after=None):
    """Send ``data`` one byte at a time; returns the seconds it took until
    the server's 421 (read without blocking between bytes) or None."""
    started = time.monotonic()
    client.sock.settimeout(pause)
    for byte in data:
        try:
            client.sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            chunk = client.sock.recv(65536)
        except socket.timeout:
            chunk = None
        except OSError:
            chunk = b""
        if chunk:
            client.buf += chunk
            if b"421 " in client.buf:
                return time.monotonic() - started
        elif chunk == b"":
            break
        if stop_after and time.monotonic() - started > stop_after:
            return None
    client.sock.settimeout(20)
    return time.monotonic() - started if b"421 " in client.buf else None


def into_data(c):
    c.cmd("LHLO x")
    assert c.cmd("MAIL FROM:<s@x>") == MAIL_OK
    assert c.cmd("RCPT TO:<a@x>") == RCPT_OK
    assert c.cmd("DATA") == START_DATA


def cut_at_the_deadline(c, data, pause):
    took = dribble(c, data, pause, stop_after=20)
    assert took is not None, "never cut"
    assert c.line() == TIMEOUT
    assert c.closed()
    return took


def test_a_command_line_dribbled_byte_by_byte_is_cut_at_the_deadline(tmp_path):
    with Harness(tmp_path, idle_timeout=30, command_timeout=2) as h, h.connect() as c:
        assert c.cmd("LHLO x") == LHLO_REPLY
        took = cut_at_the_deadline(c, b"MAIL FROM:<" + b"s" * 60 + b"@example.org>\r\n", 0.25)
        assert 1.5 < took < 10, took


def test_data_dribbled_byte_by_byte_is_cut_at_the_deadline(tmp_path):
    with Harness(tmp_path, idle_timeout=30, command_timeout=1, min_data_rate=1000) as h:
        with h.connect() as c:
            into_data(c)
            took = cut_at_the_deadline(c, b"Subject: slow\r\n\r\n" + b"x" * 200, 0.1)
            assert took < 10, took
        assert h.handler.messages == []


def test_a_big_message_at_a_fair_rate_is_not_cut(tmp_path):
    """The DATA deadline grows with the bytes received."""
    with Harness(tmp_path, idle_timeout=30, command_timeout=1, min_data_rate=20_000) as h:
        with h.connect() as c:
            into_data(c)
            c.send(b"Subject: fair\r\n\r\n")
            line = b"y" * 998 + b"\r\n"
            for _ in range(18):  # 90 KB in ~1.8 s: 1 + 90000 / 20000 = 5.5 s allowed
                c.send(line * 5)
                time.sleep(0.1)
            c.send(b".\r\n")
            assert c.line() == DELIVERED.format("a@x")
        assert len(h.handler.messages[0][2]) > 90_000


def test_pipelined_commands_and_idle_clients_are_unaffected(tmp_path):
    with Harness(tmp_path, idle_timeout=30, command_timeout=2) as h, h.connect() as c:
        assert c.cmd("LHLO x") == LHLO_REPLY
        time.sleep(1)
        rcpts, replies = transaction(c, "s@x", ["a@x"], b"Subject: t\r\n\r\nhi\r\n")
        assert replies == [DELIVERED.format("a@x")]


def wait_until(h, predicate, timeout=10):
    """Until ``predicate()``, run on the server's loop, is true."""
    deadline = time.monotonic() + timeout
    while not h.call(predicate):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_per_address_cap_refuses_the_next_connection(tmp_path):
    h = Harness(tmp_path, inet=True, max_connections=50, max_per_address=3)
    try:
        held = [h.connect(source="127.0.0.2") for _ in range(3)]
        with h.connect(greet=False, source="127.0.0.2") as fourth:
            assert fourth.line() == TOO_MANY_FROM_ADDRESS
            assert fourth.closed()
        with h.connect(source="127.0.0.3") as other:  # another address: fine
            assert other.cmd("NOOP") == OK
        held.pop().close()
        wait_until(h, lambda: h.server.per_address.get("127.0.0.2") == 2)
        with h.connect(source="127.0.0.2") as again:
            assert again.cmd("NOOP") == OK
        for c in held:
            c.close()
    finally:
        h.close()


def test_twenty_dribblers_do_not_lock_out_a_normal_client(tmp_path):
    h = Harness(tmp_path, inet=True, idle_timeout=30, command_timeout=3,
                max_connections=20, max_per_address=10)
    dribblers = []
    try:
        for _ in range(20):
            c = h.connect(greet=False, source="127.0.0.2")
            c.send(b"LH")  # and then nothing more: a slow client
            dribblers.append(c)
        first = [c.line() for c in dribblers]
        assert first.count(GREETING) == 10
        assert first.count(TOO_MANY_FROM_ADDRESS) == 10
        wait_until(h, lambda: len(h.server.tasks) == 10)  # the refused ones are gone
        with h.connect() as normal:  # from 127.0.0.1
            assert normal.cmd("LHLO x") == LHLO_REPLY
            rcpts, replies = transaction(normal, "s@x", ["a@x"], b"Subject: t\r\n\r\nhi\r\n")
            assert replies == [DELIVERED.format("a@x")]
        started = time.monotonic()
        for c, greeting in zip(dribblers, first):
            if greeting == GREETING:
                assert c.line() == TIMEOUT  # cut at the deadline, not at idle (30 s)
        assert time.monotonic() - started < 15
    finally:
        for c in dribblers:
            c.close()
        h.close()


# --- the DATA decoder, I/O-free (issue 9 item 5) ---------------------------------------


def decode(pieces, limit=0):
    decoder = lmtp.DataDecoder(limit)
    out = []
    rest = b""
    for piece in pieces:
        assert not decoder.done
        got, rest = decoder.feed(piece)
        out += got
    return decoder, b"".join(out), rest


def reference_decode(data):
    """docs/lmtp.md's DATA rules on a whole buffer: (message, rest) or None
    when the end marker never came."""
    out = []
    prev_crlf = True
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None
        line = data[pos:nl + 1]
        pos = nl + 1
        if line == b".\r\n" and prev_crlf:
            return b"".join(out), data[pos:]
        if line.startswith(b".") and line not in (b".\n", b".\r\n"):
            line = line[1:]
        out.append(line)
        prev_crlf = line.endswith(b"\r\n")


@pytest.mark.parametrize("data, message, rest", [
    (b".\r\n", b"", b""),
    (b"a\r\n.\r\nNOOP\r\n", b"a\r\n", b"NOOP\r\n"),
    (b"..a\r\n...b\r\n.c\r\n. \r\n.\r\n", b".a\r\n..b\r\nc\r\n \r\n", b""),
    # a "." line after a bare LF, or ended by one, is data
    (b"x\n.\r\ny\r\n.\n.\r\nz\r\n.\r\n", b"x\n.\r\ny\r\n.\n.\r\nz\r\n", b""),
    (b"a\rb\r\n\r.\r\n.\r\n", b"a\rb\r\n\r.\r\n", b""),  # bare CR is data
    (b"..\n\r\n.\r\n", b".\n\r\n", b""),  # a stuffed dot before a bare LF goes
])
def test_decoder_rules(data, message, rest):
    decoder, got, left = decode([data])
    assert decoder.done and got == message and left == rest
    assert reference_decode(data) == (message, rest)


def test_decoder_at_every_split_matches_the_reference():
    rng = random.Random(2033)
    alphabet = [b".", b"\r", b"\n", b"\r\n", b"a", b".\r\n", b"\r\n.\r\n"]
    checked = 0
    for _ in range(400):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) + b"\r\n.\r\nX"
        expected = reference_decode(data)
        cuts = sorted(rng.randint(1, len(data)) for _ in range(rng.randint(0, 8)))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        decoder = lmtp.DataDecoder()
        out, rest = [], b""
        for k, piece in enumerate(pieces):
            got, rest = decoder.feed(piece)
            out += got
            if decoder.done:
                rest += b"".join(pieces[k + 1:])
                break
        assert decoder.done
        assert (b"".join(out), rest) == expected, (data, pieces)
        assert decoder.size == len(expected[0]) - expected[0].count(b"\r\n")
        checked += 1
    assert checked == 400


def test_decoder_one_byte_at_a_time():
    data = b"S: x\r\n\r\n..a\r\nb\r\n.\r\nQUIT\r\n"
    decoder, got, _ = decode([data[i:i + 1] for i in range(data.index(b".\r\nQUIT") + 3)])
    assert decoder.done and got == b"S: x\r\n\r\n.a\r\nb\r\n"


def test_decoder_limit_counts_crlf_as_one_and_keeps_consuming():
    decoder, got, rest = decode([b"abc\r\n", b"defg\r\n", b"hij\r\n.\r\nNOOP\r\n"], limit=9)
    assert decoder.too_big and got == b"abc\r\ndefg\r\n"  # nothing given out past it
    assert decoder.done and rest == b"NOOP\r\n"
    assert decoder.size == 4 + 5 + 4
    assert decoder.received == 5 + 6 + 14  # every byte fed
    exact, got, _ = decode([b"abc\r\ndefg\r\n.\r\n"], limit=9)
    assert not exact.too_big and got == b"abc\r\ndefg\r\n"


# --- several workers on one listening socket ---------------------------------------


def test_waiting_connections_spread_over_the_workers(tmp_path):
    """Two servers (two workers' event loops, here in one loop on two
    descriptors of one listening socket) with one SharedCount: four
    connections already waiting are taken two by each - a worker takes
    one only when no other serves fewer.  asyncio's accept loop gave the
    first worker awake every waiting connection (4 and 0)."""
    from pymda.lmtp.workers import SharedCount

    path = str(tmp_path / "lmtp.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    clients = [Client(path) for _ in range(4)]  # all in the backlog before anyone accepts
    shared = SharedCount(2)

    async def main():
        servers = []
        for slot, sock in enumerate((listener, listener.dup())):
            server = lmtp.LMTPServer(FakeHandler(), hostname=HOST, spool_dir=str(tmp_path),
                                     max_size=MAX_SIZE, idle_timeout=30)
            view = SharedCount.__new__(SharedCount)  # this worker's view: its own slot
            view.map, view.cells, view.slot = shared.map, shared.cells, slot
            view.set(0)
            server.shared_count = view
            await server.start([sock])
            servers.append(server)
        deadline = time.monotonic() + 10
        while sum(len(s.tasks) for s in servers) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        counts = [len(s.tasks) for s in servers]
        for s in servers:
            s.stop()
        await asyncio.gather(*(s.wait_closed() for s in servers))
        return counts

    try:
        assert asyncio.run(main()) == [2, 2]
        for c in clients:
            assert c.line() == GREETING
            assert c.line() == SHUTTING_DOWN
    finally:
        for c in clients:
            c.close()
        listener.close()
