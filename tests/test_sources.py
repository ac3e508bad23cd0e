"""pymda.admin.sources: recognising SOURCEs by content and splitting them (real files)."""

import gzip
import io
import os
from pathlib import Path

import pytest

import redeliver_packs as packs
from pymda.admin import sources
from redeliver_packs import read_bytes


def messages_of(source):
    out = []
    for item in source.items():
        chunks = []
        while True:
            chunk = item.reader.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
        out.append((item, b"".join(chunks)))
    return out


def open_(path, **kw):
    return sources.open_source(str(path), **kw)


@pytest.fixture(scope="module")
def py_mbox(tmp_path_factory, corpus_messages):
    d = tmp_path_factory.mktemp("src")
    return packs.python_mbox(corpus_messages, d / "python.mbox")


@pytest.mark.parametrize("kind", [None, "gz", "bz2", "xz"])
def test_python_mbox_all_compressions(py_mbox, corpus_messages, kind):
    path = py_mbox if kind is None else packs.compressed(py_mbox, kind)
    with open_(path) as src:
        assert src.count == len(corpus_messages)
        assert src.kind == "mbox" + {None: "", "gz": "+gzip", "bz2": "+bzip2", "xz": "+xz"}[kind]
        got = messages_of(src)
    assert [packs.body_of(data) for _, data in got] == [
        packs.body_of(m.read_bytes()) for m in corpus_messages]
    assert all(not data.startswith(b"From ") for _, data in got)
    assert got[0][0].position == "#1" and got[-1][0].position == f"#{len(corpus_messages)}"


@pytest.mark.skipif(not os.access(packs.PROCMAIL, os.X_OK), reason="procmail not installed")
def test_procmail_mbox(tmp_path, corpus_messages):
    path = packs.procmail_mbox(corpus_messages, tmp_path / "pm.mbox", sender="who@example.org")
    with open_(path) as src:
        got = messages_of(src)
    assert len(got) == len(corpus_messages)
    assert {item.from_sender for item, _ in got} == {"who@example.org"}
    assert [packs.body_of(d) for _, d in got] == [
        packs.body_of(m.read_bytes()) for m in corpus_messages]


MBOXRD = (b"From a@example.org  Thu Jan  1 00:00:00 1970\n"
          b"Subject: q\n\n>From one\n>>From two\n>Fromage\nFrom\n\n"
          b"From MAILER-DAEMON  Thu Jan  1 00:00:00 1970\n"
          b"Subject: r\n\nlast\n")


def test_unquoting_mboxrd_and_mboxo(tmp_path):
    path = tmp_path / "rd.mbox"
    path.write_bytes(MBOXRD)
    with open_(path) as src:
        (i1, m1), (i2, m2) = messages_of(src)
    assert m1 == b"Subject: q\n\nFrom one\n>From two\n>Fromage\nFrom\n"
    assert m2 == b"Subject: r\n\nlast\n"
    assert (i1.from_sender, i2.from_sender) == ("a@example.org", "")
    with open_(path, mbox_quoting="mboxo") as src:
        (_, m1), _ = messages_of(src)
    assert m1 == b"Subject: q\n\nFrom one\n>>From two\n>Fromage\nFrom\n"


def test_from_line_in_paragraph_does_not_split(tmp_path):
    path = tmp_path / "para.mbox"
    path.write_bytes(b"From a@b  Thu Jan  1 00:00:00 1970\nSubject: x\n\ntext\n"
                     b"From my point of view\n\n")
    with open_(path) as src:
        assert src.count == 1


def _cl_mbox(bodies, lie=0):
    out = []
    for body in bodies:
        out.append(b"From x@y  Thu Jan  1 00:00:00 1970\nSubject: s\n"
                   + b"Content-Length: %d\n\n" % (len(body) + lie) + body + b"\n")
    return b"".join(out)


def test_content_length_consistent_keeps_unquoted_from(tmp_path):
    bodies = [b"a\n\nFrom inside the body Thu Jan  1 00:00:00 1970\nmore\n", b"second\n"]
    path = tmp_path / "cl.mbox"
    path.write_bytes(_cl_mbox(bodies))
    with open_(path) as src:
        got = messages_of(src)
    assert [packs.body_of(d) + b"\n" for _, d in got] == bodies


def test_content_length_inconsistent_is_ignored(tmp_path):
    bodies = [b"a\n", b"b\n", b"c\n"]
    path = tmp_path / "cl.mbox"
    path.write_bytes(_cl_mbox(bodies, lie=7))
    with open_(path) as src:
        got = messages_of(src)
    assert [packs.body_of(d) + b"\n" for _, d in got] == bodies


def test_maildir_flags_and_order(tmp_path, corpus_messages):
    msgs = corpus_messages[:12]
    flags = packs.maildir_with_flags(msgs, tmp_path / "Maildir")
    (tmp_path / "Maildir" / "tmp" / "partial").write_bytes(b"Subject: half")
    with open_(tmp_path / "Maildir") as src:
        assert src.kind == "maildir" and src.count == 12
        got = messages_of(src)
    by_body = {packs.body_of(m.read_bytes()): flags[m.name] for m in msgs}
    assert {packs.body_of(d): item.flags for item, d in got} == by_body
    assert all(item.position.startswith(("new/", "cur/")) for item, _ in got)


def test_single_message_and_stdin(corpus_messages):
    plain = next(m for m in corpus_messages if not m.read_bytes().startswith(b"From "))
    with open_(plain) as src:
        assert (src.kind, src.count) == ("message", 1)
        ((item, data),) = messages_of(src)
    assert data == plain.read_bytes() and item.flags is None
    with sources.open_source("-", stdin=io.BytesIO(gzip.compress(MBOXRD))) as src:
        assert (src.kind, src.count) == ("mbox+gzip", 2)


BAD = {
    "junk": (bytes(range(256)) * 16, "not a mailbox or a message"),
    "empty": (b"", "empty file"),
    "prose": (b"Dear admin,\nFrom now on\n", "first line is not a 'From ' line"),
    "gzip-empty": (gzip.compress(b""), "empty gzip"),
    "gzip-prose": (gzip.compress(b"hello\n"), "first line is not a 'From ' line"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_name_the_source(tmp_path, name):
    data, why = BAD[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(sources.SourceError) as err:
        open_(path)
    assert str(err.value).startswith(f"{path}: ")
    assert why in str(err.value)


def test_truncated_gzip_found_before_any_message(tmp_path, py_mbox):
    data = gzip.compress(read_bytes(py_mbox))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(sources.SourceError, match=r"truncated or corrupt gzip"):
        open_(path)


def test_directory_without_maildir_subdirs(tmp_path):
    (tmp_path / "d" / "x").mkdir(parents=True)
    with pytest.raises(sources.SourceError, match=r"not a Maildir"):
        open_(tmp_path / "d")


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(sources.SourceError, match="cannot open"):
        open_(tmp_path / "nope")
    if os.geteuid() == 0:
        return  # root reads everything
    path = tmp_path / "secret.mbox"
    path.write_bytes(MBOXRD)
    path.chmod(0)
    with pytest.raises(sources.SourceError, match="cannot open"):
        open_(path)


def test_source_left_untouched(tmp_path):
    path = tmp_path / "keep.mbox"
    path.write_bytes(MBOXRD)
    os.utime(path, (1_000_000, 2_000_000))
    before = os.stat(path)
    with open_(path) as src:
        messages_of(src)
    after = os.stat(path)
    assert path.read_bytes() == MBOXRD
    assert (after.st_atime, after.st_mtime) == (before.st_atime, before.st_mtime) == (
        1_000_000, 2_000_000)


@pytest.mark.parametrize("quoting", ["mboxrd", "mboxo"])
@pytest.mark.parametrize("kind", [None, "gz"])
def test_large_message_long_lines_unquoted_only_at_line_starts(tmp_path, quoting, kind):
    """Over 1 MiB a message is read in pieces of at most 64 KiB; a piece that
    continues a long line is not a line start and must not be un-quoted."""
    long_line = b"x" * 65536 + b">From the middle of a line\n"   # piece 2 starts with >From
    body = long_line * 3 + b"y" * 80 + b"\n" + b"plain line\n" * 100000
    message = b"Subject: big\n\n" + body + b">From quoted\n"
    path = tmp_path / "big.mbox"
    path.write_bytes(b"From a@example.org  Thu Jan  1 00:00:00 1970\n" + message + b"\n")
    assert len(message) > sources._WHOLE
    if kind:
        path = packs.compressed(path, kind)
    with open_(path, mbox_quoting=quoting) as src:
        ((_, data),) = messages_of(src)
    assert data == b"Subject: big\n\n" + body + b"From quoted\n"


def test_content_length_with_thousands_of_digits_is_ignored(tmp_path):
    """int() raises on over 4300 digits: that was an internal error that
    stopped the whole batch."""
    path = tmp_path / "cl.mbox"
    path.write_bytes(b"From a@example.org  Thu Jan  1 00:00:00 1970\n"
                     b"Content-Length: " + b"1" * 5000 + b"\nSubject: a\n\nbody\n\n"
                     b"From a@example.org  Thu Jan  1 00:00:00 1970\nSubject: b\n\nsecond\n")
    with open_(path) as src:
        got = [data for _, data in messages_of(src)]
    assert [d.split(b"\n\n", 1)[1] for d in got] == [b"body\n", b"second\n"]


def test_a_huge_line_in_a_compressed_mbox_costs_no_memory(tmp_path):
    """A few hundred KiB of gzip can hold a line of 256 MiB: it is scanned
    and read in pieces, never held whole (peak RSS measured in a child)."""
    import subprocess
    import sys

    line_mib = 256
    path = tmp_path / "bomb.mbox.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b"From a@example.org  Thu Jan  1 00:00:00 1970\nSubject: long\n\n")
        chunk = b"x" * (1 << 20)
        for _ in range(line_mib):
            f.write(chunk)
        f.write(b"\n\nFrom b@example.org  Thu Jan  1 00:00:00 1970\nSubject: b\n\nbody\n")
    assert path.stat().st_size < 2 << 20
    code = (
        "import sys\n"
        "from pymda.admin import sources\n"
        "sizes = []\n"
        "with sources.open_source(sys.argv[1]) as src:\n"
        "    for item in src.items():\n"
        "        n = 0\n"
        "        while True:\n"
        "            piece = item.reader.read(65536)\n"
        "            if not piece:\n"
        "                break\n"
        "            n += len(piece)\n"
        "        sizes.append(n)\n"
        # VmHWM, not ru_maxrss: Linux carries the latter over from before
        # exec, i.e. from the forked pytest process
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(*sizes, int(hwm.split()[1]) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         stdout=subprocess.PIPE).stdout.split()
    *sizes, peak_mib = map(int, out)
    assert sizes == [len(b"Subject: long\n\n") + (line_mib << 20) + 1, len(b"Subject: b\n\nbody\n")]
    assert peak_mib < 100, f"peak RSS {peak_mib} MiB for a {line_mib} MiB line"


@pytest.mark.parametrize("kind", [None, "gz", "bz2", "xz"])
def test_a_source_cut_short_after_the_check_fails_one_message_then_ends(tmp_path, kind):
    """The source shrinks between open_source's check and the reading (an
    admin's logrotate...): the message that meets the cut gets a reader
    raising OSError 'source changed', and no item follows - never a
    decompressor's EOFError out of the iteration."""
    body = b"".join(b"From a@b Tue Nov 24 22:08:05 2026\nSubject: %d\n\n%s\n\n"
                    % (i, os.urandom(3000).hex().encode()) for i in range(40))
    path = tmp_path / "cut.mbox"
    path.write_bytes(body)
    if kind is not None:
        path = Path(packs.compressed(path, kind))
    with open_(path) as src:
        assert src.count == 40
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        items = []
        for item in src.items():
            try:
                while item.reader.read(65536):
                    pass
                items.append((item.position, None))
            except OSError as exc:
                items.append((item.position, str(exc)))
    *good, (position, error) = items
    # (bzip2 packs all of it in one block: nothing before the cut decodes)
    assert all(e is None for _, e in good) and len(good) < 40, items
    assert position == f"#{len(good) + 1}"
    assert error and "source changed while reading" in error
