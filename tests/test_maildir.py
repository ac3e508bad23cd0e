"""Maildir / Maildir++ delivery (pymda.maildir, SPEC 1.5 and 1.2).

By subprocess, as a test user (or root with -d): unique names whose ,S=
and ,W= match the file; modes 0600 / 0700; ``maildirfolder``; ``-m
Work/Reports`` -> ``.Work.Reports``; non-ASCII names in modified UTF-7 or
UTF-8; ``+extension`` with detail_folders existing/create/off; traversal
through ``-m`` (64, nothing created) and through ``+extension`` (INBOX);
ownership when root delivers with ``-d``; and nothing ever visible in
``new/`` partially written, checked by stopping a real writer mid-file.
"""

import os
import re
import signal
import stat
import time

import pytest

from enginekit import (
    MESSAGE, SENDER, USAGE, assert_failure, assert_ok, deliver, maildir_files,
    only_message, recipient_of, snapshot,
)
from pymda import maildir
from support import dovecot
from support.run import EX_OK, EX_USAGE, reaped, run_pymda, start_pymda

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)")

NAME_RE = re.compile(
    rb"^(?P<sec>\d+)\.M(?P<usec>\d+)P(?P<pid>\d+)Q(?P<q>\d+)R(?P<rand>[0-9a-f]+)"
    rb"\.(?P<host>[^,/:]+),S=(?P<size>\d+),W=(?P<vsize>\d+)$"
)

TRACE = f"Return-Path: <{SENDER}>\n".encode()


def expected(user, raw, extension=None):
    return (TRACE + f"Delivered-To: {recipient_of(user, extension)}\n".encode()
            + raw.replace(b"\r\n", b"\n"))


def dirs_and_modes(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


# --- names, sizes, modes ------------------------------------------------------------


@needs_root
def test_name_sizes_match_the_file(test_user):
    raw = b"Subject: sizes\r\n\r\nline one\r\nline two\r\n\r\n"
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], raw))
    name, data = only_message(test_user.path("Maildir"))
    m = NAME_RE.match(name.encode())
    assert m, name
    assert data == expected(test_user, raw)
    assert int(m["size"]) == len(data)
    assert int(m["vsize"]) == len(data.replace(b"\n", b"\r\n"))
    assert abs(int(m["sec"]) - time.time()) < 60
    assert int(m["usec"]) < 1_000_000
    assert m["host"].decode() == os.uname().nodename.replace("/", "\\057").replace(":", "\\072")
    assert os.listdir(test_user.path("Maildir", "tmp")) == []
    assert os.listdir(test_user.path("Maildir", "cur")) == []


@needs_root
def test_names_are_unique(test_user):
    for _ in range(3):
        assert_ok(deliver(test_user, ["--mailbox", "Maildir/"]))
    files = maildir_files(test_user.path("Maildir"))
    assert len(files) == 3
    assert len({NAME_RE.match(n.encode())["rand"] for n in files}) == 3


def test_unique_name_escapes_the_host(monkeypatch):
    real = os.uname()

    class Fake:
        nodename = "mail/host:1"
        sysname, release, version, machine = (real.sysname, real.release, real.version,
                                              real.machine)

    monkeypatch.setattr(maildir.os, "uname", lambda: Fake)
    name = maildir.unique_name(12, 14)
    assert ".mail\\057host\\0721,S=12,W=14" in name
    assert "/" not in name and ":" not in name


@needs_root
def test_modes_even_with_umask_0(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/", "-m", "Work/Reports"], umask=0))
    root = test_user.path("Maildir")
    modes = dirs_and_modes(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for rel, mode in modes.items():
        if os.path.isdir(root / rel):
            assert mode == 0o700, rel
        else:
            assert mode == 0o600, rel
    assert {"tmp", "new", "cur"} <= set(modes)  # the root Maildir too


@needs_root
def test_folder_work_reports(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/", "-m", "Work/Reports"]))
    root = test_user.path("Maildir")
    assert sorted(os.listdir(root)) == [".Work.Reports", "cur", "new", "subscriptions", "tmp"]
    folder = root / ".Work.Reports"
    assert sorted(os.listdir(folder)) == ["cur", "maildirfolder", "new", "tmp"]
    assert (folder / "maildirfolder").read_bytes() == b""
    assert not (root / "maildirfolder").exists()
    _, data = only_message(folder)
    assert data == expected(test_user, MESSAGE)
    assert os.listdir(root / "new") == []


@needs_root
def test_inbox_folder_is_the_root(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/", "-m", "inbox"]))
    only_message(test_user.path("Maildir"))
    assert not [n for n in os.listdir(test_user.path("Maildir")) if n.startswith(".")]


@needs_root
@pytest.mark.parametrize("encoding, dirname", [
    (None, ".Entw&APw-rfe.&U,BTFw-"),
    ("utf8", ".Entwürfe.台北"),
])
def test_non_ascii_folder(test_user, encoding, dirname):
    args = ["--mailbox", "Maildir/", "-m", "Entwürfe/台北"]
    if encoding:
        args += ["-o", f"folder_encoding={encoding}"]
    assert_ok(deliver(test_user, args))
    root = test_user.path("Maildir")
    assert sorted(n for n in os.listdir(root) if n.startswith(".")) == [dirname]
    only_message(root / dirname)


@needs_root
def test_create_folders_false_goes_to_inbox(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/", "-m", "Nope",
                                  "-o", "create_folders=false"]))
    root = test_user.path("Maildir")
    assert not (root / ".Nope").exists()
    only_message(root)


# --- +extension ----------------------------------------------------------------------


def make_folder(user, name):
    for sub in ("cur", "new", "tmp"):
        user.mkdir(f"Maildir/{name}/{sub}")
    user.write(f"Maildir/{name}/maildirfolder", b"")


@needs_root
@pytest.mark.parametrize("mode, exists, where", [
    ("existing", False, ""),
    ("existing", True, ".work"),
    ("create", False, ".work"),
    ("create", True, ".work"),
    ("off", True, ""),
    ("off", False, ""),
])
def test_extension_detail_folders(test_user, mode, exists, where):
    user = test_user
    user.mkdir("Maildir/new")
    user.mkdir("Maildir/cur")
    user.mkdir("Maildir/tmp")
    if exists:
        make_folder(user, ".work")
    rcpt = recipient_of(user, "work")
    assert_ok(deliver(user, ["--mailbox", "Maildir/", "-o", f"detail_folders={mode}"],
                      recipient=rcpt))
    root = user.path("Maildir")
    _, data = only_message(root / where if where else root)
    assert data == expected(user, MESSAGE, "work")
    if not where:
        assert not (root / ".work").exists() or not os.listdir(root / ".work" / "new")
    else:
        assert os.listdir(root / "new") == []
    if mode == "create" and not exists:
        assert (root / ".work" / "maildirfolder").exists()


@needs_root
def test_extension_from_postfix_environment(test_user):
    make_folder(test_user, ".lists")
    rcpt = f"{test_user.name}+lists@localhost"
    code, out = run_pymda(["-f", SENDER, "--mailbox", "Maildir/"], MESSAGE, user=test_user,
                          postfix_env=True, recipient=rcpt, sender=SENDER)
    assert (code, out) == (EX_OK, b"")
    only_message(test_user.path("Maildir", ".lists"))


# --- traversal ------------------------------------------------------------------------


TRAVERSAL = ["..", "../x", "../../etc", ".hidden", "a//b", "/etc", "a/../../b", "x/.", "."]


def escape_candidates(user):
    """Where a traversal out of <home>/Maildir/ would have created something."""
    return [user.home / "x", user.home / "b", user.home / "etc", user.home / "tmp",
            user.home / "new", "/home/x", "/home/b", "/home/tmp", "/home/new",
            "/etc/tmp", "/etc/new", "/etc/cur", "/x"]


def existing(paths_):
    return {str(p) for p in paths_ if os.path.lexists(p)}


@needs_root
@pytest.mark.parametrize("folder", TRAVERSAL)
def test_traversal_via_m_is_64(test_user, folder):
    outside = existing(escape_candidates(test_user))
    before = snapshot(test_user.home)
    result = deliver(test_user, ["--mailbox", "Maildir/", "-m", folder])
    assert_failure(result, EX_USAGE, USAGE)
    assert snapshot(test_user.home) == before
    assert existing(escape_candidates(test_user)) == outside


@needs_root
@pytest.mark.parametrize("extension", ["..", "../x", ".hidden", "a//b", ".", "/etc", "../../tmp"])
@pytest.mark.parametrize("mode", ["existing", "create"])
def test_traversal_via_extension_goes_to_inbox(test_user, extension, mode):
    outside = existing(escape_candidates(test_user))
    listing = set(os.listdir(test_user.home))
    rcpt = recipient_of(test_user, extension)
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/", "-o", f"detail_folders={mode}"],
                      recipient=rcpt))
    root = test_user.path("Maildir")
    assert sorted(os.listdir(root)) == ["cur", "new", "tmp"]
    _, data = only_message(root)
    assert data == expected(test_user, MESSAGE, extension)
    assert set(os.listdir(test_user.home)) - listing == {"Maildir"}
    assert existing(escape_candidates(test_user)) == outside


# --- ownership as root ---------------------------------------------------------------------


@needs_root
def test_root_with_d_creates_files_owned_by_the_user(test_user):
    code, out = run_pymda(["-d", test_user.name, "-f", SENDER, "--mailbox", "Maildir/",
                           "-m", "Work/Reports"], MESSAGE)
    assert (code, out) == (EX_OK, b"")
    root = test_user.path("Maildir")
    owners = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            owners[os.path.join(dirpath, name)] = (st.st_uid, st.st_gid)
    assert len(owners) >= 9
    assert set(owners.values()) == {(test_user.uid, test_user.gid)}
    _, data = only_message(root / ".Work.Reports")
    assert data.startswith(TRACE)


@needs_root
def test_root_with_d_cannot_write_where_the_user_cannot(test_user):
    """The switch happens before any write: a root-only directory stays empty."""
    locked = test_user.home / "locked"
    locked.mkdir(mode=0o755)  # owned by root
    code, out = run_pymda(["-d", test_user.name, "-f", SENDER, "--mailbox",
                           str(locked / "Maildir") + "/"], MESSAGE)
    assert code == 75 and out.startswith(b"4."), out
    assert os.listdir(locked) == []


# --- nothing half-written in new/ ------------------------------------------------------------


@needs_root
def test_nothing_partial_in_new_while_the_writer_is_stopped(test_user):
    """Stop the writer again and again during a 48 MB delivery: whenever it
    is stopped, new/ holds nothing or the complete file; the partial file
    is seen in tmp/ (so the check really looked mid-write)."""
    line = b"x" * 1023 + b"\n"
    raw = b"Subject: big\n\n" + line * (48 * 1024)
    src = test_user.write("big.eml", raw)
    full = len(expected(test_user, raw))
    root = test_user.path("Maildir")
    for sub in ("tmp", "new", "cur"):
        test_user.mkdir(f"Maildir/{sub}")
    tmp_dir, new_dir = str(root / "tmp"), str(root / "new")
    proc = start_pymda(["-f", SENDER, "-a", recipient_of(test_user), "--mailbox", "Maildir/"],
                       user=test_user, stdin_path=src)
    partial_seen = 0
    stops = 0
    with reaped(proc):
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if not os.listdir(tmp_dir):
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            stops += 1
            try:
                for name in os.listdir(new_dir):
                    size = os.stat(os.path.join(new_dir, name)).st_size
                    assert size == full, f"partial file in new/: {size} of {full}"
                for name in os.listdir(tmp_dir):
                    try:
                        size = os.stat(os.path.join(tmp_dir, name)).st_size
                    except FileNotFoundError:
                        continue
                    if size < full:
                        assert os.listdir(new_dir) == []
                        partial_seen += 1
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.002)
        out, _ = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (EX_OK, b"")
    print(f"stops={stops} partial_seen={partial_seen}")
    assert stops > 0 and partial_seen > 0, (stops, partial_seen)
    _, data = only_message(root)
    assert len(data) == full
    assert os.listdir(tmp_dir) == []


@needs_root
def test_too_long_folder_via_m_is_64(test_user):
    before = snapshot(test_user.home)
    result = deliver(test_user, ["--mailbox", "Maildir/", "-m", "L" * 300])
    assert_failure(result, EX_USAGE, USAGE)
    assert snapshot(test_user.home) == before


@needs_root
@pytest.mark.parametrize("extension", ["e" * 300, "ü" * 100])
def test_too_long_extension_goes_to_inbox(test_user, extension):
    """Not a deferral: the same name would fail on every retry."""
    rcpt = recipient_of(test_user, extension)
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/", "-o", "detail_folders=create"],
                      recipient=rcpt))
    root = test_user.path("Maildir")
    assert sorted(os.listdir(root)) == ["cur", "new", "tmp"]
    _, data = only_message(root)
    assert data == expected(test_user, MESSAGE, extension)


@needs_root
def test_concurrent_deliveries_all_arrive_with_unique_names(test_user):
    from support.run import finish, start_pymda

    procs = []
    for i in range(20):
        raw = b"Subject: parallel %d\n\nbody %d\n" % (i, i)
        procs.append((raw, start_pymda(["-f", SENDER, "-a", recipient_of(test_user),
                                        "--mailbox", "Maildir/", "-m", "Par"], raw,
                                       user=test_user)))
    for _, proc in procs:
        assert finish(proc) == (EX_OK, b"")
    files = maildir_files(test_user.path("Maildir", ".Par"))
    assert sorted(files.values()) == sorted(expected(test_user, raw) for raw, _ in procs)
    for name, data in files.items():
        assert int(NAME_RE.match(name.encode())["size"]) == len(data)


def test_missing_new_directory_is_recreated(tmp_path):
    """A Maildir whose tmp/ exists but new/ was removed still gets the mail."""
    from pymda import maildir as md
    from pymda import message

    root = tmp_path / "Maildir"
    (root / "tmp").mkdir(parents=True)
    msg = message.from_bytes(b"Subject: x\n\nbody\n")
    final = md.deliver(str(root) + "/", msg, b"Return-Path: <>\n")
    assert final.startswith(str(root / "new") + "/")
    with open(final, "rb") as f:
        assert f.read() == b"Return-Path: <>\nSubject: x\n\nbody\n"
    assert (root / "cur").is_dir()
    assert list((root / "tmp").iterdir()) == []


# --- W= against dovecot's own count (issue 8 item 6) --------------------------------


def bare_lf(data):
    """LF not preceded by CR: what a CRLF rendering adds."""
    return data.count(b"\n") - data.count(b"\r\n")


def crlf_at_chunk_boundary():
    """A >1 MiB message whose stored CR LF straddles the 1 MiB spool chunk."""
    from pymda.message import CHUNK

    head = b"Subject: big\r\r\n\r\r\n"
    line = b"x" * 98 + b"\r\r\n"             # stored as 98 x + CR LF (100 bytes)
    body = bytearray(head)
    while len(body.replace(b"\r\r\n", b"\r\n")) + 100 < CHUNK - 50:
        body += line
    gap = CHUNK - len(body.replace(b"\r\r\n", b"\r\n")) - 1   # the CR lands on CHUNK - 1
    body += b"y" * gap + b"\r\r\n" + line * 20
    return bytes(body)


@needs_root
@pytest.mark.parametrize("raw", [
    b"Subject: cr cr lf\r\r\n\r\r\nline one\r\r\nline two\r\r\n",
    b"Subject: mixed\n\nlone lf\nlone\rcr\ncr lf\r\nend\r\r\n",
    b"Subject: plain\n\nbody\n",
], ids=["crcrlf", "mixed", "plain"])
def test_w_counts_only_lf_without_cr(test_user, raw):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], raw))
    name, data = only_message(test_user.path("Maildir"))
    m = NAME_RE.match(name.encode())
    assert int(m["size"]) == len(data)
    assert int(m["vsize"]) == len(data) + bare_lf(data), (name, data)


@needs_root
def test_w_of_a_spooled_message_with_crlf_across_the_chunk(test_user):
    from pymda.message import CHUNK

    raw = crlf_at_chunk_boundary()
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], raw))
    name, data = only_message(test_user.path("Maildir"))
    body = data[data.index(b"Subject: big"):]
    assert body[CHUNK - 1:CHUNK + 1] == b"\r\n"
    assert int(NAME_RE.match(name.encode())["vsize"]) == len(data) + bare_lf(data)


@needs_root
@pytest.mark.skipif(not dovecot.installed(), reason="dovecot-core missing")
def test_w_is_what_dovecot_computes(test_user):
    """dovecot serves W= as RFC822.SIZE without reading the file: it must
    equal what dovecot computes from the content (names stripped of W=)."""
    for raw in (b"Subject: a\r\r\n\r\r\nbody\r\r\n", b"Subject: b\n\nx\ry\r\nz\n",
                b"Subject: c\r\n\r\nbody\r\n", crlf_at_chunk_boundary()):
        assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], raw))
    md = test_user.path("Maildir")
    computed = dovecot.computed_virtual_sizes(md)
    names = maildir_files(md)
    assert sorted(computed) == sorted(names)
    for name in names:
        assert int(NAME_RE.match(name.encode())["vsize"]) == computed[name], name


def test_count_bare_lf_across_pieces():
    assert maildir.count_bare_lf([b"a\r", b"\nb\n", b"", b"\r\n\n"]) == 2
    assert maildir.count_bare_lf([b"\n\r\n"]) == 1
    assert maildir.count_bare_lf([]) == 0
