"""The ``pymda`` command (pymda.cli): options, the SPEC 1.9 exit table, the
postfix interface, and import discipline.

Option parsing is checked in-process (parse_args) and, where process
behaviour matters, by running the installed program as a test user:
- ``-f ""`` (null sender), ``-fADDR``, ``--from=ADDR``, ``--no-forward``,
  unknown options and stray arguments (64, ``5.5.4``), ``--help`` (0);
- ``-n`` / ``--json`` print the plan and write nothing, create nothing;
- every exit-table row of issue 2: exit code, the status as the first
  bytes of exactly one line of output, and the mailbox untouched;
- postfix's censored ``$SENDER`` and its stdin layout (POSTFIX-FACTS.md);
- a plain delivery imports nothing heavy (``-X importtime``), and a plain
  Maildir delivery no more pymda modules than it does today.
"""

import json
import os
import subprocess

import pytest

from enginekit import (
    CONFIG, EMPTY, INTERNAL, LOOP, MESSAGE, NO_USER, NOT_ALLOWED, REFUSED, SENDER,
    TEMP, TOO_BIG, USAGE, assert_failure, assert_ok, deliver, header_lines,
    maildir_files, only_message, recipient_of, refused_unchanged, snapshot,
)
from pymda import cli
from pymda.errors import UsageError
from support import paths
from support.run import (
    EX_DATAERR, EX_NOPERM, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE, child_environment,
    run_pymda,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)")



# --- option parsing, in-process -------------------------------------------------


@pytest.mark.parametrize("argv, key, value", [
    (["-f", ""], "sender", ""),
    (["-f", "<>"], "sender", "<>"),
    (["-fa@b"], "sender", "a@b"),
    (["--from=a@b"], "sender", "a@b"),
    (["--from", "a@b"], "sender", "a@b"),
    (["--from="], "sender", ""),
    (["-a", "r@x"], "recipient", "r@x"),
    (["-dalice"], "user", "alice"),
    (["--user", "alice"], "user", "alice"),
    (["-m", "Work/Reports"], "folder", "Work/Reports"),
    (["--mailbox", "Maildir/"], "mailbox", "Maildir/"),
    (["-p", "/tmp/m"], "path", "/tmp/m"),
    (["-c", "/etc/x.toml"], "config", "/etc/x.toml"),
    (["--no-forward"], "forward", False),
    (["--forward"], "forward", True),
    (["-n"], "dry_run", True),
    (["--json"], "json", True),
    (["-v"], "verbose", True),
])
def test_parse_args(argv, key, value):
    assert cli.parse_args(argv)[key] == value


def test_parse_args_bundles_and_repeats():
    opts = cli.parse_args(["-nv", "-o", "a=1", "-ob=2", "--set=c=3", "-fs@x", "--", ])
    assert opts["dry_run"] and opts["verbose"]
    assert opts["overrides"] == ["a=1", "b=2", "c=3"]
    assert opts["sender"] == "s@x"
    # A value-taking short option ends the bundle: "-nfx" is -n -f x.
    assert cli.parse_args(["-nfx@y"])["sender"] == "x@y"


def test_forward_then_no_forward_last_wins():
    assert cli.parse_args(["--forward", "--no-forward"])["forward"] is False
    assert cli.parse_args(["--no-forward", "--forward"])["forward"] is True


@pytest.mark.parametrize("argv", [
    ["-x"], ["--bogus"], ["extra"], ["-f"], ["--from"], ["-n", "--", "extra"],
    ["--dry-run=yes"], ["--no-forward=1"], ["-nq"],
])
def test_parse_args_misuse(argv):
    with pytest.raises(UsageError) as info:
        cli.parse_args(argv)
    assert info.value.status == USAGE
    assert info.value.exit == EX_USAGE


def test_help_lists_every_option():
    text = cli.usage()
    for short, long, *_ in cli.OPTIONS:
        assert f"--{long}" in text
        if short:
            assert f"-{short}, " in text
    assert "--no-forward" in text


def test_censor_matches_postfix_default_filter():
    from pymda.address import censor

    assert censor("o'brien@x") == "o_brien@x"
    assert censor("a b\"c$d`e@x") == "a_b_c_d_e@x"
    assert censor("plain.user+tag@ex-ample.org") == "plain.user+tag@ex-ample.org"


# --- option parsing, by subprocess ---------------------------------------------------


@needs_root
@pytest.mark.parametrize("args, return_path, from_who", [
    (["-f", ""], b"Return-Path: <>", b"MAILER-DAEMON"),
    (["-f", "<>"], b"Return-Path: <>", b"MAILER-DAEMON"),
    (["-fjoe@example.org"], b"Return-Path: <joe@example.org>", b"joe@example.org"),
    (["--from=ann@example.org"], b"Return-Path: <ann@example.org>", b"ann@example.org"),
    (["--from", "<bo@example.org>"], b"Return-Path: <bo@example.org>", b"bo@example.org"),
])
def test_sender_options(test_user, args, return_path, from_who):
    mbox = test_user.path("mbox")
    result = deliver(test_user, [*args, "--mailbox", "mbox"], sender=None)
    assert_ok(result)
    data = mbox.read_bytes()
    assert data.startswith(b"From " + from_who + b"  ")
    assert header_lines(data.split(b"\n", 1)[1], "Return-Path") == [return_path]


@needs_root
def test_sender_from_the_from_line_when_no_f_and_no_SENDER(test_user):
    raw = b"From fl@example.org  Tue Nov 24 22:08:05 2026\n" + MESSAGE
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], raw, sender=None))
    _, msg = only_message(test_user.path("Maildir"))
    assert header_lines(msg, "Return-Path") == [b"Return-Path: <fl@example.org>"]


@needs_root
def test_sender_defaults_to_null_sender(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], sender=None))
    _, msg = only_message(test_user.path("Maildir"))
    assert header_lines(msg, "Return-Path") == [b"Return-Path: <>"]


@needs_root
def test_SENDER_environment_is_the_default(test_user):
    result = deliver(test_user, ["--mailbox", "Maildir/"], sender=None,
                     env={"SENDER": "env@example.org"})
    assert_ok(result)
    _, msg = only_message(test_user.path("Maildir"))
    assert header_lines(msg, "Return-Path") == [b"Return-Path: <env@example.org>"]


@needs_root
def test_no_forward_ignores_dot_forward(test_user):
    test_user.write(".forward", f"{test_user.home}/forwarded.mbox\n".encode(), 0o644)
    # Control: with forwarding on, the plan is the .forward file target.
    code, out = deliver(test_user, ["-n", "-o", "forward=true", "--mailbox", "Maildir/"])
    assert code == EX_OK, out
    assert b".forward line 1" in out and b"forwarded.mbox" in out
    # --no-forward: the mailbox, and nothing written to the .forward target.
    result = deliver(test_user, ["--no-forward", "-o", "forward=true", "--mailbox", "Maildir/"])
    assert_ok(result)
    only_message(test_user.path("Maildir"))
    assert not test_user.path("forwarded.mbox").exists()


@needs_root
@pytest.mark.parametrize("args", [["-x"], ["--bogus"], ["--from"], ["--no-forward=1"]])
def test_unknown_option_is_64(test_user, args):
    before = snapshot(test_user.home)
    result = deliver(test_user, ["--mailbox", "Maildir/", *args])
    assert_failure(result, EX_USAGE, USAGE)
    assert snapshot(test_user.home) == before


@needs_root
def test_positional_argument_is_64(test_user):
    before = snapshot(test_user.home)
    result = deliver(test_user, ["--mailbox", "Maildir/", "alice"])
    assert_failure(result, EX_USAGE, USAGE)
    assert snapshot(test_user.home) == before


def test_help_exits_0(pymda_bin):
    code, out = run_pymda(["--help"])
    assert code == EX_OK
    assert out.startswith(b"usage: pymda")
    for _, long, *_ in cli.OPTIONS:
        assert f"--{long}".encode() in out


def test_python_dash_m_pymda(pymda_bin):
    python = paths.prefix() / "bin" / "python3"
    proc = subprocess.run([str(python), "-m", "pymda", "--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd="/", check=False)
    assert proc.returncode == EX_OK
    assert proc.stdout.startswith(b"usage: pymda")


def test_json_without_n_is_a_usage_error(pymda_bin):
    result = run_pymda(["--json", "-d", "root", "--mailbox", "/nonexistent/Maildir/"], MESSAGE)
    assert_failure(result, EX_USAGE, USAGE)
    assert not os.path.exists("/nonexistent")


def test_unreadable_path_is_a_usage_error(pymda_bin, tmp_path):
    result = run_pymda(["-p", str(tmp_path / "missing.eml"), "-d", "root",
                        "--mailbox", str(tmp_path / "Maildir") + "/"])
    assert_failure(result, EX_USAGE, USAGE)
    assert not (tmp_path / "Maildir").exists()


@needs_root
def test_path_option_reads_the_file(test_user):
    src = test_user.write("saved.eml", b"Subject: from a file\r\n\r\nbody\r\n")
    assert_ok(deliver(test_user, ["-p", str(src), "--mailbox", "Maildir/"], b""))
    _, msg = only_message(test_user.path("Maildir"))
    assert msg.endswith(b"Subject: from a file\n\nbody\n")


# --- dry run ----------------------------------------------------------------------------


@needs_root
def test_dry_run_writes_nothing(test_user):
    before = snapshot(test_user.home)
    code, out = deliver(test_user, ["-n", "--mailbox", "Maildir/", "-m", "New/Sub"])
    assert code == EX_OK, out
    assert out == (f"maildir {test_user.home}/Maildir/ folder=New/Sub source=mailbox\n"
                   .encode())
    assert snapshot(test_user.home) == before


@needs_root
def test_dry_run_json_writes_nothing(test_user):
    before = snapshot(test_user.home)
    code, out = deliver(test_user, ["-n", "--json", "--mailbox", "mail/inbox", "-m", "Lists"])
    assert code == EX_OK, out
    assert json.loads(out) == {"targets": [{
        "kind": "mbox", "path": f"{test_user.home}/mail/Lists", "folder": "Lists",
        "source": "mailbox"}]}
    assert snapshot(test_user.home) == before


@needs_root
def test_dry_run_as_root_for_a_user_creates_no_spool_mbox(test_user):
    spool = f"/var/mail/{test_user.name}"
    assert not os.path.lexists(spool)
    code, out = run_pymda(["-n", "-d", test_user.name, "-f", SENDER], MESSAGE)
    assert code == EX_OK, out
    assert out == f"mbox {spool} folder=INBOX source=mailbox\n".encode()
    assert not os.path.lexists(spool)


# --- SPEC 1.9 exit table ------------------------------------------------------------------


@pytest.fixture
def filled(test_user):
    """The test user with an mbox and a Maildir holding one message each."""
    assert_ok(deliver(test_user, ["--mailbox", "mbox"]))
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"]))
    return test_user


@needs_root
@pytest.mark.parametrize("mailbox", ["mbox", "Maildir/"])
def test_empty_input_65(filled, mailbox):
    refused_unchanged(filled, EX_DATAERR, EMPTY, ["--mailbox", mailbox], b"")


@needs_root
def test_unknown_user_67(pymda_bin):
    name = "ptnosuchuser0"
    result = run_pymda(["-d", name, "-f", SENDER], MESSAGE)
    assert_failure(result, EX_NOUSER, NO_USER)
    assert not os.path.lexists(f"/var/mail/{name}")


@needs_root
def test_unknown_user_from_the_recipient_67(pymda_bin):
    result = run_pymda(["-a", "ptnosuchuser0+x@example.org", "-f", SENDER], MESSAGE)
    assert_failure(result, EX_NOUSER, NO_USER)


@needs_root
@pytest.mark.parametrize("mailbox", ["mbox", "Maildir/"])
@pytest.mark.parametrize("limit", ["100", "1K"])
def test_too_large_77(filled, mailbox, limit):
    before = snapshot(filled.home)
    big = MESSAGE + b"x" * 2000 + b"\n"
    result = deliver(filled, ["--mailbox", mailbox, "-o", f"message_size_limit={limit}"], big)
    assert_failure(result, EX_NOPERM, TOO_BIG)
    assert snapshot(filled.home) == before


@needs_root
def test_size_limit_not_reached_delivers(test_user):
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/", "-o",
                                  f"message_size_limit={len(MESSAGE)}"]))
    only_message(test_user.path("Maildir"))


@needs_root
@pytest.mark.parametrize("mailbox", ["mbox", "Maildir/"])
def test_loop_65(filled, mailbox):
    rcpt = recipient_of(filled)
    looped = (f"Delivered-To: {rcpt}\nSubject: x\nDelivered-To: {rcpt.upper()}\n\nb\n").encode()
    refused_unchanged(filled, EX_DATAERR, LOOP, ["--mailbox", mailbox], looped, recipient=rcpt)


@needs_root
def test_loop_delivered_to_below_other_fields_65(test_user):
    rcpt = recipient_of(test_user)
    looped = f"Received: by x\nDelivered-To: {rcpt}\nSubject: x\n\nb\n".encode()
    result = deliver(test_user, ["--mailbox", "Maildir/"], looped, recipient=rcpt)
    assert_failure(result, EX_DATAERR, LOOP)
    assert not test_user.path("Maildir").exists()


@needs_root
def test_own_delivered_to_is_not_a_loop(test_user):
    rcpt = recipient_of(test_user)
    once = (f"Delivered-To: {rcpt}\nSubject: x\nDelivered-To: other@example.org\n\n"
            f"Delivered-To: {rcpt}\n").encode()
    assert_ok(deliver(test_user, ["--mailbox", "Maildir/"], once, recipient=rcpt))
    _, msg = only_message(test_user.path("Maildir"))
    assert msg == f"Return-Path: <{SENDER}>\n".encode() + once


@needs_root
@pytest.mark.parametrize("text, word", [
    ('mailbox = "Maildir/"\nlock_timeout = = 3\n', "line 2"),
    ('mailbux = "Maildir/"\n', "mailbux"),
    ('lock_timeout = "soon"\n', "lock_timeout"),
])
def test_bad_config_75(filled, text, word):
    cfg = filled.write("pymda.toml", text.encode(), 0o644)
    before = snapshot(filled.home)
    for args, env in (([], {"PYMDA_CONFIG": str(cfg)}), (["-c", str(cfg)], None)):
        result = deliver(filled, ["--mailbox", "Maildir/", *args], env=env)
        assert_failure(result, EX_TEMPFAIL, CONFIG)
        assert str(cfg).encode() in result.output
        assert word.encode() in result.output
    assert snapshot(filled.home) == before


@needs_root
def test_unreadable_config_75(filled):
    cfg = filled.write("pymda.toml", b'mailbox = "Maildir/"\n', 0o600)
    os.chown(cfg, 0, 0)
    result = refused_unchanged(filled, EX_TEMPFAIL, CONFIG, ["-c", str(cfg)])
    assert str(cfg).encode() in result.output


@needs_root
def test_unknown_o_key_75(filled):
    result = refused_unchanged(filled, EX_TEMPFAIL, CONFIG,
                               ["--mailbox", "Maildir/", "-o", "mailbux=1"])
    assert b"mailbux" in result.output


@needs_root
def test_symlinked_mbox_75(filled):
    os.symlink("mbox", filled.path("link"))
    refused_unchanged(filled, EX_TEMPFAIL, REFUSED, ["--mailbox", "link"])


@needs_root
def test_symlinked_mbox_to_a_missing_file_75(filled):
    os.symlink("elsewhere", filled.path("link"))
    refused_unchanged(filled, EX_TEMPFAIL, REFUSED, ["--mailbox", "link"])


@needs_root
def test_hard_linked_mbox_75(filled):
    os.link(filled.path("mbox"), filled.path("other"))
    refused_unchanged(filled, EX_TEMPFAIL, REFUSED, ["--mailbox", "mbox"])


@needs_root
@pytest.mark.parametrize("mode", [0o600, 0o666])
def test_foreign_owned_mbox_75(filled, make_user, mode):
    other = make_user()
    os.chown(filled.path("mbox"), other.uid, other.gid)
    os.chmod(filled.path("mbox"), mode)
    refused_unchanged(filled, EX_TEMPFAIL, REFUSED, ["--mailbox", "mbox"])


@needs_root
def test_root_owned_mbox_75(filled):
    os.chown(filled.path("mbox"), 0, 0)
    os.chmod(filled.path("mbox"), 0o666)
    refused_unchanged(filled, EX_TEMPFAIL, REFUSED, ["--mailbox", "mbox"])


@needs_root
@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_non_regular_mbox_75(filled, kind):
    if kind == "fifo":
        path = filled.path("box")
        os.mkfifo(path, 0o600)
        filled.chown(path)
    elif kind == "directory":
        path = filled.mkdir("box")
    else:
        path = "/dev/null"
    refused_unchanged(filled, EX_TEMPFAIL, REFUSED, ["--mailbox", str(path)])


@needs_root
def test_executable_mbox_75(filled):
    os.chmod(filled.path("mbox"), 0o700)
    refused_unchanged(filled, EX_TEMPFAIL, REFUSED, ["--mailbox", "mbox"])


@needs_root
def test_delivering_for_another_user_without_root_77(filled, make_user):
    victim = make_user()
    before = snapshot(victim.home)
    mine = snapshot(filled.home)
    result = deliver(filled, ["-d", victim.name, "--mailbox", "Maildir/"],
                     recipient=recipient_of(victim))
    assert_failure(result, EX_NOPERM, NOT_ALLOWED)
    assert snapshot(victim.home) == before
    assert snapshot(filled.home) == mine


@needs_root
def test_internal_error_is_75_not_1(filled):
    """Output into a closed pipe (``pymda -n ... | true``) hits the broad catch."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [str(paths.pymda_bin()), "-n", "--mailbox", "Maildir/", "-f", SENDER],
            input=MESSAGE, stdout=write_end, stderr=subprocess.PIPE,
            env=child_environment(filled), user=filled.uid, group=filled.gid,
            extra_groups=[], check=False, timeout=30)
    finally:
        os.close(write_end)
    assert proc.returncode == EX_TEMPFAIL, proc
    assert proc.stderr.startswith(INTERNAL.encode() + b" "), proc.stderr
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


@needs_root
def test_help_into_a_closed_pipe_exits_0_quietly(pymda_bin):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([str(pymda_bin), "--help"], stdout=write_end,
                              stderr=subprocess.PIPE, check=False, timeout=30)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (EX_OK, b"")


@needs_root
def test_unusable_tmpdir_is_a_clean_75(filled):
    big = MESSAGE + (b"y" * 999 + b"\n") * 1100  # > 1 MiB: spooled to a file
    before = snapshot(filled.home)
    result = deliver(filled, ["--mailbox", "Maildir/"], big,
                     env={"TMPDIR": "/nonexistent/tmp"})
    assert_failure(result, EX_TEMPFAIL, TEMP)
    assert snapshot(filled.home) == before


@needs_root
def test_sigterm_while_reading_is_75(filled):
    from support.run import start_pymda

    proc = start_pymda(["-f", SENDER, "--mailbox", "Maildir/"], user=filled)
    proc.stdin.write(b"Subject: slow\n\n")
    proc.stdin.flush()
    import time

    time.sleep(0.5)
    before = snapshot(filled.home)
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == EX_TEMPFAIL
    assert out.startswith(b"4.") and out.count(b"\n") == 1, out
    assert snapshot(filled.home) == before


# --- the postfix interface ------------------------------------------------------------


POSTFIX_FROM = "o'brien@example.org"
POSTFIX_CENSORED = "o_brien@example.org"


def postfix_stdin(sender, rcpt, body=b"From here\n"):
    return (f"From {sender}  Tue Nov 24 22:08:05 2026\n"
            f"Return-Path: <{sender}>\n"
            f"X-Original-To: {rcpt}\n"
            f"Delivered-To: {rcpt}\n"
            "Received: by vm.localdomain (Postfix, from userid 0)\n"
            "\tid 3F2A1; Tue, 24 Nov 2026 22:08:05 +0000 (UTC)\n"
            "Subject: postfix layout\n"
            "\n").encode() + body


def postfix_run(user, args, data, rcpt, sender=POSTFIX_CENSORED):
    return run_pymda(["-f", sender, *args], data, user=user, postfix_env=True,
                     recipient=rcpt, sender=sender)


@needs_root
def test_censored_sender_becomes_exact_in_mbox(test_user):
    rcpt = f"{test_user.name}@localhost"
    raw = postfix_stdin(POSTFIX_FROM, rcpt)
    assert_ok(postfix_run(test_user, ["--mailbox", "mbox"], raw, rcpt))
    data = test_user.path("mbox").read_bytes()
    from_line, stored = data.split(b"\n", 1)
    assert from_line.startswith(f"From {POSTFIX_FROM}  ".encode())
    assert header_lines(stored, "Return-Path") == [f"Return-Path: <{POSTFIX_FROM}>".encode()]
    # Exactly postfix's lines, the body quoted, one empty line after it.
    assert stored == raw.split(b"\n", 1)[1].replace(b"\nFrom here", b"\n>From here") + b"\n"


@needs_root
def test_censored_sender_exact_from_the_from_line_alone(test_user):
    rcpt = f"{test_user.name}@localhost"
    raw = f"From {POSTFIX_FROM}  Tue Nov 24 22:08:05 2026\n".encode() + MESSAGE
    assert_ok(postfix_run(test_user, ["--mailbox", "Maildir/"], raw, rcpt))
    _, msg = only_message(test_user.path("Maildir"))
    assert header_lines(msg, "Return-Path") == [f"Return-Path: <{POSTFIX_FROM}>".encode()]


@needs_root
def test_uncensored_sender_is_not_replaced_by_another(test_user):
    rcpt = f"{test_user.name}@localhost"
    raw = b"From someone@else.org  Tue Nov 24 22:08:05 2026\n" + MESSAGE
    assert_ok(postfix_run(test_user, ["--mailbox", "Maildir/"], raw, rcpt))
    _, msg = only_message(test_user.path("Maildir"))
    assert header_lines(msg, "Return-Path") == [f"Return-Path: <{POSTFIX_CENSORED}>".encode()]


@needs_root
@pytest.mark.parametrize("mailbox", ["Maildir/", "mbox"])
def test_postfix_layout_one_return_path_one_delivered_to(test_user, mailbox):
    rcpt = f"{test_user.name}+work@localhost"
    raw = postfix_stdin("alice@example.org", rcpt, body=b"plain body\n")
    assert_ok(postfix_run(test_user, ["--mailbox", mailbox], raw, rcpt,
                          sender="alice@example.org"))
    if mailbox == "mbox":
        data = test_user.path("mbox").read_bytes()
        assert data.endswith(b"\n\n")
        stored = data.split(b"\n", 1)[1][:-1]
    else:
        _, stored = only_message(test_user.path("Maildir"))  # no .work folder: INBOX
    assert len(header_lines(stored, "Return-Path")) == 1
    assert len(header_lines(stored, "Delivered-To")) == 1
    assert stored == raw.split(b"\n", 1)[1]  # byte for byte, From_ line removed


@needs_root
def test_postfix_null_sender(test_user):
    rcpt = f"{test_user.name}@localhost"
    raw = (b"From MAILER-DAEMON  Tue Nov 24 22:08:05 2026\nReturn-Path: <>\n"
           + f"X-Original-To: {rcpt}\nDelivered-To: {rcpt}\n".encode() + MESSAGE)
    assert_ok(postfix_run(test_user, ["--mailbox", "mbox"], raw, rcpt, sender=""))
    data = test_user.path("mbox").read_bytes()
    assert data.startswith(b"From MAILER-DAEMON  ")
    assert header_lines(data.split(b"\n", 1)[1], "Return-Path") == [b"Return-Path: <>"]
    assert data.split(b"\n", 1)[1] == raw.split(b"\n", 1)[1] + b"\n"


# --- import discipline ---------------------------------------------------------------------


HEAVY = {
    "click", "email", "mailbox", "asyncio", "logging", "magic", "filelock",
    "re", "json", "tomllib", "subprocess", "dataclasses", "typing", "signal", "enum",
    # ~1.2 ms: the delivery path uses pymda.fastos instead
    "os", "posixpath", "_collections_abc",
}


def imported_modules(user, args, data, extra_env=None, ordered=False):
    """The modules a delivery imports (``-X importtime``: under it the
    start-up bundle's preload stands aside, so every module shows); with
    ``ordered``, a list in the order each import finished."""
    python = paths.prefix() / "bin" / "python3"
    env = child_environment(user, extra_env)
    proc = subprocess.run(
        [str(python), "-X", "importtime", "-I", "-S", str(paths.pymda_bin()), *args],
        input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        user=user.uid, group=user.gid, extra_groups=[], cwd="/", check=False, timeout=30)
    assert proc.returncode == EX_OK, proc
    order = []
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                order.append(name)
    assert "pymda.cli" in order, proc.stderr  # the measurement itself works
    return order if ordered else set(order)


def heavy_in(names):
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


@needs_root
def test_plain_maildir_delivery_imports_nothing_heavy(test_user):
    names = imported_modules(test_user, ["-f", SENDER, "--mailbox", "Maildir/"], MESSAGE)
    assert "pymda.maildir" in names
    assert heavy_in(names) == []
    only_message(test_user.path("Maildir"))


# Every pymda module a plain one-shot Maildir delivery loads (each costs the
# start-up of every delivery ~0.05-0.1 ms; a package __init__ as much).  A new
# one here needs a reason and a bench/bench_delivery.py figure.
PLAIN_MAILDIR_DELIVERY_MODULES = {
    "pymda", "pymda.address", "pymda.cli", "pymda.config", "pymda.deliver",
    "pymda.durable", "pymda.errors", "pymda.fastos", "pymda.log", "pymda.maildir",
    "pymda.message", "pymda.recipient", "pymda.record", "pymda.resolve", "pymda.users",
}


@needs_root
def test_plain_maildir_delivery_loads_no_more_pymda_modules(test_user):
    names = imported_modules(test_user, ["-f", SENDER, "--mailbox", "Maildir/"], MESSAGE)
    ours = {n for n in names if n.split(".")[0] == "pymda"}
    assert "pymda.maildir" in ours  # the measurement itself works
    assert sorted(ours - PLAIN_MAILDIR_DELIVERY_MODULES) == []
    assert len(ours) <= len(PLAIN_MAILDIR_DELIVERY_MODULES)
    only_message(test_user.path("Maildir"))


@needs_root
def test_start_up_bundle_preloads_what_every_delivery_imports(test_user):
    """pymda/bundle.py PRELOAD: loaded before cli runs, in this order (each
    after what it imports): the modules a plain Maildir delivery imports,
    but the mailbox kind's own (maildir / mbox, locking)."""
    from pymda.bundle import PRELOAD

    order = imported_modules(test_user, ["-f", SENDER, "--mailbox", "Maildir/"], MESSAGE,
                             ordered=True)
    ours = [n for n in order if n.split(".")[0] == "pymda"]
    assert ours[-1] == "pymda.maildir", ours
    assert list(PRELOAD) == ours[:-1]
    mbox = imported_modules(test_user, ["-f", SENDER, "--mailbox", "mbox"], MESSAGE,
                            ordered=True)
    assert [n for n in mbox if n in PRELOAD] == list(PRELOAD)


@needs_root
def test_start_up_bundle_loads_a_sieve_users_modules_together(test_user):
    """pymda/bundle.py AFTER["pymda.sieve"]: what a delivery through a
    compiled Sieve script imports once it has imported pymda.sieve."""
    from pymda.bundle import AFTER, PRELOAD

    test_user.write(".dovecot.sieve", b'require "fileinto";\n'
                    b'if header :contains "subject" "zzz" { fileinto "Junk"; }\n')
    args = ["-f", SENDER, "--mailbox", "Maildir/"]
    assert_ok(deliver(test_user, args))  # compiles the script: a cache miss
    order = imported_modules(test_user, args, MESSAGE, ordered=True)
    ours = [n for n in order if n.split(".")[0] == "pymda" and n not in PRELOAD]
    assert ours[0] == "pymda.sieve" and ours[-1] == "pymda.maildir", ours
    assert sorted(ours[1:-1]) == sorted(AFTER["pymda.sieve"])


@needs_root
def test_only_a_script_with_matches_loads_the_wildcard_engine(test_user):
    """pymda.sieve.wildcard (``:matches``) is imported at its first use:
    the test above shows a ``:contains`` script without it; here the same
    delivery with ``:matches`` loads it and files the message."""
    test_user.write(".dovecot.sieve", b'require ["fileinto", "mailbox"];\n'
                    b'if header :matches "subject" "*" { fileinto :create "Junk"; }\n')
    args = ["-f", SENDER, "--mailbox", "Maildir/"]
    assert_ok(deliver(test_user, args))
    names = imported_modules(test_user, args, MESSAGE)
    assert "pymda.sieve.wildcard" in names
    assert len(os.listdir(test_user.path("Maildir/.Junk/new"))) == 2


@needs_root
def test_plain_mbox_delivery_imports_nothing_heavy(test_user):
    names = imported_modules(test_user, ["-f", SENDER, "--mailbox", "mbox"], MESSAGE)
    assert "pymda.mbox" in names
    assert heavy_in(names) == []
    assert test_user.path("mbox").read_bytes().startswith(b"From ")


@needs_root
@pytest.mark.parametrize("mailbox", ["Maildir/", "mbox"])
def test_plain_delivery_imports_no_stat_or_errno(test_user, mailbox):
    """``stat`` (+ ``_stat``: ~0.1 ms) and ``errno`` (~0.05 ms) are for
    rare paths and failures; the delivery path tests file types with
    st_mode masks."""
    names = imported_modules(test_user, ["-f", SENDER, "--mailbox", mailbox], MESSAGE)
    assert "pymda.cli" in names
    assert "stat" not in names
    assert "errno" not in names


@needs_root
def test_cached_config_file_imports_no_tomllib(test_user):
    cache = test_user.path("cache")  # written by root, readable by the user
    cfg = test_user.write("pymda.toml", b'mailbox = "Maildir/"\n', 0o644)
    env = {"PYMDA_CACHE_DIR": str(cache)}
    # As root (like postfix's pymda -d, or pymda-admin check-config) the cache is written.
    code, out = run_pymda(["-c", str(cfg), "-n", "-d", test_user.name], MESSAGE, env=env)
    assert code == EX_OK, out
    assert os.listdir(cache)
    names = imported_modules(test_user, ["-c", str(cfg), "-f", SENDER], MESSAGE, env)
    assert heavy_in(names) == []
    only_message(test_user.path("Maildir"))


@needs_root
def test_no_or_cached_config_file_runs_no_config_check(test_user):
    """The parsing and checking half of the configuration (config_keys)
    is for a cache miss and -o only: root's cache holds checked values."""
    names = imported_modules(test_user, ["-f", SENDER, "--mailbox", "Maildir/"], MESSAGE)
    assert "pymda.config" in names and "pymda.config_keys" not in names
    cache = test_user.path("cache")
    cfg = test_user.write("pymda.toml", b'mailbox = "Maildir/"\nmbox_locks = ["fcntl"]\n',
                          0o644)
    env = {"PYMDA_CACHE_DIR": str(cache)}
    code, out = run_pymda(["-c", str(cfg), "-n", "-d", test_user.name], MESSAGE, env=env)
    assert code == EX_OK, out
    names = imported_modules(test_user, ["-c", str(cfg), "-f", SENDER], MESSAGE, env)
    assert "pymda.config_keys" not in names
    names = imported_modules(test_user, ["-c", str(cfg), "-o", "lock_timeout=5", "-f", SENDER],
                             MESSAGE, env)
    assert "pymda.config_keys" in names  # the measurement itself works
    assert len(maildir_files(test_user.path("Maildir"))) == 3


@needs_root
@pytest.mark.parametrize("rcpt", ["", "<>", "  "])
def test_empty_recipient_is_64(test_user, rcpt):
    before = snapshot(test_user.home)
    result = run_pymda(["-f", SENDER, "-a", rcpt, "--mailbox", "Maildir/"], MESSAGE,
                       user=test_user)
    assert_failure(result, EX_USAGE, USAGE)
    assert snapshot(test_user.home) == before


@needs_root
def test_verbose_log_line_after_the_status_and_with_the_smtp_client(test_user):
    """One postfix-style line per target; CLIENT_* only in the log (SPEC 1)."""
    env = {"CLIENT_ADDRESS": "192.0.2.7", "CLIENT_HOSTNAME": "mx.example.net"}
    code, out = run_pymda(["-v", "-f", SENDER, "--mailbox", "Maildir/"], MESSAGE,
                          user=test_user, env=env)
    assert code == EX_OK
    line = out.decode()
    assert line.count("\n") == 1, line
    assert line.startswith(f"to=<{test_user.name}@"), line
    assert f"user={test_user.name}, client=mx.example.net[192.0.2.7], folder=INBOX," in line
    assert "msgid=<engine-test@example.org>, status=sent" in line
    only_message(test_user.path("Maildir"))
    # On failure the status line still comes first.
    code, out = run_pymda(["-v", "-f", SENDER, "-o", "message_size_limit=10",
                           "--mailbox", "Maildir/"], MESSAGE, user=test_user, env=env)
    assert code == EX_NOPERM
    assert out.startswith(b"5.2.3 ") and out.count(b"\n") == 1, out


# --- early exits still read the input (SPEC 1.1; issue 8 items 8 and 9) ----------------


def blocking_writer_run(args, size=1 << 20, user=None, env=None):
    """Run pymda with a writer that blocks while its pipe is not read:
    (Result, error the writer got or None)."""
    import threading

    from support.run import Result

    proc = subprocess.Popen(
        [str(paths.pymda_bin()), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=child_environment(user, env),
    )
    problem = []

    def write():
        try:
            proc.stdin.write(b"Subject: drained\n\n" + (b"x" * 1000 + b"\n") * (size // 1001))
            proc.stdin.close()
        except OSError as exc:
            problem.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with proc.stdout:
        out = proc.stdout.read()
    proc.wait(timeout=90)
    writer.join(90)
    assert not writer.is_alive(), "the writer is still blocked"
    return Result(proc.returncode, out), (problem[0] if problem else None)


@pytest.mark.parametrize("args, code, status, word", [
    (["-Z"], EX_USAGE, USAGE, b"-Z"),
    (["-d", "root", "extra"], EX_USAGE, USAGE, b"extra"),
    (["-d", "root", "-c", "/nonexistent/pymda.toml"], EX_TEMPFAIL, CONFIG, b"/nonexistent"),
    (["-d", "root", "-o", "lock_timeout=nan"], EX_TEMPFAIL, CONFIG, b"lock_timeout"),
    (["-d", "root", "-o", "mailbox=[1,"], EX_TEMPFAIL, CONFIG, b"mailbox"),
    (["-d", "root", "-c", "/dev/zero"], EX_TEMPFAIL, CONFIG, b"/dev/zero"),
    (["-d", "root", "-m", "\udcff\udcfeX"], EX_USAGE, USAGE, b"\\xff\\xfeX"),
])
def test_early_exit_reads_all_input(pymda_bin, args, code, status, word):
    result, problem = blocking_writer_run(args)
    assert problem is None, f"the writer got {problem!r}: input not drained"
    assert_failure(result, code, status)
    assert word in result.output


def test_non_utf8_folder_is_a_readable_usage_error(pymda_bin):
    result = run_pymda(["-d", "root", "-n", "-m", "Work\udcff"], MESSAGE)
    assert_failure(result, EX_USAGE, USAGE)
    assert b"not valid UTF-8: Work\\xff" in result.output
    assert b"codec" not in result.output


def test_a_fifo_config_does_not_hang(pymda_bin, tmp_path):
    fifo = tmp_path / "pymda.toml"
    os.mkfifo(fifo)
    result = run_pymda(["-d", "root", "-n", "-c", str(fifo)], MESSAGE, timeout=30)
    assert_failure(result, EX_TEMPFAIL, CONFIG)
    assert b"regular file" in result.output


def test_drain_is_bounded_by_size_and_time():
    import time

    r, w = os.pipe()
    try:
        os.write(w, b"x" * 5000)
        cli.drain_input(r, cap=1000, seconds=30)  # returns at the cap, writer still open
        assert len(os.read(r, 10000)) == 4000
        started = time.monotonic()
        cli.drain_input(r, seconds=0.5)  # nothing more comes, no EOF: gives up
        assert time.monotonic() - started < 10
    finally:
        os.close(r)
        os.close(w)


@needs_root
@pytest.mark.parametrize("args, env, code, status", [
    (["-d", "ptnosuchuser0"], None, EX_NOUSER, NO_USER),
    # the spool cannot be created after the first MiB: the rest is drained
    (["-d", "ptnosuchuser0"], {"TMPDIR": "/nonexistent/tmp"}, EX_TEMPFAIL, TEMP),
])
def test_late_failures_read_all_input_too(pymda_bin, args, env, code, status):
    result, problem = blocking_writer_run(args, size=3 << 20, env=env)
    assert problem is None, f"the writer got {problem!r}: input not drained"
    assert_failure(result, code, status)
