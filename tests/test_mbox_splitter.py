"""sources.MboxSplitter: the I/O-free mbox splitter (issue 8 item 10, issue 9 item 5).

Unit tests on bytes (feed/finish, any chunking), then the hostile source
of issue 8: every message claiming ``Content-Length: 99999999`` used to
make the splitter rescan to the end of the file for every message (8,000
messages: about a minute, gzip worse).  It must now be linear, plain and
compressed, through ``open_source`` on real files.
"""

import gzip
import time

import pytest

from pymda.admin import sources
from pymda.admin.sources import MboxSplitter, SplitError

DATE = b"Thu Jan  1 00:00:00 1970"


def from_line(sender=b"a@example.org", date=DATE):
    return b"From " + sender + b"  " + date + b"\n"


def split(data, chunk=None):
    """[(message bytes, sender)] of ``data`` fed in pieces of ``chunk``."""
    sp = MboxSplitter()
    spans = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        spans += sp.feed(data[i : i + step])
    spans += sp.finish()
    return [(data[s.start : s.end], s.sender) for s in spans]


def every_chunking(data):
    """The same result whatever the chunk sizes; that result."""
    want = split(data)
    for chunk in (1, 2, 3, 5, 7, 64, 4096):
        assert split(data, chunk) == want, chunk
    return want


def test_plain_mbox():
    data = (from_line() + b"Subject: 1\n\none\n\n"
            + from_line(b"MAILER-DAEMON") + b"Subject: 2\n\ntwo\n\n"
            + from_line(b"<c@example.org>") + b"Subject: 3\n\nthree\n")
    assert every_chunking(data) == [
        (b"Subject: 1\n\none\n", "a@example.org"),
        (b"Subject: 2\n\ntwo\n", ""),
        (b"Subject: 3\n\nthree\n", "c@example.org"),
    ]


def test_crlf_empty_line_is_a_separator_too():
    data = from_line() + b"S: 1\r\n\r\none\r\n\r\n" + from_line() + b"S: 2\r\n\r\ntwo\r\n\r\n"
    assert [m for m, _ in every_chunking(data)] == [b"S: 1\r\n\r\none\r\n", b"S: 2\r\n\r\ntwo\r\n"]


def test_from_in_a_paragraph_does_not_split_a_dated_one_does():
    data = (from_line() + b"S: 1\n\ntext\nFrom my point of view\nmore\n"
            + from_line(b"b@example.org") + b"S: 2\n\nprocmail wrote no empty line\n")
    assert every_chunking(data) == [
        (b"S: 1\n\ntext\nFrom my point of view\nmore\n", "a@example.org"),
        (b"S: 2\n\nprocmail wrote no empty line\n", "b@example.org"),
    ]


def cl_message(body, length=None, sender=b"x@example.org"):
    n = len(body) if length is None else length
    return from_line(sender) + b"Subject: s\nContent-Length: %d\n\n" % n + body


def test_consistent_content_length_keeps_unquoted_from_lines():
    body = b"a\n\nFrom inside the body " + DATE + b"\nmore\n"
    for sep in (b"", b"\n"):  # a From_ line, or an empty line and one, after the body
        data = cl_message(body) + sep + cl_message(b"second\n") + b"\n"
        got = every_chunking(data)
        assert [m.split(b"\n\n", 1)[1] for m, _ in got] == [body, b"second\n"], sep


def test_consistent_content_length_up_to_the_end():
    body = b"x\n\nFrom y " + DATE + b"\n"
    for tail in (b"", b"\n"):
        got = every_chunking(cl_message(body) + tail)
        assert [m.split(b"\n\n", 1)[1] for m, _ in got] == [body]


def test_inconsistent_content_length_is_ignored():
    for lie in (-3, -1, 1, 2, 99999999):
        data = b"".join(cl_message(b"body %d\n" % i, 8 + lie) + b"\n" for i in range(3))
        got = every_chunking(data)
        assert [m.split(b"\n\n", 1)[1] for m, _ in got] == [b"body 0\n", b"body 1\n",
                                                           b"body 2\n"], lie


def test_last_content_length_of_the_header_wins():
    body = b"a\n\nFrom b " + DATE + b"\n"
    data = (from_line() + b"Content-Length: 1\nContent-Length: %d\n\n" % len(body) + body
            + from_line() + b"\nend\n")
    got = every_chunking(data)
    assert len(got) == 2 and got[0][0].endswith(body)


def test_messages_come_out_before_the_end():
    """feed() hands out what is settled: memory does not wait for finish()."""
    sp = MboxSplitter()
    out = sp.feed(from_line() + b"S: 1\n\none\n\n" + from_line() + b"S: 2\n\ntwo\n")
    assert len(out) == 1
    body = b"x\n"
    out = sp.feed(b"\n" + cl_message(body) + from_line() + b"\n")
    assert len(out) == 2  # the Content-Length one is settled by the From_ line after it
    assert len(sp.finish()) == 1


@pytest.mark.parametrize("data, why", [
    (b"", "first line"),
    (b"Subject: no\n\nbody\n", "first line"),
    (b"From a@b " + b"x" * 70000 + b"\n\nbody\n", "longer than"),
])
def test_not_an_mbox(data, why):
    with pytest.raises(SplitError, match=why):
        split(data, 4096)


def test_a_long_line_costs_no_memory():
    """A gzip of gigabytes without a newline: bounded buffering."""
    import tracemalloc

    sp = MboxSplitter()
    chunk = b"x" * (1 << 20)
    tracemalloc.start()
    try:
        sp.feed(from_line() + b"Subject: long\n\n")
        for _ in range(64):
            sp.feed(chunk)
        spans = sp.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    assert len(spans) == 1 and spans[0].end - spans[0].start == 15 + (64 << 20)


# --- issue 8 item 10: linear whatever Content-Length says ----------------------------------

HOSTILE = 8000


def hostile_mbox():
    return b"".join(from_line(b"x%d@example.org" % i) + b"Subject: %d\n" % i
                    + b"Content-Length: 99999999\n\nbody %d\n\n" % i for i in range(HOSTILE))


def test_hostile_content_length_in_memory():
    data = hostile_mbox()
    started = time.monotonic()
    got = split(data, 1 << 16)
    assert time.monotonic() - started < 20
    assert len(got) == HOSTILE
    assert got[-1] == (b"Subject: %d\nContent-Length: 99999999\n\nbody %d\n" % (
        HOSTILE - 1, HOSTILE - 1), "x%d@example.org" % (HOSTILE - 1))


@pytest.mark.parametrize("compressed", [False, True])
def test_hostile_content_length_source(tmp_path, compressed):
    data = hostile_mbox()
    path = tmp_path / ("cl.mbox.gz" if compressed else "cl.mbox")
    path.write_bytes(gzip.compress(data) if compressed else data)
    started = time.monotonic()
    with sources.open_source(str(path)) as src:
        assert src.count == HOSTILE
        got = []
        for item in src.items():
            got.append((item.from_sender, item.reader.read(1 << 20)))
    assert time.monotonic() - started < 20
    assert got == [("x%d@example.org" % i,
                    b"Subject: %d\nContent-Length: 99999999\n\nbody %d\n" % (i, i))
                   for i in range(HOSTILE)]
