"""Intake (pymda.message, SPEC 1.1), in-process.

Covers: the MTA's leading ``From `` line (removed, its sender kept), CRLF ->
LF whatever the read boundaries (CRLF split across two reads), a lone CR,
a missing final newline, empty input (5.6.0), the header scan (leading
block, every Delivered-To, Message-ID, folded lines), spooling to a file
above SPOOL_IN_MEMORY, ``limit`` (5.2.3, input still drained) and the
trace header block pymda prepends.
"""

import io
import os
import random

import pytest

from pymda import message
from pymda.errors import EX_DATAERR, EX_NOPERM, PermFail
from pymda.message import parse_from_line

EMPTY_STATUS = "5.6.0"
TOO_BIG_STATUS = "5.2.3"


class Pieces(io.RawIOBase):
    """A reader that hands out exactly the given pieces, one per read1()."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.reads = 0

    def readable(self):
        return True

    def read1(self, n=-1):
        self.reads += 1
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        assert len(piece) <= n, "intake asked for less than a piece"
        return piece

    read = read1


def intake(pieces, limit=0):
    return message.read(Pieces(pieces), limit)


def stored(msg):
    return b"".join(msg.chunks())


def reference(raw):
    """SPEC 1.1 intake written the obvious way, on the whole input at once."""
    data = raw
    if data.startswith(b"From "):
        nl = data.find(b"\n")
        data = b"" if nl < 0 else data[nl + 1:]
    data = data.replace(b"\r\n", b"\n")
    if data.endswith(b"\r"):
        data = data[:-1] + b"\n"  # the CR that started a line end
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data


def split_at(data, cuts):
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return [p for p in out if p]


# --- From_ line -------------------------------------------------------------


def test_from_line_removed_and_sender_kept():
    msg = intake([b"From alice@example.org  Tue Nov 24 22:08:05 2026\nSubject: x\n\nbody\n"])
    assert stored(msg) == b"Subject: x\n\nbody\n"
    assert msg.from_sender == "alice@example.org"
    assert msg.size == len(b"Subject: x\n\nbody\n")


@pytest.mark.parametrize("line, sender", [
    (b"From MAILER-DAEMON  Tue Nov 24 22:08:05 2026", ""),
    (b"From <>  Tue Nov 24 22:08:05 2026", ""),
    (b"From <bob@example.org>  Tue Nov 24 22:08:05 2026", "bob@example.org"),
    (b"From o'brien@example.org  Tue Nov 24 22:08:05 2026", "o'brien@example.org"),
])
def test_from_line_sender_forms(line, sender):
    msg = intake([line + b"\r\nS: x\r\n\r\nb\r\n"])
    assert msg.from_sender == sender
    assert stored(msg) == b"S: x\n\nb\n"


@pytest.mark.parametrize("line", [b"From ", b"From  \t "])
def test_from_line_without_sender_names_none(line):
    # SPEC 1: no address on the line -> the next source of the -f chain,
    # not the null sender (which MAILER-DAEMON and <> name explicitly)
    msg = intake([line + b"\nS: x\n\nb\n"])
    assert msg.from_sender is None
    assert stored(msg) == b"S: x\n\nb\n"
    assert parse_from_line(line) is None
    assert parse_from_line(b"From MAILER-DAEMON  Tue Nov 24 22:08:05 2026\n") == ""
    assert parse_from_line(b"From a@b Tue Nov 24 22:08:05 2026\n") == "a@b"


def test_from_line_split_over_many_reads():
    raw = b"From carol@example.org  Tue Nov 24 22:08:05 2026\r\nS: x\n\nb\n"
    msg = intake([raw[i:i + 3] for i in range(0, len(raw), 3)])
    assert msg.from_sender == "carol@example.org"
    assert stored(msg) == b"S: x\n\nb\n"


def test_no_from_line_means_no_sender_and_from_later_is_kept():
    msg = intake([b"S: x\n\nFrom here\n"])
    assert msg.from_sender is None
    assert stored(msg) == b"S: x\n\nFrom here\n"
    assert msg.needs_quoting


def test_only_the_first_line_is_an_envelope_line():
    raw = b"From a@x  Tue Nov 24 22:08:05 2026\nFrom b@x  Tue Nov 24 22:08:05 2026\nS: x\n\nb\n"
    msg = intake([raw])
    assert msg.from_sender == "a@x"
    assert stored(msg).startswith(b"From b@x  ")


def test_from_line_alone_is_empty():
    with pytest.raises(PermFail) as info:
        intake([b"From a@x  Tue Nov 24 22:08:05 2026\n"])
    assert info.value.status == EMPTY_STATUS
    assert info.value.exit == EX_DATAERR


# --- line ends ----------------------------------------------------------------


def test_crlf_becomes_lf():
    msg = intake([b"S: x\r\n\r\nline 1\r\nline 2\r\n"])
    assert stored(msg) == b"S: x\n\nline 1\nline 2\n"
    assert msg.lines == 4


@pytest.mark.parametrize("cut", range(1, 12))
def test_crlf_split_across_reads(cut):
    raw = b"S: x\r\n\r\nab\r\ncd\r\n"
    msg = intake(split_at(raw, [cut]))
    assert stored(msg) == b"S: x\n\nab\ncd\n"


def test_crlf_split_across_every_boundary_one_byte_reads():
    raw = b"S: x\r\n\r\nab\r\n\r\ncd\r\r\n\r"
    msg = intake([raw[i:i + 1] for i in range(len(raw))])
    # "\r\r\n" is a lone CR followed by a line end: "\r\n" stays.
    assert stored(msg) == reference(raw) == b"S: x\n\nab\n\ncd\r\n\n"


def test_read_boundaries_never_change_the_result():
    rng = random.Random(1234)
    alphabet = [b"a", b"\r", b"\n", b"\r\n", b"From ", b">"]
    for _ in range(300):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        cuts = [rng.randint(1, len(raw)) for _ in range(rng.randint(0, 6))]
        whole = stored(intake([raw])) if reference(raw) else None
        pieces = split_at(raw, cuts)
        if not reference(raw):
            with pytest.raises(PermFail):
                intake(pieces)
            continue
        msg = intake(pieces)
        assert stored(msg) == reference(raw) == whole, (raw, pieces)
        assert msg.size == len(reference(raw))
        assert msg.lines == reference(raw).count(b"\n")


def test_lone_cr_inside_a_line_is_kept():
    msg = intake([b"S: x\n\na\rb\n"])
    assert stored(msg) == b"S: x\n\na\rb\n"


def test_lone_cr_at_the_very_end_is_a_line_end():
    msg = intake([b"S: x\n\nbody\r"])
    assert stored(msg) == b"S: x\n\nbody\n"


def test_missing_final_newline_added():
    msg = intake([b"S: x\n\nno newline"])
    assert stored(msg) == b"S: x\n\nno newline\n"
    assert msg.lines == 3


def test_final_newline_not_doubled():
    msg = intake([b"S: x\n\nbody\n"])
    assert stored(msg) == b"S: x\n\nbody\n"


def test_binary_bytes_kept():
    body = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") + b"\n"
    msg = intake([b"S: x\n\n" + body + b"\0\0\xff\n"])
    assert stored(msg) == b"S: x\n\n" + body + b"\0\0\xff\n"


# --- empty input --------------------------------------------------------------


@pytest.mark.parametrize("pieces", [[], [b""]])
def test_empty_input_refused(pieces):
    with pytest.raises(PermFail) as info:
        intake(pieces)
    assert info.value.status == EMPTY_STATUS
    assert info.value.line().startswith(EMPTY_STATUS + " ")


@pytest.mark.parametrize("raw", [b"\r\n", b"\n", b"\r"])
def test_single_line_end_is_not_empty(raw):
    msg = intake([raw])
    assert stored(msg) == b"\n"


def test_reads_from_a_file_descriptor(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"S: x\r\n\r\nfd body")
    fd = os.open(path, os.O_RDONLY)
    try:
        msg = message.read(fd)
    finally:
        os.close(fd)
    assert stored(msg) == b"S: x\n\nfd body\n"


# --- header scan --------------------------------------------------------------


POSTFIX_TOP = (
    b"From o'brien@example.org  Tue Nov 24 22:08:05 2026\n"
    b"Return-Path: <o'brien@example.org>\n"
    b"X-Original-To: alice+work@localhost\n"
    b"Delivered-To: alice+work@localhost\n"
    b"Received: by vm.localdomain (Postfix, from userid 0)\n"
    b"\tid 1234; Tue, 24 Nov 2026 22:08:05 +0100 (CET)\n"
    b"Delivered-To: Old@Example.org\n"
    b"Message-ID:\n <m1@example.org>\n"
    b"Subject: hello\n"
    b"\n"
    b"Delivered-To: body@not.a.header\n"
)


def test_header_scan_postfix_layout():
    msg = intake([POSTFIX_TOP])
    assert msg.from_sender == "o'brien@example.org"
    assert msg.leading == (
        ("return-path", "<o'brien@example.org>"),
        ("x-original-to", "alice+work@localhost"),
        ("delivered-to", "alice+work@localhost"),
    )
    assert msg.delivered_to == ("alice+work@localhost", "old@example.org")
    assert msg.message_id == "<m1@example.org>"


def test_leading_block_ends_at_the_first_other_field():
    msg = intake([b"Subject: x\nReturn-Path: <a@b>\nDelivered-To: c@d\n\nb\n"])
    assert msg.leading == ()
    assert msg.delivered_to == ("c@d",)


def test_header_scan_across_reads_and_crlf():
    raw = POSTFIX_TOP.replace(b"\n", b"\r\n")
    msg = intake([raw[i:i + 7] for i in range(0, len(raw), 7)])
    assert msg.delivered_to == ("alice+work@localhost", "old@example.org")
    assert msg.message_id == "<m1@example.org>"
    assert len(msg.leading) == 3


def test_message_without_header():
    msg = intake([b"\nbody only\n"])
    assert msg.leading == () and msg.delivered_to == () and msg.message_id is None
    assert stored(msg) == b"\nbody only\n"


def test_trace_headers_added_when_missing():
    from pymda.resolve import Envelope

    msg = intake([b"S: x\n\nb\n"])
    env = Envelope(sender="a@x", recipient="alice+work@example.org", user="alice")
    assert message.trace_headers(msg, env) == (
        b"Return-Path: <a@x>\nDelivered-To: alice+work@example.org\n"
    )
    null = Envelope(sender="", recipient="r@x", user="r")
    assert message.trace_headers(msg, null).startswith(b"Return-Path: <>\n")


def test_trace_headers_not_repeated_from_the_leading_block():
    from pymda.resolve import Envelope

    msg = intake([POSTFIX_TOP])
    env = Envelope(sender="o'brien@example.org", recipient="alice+work@localhost", user="alice")
    assert message.trace_headers(msg, env) == b""
    other = Envelope(sender="new@example.org", recipient="alice+work@localhost", user="alice")
    assert message.trace_headers(msg, other) == b"Return-Path: <new@example.org>\n"
    elsewhere = Envelope(sender="o'brien@example.org", recipient="bob@localhost", user="bob")
    assert message.trace_headers(msg, elsewhere) == b"Delivered-To: bob@localhost\n"


def test_x_original_to_from_the_envelopes_orcpt():
    """LMTP's ORCPT (envelope.orcpt) becomes X-Original-To between
    Return-Path and Delivered-To, as postfix local(8) writes them; not
    when the leading block already names it; never without an orcpt
    (the original_recipient alone, pymda's one-shot default, adds none)."""
    from pymda.resolve import Envelope

    msg = intake([b"S: x\n\nb\n"])
    env = Envelope(sender="a@x", recipient="bob@x", user="bob", orcpt="team+x@x")
    assert message.trace_headers(msg, env) == (
        b"Return-Path: <a@x>\nX-Original-To: team+x@x\nDelivered-To: bob@x\n")
    plain = Envelope(sender="a@x", recipient="bob@x", user="bob", original_recipient="t@x")
    assert b"X-Original-To" not in message.trace_headers(msg, plain)
    top = intake([POSTFIX_TOP])
    same = Envelope(sender="o'brien@example.org", recipient="alice+work@localhost",
                    user="alice", orcpt="ALICE+work@localhost")
    assert message.trace_headers(top, same) == b""
    other = Envelope(sender="o'brien@example.org", recipient="alice+work@localhost",
                     user="alice", orcpt="x@y\r\nBcc: z")
    assert message.trace_headers(top, other) == b"X-Original-To: x@yBcc: z\n"


def test_trace_headers_strip_line_breaks():
    from pymda.resolve import Envelope

    msg = intake([b"S: x\n\nb\n"])
    env = Envelope(sender="a@x\r\nX-Evil: 1", recipient="r@x\nBcc: y", user="r")
    out = message.trace_headers(msg, env)
    assert out.count(b"\n") == 2
    assert b"\nX-Evil" not in out and b"\nBcc" not in out


# --- spooling and limit -------------------------------------------------------


def test_small_message_stays_in_memory():
    msg = intake([b"S: x\n\n" + b"a" * 100 + b"\n"])
    assert msg.data is not None and msg.fd is None


def test_large_message_spooled_to_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    line = b"0123456789" * 7 + b"\r\n"
    count = (message.SPOOL_IN_MEMORY // len(line)) * 3
    raw = b"S: big\r\n\r\n" + line * count
    pieces = [raw[i:i + 65536 + 1] for i in range(0, len(raw), 65537)]
    msg = intake(pieces)
    assert msg.data is None and msg.fd is not None
    expected = raw.replace(b"\r\n", b"\n")
    assert msg.size == len(expected) > message.SPOOL_IN_MEMORY
    assert stored(msg) == expected
    assert b"".join(msg.chunks(size=4096)) == expected
    assert msg.head(10) == expected[:10]
    # The spool file is anonymous: nothing is left in TMPDIR.
    assert os.listdir(tmp_path) == []
    assert os.fstat(msg.fd).st_nlink == 0
    os.close(msg.fd)


def test_exactly_at_the_limit_is_accepted():
    raw = b"S: x\n\n" + b"a" * 93 + b"\n"
    assert len(raw) == 100
    msg = intake([raw], limit=100)
    assert msg.size == 100


@pytest.mark.parametrize("raw", [
    b"S: x\n\n" + b"a" * 94 + b"\n",
    b"S: x\n\n" + b"a" * 94,  # 100 bytes, 101 with the added newline
])
def test_over_the_limit_refused(raw):
    with pytest.raises(PermFail) as info:
        intake([raw], limit=100)
    assert info.value.status == TOO_BIG_STATUS
    assert info.value.exit == EX_NOPERM


def test_limit_counts_normalised_bytes_not_the_from_line():
    raw = b"From a@x  Tue Nov 24 22:08:05 2026\r\nS: x\r\n\r\n" + b"a" * 93 + b"\r\n"
    assert len(reference(raw)) == 100
    assert intake([raw], limit=100).size == 100


def test_over_the_limit_still_drains_all_input():
    pieces = [b"S: x\n\n"] + [b"a" * 1000 + b"\n"] * 50
    reader = Pieces(pieces)
    with pytest.raises(PermFail):
        message.read(reader, 5000)
    assert reader.pieces == []


def test_from_bytes():
    assert stored(message.from_bytes(b"From a  b\nS: x\n\nb")) == b"S: x\n\nb\n"


def test_format_from_line():
    line = message.format_from_line("alice@example.org", when=0)
    import time as _time

    assert line == f"From alice@example.org  {_time.asctime(_time.localtime(0))}\n".encode()
    assert message.format_from_line("", when=0).startswith(b"From MAILER-DAEMON  ")
    assert b" " not in message.format_from_line("a b@x", when=0).split(b"  ")[0][5:]


@pytest.mark.parametrize("line", [b"From x", b">From x", b">>From x"])
def test_needs_quoting_whatever_the_read_boundaries(line):
    raw = b"S: x\n\nbody\n" + line + b"\nend\n"
    for cut in range(1, len(raw)):
        msg = intake([raw[:cut], raw[cut:]])
        assert msg.needs_quoting, (line, cut)


def test_no_quoting_needed_for_plain_bodies():
    msg = intake([b"S: x\n\nFromage\n from x\nx>From\n"])
    assert not msg.needs_quoting


def test_envelope_line_false_keeps_a_leading_from_line():
    import io

    data = b"From a@b  Tue Nov 24 22:08:05 2026\r\nSubject: x\r\n\r\nbody\r\n"
    kept = message.read(io.BytesIO(data), envelope_line=False)
    assert kept.from_sender is None
    assert b"".join(kept.chunks()) == data.replace(b"\r\n", b"\n")
    assert kept.needs_quoting  # an mbox target must quote it
    stripped = message.read(io.BytesIO(data))
    assert stripped.from_sender == "a@b"
    assert b"".join(stripped.chunks()) == b"Subject: x\n\nbody\n"


def test_a_from_line_longer_than_the_gathering_window_is_all_envelope():
    import io

    class Trickle:  # a pipe: at most 4 KiB per read
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def read(self, n):
            return self.data.read(min(n, 4096))

    line = b"From a@b  " + b"x" * 200_000 + b"\n"
    msg = message.read(Trickle(line + b"Subject: x\n\nbody\n"))
    assert msg.from_sender == "a@b"
    assert b"".join(msg.chunks()) == b"Subject: x\n\nbody\n"


# --- the feeder (issue 9 item 5): Intake.feed / finish, no I/O of its own ------------


def feed(pieces, limit=0, envelope_line=True):
    intake_ = message.Intake(limit, envelope_line)
    try:
        for piece in pieces:
            intake_.feed(piece)
        return intake_.finish()
    finally:
        intake_.close()


def test_feeder_gives_what_read_gives_whatever_the_pieces():
    rng = random.Random(99)
    alphabet = [b"a", b"\r", b"\n", b"\r\n", b"From ", b">", b"From x@y  date\n"]
    for _ in range(300):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        pieces = split_at(raw, [rng.randint(1, len(raw)) for _ in range(rng.randint(0, 8))])
        if not reference(raw):
            with pytest.raises(PermFail):
                feed(pieces)
            continue
        fed, read_ = feed(pieces), intake([raw])
        assert stored(fed) == stored(read_) == reference(raw), (raw, pieces)
        assert (fed.size, fed.lines, fed.from_sender, fed.needs_quoting) == \
            (read_.size, read_.lines, read_.from_sender, read_.needs_quoting)


def test_feeder_one_byte_at_a_time_with_an_envelope_line():
    raw = b"From alice@example.org  Tue Nov 24 22:08:05 2026\r\nSubject: x\r\n\r\nbody\r"
    msg = feed([raw[i:i + 1] for i in range(len(raw))])
    assert msg.from_sender == "alice@example.org"
    assert stored(msg) == b"Subject: x\n\nbody\n"


def test_feeder_without_envelope_line_keeps_a_from_line():
    msg = feed([b"From", b" me\r\n\r\nx\r\n"], envelope_line=False)
    assert msg.from_sender is None and stored(msg) == b"From me\n\nx\n"


def test_feeder_spools_large_messages_and_hands_the_file_over(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    intake_ = message.Intake()
    line = b"z" * 1022 + b"\r\n"
    for _ in range(2 * message.SPOOL_IN_MEMORY // len(line)):
        intake_.write(line)
    msg = intake_.finish()
    intake_.close()  # the file is the Message's now: not closed under it
    try:
        assert msg.fd is not None and msg.data is None
        assert os.fstat(msg.fd).st_size == msg.size == 2 * message.SPOOL_IN_MEMORY // 1024 * 1023
    finally:
        os.close(msg.fd)


def test_feeder_close_drops_an_unfinished_spool(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    intake_ = message.Intake(limit=10)
    intake_.feed(b"x" * (message.SPOOL_IN_MEMORY + 5))  # over the limit: nothing kept
    with pytest.raises(PermFail):
        intake_.finish()
    intake_.close()
    big = message.Intake()
    big.feed(b"y" * (message.SPOOL_IN_MEMORY + 5))
    fd = big.fd
    big.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_needs_quoting_when_a_from_line_arrives_one_byte_a_read():
    raw = b"S: x\n\nFrom me\n"
    msg = intake([raw[i:i + 1] for i in range(len(raw))])
    assert msg.needs_quoting  # before: only the last read's bytes were probed
