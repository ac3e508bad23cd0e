"""Folders pymda creates are subscribed, as dovecot reads it (issue 14.1).

Real ``pymda`` as root with ``-d`` (switching to a test user); dovecot
2.3's ``doveadm mailbox list -s`` over a private config reads the result,
and ``doveadm mailbox create -s`` writes the subscriptions pymda must keep.
"""

import os

import pytest

from pymda import subscriptions
from support import paths
from support.dovecot import QuotaDovecot, installed as dovecot_installed
from support.run import EX_OK, finish, run_pymda, start_pymda

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users)")
needs_pymda = pytest.mark.skipif(not os.access(paths.pymda_bin(), os.X_OK),
                                 reason="pymda is not installed (scripts/install)")
needs_dovecot = pytest.mark.skipif(not dovecot_installed(), reason="dovecot-core missing")

MESSAGE = b"From: a@example.org\nSubject: folders\n\nbody\n"
V2 = b"V\t2\n\n"


@pytest.fixture
def mailuser(test_user):
    return test_user


def deliver(user, *args, extension=None):
    rcpt = f"{user.name}+{extension}@localhost" if extension else f"{user.name}@localhost"
    return run_pymda(["-d", user.name, "-f", "s@example.org", "-a", rcpt,
                      "--mailbox", "Maildir/", *args], MESSAGE)


def subs_file(user):
    return user.home / "Maildir" / "subscriptions"


# --- the format (pure) --------------------------------------------------------


def test_lines_in_both_versions():
    levels = subscriptions.folder_levels("/home/a/Maildir/.Work.Reports/")
    assert levels == ["Work", "Reports"]
    assert subscriptions.format_line(levels, 2) == "Work\tReports"
    assert subscriptions.format_line(levels, 1) == "Work.Reports"
    assert subscriptions.format_line(["a\tb\x01c\nd"], 2) == "a\x01tb\x011c\x01nd"


# --- through the installed pymda ----------------------------------------------


@needs_root
@needs_pymda
def test_a_folder_created_by_m_is_subscribed_in_version_2(mailuser):
    assert deliver(mailuser, "-m", "Work/Reports") == (EX_OK, b"")
    assert subs_file(mailuser).read_bytes() == V2 + b"Work\tReports\n"
    assert deliver(mailuser, "-m", "Work/Reports") == (EX_OK, b"")     # exists: no change
    assert deliver(mailuser, "-m", "Grüße") == (EX_OK, b"")
    assert subs_file(mailuser).read_bytes() == V2 + b"Work\tReports\nGr&APwA3w-e\n"
    st = os.stat(subs_file(mailuser))
    assert (st.st_uid, st.st_mode & 0o777) == (mailuser.uid, 0o600)
    assert not (mailuser.home / "Maildir" / "subscriptions.lock").exists()


@needs_root
@needs_pymda
def test_an_extension_folder_created_is_subscribed(mailuser):
    assert deliver(mailuser, "-o", "detail_folders=create", extension="lists") == (EX_OK, b"")
    assert subs_file(mailuser).read_bytes() == V2 + b"lists\n"


@needs_root
@needs_pymda
def test_an_existing_folder_is_not_resubscribed(mailuser):
    """The user unsubscribed from a folder that exists: pymda leaves it so."""
    assert deliver(mailuser, "-m", "Old", "-o", "subscribe_created_folders=false") == (EX_OK, b"")
    assert not subs_file(mailuser).exists()
    assert deliver(mailuser, "-m", "Old") == (EX_OK, b"")
    assert not subs_file(mailuser).exists()


@needs_root
@needs_pymda
def test_a_version_1_file_stays_version_1(mailuser):
    md = mailuser.home / "Maildir"
    assert deliver(mailuser) == (EX_OK, b"")
    subs_file(mailuser).write_bytes(b"Archive.2020\nJunk")    # no final newline
    os.chown(subs_file(mailuser), mailuser.uid, mailuser.gid)
    assert deliver(mailuser, "-m", "Work/Reports") == (EX_OK, b"")
    assert subs_file(mailuser).read_bytes() == b"Archive.2020\nJunk\nWork.Reports\n"
    assert (md / ".Work.Reports").is_dir()


@needs_root
@needs_pymda
def test_a_symlinked_subscriptions_file_is_refused_mail_still_delivered(mailuser, tmp_path):
    assert deliver(mailuser) == (EX_OK, b"")
    victim = mailuser.home / "victim"
    victim.write_bytes(b"precious\n")
    os.chown(victim, mailuser.uid, mailuser.gid)
    os.symlink(victim, subs_file(mailuser))
    assert deliver(mailuser, "-m", "Work") == (EX_OK, b"")
    assert victim.read_bytes() == b"precious\n"
    assert os.path.islink(subs_file(mailuser))
    assert len(os.listdir(mailuser.home / "Maildir" / ".Work" / "new")) == 1
    assert not (mailuser.home / "Maildir" / "subscriptions.lock").exists()


@needs_root
@needs_pymda
def test_off_writes_no_file(mailuser):
    assert deliver(mailuser, "-m", "Work", "-o", "subscribe_created_folders=false") == (EX_OK, b"")
    assert not subs_file(mailuser).exists()


@needs_root
@needs_pymda
def test_a_held_dovecot_lock_is_waited_for_and_a_stale_one_removed(mailuser):
    assert deliver(mailuser) == (EX_OK, b"")
    lock = mailuser.home / "Maildir" / "subscriptions.lock"
    lock.write_bytes(b"")
    old = os.stat(lock).st_mtime - subscriptions.LOCK_STALE_SECONDS - 5
    os.utime(lock, (old, old))
    assert deliver(mailuser, "-m", "Work") == (EX_OK, b"")
    assert subs_file(mailuser).read_bytes() == V2 + b"Work\n"
    lock.write_bytes(b"")                                   # fresh: held by someone
    code, out = deliver(mailuser, "-m", "Other", "-o", "lock_timeout=0.3")
    assert (code, out) == (EX_OK, b"")                      # delivered, not subscribed
    assert subs_file(mailuser).read_bytes() == V2 + b"Work\n"
    assert len(os.listdir(mailuser.home / "Maildir" / ".Other" / "new")) == 1


# --- with dovecot ---------------------------------------------------------------


@pytest.fixture
def dovecot_sent(mailuser, tmp_path):
    """A Maildir where dovecot created and subscribed "Sent"."""
    assert deliver(mailuser) == (EX_OK, b"")
    dovecot = QuotaDovecot(tmp_path, mailuser, str(mailuser.home / "Maildir") + "/")
    dovecot.ok("mailbox", "create", "-s", "Sent")
    return dovecot


@needs_root
@needs_pymda
@needs_dovecot
def test_dovecot_lists_them_and_its_own_survive(mailuser, dovecot_sent):
    dovecot = dovecot_sent
    dovecot.ok("mailbox", "subscribe", "Shared.Thing")         # no such folder: still kept
    assert subs_file(mailuser).read_bytes().startswith(V2)     # what dovecot 2.3 writes
    assert deliver(mailuser, "-m", "Work/Reports") == (EX_OK, b"")
    assert deliver(mailuser, "-m", "Grüße") == (EX_OK, b"")
    assert dovecot.subscribed() == sorted(["Sent", "Shared.Thing", "Work.Reports", "Grüße"])
    dovecot.ok("mailbox", "unsubscribe", "Work.Reports")       # dovecot edits our lines
    assert dovecot.subscribed() == sorted(["Sent", "Shared.Thing", "Grüße"])


@needs_root
@needs_pymda
@needs_dovecot
def test_twenty_concurrent_deliveries_lose_no_subscription(mailuser, dovecot_sent):
    dovecot = dovecot_sent
    procs = [start_pymda(["-d", mailuser.name, "-f", "s@example.org", "-a",
                          f"{mailuser.name}@localhost", "--mailbox", "Maildir/", "-m", f"F{i}"],
                         MESSAGE) for i in range(20)]
    # dovecot subscribes at the same time, through the same lock
    for i in range(5):
        dovecot.ok("mailbox", "subscribe", f"D{i}")
    results = [finish(p, timeout=120) for p in procs]
    assert all(r == (EX_OK, b"") for r in results), results
    expected = sorted(["Sent"] + [f"F{i}" for i in range(20)] + [f"D{i}" for i in range(5)])
    assert dovecot.subscribed() == expected
    lines = subs_file(mailuser).read_bytes()[len(V2):].splitlines()
    assert sorted(lines) == sorted(x.encode() for x in expected)   # each once

