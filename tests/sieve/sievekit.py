"""Helpers for the Sieve unit tests: compile and run a script on a message."""

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
