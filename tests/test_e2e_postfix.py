"""End to end: a real postfix runs the installed pymda as mailbox_command.

Postfix passes only its own environment (POSTFIX-FACTS.md), so pymda's
configuration comes from ``-c FILE`` in mailbox_command:

    mailbox_command = <prefix>/bin/pymda -c <tmp>/pymda.toml -f "$SENDER"

Covered:
- mail to ``user`` lands in the configured Maildir, exactly once, with
  Return-Path and Delivered-To;
- ``user+folder`` lands in Maildir++ folder ``.folder`` when it exists
  (detail_folders = "existing"), in INBOX when it does not;
- a delivery that cannot lock the mbox (a dotlock held with procmail's
  ``lockfile``, lock_timeout=2) is deferred (exit 75, 4.x.y reason) and
  stays queued, then arrives exactly once after the lock is released and
  the queue flushed;
- Debian's /var/mail (2775 root:mail): a pre-created 0600 user mbox is
  written (the user cannot create /var/mail/user.lock itself, so pymda
  needs dotlockfile: a dotlockfile-held lock makes it wait); a missing
  spool mbox is deferred with 4.2.0 and a message that names the fix.
"""

import os
import stat
import tempfile
import time

import pytest

from support import mboxfmt, postfix as postfix_mod, procmail
from support.paths import pymda_bin

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (postfix, test users)"),
    pytest.mark.skipif(not postfix_mod.installed(), reason="postfix not installed"),
]

SENDER = "e2e-sender@example.org"
SPOOL = "/var/mail"


def message(subject, body=b"hello from the e2e test\nFrom here, quoted in mbox\n"):
    return (b"From: Sender <%s>\nTo: someone\nSubject: %s\nMessage-ID: <%s@e2e.test>\n\n"
            % (SENDER.encode(), subject.encode(), subject.encode())) + body


@pytest.fixture
def config_file():
    """Write a pymda.toml readable by test users; returns write(text) -> path."""
    d = tempfile.mkdtemp(prefix="pymda-e2e-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "pymda.toml")

    def write(text):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path

    yield write
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def use_config(postfix, path, extra=""):
    postfix.set(mailbox_command=f'{pymda_bin()} -c {path} {extra}-f "$SENDER"')


def maildir_messages(d):
    new = os.path.join(d, "new")
    if not os.path.isdir(new):
        return []
    out = []
    for name in sorted(os.listdir(new)):
        with open(os.path.join(new, name), "rb") as f:
            out.append(f.read())
    return out


def wait_sent(postfix, rcpt, timeout=30):
    """Wait until postfix logged status=sent for rcpt and the queue is empty."""
    postfix.wait_status(rcpt, "sent", timeout)
    postfix.wait_empty(timeout)
    assert not [e for e in postfix.deliveries(rcpt) if e[2] == "bounced"], postfix.log()


def header_block(msg):
    return mboxfmt.split_header(msg)[0]


def test_mail_to_user_lands_in_configured_maildir(postfix, test_user, config_file):
    use_config(postfix, config_file('mailbox = "Maildir/"\n'))
    rcpt = f"{test_user.name}@localhost"
    postfix.send(SENDER, rcpt, message("plain"))
    wait_sent(postfix, rcpt)
    msgs = maildir_messages(test_user.path("Maildir"))
    assert len(msgs) == 1, postfix.log()
    msg = msgs[0]
    # postfix puts Return-Path, X-Original-To, Delivered-To first; pymda
    # must not add a second Return-Path or Delivered-To for the same values.
    header = header_block(msg)
    assert msg.startswith(b"Return-Path: <%s>\n" % SENDER.encode()), msg[:300]
    assert header.count(b"Return-Path:") == 1, header
    assert header.count(b"Delivered-To: %s\n" % rcpt.encode()) == 1, header
    assert b"\nSubject: plain\n" in header
    assert not msg.startswith(b"From "), "the From_ envelope line must not be stored in a Maildir"
    assert mboxfmt.split_header(msg)[1] == b"hello from the e2e test\nFrom here, quoted in mbox\n"
    st = os.stat(test_user.path("Maildir"))
    assert st.st_uid == test_user.uid


def test_extension_goes_to_existing_folder_else_inbox(postfix, test_user, config_file):
    use_config(postfix, config_file('mailbox = "Maildir/"\n'))
    for sub in ("", "/tmp", "/new", "/cur"):
        test_user.mkdir(f"Maildir/.work{sub}")
    test_user.write("Maildir/.work/maildirfolder", b"")
    for sub in ("/tmp", "/new", "/cur"):
        test_user.mkdir(f"Maildir{sub}")
    to_work = f"{test_user.name}+work@localhost"
    to_none = f"{test_user.name}+nosuchfolder@localhost"
    postfix.send(SENDER, to_work, message("to-work"))
    postfix.send(SENDER, to_none, message("to-nosuchfolder"))
    wait_sent(postfix, to_work)
    wait_sent(postfix, to_none)
    work = maildir_messages(test_user.path("Maildir/.work"))
    inbox = maildir_messages(test_user.path("Maildir"))
    assert len(work) == 1 and b"Subject: to-work\n" in work[0], (work, inbox)
    assert b"Delivered-To: %s\n" % to_work.encode() in header_block(work[0])
    assert len(inbox) == 1 and b"Subject: to-nosuchfolder\n" in inbox[0], (work, inbox)
    assert not os.path.exists(test_user.path("Maildir/.nosuchfolder")), "folder created"


def test_locked_mbox_defers_then_delivers_exactly_once(postfix, test_user, config_file):
    mbox = test_user.path("mbox")
    test_user.write("mbox", b"")
    use_config(postfix, config_file('mailbox = "mbox"\n'), extra="-o lock_timeout=2 ")
    rcpt = f"{test_user.name}@localhost"
    with procmail.hold_lockfile(f"{mbox}.lock", user=test_user):
        postfix.send(SENDER, rcpt, message("locked"))
        _, dsn, _, reason = postfix.wait_status(rcpt, "deferred")
        assert dsn.startswith("4."), (dsn, reason)
        queued = postfix.queue()
        assert len(queued) == 1, queued
        assert queued[0]["queue_name"] in ("deferred", "active"), queued
        # postfix retries every second or two; it must keep deferring.
        time.sleep(3)
        assert mbox.read_bytes() == b""
        assert len(postfix.queue()) == 1
    postfix.flush()
    wait_sent(postfix, rcpt, timeout=30)
    parsed = mboxfmt.split_mbox(mbox.read_bytes())
    assert len(parsed) == 1, parsed
    from_line, msg = parsed[0]
    assert from_line.startswith(b"From %s  " % SENDER.encode())
    assert b"Subject: locked\n" in msg
    assert mboxfmt.split_header(msg)[1] == b"hello from the e2e test\nFrom here, quoted in mbox\n"
    # the stored form quotes the body's From line (mboxrd)
    assert b"\n>From here, quoted in mbox\n" in mbox.read_bytes()


def test_var_mail_precreated_mbox_uses_dotlockfile(postfix, test_user, config_file):
    spool = os.stat(SPOOL)
    assert stat.S_IMODE(spool.st_mode) == 0o2775, "Debian's /var/mail is 2775 root:mail"
    mbox = os.path.join(SPOOL, test_user.name)
    with open(mbox, "wb"):
        pass
    os.chown(mbox, test_user.uid, test_user.gid)
    os.chmod(mbox, 0o600)
    # default config: mailbox = "" -> $mail_spool_directory/$user
    use_config(postfix, config_file(""), extra="-o lock_timeout=30 ")
    rcpt = f"{test_user.name}@localhost"
    with procmail.hold_dotlockfile(mbox):
        postfix.send(SENDER, rcpt, message("spool"))
        postfix.wait_until(lambda: f"to=<{rcpt}>" in postfix.log() or
                           os.path.getsize(mbox) > 0 or
                           any(q.get("queue_name") == "active" for q in postfix.queue()),
                           timeout=20, what="delivery to start")
        time.sleep(2)
        assert os.path.getsize(mbox) == 0, "pymda wrote while dotlockfile held the lock"
    wait_sent(postfix, rcpt, timeout=40)
    with open(mbox, "rb") as f:
        parsed = mboxfmt.split_mbox(f.read())
    assert len(parsed) == 1
    assert b"Subject: spool\n" in parsed[0][1]
    st = os.stat(mbox)
    assert st.st_uid == test_user.uid and stat.S_IMODE(st.st_mode) == 0o600
    assert not os.path.exists(mbox + ".lock"), "lock left behind"


def test_var_mail_missing_mbox_defers_with_fix(postfix, test_user, config_file):
    mbox = os.path.join(SPOOL, test_user.name)
    assert not os.path.exists(mbox)
    use_config(postfix, config_file(""))
    rcpt = f"{test_user.name}@localhost"
    postfix.send(SENDER, rcpt, message("nospool"))
    _, dsn, _, reason = postfix.wait_status(rcpt, "deferred")
    assert dsn == "4.2.0", (dsn, reason)
    assert len(postfix.queue()) == 1, postfix.queue()
    # the message names the fix: create the mbox (path, owner)
    assert mbox in reason and test_user.name in reason, reason
    assert not os.path.exists(mbox)
    # the admin applies the fix; the next retry delivers
    with open(mbox, "wb"):
        pass
    os.chown(mbox, test_user.uid, test_user.gid)
    os.chmod(mbox, 0o600)
    postfix.flush()
    wait_sent(postfix, rcpt, timeout=30)
    with open(mbox, "rb") as f:
        assert len(mboxfmt.split_mbox(f.read())) == 1
