"""Helpers for the Sieve unit tests: compile and run a script on a message."""

import os
import shutil
import tempfile

from pymda.sieve import interp, validate
from pymda.sieve.mail import MailView

MESSAGE = (b"Return-Path: <alice@example.com>\r\n"
           b"From: Alice Example <alice@example.com>\r\n"
           b"To: Bob <bob+lists@example.net>, carol@example.org\r\n"
           b"Subject: Hello world\r\n"
           b"X-Spam-Score: 7\r\n"
           b"\r\n"
           b"Body text.\r\n")


def view(data=MESSAGE):
    """MailView of ``data`` (CRLF or LF line ends)."""
    ends = [(k + len(sep)) for sep in (b"\r\n\r\n", b"\n\n")
            for k in (data.find(sep),) if k >= 0]
    k = min(ends) if ends else len(data)
    return MailView(data[:k], len(data), lambda: data)


def run(script, data=MESSAGE, env=None, opts=None, extensions=None):
    """Outcome of ``script`` (str) on ``data``."""
    compiled = validate.compile_script(script, "test.sieve", extensions)
    env = env or interp.Environment(sender="alice@example.com",
                                    recipient="bob+lists@example.net")
    return interp.execute(compiled, view(data), env, opts, "test.sieve")


def kinds(outcome):
    return [(a.kind, getattr(a, "folder", None)) for a in outcome.final_actions()]


# -- the real peer (Pigeonhole's sieve-test, run as nobody) ----------------

SIEVE_TEST = shutil.which("sieve-test")


def sieve_test_argv(home, *options):
    """argv running sieve-test as nobody with its mail store in ``home``."""
    return ["runuser", "-u", "nobody", "--", SIEVE_TEST, *options, "-O",
            "-o", "mail_location=maildir:%s/mail" % home, "-o", "mail_home=%s" % home,
            "-o", "postmaster_address=postmaster@example.org"]


def peer_workdir():
    """Module fixture body: a temp directory nobody can read (and write)."""
    d = tempfile.mkdtemp(prefix="pymda-sievepeer-", dir="/tmp")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def peer_script(workdir, name, text):
    """``text`` written as ``workdir/name.sieve`` (readable by nobody)."""
    script = os.path.join(workdir, name + ".sieve")
    with open(script, "w") as f:
        f.write(text)
    os.chmod(script, 0o644)
    return script


def corpus_sample(step):
    """Every ``step``-th message of the real corpus; skips when there is none."""
    import pytest

    from support import paths

    messages = [str(p) for p in paths.corpus_messages()][::step]
    if not messages:
        pytest.skip("no corpus ($PYMDA_CORPUS)")
    return messages
