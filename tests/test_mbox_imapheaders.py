"""IMAP-server state headers are removed before an mbox append (SPEC 1.4,
last bullet; issue 8 item 3).

A sender must not mark mail read (``Status: RO``), deleted or flagged
(``X-Status: DF``), give it keywords (``X-Keywords``) or forge UIDs
(``X-UID``, ``X-IMAPbase``, ``X-IMAP``), nor cut it short
(``Content-Length``) in an mbox that dovecot serves.

- the real dovecot (``doveadm fetch 'uid flags'``) reads a delivered
  message that carried all of them as unseen, not deleted, not flagged,
  without the keyword, with UIDs 1 and 2;
- byte level: the fields go with their folded lines, whatever their case
  or blanks before the colon; look-alike fields, the body and the rest of
  the header are kept byte for byte; a message of 3 MB (spooled) and a
  header of 1.5 MB (longer than pymda's header scan) are streamed;
- the same for a .forward file target and ``pymda-admin redeliver`` into
  an mbox (one writer); a Maildir message is stored unchanged.
"""

import os
import subprocess

import pytest

from enginekit import SENDER, assert_ok, deliver, recipient_of
from support import dovecot, mboxfmt, paths

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)")

FORGED = (
    b"Subject: forged state\n"
    b"X-IMAPbase: 1234567890 99 $Forged\n"
    b"Status: RO\n"
    b"X-Status: DF\n"
    b"X-UID: 99\n"
    b"X-Keywords: $Forged\n"
    b"X-IMAP: 1234567890 0000000099\n"
    b"Content-Length: 3\n"
    b"Message-ID: <forged@example.org>\n"
    b"\n"
    b"body line one\n"
    b"Status: RO\n"
    b"last line\n"
)
CLEAN = b"Subject: forged state\nMessage-ID: <forged@example.org>\n\nbody line one\nStatus: RO\nlast line\n"


def stored(user, name="mbox"):
    return [m for _, m in mboxfmt.split_mbox(user.path(name).read_bytes())]


def expected(user, message):
    return mboxfmt.expected(message, SENDER, recipient_of(user))


@pytest.mark.skipif(not dovecot.installed(), reason="dovecot (doveadm) not installed")
def test_dovecot_reads_forged_state_as_unseen_and_not_deleted(test_user):
    test_user.write("mbox", b"")
    assert_ok(deliver(test_user, ["--mailbox", "mbox"], FORGED))
    assert_ok(deliver(test_user, ["--mailbox", "mbox"], b"Subject: second\n\nplain\n"))
    flags = dovecot.mbox_flags(str(test_user.path("mbox")))
    assert [uid for uid, _ in flags] == [1, 2], flags
    for uid, got in flags:
        assert not got & {"\\Seen", "\\Deleted", "\\Flagged", "\\Answered", "$Forged"}, flags
    texts = dovecot.read_mbox(str(test_user.path("mbox")))
    assert texts[0].endswith(b"\n\nbody line one\nStatus: RO\nlast line\n"), texts[0]
    assert stored(test_user) == [expected(test_user, CLEAN),
                                 expected(test_user, b"Subject: second\n\nplain\n")]


@pytest.mark.parametrize("header, kept", [
    # folded continuation lines go with their field
    (b"Subject: a\nX-Keywords: one\n\ttwo\n  three\nTo: b\n", b"Subject: a\nTo: b\n"),
    # a kept field's folded lines stay; the dropped field's go
    (b"Subject: a\n b\nStatus: RO\n c\nTo: x\n", b"Subject: a\n b\nTo: x\n"),
    # any case, blanks before the colon
    (b"STATUS: RO\nx-uid: 5\nContent-length: 0\nX-status : D\nx-imapBASE\t: 1 2\nA: b\n",
     b"A: b\n"),
    # look-alikes are kept
    (b"X-Status-Report: x\nStatuses: y\nX-IMAPx: z\nContent-Length-X: 1\nX-UIDL: 7\n"
     b"XStatus: q\n",
     b"X-Status-Report: x\nStatuses: y\nX-IMAPx: z\nContent-Length-X: 1\nX-UIDL: 7\n"
     b"XStatus: q\n"),
    # first and last field of the header
    (b"Status: O\nSubject: s\nX-UID: 1\n", b"Subject: s\n"),
])
def test_state_fields_removed_from_the_header_only(test_user, header, kept):
    body = b"\nStatus: RO\nX-UID: 3\n  folded-looking body line\nContent-Length: 1\n"
    assert_ok(deliver(test_user, ["--mailbox", "mbox"], header + body))
    assert stored(test_user) == [expected(test_user, kept + body)]


def test_message_without_header_is_untouched(test_user):
    msg = b"\nStatus: RO\nX-Status: D\n"
    assert_ok(deliver(test_user, ["--mailbox", "mbox"], msg))
    assert stored(test_user) == [expected(test_user, msg)]


def test_big_spooled_message_streamed(test_user):
    """3 MB, written in 1 MiB pieces: header fields removed, the body (with
    From_ quoting across pieces) intact."""
    body = b"".join(b"line %06d %s\n" % (i, b"y" * 60) for i in range(45000))
    cut = 73 * 20000  # a line start, past the first 1 MiB piece
    body = body[:cut] + b"From quoted\nStatus: RO\n" + body[cut:]
    msg = b"Subject: big\nStatus: RO\nX-Status: D\n\n" + body
    assert_ok(deliver(test_user, ["--mailbox", "mbox"], msg))
    assert stored(test_user) == [expected(test_user, b"Subject: big\n\n" + body)]
    raw = test_user.path("mbox").read_bytes()
    assert b"\n>From quoted\nStatus: RO\n" in raw


def test_field_after_a_huge_header_is_found(test_user):
    """A 1.5 MB folded field first (past the 1 MiB header scan of intake),
    then the state fields: still removed."""
    fold = b"".join(b"\t%s\n" % (b"z" * 70) for _ in range(21000))
    msg = (b"X-Big: start\n" + fold + b"Status: RO\n" + b"X-Status: D\n\t" + b"w" * 200000
           + b"\nSubject: after\n\nbody\n")
    assert_ok(deliver(test_user, ["--mailbox", "mbox"], msg))
    assert stored(test_user) == [
        expected(test_user, b"X-Big: start\n" + fold + b"Subject: after\n\nbody\n")]


def test_maildir_message_unchanged(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], FORGED))
    files = os.listdir(test_user.path("Maildir", "new"))
    assert len(files) == 1
    data = test_user.path("Maildir", "new", files[0]).read_bytes()
    assert data == expected(test_user, FORGED)


def test_forward_file_target(test_user):
    test_user.write(".forward", f"{test_user.home}/fwd.mbox\n".encode(), 0o644)
    assert_ok(deliver(test_user, ["-o", "forward=true", "--mailbox", "Maildir/"], FORGED))
    assert stored(test_user, "fwd.mbox") == [expected(test_user, CLEAN)]


def test_redeliver_into_an_mbox(tmp_path):
    source = tmp_path / "source.mbox"
    source.write_bytes(b"From a@example.org  Tue Nov 24 22:08:05 2026\n" + FORGED + b"\n")
    target = tmp_path / "restored.mbox"
    admin = str(paths.prefix() / "bin" / "pymda-admin")
    proc = subprocess.run(
        [admin, "redeliver", "--mailbox", str(target), "-o",
         f"redeliver_record={tmp_path / 'record'}", str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout
    (_, msg), = mboxfmt.split_mbox(target.read_bytes())
    assert b"\n\nbody line one\nStatus: RO\nlast line\n" in msg
    header = mboxfmt.split_header(msg)[0].lower()
    for name in (b"status:", b"x-status:", b"x-uid:", b"x-imapbase:", b"x-imap:",
                 b"x-keywords:", b"content-length:"):
        assert b"\n" + name not in b"\n" + header, msg
