"""Quota warnings (issue 14.2, SPEC 1.6), through the installed pymda.

``quota_messages = 20`` and ``quota_warnings = [80, 95]``: 80 % is the
16th message, 95 % the 19th.  The Maildir is pre-filled with message
files so that few real deliveries reach the thresholds.  Warnings are
counted like any message (they are in the Maildir), which the numbers
below include.
"""

import os
import subprocess

import pytest

from pymda import quota
from support import dovecot, paths
from support.run import EX_OK, finish, run_pymda, start_pymda
from support.lmtpclient import transaction
from test_cli import heavy_in, imported_modules
from test_e2e_lmtp import DELIVERED, daemons, write_config  # noqa: F401 - daemons: a fixture

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users)"),
    pytest.mark.skipif(not os.access(paths.pymda_bin(), os.X_OK),
                       reason="pymda is not installed (scripts/install)"),
]

MESSAGE = b"From: a@example.org\nSubject: filler\n\nbody\n"
FULL = b"5.2.2 "
WARNING_SUBJECT = b"Subject: Mailbox quota warning: "


@pytest.fixture
def mailuser(test_user):
    return test_user


@pytest.fixture
def cfg_file(tmp_path, mailuser):
    os.chmod(tmp_path, 0o755)
    text = mailuser.home / "warning.txt"   # read as the user
    text.write_text("Dear $user, $resource at $percent%: $used of $limit. $nothing\n")
    os.chmod(text, 0o644)
    path = tmp_path / "pymda.toml"
    path.write_text('mailbox = "Maildir/"\nquota_messages = 20\nquota_warnings = [80, 95]\n'
                    f'quota_warning_message = "{text}"\n')
    os.chmod(path, 0o644)
    return path


def deliver(user, cfg_file, *args):
    return run_pymda(["-c", str(cfg_file), "-d", user.name, "-f", "s@example.org",
                      "-a", f"{user.name}@localhost", *args], MESSAGE)


def prefill(user, n, start=0):
    md = user.home / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        p = md / "cur" / f"{1000 + i}.M1P1.host,S=40:2,S"
        p.write_bytes(b"x" * 40)
    for dirpath, dirnames, filenames in os.walk(md):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), user.uid, user.gid)
    os.chown(md, user.uid, user.gid)
    return md


def warnings_in(md):
    found = []
    for sub in ("new", "cur"):
        for name in sorted(os.listdir(md / sub)):
            data = (md / sub / name).read_bytes()
            if WARNING_SUBJECT in data:
                found.append(data)
    return found


def count(md):
    return quota.scan(str(md) + "/")[1]


def recalc(user, cfg_file):
    """pymda-admin quota --recalc: what an admin (or a stale file) does."""
    admin = subprocess.run([str(paths.prefix() / "bin" / "pymda-admin"), "quota", "--recalc",
                            "-c", str(cfg_file), user.name],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env={"PATH": "/usr/bin:/bin"})
    assert admin.returncode == 0, admin.stdout


def test_crossing_80_then_95_one_warning_each_then_rearmed(mailuser, cfg_file):
    md = prefill(mailuser, 14)
    assert deliver(mailuser, cfg_file) == (EX_OK, b"")            # 15: 75 %
    assert warnings_in(md) == []
    assert deliver(mailuser, cfg_file) == (EX_OK, b"")            # 16: 80 % crossed
    (first,) = warnings_in(md)
    assert count(md) == 17                                        # the warning counts
    assert deliver(mailuser, cfg_file) == (EX_OK, b"")            # 18: still above 80
    assert len(warnings_in(md)) == 1
    assert deliver(mailuser, cfg_file) == (EX_OK, b"")            # 19: 95 % crossed
    assert len(warnings_in(md)) == 2
    assert count(md) == 20
    code, out = deliver(mailuser, cfg_file)                        # full: refused, no warning
    assert code == 77 and out.startswith(FULL), out
    assert len(warnings_in(md)) == 2
    # the headers and the body from the file
    head, _, body = first.partition(b"\n\n")
    lines = head.split(b"\n")
    assert lines[0] == b"Return-Path: <>"
    assert any(x.startswith(b"From: ") and b"MAILER-DAEMON@" in x for x in lines)
    assert f"To: <{mailuser.name}@localhost>".encode() in lines
    assert b"Subject: Mailbox quota warning: 80% of messages used" in lines
    assert b"Auto-Submitted: auto-generated" in lines
    assert any(x.startswith(b"Date: ") for x in lines)
    assert any(x.startswith(b"Message-ID: <") and x.endswith(b">") for x in lines)
    assert body == f"Dear {mailuser.name}, messages at 80%: 16 of 20. $nothing\n".encode()
    # maildirsize counted the warnings like the rest
    assert quota.parse_maildirsize((md / "maildirsize").read_bytes())[1:3] == \
        quota.scan(str(md) + "/")
    # the user deletes mail; usage is recounted; the thresholds re-arm
    for name in sorted(os.listdir(md / "cur"))[:12]:
        os.unlink(md / "cur" / name)
    recalc(mailuser, cfg_file)
    assert count(md) == 8
    assert deliver(mailuser, cfg_file) == (EX_OK, b"")            # 9: below 80: re-armed
    assert len(warnings_in(md)) == 2
    prefill(mailuser, 6, start=100)                               # 15
    recalc(mailuser, cfg_file)
    assert deliver(mailuser, cfg_file) == (EX_OK, b"")            # 16: crossed again
    assert len(warnings_in(md)) == 3


def test_storage_warning_and_dovecot_reads_it(mailuser, cfg_file, tmp_path):
    code, out = deliver(mailuser, cfg_file, "--mailbox", "Probe/", "-o", "quota_messages=0")
    assert code == EX_OK, out
    one = sum(os.path.getsize(mailuser.home / "Probe" / "new" / n)
              for n in os.listdir(mailuser.home / "Probe" / "new"))
    limit = ["-o", "quota_messages=0", "-o", f"quota_storage={10 * one}",
             "-o", "quota_warning_message="]
    md = mailuser.home / "Maildir"
    for i in range(7):
        assert deliver(mailuser, cfg_file, *limit) == (EX_OK, b"")
    assert warnings_in(md) == []
    assert deliver(mailuser, cfg_file, *limit) == (EX_OK, b"")    # 8 of 10: 80 %
    (warning,) = warnings_in(md)
    assert b"Subject: Mailbox quota warning: 80% of storage used" in warning
    assert f"$".encode() not in warning.partition(b"\n\n")[2]     # built-in text expanded
    assert f"{8 * one} of {10 * one}".encode() in warning
    if dovecot.installed():
        served = [m for m in dovecot.read_maildir(str(md)) if WARNING_SUBJECT in m]
        assert served == [warning]


def test_concurrent_deliveries_crossing_together_send_one_warning(mailuser, cfg_file):
    md = prefill(mailuser, 12)
    procs = [start_pymda(["-c", str(cfg_file), "-d", mailuser.name, "-f", "s@example.org",
                          "-a", f"{mailuser.name}@localhost"], MESSAGE) for _ in range(5)]
    assert all(finish(p, timeout=120) == (EX_OK, b"") for p in procs)
    # 12 + 5 = 17 messages: only 80 % was crossed, by whichever got there
    assert len(warnings_in(md)) == 1
    assert count(md) == 18


def test_no_warnings_configured_imports_nothing_new(mailuser, tmp_path):
    """A delivery with a limit but without quota_warnings loads neither the
    warning code nor its imports (sqlite3, email, string); a plain one
    nothing heavy and no quota code at all."""
    prefill(mailuser, 1)
    names = imported_modules(mailuser, ["-f", "s@example.org", "--mailbox", "Maildir/",
                                        "-o", "quota_messages=2"], MESSAGE)
    assert "pymda.quota" in names
    assert not {"pymda.quota_warn", "pymda.state", "sqlite3", "string", "email"} & names
    names = imported_modules(mailuser, ["-f", "s@example.org", "--mailbox", "Maildir/"], MESSAGE)
    assert heavy_in(names) == []
    assert not {"pymda.quota", "pymda.quota_warn", "pymda.subscriptions"} & names


def test_pymda_lmtpd_sends_the_warning_too(mailuser, tmp_path, daemons):
    md = prefill(mailuser, 3)
    cfg = write_config(tmp_path, 'mailbox = "Maildir/"\nquota_messages = 5\n'
                                 'quota_warnings = [80]\n')
    d = daemons(cfg)
    body = b"From: a@example.org\r\nSubject: over lmtp\r\n\r\nbody\r\n"
    with d.connect() as c:
        _, replies = transaction(c, "s@example.org", [f"{mailuser.name}@localhost"], body)
        assert replies == [DELIVERED]
    (warning,) = warnings_in(md)
    assert b"Subject: Mailbox quota warning: 80% of messages used" in warning
    assert count(md) == 5
