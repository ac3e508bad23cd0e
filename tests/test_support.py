"""Self-tests of tests/support: the mbox splitter and SPEC 1.1 normaliser."""

from support import mboxfmt


def test_normalise_strips_from_line_crlf_and_adds_newline():
    raw = b"From a@b  Tue Nov 24 22:08:05 2026\r\nSubject: x\r\n\r\nbody"
    assert mboxfmt.normalise(raw) == b"Subject: x\n\nbody\n"


def test_expected_prepends_trace_headers():
    assert mboxfmt.expected(b"S: x\n\nb\n", "s@x", "r@y") == (
        b"Return-Path: <s@x>\nDelivered-To: r@y\nS: x\n\nb\n"
    )
    assert mboxfmt.expected(b"S: x\n\nb\n", "", "r@y").startswith(b"Return-Path: <>\n")


def test_split_mbox_round_trips_mboxrd_quoting():
    msgs = [b"S: 1\n\nFrom here\n>From there\n", b"S: 2\n\nbody\n\n"]
    data = b"".join(b"From x  Tue Nov 24 22:08:05 2026\n" + mboxfmt.quote(m) + b"\n" for m in msgs)
    parsed = mboxfmt.split_mbox(data)
    assert [m for _, m in parsed] == msgs
    assert all(f.startswith(b"From x ") for f, _ in parsed)


def test_split_mbox_rejects_missing_separator():
    import pytest

    with pytest.raises(ValueError):
        mboxfmt.split_mbox(b"From x  Tue Nov 24 22:08:05 2026\nS: 1\n\nb\n")


def test_postfix_environment_matches_postfix_facts():
    from support.run import postfix_environment

    class U:
        name, uid, home = "root", 0, "/root"

    env = postfix_environment(U, "root+work@localhost", "o_brien@example.org")
    assert env["RECIPIENT"] == "root+work@localhost"
    assert env["LOCAL"] == "root+work" and env["DOMAIN"] == "localhost"
    assert env["EXTENSION"] == "work"
    assert env["PATH"] == "/usr/bin:/bin" and env["MAIL_CONFIG"] == "/etc/postfix"
    assert "EXTENSION" not in postfix_environment(U, "root@localhost")
    assert set(env) == {"USER", "LOGNAME", "HOME", "SHELL", "SENDER", "RECIPIENT",
                        "ORIGINAL_RECIPIENT", "LOCAL", "DOMAIN", "EXTENSION", "PATH",
                        "LANG", "MAIL_CONFIG"}
