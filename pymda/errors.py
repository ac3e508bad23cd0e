"""Delivery errors with their retry class, enhanced status code and exit code.

Contract: every failure the delivery path can produce is a DeliveryError.
The first digit of ``status`` decides retry (4) or bounce (5); ``exit``
is the sysexits code pymda ends with.  ``from_oserror`` is the one place
that maps an OSError to a status, the way postfix's local(8) does.

Postfix defers only on exit 75 (and 71) and bounces every other non-zero
status, so anything unexpected must become TempFail (4.3.0, exit 75).
"""

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_SOFTWARE = 70  # a process that must end at once (users._fatal, workers)

# Exit code for each permanent status (SPEC 1.9); any other 5.x.y is 77.
_PERM_EXIT = {
    "5.1.1": EX_NOUSER,
    "5.4.6": EX_DATAERR,
    "5.6.0": EX_DATAERR,
    "5.5.4": EX_USAGE,
}


class DeliveryError(Exception):
    """A failure with an RFC 3463 status.  str() is the one output line."""

    status = "4.3.0"

    def __init__(self, text, status=None):
        super().__init__(text)
        if status is not None:
            self.status = status
        self.text = text

    @property
    def temporary(self):
        return self.status.startswith("4")

    @property
    def exit(self):
        if self.temporary:
            return EX_TEMPFAIL
        return _PERM_EXIT.get(self.status, EX_NOPERM)

    def line(self):
        """The single output line: status first, no newlines inside."""
        text = " ".join(str(self.text).split())
        return f"{self.status} {text}"

    def __str__(self):
        return self.line()


class TempFail(DeliveryError):
    """Try again later (exit 75)."""

    status = "4.3.0"

    def __init__(self, text, status=None):
        if status is not None and not status.startswith("4"):
            raise ValueError(f"TempFail with permanent status {status}")
        super().__init__(text, status)


class PermFail(DeliveryError):
    """Bounce (exit per SPEC 1.9 table)."""

    status = "5.3.0"

    def __init__(self, text, status=None):
        if status is not None and not status.startswith("5"):
            raise ValueError(f"PermFail with temporary status {status}")
        super().__init__(text, status)


class UsageError(PermFail):
    """Command-line misuse: 5.5.4, exit 64."""

    status = "5.5.4"


class ConfigError(TempFail):
    """Bad or unreadable configuration: defers mail (4.3.5, exit 75)."""

    status = "4.3.5"


def _errno_status(code):
    """errno -> status, as postfix's local(8) and dovecot-lda classify them.
    (errno is imported here, on a failure, not by every delivery: ~0.05 ms.)"""
    import errno

    return {
        errno.EAGAIN: "4.2.0",
        errno.ESTALE: "4.2.0",
        # the mailbox is there but not the user's to write (SPEC 1.4's "mailbox
        # refused"): e.g. a Maildir symlinked into root's directory
        errno.EACCES: "4.2.0",
        errno.EPERM: "4.2.0",
        errno.ENOSPC: "4.3.0",
        errno.EDQUOT: "5.2.2",
        errno.EFBIG: "5.2.2",
    }.get(code, "4.3.0")


def from_oserror(exc, what):
    """Turn an OSError raised while doing ``what`` into a DeliveryError."""
    status = _errno_status(getattr(exc, "errno", None))
    reason = exc.strerror or str(exc)
    if status in ("5.2.2",):
        return PermFail(f"Mailbox is full: {what}: {reason}", status)
    return TempFail(f"{what}: {reason}", status)
