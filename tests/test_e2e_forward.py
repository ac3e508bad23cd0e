""".forward end to end: the installed pymda as real users, and through a
real postfix with ``forward_path =`` (postfix leaves .forward alone) and
``mailbox_command = pymda ... -o forward=true`` (pymda owns it).
"""

import os
import re
import textwrap
import time
from pathlib import Path

import pytest

from support import paths
from support.run import EX_DATAERR, EX_OK, EX_TEMPFAIL, run_pymda

LOOP_STATUS = "5.4.6"
HOST = "localhost"

RECORDER = textwrap.dedent("""\
    #!/bin/sh
    # records stdin and environment; exits 75 until ./fixed exists
    out="$HOME/pipe-$(date +%s%N)"
    cat > "$out.stdin"
    env > "$out.env"
    if [ -n "$FAIL_UNTIL_FIXED" ] && [ ! -e "$HOME/fixed" ]; then
        echo "not yet"
        exit 75
    fi
    exit 0
""")


def maildir_messages(user, folder=""):
    new = user.path("Maildir", folder, "new") if folder else user.path("Maildir", "new")
    if not new.is_dir():
        return []
    return [p.read_bytes() for p in sorted(new.iterdir())]


def install_recorder(user, fail_until_fixed=False):
    script = RECORDER.replace('[ -n "$FAIL_UNTIL_FIXED" ]',
                              "true" if fail_until_fixed else "false")
    return user.write("bin/record", script.encode(), 0o755)


def pipe_runs(user):
    return sorted(user.home.glob("pipe-*.stdin"))


def command(*extra):
    return f'{paths.pymda_bin()} -f "$SENDER" -o mailbox=Maildir/ ' + " ".join(extra)


# --- the installed pymda, without an MTA ---------------------------------------


def test_forward_copy_pipe_and_file_as_the_user(make_user):
    alice = make_user()
    rec = install_recorder(alice)
    alice.write(".forward", f'\\{alice.name}\n"|{rec}", ~/copy.mbox\n'.encode(), 0o644)
    msg = b"Subject: e2e\nMessage-ID: <e2e-1@example.org>\n\nhello\nFrom here\n"
    args = ["-d", alice.name, "-f", "bob@example.net", "-a", f"{alice.name}@{HOST}",
            "--forward", "-o", "mailbox=Maildir/"]
    code, out = run_pymda(args + ["-n"], msg, user=alice)
    assert code == EX_OK, out
    lines = out.decode().splitlines()
    assert lines[0].endswith("source=.forward line 1")
    assert "source=.forward line 2" in lines[1] and lines[1].startswith("pipe ")
    assert lines[2].startswith(f"mbox {alice.home}/copy.mbox") and "line 2" in lines[2]

    code, out = run_pymda(args, msg, user=alice)
    assert code == EX_OK, out
    assert len(maildir_messages(alice)) == 1
    assert alice.path("copy.mbox").read_bytes().count(b"\nSubject: e2e\n") == 1
    runs = pipe_runs(alice)
    assert len(runs) == 1
    data = runs[0].read_bytes()
    assert re.match(rb"From bob@example.net  .+\nReturn-Path: <bob@example.net>\n"
                    rb"Delivered-To: " + alice.name.encode() + rb"@localhost\n"
                    rb"Subject: e2e\n", data)
    assert data.endswith(b"\nhello\nFrom here\n")  # commands get unquoted From_
    env = runs[0].with_suffix(".env").read_text()
    assert "PYMDA_DEPTH=1" in env


def test_pymda_pipe_in_forward_does_not_recurse(make_user):
    alice = make_user()
    alice.write(".forward", f'"|{paths.pymda_bin()} -m Lists -o mailbox=Maildir/ --forward"\n'
                .encode(), 0o644)
    msg = b"Subject: lists\n\nhi\n"
    code, out = run_pymda(["-d", alice.name, "-a", f"{alice.name}@{HOST}", "-f", "x@y.org",
                           "--forward", "-o", "mailbox=Maildir/"], msg, user=alice,
                          timeout=30)
    assert code == EX_OK, out
    assert len(maildir_messages(alice, ".Lists")) == 1
    assert maildir_messages(alice) == []


def test_delivered_to_loop_is_refused(make_user):
    alice = make_user()
    rcpt = f"{alice.name}@{HOST}"
    msg = (f"Delivered-To: {rcpt}\nSubject: loop\n"
           f"Delivered-To: {rcpt}\n\nbody\n").encode()
    code, out = run_pymda(["-d", alice.name, "-a", rcpt, "-f", "x@y.org", "--forward",
                           "-o", "mailbox=Maildir/"], msg, user=alice)
    assert code == EX_DATAERR
    assert out.decode().startswith(f"{LOOP_STATUS} ")
    assert maildir_messages(alice) == []


def test_untrusted_forward_is_ignored(make_user):
    alice = make_user()
    alice.write(".forward", b"somebody@example.net\n", 0o666)
    code, out = run_pymda(["-d", alice.name, "-a", f"{alice.name}@{HOST}", "-f", "x@y.org",
                           "--forward", "-o", "mailbox=Maildir/"], b"Subject: u\n\nx\n",
                          user=alice)
    assert code == EX_OK, out
    assert len(maildir_messages(alice)) == 1


def test_root_delivery_switches_before_reading_forward(make_user):
    """pymda -d as root: the .forward pipe runs as the user."""
    alice = make_user()
    rec = install_recorder(alice)
    alice.write(".forward", f'"|{rec}"\n'.encode(), 0o644)
    code, out = run_pymda(["-d", alice.name, "-a", f"{alice.name}@{HOST}", "-f", "x@y.org",
                           "--forward"], b"Subject: r\n\nx\n")
    assert code == EX_OK, out
    runs = pipe_runs(alice)
    assert len(runs) == 1
    assert runs[0].stat().st_uid == alice.uid


def test_forward_the_user_cannot_read_means_the_mailbox(make_user):
    """A root-owned mode 0600 .forward (root made it, the user cannot read
    it): as postfix, a warning and the mailbox, not a deferral that would
    return every message to its sender after the queue lifetime."""
    alice = make_user()
    fwd = alice.write(".forward", b"somebody@example.net\n", 0o600)
    os.chown(fwd, 0, 0)
    code, out = run_pymda(["-d", alice.name, "-a", f"{alice.name}@{HOST}", "-f", "x@y.org",
                           "--forward", "-o", "mailbox=Maildir/"], b"Subject: u\n\nx\n")
    assert code == EX_OK, out
    assert len(maildir_messages(alice)) == 1


def test_sender_chosen_extension_too_long_for_a_file_name_is_delivered(make_user):
    alice = make_user()
    rcpt = f"{alice.name}+{'x' * 300}@{HOST}"
    code, out = run_pymda(["-d", alice.name, "-a", rcpt, "-f", "x@y.org", "--forward",
                           "-o", "mailbox=Maildir/"], b"Subject: long\n\nx\n", user=alice)
    assert code == EX_OK, out
    assert len(maildir_messages(alice)) == 1


# --- through a real postfix -----------------------------------------------------------


@pytest.fixture
def owned(postfix):
    """postfix hands .forward to pymda."""
    postfix.reset(forward_path="", mailbox_command=command("-o", "forward=true"))
    return postfix


def test_forward_and_keep_a_copy_through_postfix(owned, make_user):
    alice, bob, carol = make_user(), make_user(), make_user()
    rec = install_recorder(alice)
    alice.write(".forward",
                f'\\{alice.name}, {bob.name}@{HOST}\n"|{rec}"\n'.encode(), 0o644)
    sender = f"{carol.name}@{HOST}"
    owned.send(sender, f"{alice.name}@{HOST}",
               b"Subject: keep and forward\nMessage-ID: <e2e-pf@example.org>\n\nhi\n")
    owned.wait_until(lambda: maildir_messages(bob), what="bob's copy")
    owned.wait_empty()
    mine = maildir_messages(alice)
    assert len(mine) == 1
    bobs = maildir_messages(bob)
    assert len(bobs) == 1
    # the envelope sender survives the forward
    assert bobs[0].startswith(f"Return-Path: <{sender}>\n".encode())
    header = bobs[0].split(b"\n\n", 1)[0].decode()
    assert f"Delivered-To: {bob.name}@{HOST}" in header
    assert f"Delivered-To: {alice.name}@{HOST}" in header
    runs = pipe_runs(alice)
    assert len(runs) == 1
    assert runs[0].read_bytes().startswith(f"From {sender}  ".encode())
    assert maildir_messages(carol) == []  # no bounce


def test_forwarding_loop_ends_in_a_bounce_not_a_storm(owned, make_user):
    alice, bob, carol = make_user(), make_user(), make_user()
    alice.write(".forward", f"{bob.name}@{HOST}\n".encode(), 0o644)
    bob.write(".forward", f"{alice.name}@{HOST}\n".encode(), 0o644)
    owned.send(f"{carol.name}@{HOST}", f"{alice.name}@{HOST}",
               b"Subject: loop\nMessage-ID: <e2e-loop@example.org>\n\nround and round\n")
    owned.wait_until(lambda: maildir_messages(carol), timeout=60, what="the bounce")
    time.sleep(2)
    owned.wait_empty()
    bounce = maildir_messages(carol)
    assert len(bounce) == 1
    assert b"MAILER-DAEMON" in bounce[0]
    assert b"loop" in bounce[0].lower()
    assert maildir_messages(alice) == [] and maildir_messages(bob) == []
    sent = [d for d in owned.deliveries() if d[2] == "sent"]
    assert len(sent) < 6, sent


def test_partial_failure_redelivers_only_what_is_owed(owned, make_user):
    alice = make_user()
    rec = install_recorder(alice, fail_until_fixed=True)
    alice.write(".forward", f'~/copy.mbox, "|{rec}"\n'.encode(), 0o644)
    rcpt = f"{alice.name}@{HOST}"
    owned.send("someone@example.net", rcpt,
               b"Subject: partial\nMessage-ID: <e2e-partial@example.org>\n\nonce\n")
    owned.wait_until(lambda: owned.deferred(), what="a deferral")
    owned.wait_until(lambda: len(pipe_runs(alice)) >= 2, what="a retry")
    assert alice.path("copy.mbox").read_bytes().count(b"Subject: partial") == 1
    assert any("not yet" in r for r in owned.delay_reasons())
    alice.write("fixed", b"")
    owned.flush()
    owned.wait_status(rcpt, "sent", timeout=60)
    owned.wait_empty()
    assert alice.path("copy.mbox").read_bytes().count(b"Subject: partial") == 1
    assert maildir_messages(alice) == []


def test_postfix_default_forward_path_leaves_forward_to_postfix(postfix, make_user):
    """Without forward=true pymda never reads .forward: postfix did."""
    alice, bob = make_user(), make_user()
    alice.write(".forward", f"\\{alice.name}, {bob.name}@{HOST}\n".encode(), 0o644)
    postfix.reset(mailbox_command=command())
    postfix.send("x@example.net", f"{alice.name}@{HOST}", b"Subject: classic\n\nx\n")
    postfix.wait_until(lambda: maildir_messages(bob) and maildir_messages(alice),
                       what="both copies")
    postfix.wait_empty()
    assert len(maildir_messages(alice)) == 1 and len(maildir_messages(bob)) == 1


def test_null_sender_survives_the_forward(owned, make_user):
    alice, bob = make_user(), make_user()
    alice.write(".forward", f"{bob.name}@{HOST}\n".encode(), 0o644)
    owned.send("", f"{alice.name}@{HOST}", b"Subject: bounce-like\n\nx\n")
    owned.wait_until(lambda: maildir_messages(bob), what="bob's copy")
    owned.wait_empty()
    assert maildir_messages(bob)[0].startswith(b"Return-Path: <>\n")


@pytest.fixture
def shared_dir():
    """A 1777 directory nobody can reach (pytest's tmp_path is 0700 root)."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="pymda-rootfw-", dir="/tmp"))
    shared.chmod(0o1777)
    yield shared
    shutil.rmtree(shared)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_roots_file_targets_are_written_as_default_privs(tmp_path, shared_dir):
    """DELIVERY RIGHTS: root's own mailbox is root's, its files are nobody's."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    shared = shared_dir
    (shared / "rootowned.mbox").write_bytes(b"")  # root's: nobody may not write it
    forward = tmp_path / "forward"
    forward.write_text(f"\\root, {shared}/copy.mbox, {shared}/md/\n")
    args = ["-d", "root", "--forward", "-o", f'forward_path=["{forward}"]',
            "--mailbox", f"{tmp_path}/Maildir/"]
    msg = b"Subject: root's\n\nbody\n"
    code, out = run_pymda(args, msg)
    assert (code, out) == (EX_OK, b"")
    inbox = list((tmp_path / "Maildir" / "new").iterdir())
    assert len(inbox) == 1 and inbox[0].stat().st_uid == 0
    copy = shared / "copy.mbox"
    assert copy.stat().st_uid == nobody.pw_uid
    assert copy.read_bytes().endswith(b"Subject: root's\n\nbody\n\n")
    md = list((shared / "md" / "new").iterdir())
    assert len(md) == 1 and md[0].stat().st_uid == nobody.pw_uid
    # A file that only root could write is refused, not written as root.
    forward.write_text(f"{shared}/rootowned.mbox\n")
    code, out = run_pymda(args, msg)
    assert code == EX_TEMPFAIL and out.startswith(b"4.2.0 "), out
    assert (shared / "rootowned.mbox").read_bytes() == b""
