"""pymda.deliver in-process (no root needed): Targets + message -> bytes on
disk and one DeliveryResult.  The writers are the real ones, into
``tmp_path`` as the running uid; assertions are on the bytes written, the
result's status / exit code / LMTP reply and the log lines.
"""

import pytest

from pymda import deliver, resolve
from pymda.errors import PermFail, TempFail
from support.engine import (  # noqa: F401 - cfg, me, tmp_path: fixtures
    MESSAGE, cfg, collecting_log, config_file, envelope, maildir_new, me, message_of, own_user,
    tmp_path,
)

TRACE = b"Return-Path: <sender@example.net>\nDelivered-To: alice@example.org\n"


def mailbox(cfg, me, folder="INBOX"):
    return resolve.mailbox_target(cfg, envelope(), me, folder)


def mbox_target(me, name="copy.mbox", source=".forward line 1"):
    return resolve.Target(kind="mbox", path=f"{me.home}/{name}", source=source, identity=me)


def test_maildir_gets_trace_headers_and_the_exact_message(cfg, me):
    result = deliver.run([mailbox(cfg, me)], message_of(), envelope(), cfg, collecting_log())
    assert (result.error, result.exit, result.line) == (None, 0, None)
    (name, data), = maildir_new(f"{me.home}/Maildir").items()
    assert data == TRACE + MESSAGE
    assert f",S={len(data)}" in name
    assert result.results[0].where.endswith(name)


def test_mbox_gets_a_from_line_and_an_empty_line(cfg, me):
    result = deliver.run([mbox_target(me)], message_of(), envelope(), cfg, collecting_log())
    assert result.error is None
    with open(f"{me.home}/copy.mbox", "rb") as f:
        data = f.read()
    first, rest = data.split(b"\n", 1)
    assert first.startswith(b"From sender@example.net  ")
    assert rest == TRACE + MESSAGE + b"\n"


def test_the_same_target_is_written_once(cfg, me):
    target = mailbox(cfg, me)
    result = deliver.run([target, target.replace(source=".forward line 2")], message_of(),
                         envelope(), cfg, collecting_log())
    assert result.error is None and len(result.results) == 1
    assert len(maildir_new(f"{me.home}/Maildir")) == 1


def test_a_refused_target_fails_and_the_others_are_written(cfg, me):
    refused = mbox_target(me, "refused.mbox").replace(error=PermFail("not allowed", "5.7.1"))
    log = collecting_log()
    result = deliver.run([refused, mailbox(cfg, me)], message_of(), envelope(), cfg, log)
    assert (result.error.status, result.exit) == ("5.7.1", 77)
    assert result.line == "5.7.1 not allowed"
    assert result.lmtp_reply() == "550 5.7.1 not allowed"
    assert [r.ok for r in result.results] == [False, True]
    assert len(maildir_new(f"{me.home}/Maildir")) == 1
    assert ["status=bounced" in line for line in log.lines] == [True, False]


def test_the_first_temporary_failure_wins(cfg, me):
    refused = mbox_target(me, "refused.mbox").replace(error=PermFail("no", "5.7.1"))
    deferred = mbox_target(me, "deferred.mbox").replace(error=TempFail("later", "4.2.0"))
    result = deliver.run([refused, deferred], message_of(), envelope(), cfg, collecting_log())
    assert (result.error.status, result.exit) == ("4.2.0", 75)
    assert result.lmtp_reply() == "450 4.2.0 later"


def test_run_does_not_check_loops(cfg, me):
    """The loop check is the pipeline's (recipient.deliver), once."""
    looped = message_of(b"X: 1\nDelivered-To: alice@example.org\n" + MESSAGE)
    with pytest.raises(PermFail):
        deliver.check_loop(looped, envelope())
    result = deliver.run([mailbox(cfg, me)], looped, envelope(), cfg, collecting_log())
    assert result.error is None


@pytest.mark.parametrize("leading, header, ours, loops", [
    (b"", b"", True, False),
    (b"Delivered-To: alice@example.org\n", b"", True, False),
    (b"Delivered-To: alice@example.org\n", b"", False, True),
    (b"Delivered-To: ALICE@example.org\n", b"", True, False),
    (b"", b"Delivered-To: <alice@example.org>\n", True, True),
    (b"Delivered-To: alice@example.org\n", b"Delivered-To: alice@example.org\n", True, True),
    (b"", b"Delivered-To: bob@example.org\n", True, False),
])
def test_check_loop(leading, header, ours, loops):
    message = message_of(leading + b"Subject: x\n" + header + b"\nbody\n")
    if loops:
        with pytest.raises(PermFail) as info:
            deliver.check_loop(message, envelope(), leading_is_ours=ours)
        assert info.value.status == "5.4.6"
    else:
        deliver.check_loop(message, envelope(), leading_is_ours=ours)


@pytest.mark.parametrize("status, code", [
    ("4.2.2", "452"), ("4.3.1", "452"), ("4.2.0", "450"), ("4.3.0", "451"),
    ("5.2.2", "552"), ("5.2.3", "552"), ("5.3.4", "552"), ("5.1.1", "550"),
    ("5.2.1", "550"), ("5.7.1", "550"), ("5.4.6", "554"), ("5.6.0", "554"),
])
def test_reply_code(status, code):
    assert deliver.reply_code(status) == code


def test_quota_refuses_before_writing(tmp_path):
    cfg = config_file(tmp_path, 'mailbox = "Maildir/"', "quota_messages = 1")
    me = own_user(cfg)
    target = resolve.mailbox_target(cfg, envelope(), me)
    assert deliver.run([target], message_of(), envelope(), cfg, collecting_log()).error is None
    result = deliver.run([target], message_of(), envelope(), cfg, collecting_log())
    assert (result.error.status, result.exit) == ("5.2.2", 77)
    assert len(maildir_new(f"{me.home}/Maildir")) == 1
