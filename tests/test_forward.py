"""pymda.forward.sendmail: re-injection through sendmail_command, with a real
stand-in sendmail program that records its argv and stdin."""

import json
import os
import textwrap
from pathlib import Path

import pytest

from pymda import config, message as msgmod
from pymda.forward import sendmail as forward
from pymda.errors import PermFail, TempFail
from pymda.resolve import Envelope, Target
from pymda.users import Identity

TEMP_STATUS = "4.3.0"
PERM_STATUS = "5.3.0"

FAKE_SENDMAIL = textwrap.dedent("""\
    #!/usr/bin/python3
    import json, os, sys
    here = os.path.dirname(os.path.abspath(__file__))
    data = sys.stdin.buffer.read()
    with open(os.path.join(here, "argv.json"), "w") as f:
        json.dump(sys.argv[1:], f)
    with open(os.path.join(here, "stdin"), "wb") as f:
        f.write(data)
    try:
        code, text = open(os.path.join(here, "result")).read().split(" ", 1)
    except FileNotFoundError:
        code, text = "0", ""
    if text.strip():
        print(text.strip())
    sys.exit(int(code))
""")

MESSAGE = b"Subject: fwd\nMessage-ID: <fwd@example.org>\n\nhello\nFrom me\n"


@pytest.fixture
def fake(tmp_path):
    prog = tmp_path / "sendmail"
    prog.write_text(FAKE_SENDMAIL)
    os.chmod(prog, 0o755)
    return tmp_path


def cfg(fake, *more):
    return config.load(
        None,
        [f'sendmail_command=["{fake}/sendmail", "-oi", "-f", "$sender"]',
         "command_timeout=20", *more],
        environ={},
    )


def envelope(sender="bob@example.net"):
    return Envelope(sender=sender, recipient="alice@example.org",
                    original_recipient="alice@example.org", user="alice", local="alice",
                    domain="example.org")


def target(address="carol@example.com"):
    ident = Identity(name="alice", uid=os.getuid(), gid=os.getgid(), home="/tmp")
    return Target(kind="forward", address=address, identity=ident, source=".forward line 1")


def send(fake, data=MESSAGE, env=None, address="carol@example.com", result=None, c=None):
    if result is not None:
        (fake / "result").write_text(result)
    forward.send(target(address), msgmod.from_bytes(data), env or envelope(),
                 c or cfg(fake))
    return json.loads((fake / "argv.json").read_text()), (fake / "stdin").read_bytes()


def test_argv_sender_and_address_after_double_dash(fake):
    argv, data = send(fake)
    assert argv == ["-oi", "-f", "bob@example.net", "--", "carol@example.com"]
    assert data == b"Delivered-To: alice@example.org\n" + MESSAGE


def test_null_sender(fake):
    argv, _ = send(fake, env=envelope(sender=""))
    assert argv == ["-oi", "-f", "", "--", "carol@example.com"]


def test_address_that_looks_like_an_option_stays_an_address(fake):
    argv, _ = send(fake, address="-oQ/tmp/x@example.com")
    assert argv[-2:] == ["--", "-oQ/tmp/x@example.com"]


def test_delivered_to_not_duplicated(fake):
    data = b"Return-Path: <bob@example.net>\nDelivered-To: alice@example.org\n" + MESSAGE
    _, got = send(fake, data=data)
    assert got == data


def test_exit_75_is_temporary(fake):
    with pytest.raises(TempFail) as info:
        send(fake, result="75 queue file write error")
    assert info.value.status == TEMP_STATUS
    assert "queue file write error" in info.value.text


def test_usage_error_is_permanent(fake):
    with pytest.raises(PermFail) as info:
        send(fake, result="64 bad option")
    assert info.value.status == PERM_STATUS
    assert "bad option" in info.value.text


def test_missing_sendmail_defers(tmp_path):
    c = config.load(None, ['sendmail_command=["/nonexistent/sendmail"]'], environ={})
    with pytest.raises(TempFail):
        forward.send(target(), msgmod.from_bytes(MESSAGE), envelope(), c)


def test_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    monkeypatch.setenv("MAIL_CONFIG", "/etc/postfix-test")
    monkeypatch.setenv("PYMDA_DEPTH", "2")
    assert forward.environment() == {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "MAIL_CONFIG": "/etc/postfix-test",
        "PYMDA_DEPTH": "2",
    }


def test_sendmail_argv_expands_templates_not_the_address():
    c = config.load(None, ['sendmail_command=["/s", "-f", "$sender", "-F", "$user"]'],
                    environ={})
    ident = Identity(name="alice", uid=1, gid=1, home="/h")
    assert forward.sendmail_argv(c, envelope(), "$sender@x", ident) == [
        "/s", "-f", "bob@example.net", "-F", "alice", "--", "$sender@x"
    ]


def test_stdin_streams_a_spooled_message(fake):
    big = MESSAGE + (b"z" * 999 + b"\n") * 3000  # over the in-memory spool size
    _, got = send(fake, data=big)
    assert got == b"Delivered-To: alice@example.org\n" + big
    assert Path(fake / "argv.json").exists()


def test_submit_bytes_expands_the_users_names_and_adds_no_header(fake):
    """Sieve's redirect/vacation path: $sender is the given envelope
    sender, $recipient the user's own address, $user/$home the user's;
    the envelope parts it has no envelope for are ''."""
    c = config.load(None, [f'sendmail_command=["{fake}/sendmail", "-f", "$sender", "-F",'
                           ' "$user:$home:$recipient:$local:$domain:$extension"]'],
                    environ={})
    forward.submit_bytes(c, "", "carol@example.net", MESSAGE, user="alice", home="/h",
                         user_address="alice@example.org")
    assert json.loads((fake / "argv.json").read_text()) == [
        "-f", "", "-F", "alice:/h:alice@example.org:::", "--", "carol@example.net"]
    assert (fake / "stdin").read_bytes() == MESSAGE
