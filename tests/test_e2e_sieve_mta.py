"""Sieve in delivery through ``pymda-lmtpd`` and a real postfix (loopback
only): the same per-recipient pipeline as ``pymda`` (recipient.deliver),
so LMTP gets the user's folders and flags, and a ``550 5.7.1`` for the
one recipient whose script rejects; through postfix a vacation reply and
a redirect leave pymda, are queued and delivered to the local recipient,
and a reject comes back to the sender as a bounce naming the reason.
"""

import os
import tempfile

import pytest
from test_e2e_lmtp import DELIVERED, RCPT_OK, daemons, write_config  # noqa: F401

from support import postfix as postfix_mod
from support.lmtpclient import transaction
from support.paths import pymda_bin

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)")

SENDER = "sender@example.org"


def make_folder(user, name):
    for sub in ("cur", "new", "tmp"):
        user.mkdir(f"Maildir/{name}/{sub}")


def listing(user, folder="", sub="new"):
    d = user.path("Maildir", folder, sub) if folder else user.path("Maildir", sub)
    return sorted(d.iterdir()) if d.is_dir() else []


def body(subject, to="someone@localhost", sender=SENDER):
    return (f"From: <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@mta.test>\r\n\r\ntext\r\n").encode()


# --- pymda-lmtpd ------------------------------------------------------------------------------


def test_lmtp_files_flags_and_rejects_one_recipient(tmp_path, daemons, make_user):  # noqa: F811
    alice, bob = make_user(), make_user()
    alice.write(".dovecot.sieve", b'require "reject";\nreject "not from you";\n', 0o644)
    bob.write(".dovecot.sieve", b'require ["fileinto", "imap4flags"];\n'
                                b'if header :contains "subject" "report" '
                                b'{ addflag "\\\\Flagged"; fileinto "Reports"; }\n', 0o644)
    make_folder(bob, ".Reports")
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    with d.connect() as c:
        rcpts = [f"{alice.name}@localhost", f"{bob.name}@localhost"]
        rcpt_replies, replies = transaction(c, SENDER, rcpts, body("weekly report"))
        assert rcpt_replies == [RCPT_OK, RCPT_OK]
        assert replies == ["550 5.7.1 not from you", DELIVERED]
    assert not alice.path("Maildir").exists()
    (m,) = listing(bob, ".Reports", "cur")
    assert m.name.endswith(":2,F")
    assert m.stat().st_uid == bob.uid
    assert b"Subject: weekly report\n" in m.read_bytes()
    assert listing(bob) == [] and listing(bob, sub="cur") == []


def test_lmtp_script_error_keeps_and_logs(tmp_path, daemons, make_user):  # noqa: F811
    alice = make_user()
    alice.write(".dovecot.sieve", b'if header :bogus "a" "b" { discard; }\n', 0o644)
    d = daemons(write_config(tmp_path, 'mailbox = "Maildir/"\n'))
    with d.connect() as c:
        _, replies = transaction(c, SENDER, [f"{alice.name}@localhost"], body("x"))
        assert replies == [DELIVERED]
    assert len(listing(alice)) == 1
    log = alice.path(".dovecot.sieve.log").read_text()
    assert f"{alice.path('.dovecot.sieve')}:1:" in log
    assert alice.path(".dovecot.sieve.log").stat().st_uid == alice.uid


RECORDER = b"""#!/bin/sh
# a recording sendmail: its own ids, its parent's ids, its argv and stdin
d="$(dirname "$0")/../sent"
grep -E '^(Uid|Gid|Groups):' /proc/self/status > "$d/self"
grep -E '^(Uid|Gid|Groups):' "/proc/$PPID/status" > "$d/parent"
printf '%s\\n' "$@" > "$d/argv"
cat > "$d/data"
"""


def test_lmtp_sieve_send_runs_as_the_user_without_a_delivery_child(
        tmp_path, daemons, make_user):  # noqa: F811
    """A root server delivers a Sieve user with the temporary switch (no
    forked delivery child: sendmail's parent is the server, whose main
    thread is root), and the sendmail a redirect starts runs with the
    user's real, effective, saved and file-system ids and no groups
    (forward.pipe.program_ids)."""
    alice = make_user()
    alice.write(".dovecot.sieve", b'require "copy";\nredirect :copy "elsewhere@example.org";\n',
                0o644)
    rec = alice.write("bin/sendmail", RECORDER, 0o755)
    alice.mkdir("sent")
    d = daemons(write_config(tmp_path, f'mailbox = "Maildir/"\nlmtp_workers = 1\n'
                                       f'sendmail_command = ["{rec}", "-f", "$sender"]\n'))
    with d.connect() as c:
        _, replies = transaction(c, SENDER, [f"{alice.name}@localhost"], body("copy me"))
    assert replies == [DELIVERED]
    assert len(listing(alice)) == 1
    sent = alice.path("sent")
    own = (sent / "self").read_text().split("\n")
    assert own[0].split()[1:] == [str(alice.uid)] * 4, own
    assert own[1].split()[1:] == [str(alice.gid)] * 4, own
    assert own[2].split() == ["Groups:"], own
    parent = (sent / "parent").read_text().split("\n")
    assert parent[0].split()[1] == "0", parent  # the server itself, not a child
    assert (sent / "argv").read_text().split("\n")[-2] == "elsewhere@example.org"
    assert b"Subject: copy me" in (sent / "data").read_bytes()


# --- a real postfix ---------------------------------------------------------------------------


needs_postfix = pytest.mark.skipif(not postfix_mod.installed(), reason="postfix not installed")


@pytest.fixture
def config_path():
    d = tempfile.mkdtemp(prefix="pymda-sieve-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "pymda.toml")
    with open(path, "w") as f:
        f.write('mailbox = "Maildir/"\n')
    os.chmod(path, 0o644)
    yield path
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def messages(user):
    return [p.read_bytes() for p in listing(user)]


@needs_postfix
def test_postfix_vacation_redirect_and_reject(postfix, make_user, config_path):
    alice, bob, dave = make_user(), make_user(), make_user()
    postfix.set(mailbox_command=f'{pymda_bin()} -c {config_path} -f "$SENDER"')
    a, b, d = (f"{u.name}@localhost" for u in (alice, bob, dave))
    alice.write(".dovecot.sieve", (
        'require ["vacation", "reject", "copy"];\n'
        'if header :contains "subject" "spam" { reject "We do not want this."; stop; }\n'
        f'redirect :copy "{d}";\n'
        'vacation :days 1 :subject "Out of office" "Back on Monday.";\n').encode(), 0o644)
    postfix.send(b, a, body("hello alice", to=a, sender=b).replace(b"\r\n", b"\n"))
    postfix.wait_until(lambda: messages(bob) and messages(dave) and messages(alice),
                       timeout=60, what="the copy, the redirect and the reply")
    postfix.wait_empty(60)
    (kept,) = messages(alice)
    assert b"Subject: hello alice\n" in kept
    (redirected,) = messages(dave)
    assert redirected.startswith(f"Return-Path: <{b}>\n".encode())
    assert f"X-Sieve-Redirected-From: {a}\n".encode() in redirected
    assert b"Subject: hello alice\n" in redirected
    (reply,) = messages(bob)
    assert reply.startswith(b"Return-Path: <>\n")          # the null sender
    assert b"\nSubject: Out of office\n" in reply
    assert b"\nAuto-Submitted: auto-replied" in reply
    assert b"Back on Monday." in reply
    # a second message within the period: no second reply, a second redirect
    postfix.send(b, a, body("hello again", to=a, sender=b).replace(b"\r\n", b"\n"))
    postfix.wait_until(lambda: len(messages(dave)) == 2 and len(messages(alice)) == 2,
                       timeout=60, what="the second delivery")
    postfix.wait_empty(60)
    assert len(messages(bob)) == 1
    # reject: postfix bounces to bob, naming the reason
    postfix.send(b, a, body("spam offer", to=a, sender=b).replace(b"\r\n", b"\n"))
    postfix.wait_until(lambda: len(messages(bob)) == 2, timeout=60, what="the bounce")
    postfix.wait_empty(60)
    bounce = [m for m in messages(bob) if b"Out of office" not in m][0]
    assert bounce.startswith(b"Return-Path: <>\n")
    assert b"MAILER-DAEMON" in bounce
    assert b"We do not want this." in bounce
    assert len(messages(alice)) == 2 and len(messages(dave)) == 2


@needs_postfix
def test_postfix_redirect_loop_between_two_users_ends(postfix, make_user, config_path):
    """alice redirects to bob, bob to alice: the copy that comes back to
    alice carries postfix's Delivered-To for alice (pymda's redirect keeps
    the trace headers, as Pigeonhole), so postfix's local(8) stops it as a
    mail forwarding loop before pymda runs and bounces it to the sender -
    the same as with dovecot-lda.  Never a loop; nothing stored."""
    alice, bob, carol = make_user(), make_user(), make_user()
    postfix.set(mailbox_command=f'{pymda_bin()} -c {config_path} -f "$SENDER"')
    a, b, c = (f"{u.name}@localhost" for u in (alice, bob, carol))
    alice.write(".dovecot.sieve", f'redirect "{b}";\n'.encode(), 0o644)
    bob.write(".dovecot.sieve", f'redirect "{a}";\n'.encode(), 0o644)
    postfix.send(c, a, body("ping pong", to=a, sender=c).replace(b"\r\n", b"\n"))
    postfix.wait_until(lambda: messages(alice) or messages(carol), timeout=60,
                       what="the loop to end in a mailbox or a bounce")
    postfix.wait_empty(60)
    assert messages(alice) == [] and messages(bob) == []
    (bounce,) = messages(carol)
    assert bounce.startswith(b"Return-Path: <>\n")
    assert b"mail forwarding loop" in bounce.lower()
    assert len([e for e in postfix.deliveries() if e[2] == "sent"]) <= 4, postfix.log()
