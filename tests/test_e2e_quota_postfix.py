"""Quotas at both moments, with a real postfix (loopback only, root only).

1. SMTP time: ``smtpd_end_of_data_restrictions = check_policy_service
   inet:127.0.0.1:PORT`` asks pymda-policyd; a message for a full mailbox
   is refused with 552 5.2.2 at the end of DATA (the sender's server keeps
   the problem; nothing bounces later), one for a mailbox with room is
   accepted and delivered by pymda (``mailbox_command``).
2. Delivery time: mail that did not pass through the policy check (local
   submission with sendmail) is refused by pymda itself: bounced with
   5.2.2 (deferred with 4.2.2 in tempfail mode); too large: 5.2.3.
"""

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import paths  # noqa: E402
from support.policyd import full_and_roomy  # noqa: E402
from support.procs import free_port  # noqa: E402

SMTP_HOST = "127.0.0.1"
SMTP_PORT = 25
REJECT_CODE = 552
REJECT_STATUS = b"5.2.2 "
# postfix wraps a policy reject: "552 5.2.2 <END-OF-MESSAGE>: End-of-data rejected: <text>"
REJECT_TEXT = b"Mailbox is full"
FULL_DSN = "5.2.2"
FULL_TEMP_DSN = "4.2.2"
TOO_BIG_DSN = "5.2.3"
LIMIT = 20000

MESSAGE = (b"From: sender@example.org\r\nSubject: quota e2e\r\n"
           b"Message-ID: <quota-e2e@example.org>\r\n\r\n" + b"line of body text\r\n" * 50)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="postfix tests need root")


@pytest.fixture
def setup(postfix, make_user):
    """Two users (one full, one with room), a config, pymda-policyd, postfix wired."""
    # full: the maildirsize says the mailbox is at its limit
    full, roomy = full_and_roomy(make_user, LIMIT)
    # pymda runs as the user: the config must be readable (pytest's tmp is 0700)
    cfg_dir = Path(tempfile.mkdtemp(prefix="pymda-quota-e2e-"))
    os.chmod(cfg_dir, 0o755)
    cfg = cfg_dir / "pymda.toml"
    cfg.write_text(textwrap.dedent(f"""
        mailbox = "Maildir/"
        quota_storage = {LIMIT}
    """))
    os.chmod(cfg, 0o644)
    port = free_port()
    policyd = subprocess.Popen(
        [str(paths.prefix() / "bin" / "pymda-policyd"), "-c", str(cfg),
         "--listen", f"inet:127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert policyd.poll() is None and time.monotonic() < deadline, "policyd did not start"
            time.sleep(0.05)
    postfix.reset(
        mailbox_command=f'{paths.pymda_bin()} -c {cfg} -f "$SENDER"',
        smtpd_end_of_data_restrictions=f"check_policy_service inet:127.0.0.1:{port}",
    )
    try:
        yield postfix, full, roomy, cfg
    finally:
        policyd.terminate()
        policyd.wait(10)
        policyd.stdout.close()
        shutil.rmtree(cfg_dir, ignore_errors=True)


def maildir_messages(user):
    return [p for sub in ("new", "cur") for p in (user.home / "Maildir" / sub).iterdir()]


def test_smtp_full_mailbox_is_refused_at_end_of_data(setup):
    postfix, full, roomy, _ = setup
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.org")
        code, _ = smtp.rcpt(f"{full.name}@localhost")
        assert code == 250                      # RCPT is fine: the check is at DATA
        code, reply = smtp.data(MESSAGE)
    assert code == REJECT_CODE, (code, reply)
    assert reply.startswith(REJECT_STATUS) and reply.endswith(REJECT_TEXT), reply
    assert postfix.queue_empty()
    assert maildir_messages(full) == []


def test_smtp_with_room_is_accepted_and_delivered_by_pymda(setup):
    postfix, full, roomy, _ = setup
    rcpt = f"{roomy.name}+ext@localhost"
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.org")
        smtp.rcpt(rcpt)
        code, reply = smtp.data(MESSAGE)
    assert code == 250, reply
    postfix.wait_status(rcpt, "sent")
    (stored,) = maildir_messages(roomy)
    data = stored.read_bytes()
    assert data.startswith(b"Return-Path: <sender@example.org>\n")
    assert b"Subject: quota e2e\n" in data
    # pymda created and updated maildirsize at delivery
    text = (roomy.home / "Maildir" / "maildirsize").read_text()
    assert text.splitlines()[0] == f"{LIMIT}S"
    assert f"{len(data)} 1" in text.splitlines()[1:] or text.endswith(f"{len(data)} 1\n")


def _refused_locally(postfix, user, status, dsn):
    """Submit MESSAGE to ``user``@localhost; once its log entry says
    ``status``, check the ``dsn`` and that nothing was delivered; the entry."""
    rcpt = f"{user.name}@localhost"
    postfix.send("sender@example.org", rcpt, MESSAGE.replace(b"\r\n", b"\n"))
    entry = postfix.wait_status(rcpt, status)
    assert entry[1] == dsn, entry
    assert maildir_messages(user) == []
    return entry


def test_delivery_time_quota_bounces_what_smtp_did_not_check(setup):
    postfix, full, roomy, _ = setup
    entry = _refused_locally(postfix, full, "bounced", FULL_DSN)
    assert "Mailbox is full" in entry[3]


def test_delivery_time_quota_tempfail_mode_defers(setup):
    postfix, full, roomy, cfg = setup
    cfg.write_text(cfg.read_text() + "quota_full_tempfail = true\n")
    _refused_locally(postfix, full, "deferred", FULL_TEMP_DSN)


def test_message_size_limit_bounces_with_5_2_3(setup):
    postfix, full, roomy, cfg = setup
    cfg.write_text(cfg.read_text() + "message_size_limit = 500\n")
    _refused_locally(postfix, roomy, "bounced", TOO_BIG_DSN)
