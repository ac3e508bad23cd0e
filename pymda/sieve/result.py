"""The result of a Sieve run: an ordered list of frozen action records.

Actions (every record carries ``line``, the script line that made it):

- ``Keep(flags)`` — store into the implicit-keep target (SPEC 6: the
  mailbox pymda would have used without a script); ``implicit`` is True
  for the implicit keep added by ``Outcome.final_actions()``.
- ``FileInto(folder, flags, copy, create)`` — store into ``folder`` as
  written in the script (UTF-8, ``/`` or ``.`` separators; mapping to a
  Maildir++ name is the delivery's job).
- ``Discard()`` — nothing stored (cancels the implicit keep only).
- ``Redirect(address, copy)``, ``Vacation(...)``, ``Reject(reason,
  extended)`` — parsed and put in the result now; sent/refused by the
  delivery in issue 11.

``flags`` is a tuple of IMAP flags/keywords (imap4flags), ``()`` for none.

``Outcome`` is what ``pymda.sieve.run.evaluate`` returns: ``actions`` (the
explicit actions, in order, duplicates merged), ``implicit_keep`` (bool),
``implicit_flags``, ``error`` (a SieveError or None: when set, actions is
empty and implicit_keep True — the whole result was dropped, RFC 5228
2.10.6 and SPEC 6), ``warnings`` (list of ``FILE:LINE: text`` strings
worth logging, e.g. a fileinto into a folder pymda refused later),
``marks`` (``(memory key, expiry)`` pairs of the ``duplicate`` tests, to
write into the user's memory once the message is delivered).

The Sieve error types (``SieveError``, ``SieveCompileError``,
``SieveRuntimeError``) are defined here too (see the comment below).

Records are pure values; nothing here does I/O.
"""

from pymda.record import Record


# -- errors ------------------------------------------------------------------
#
# ``SieveCompileError`` carries ``errors``: a list of ``(file, line,
# message)``; str() is the first as ``FILE:LINE: message``.  A script that
# raises it does not run (RFC 5228 2.10.6).  ``SieveRuntimeError`` (one
# error, with the line of the command or test that failed) drops the
# whole result: the caller falls back to the implicit keep (SPEC 6).
# Both are plain Exceptions, not DeliveryErrors: a broken script never
# fails a delivery.  They live here, not in a module of their own, to
# spare the delivery path one import.

class SieveError(Exception):
    def __init__(self, message, filename="script", line=0):
        super().__init__(message)
        self.errors = [(filename, line, message)]

    @property
    def filename(self):
        return self.errors[0][0]

    @property
    def line(self):
        return self.errors[0][1]

    @property
    def message(self):
        return self.errors[0][2]

    def lines(self):
        """Every error as ``FILE:LINE: message``."""
        return ["%s:%d: %s" % e for e in self.errors]

    def __str__(self):
        return self.lines()[0]


class SieveCompileError(SieveError):
    pass


class SieveRuntimeError(SieveError):
    pass


class Keep(Record):
    __slots__ = ("flags", "line", "implicit")
    _defaults = {"flags": (), "line": 0, "implicit": False}
    kind = "keep"


class FileInto(Record):
    __slots__ = ("folder", "flags", "copy", "create", "line")
    _defaults = {"flags": (), "copy": False, "create": False, "line": 0}
    kind = "fileinto"


class Discard(Record):
    __slots__ = ("line",)
    _defaults = {"line": 0}
    kind = "discard"


class Redirect(Record):
    __slots__ = ("address", "copy", "line")
    _defaults = {"copy": False, "line": 0}
    kind = "redirect"


class Vacation(Record):
    """RFC 5230 vacation: ``period`` in seconds (None = the configured
    default; clamping is the sender's job), ``handle`` the tracking handle
    (``:handle``, else built from the unexpanded arguments, RFC 5230 4.2),
    ``addresses`` a tuple, ``subject``/``from_addr`` None when absent."""

    __slots__ = ("reason", "subject", "from_addr", "addresses", "period",
                 "mime", "handle", "line")
    _defaults = {"subject": None, "from_addr": None, "addresses": (),
                 "period": None, "mime": False, "handle": "", "line": 0}
    kind = "vacation"


class Reject(Record):
    __slots__ = ("reason", "extended", "line")
    _defaults = {"extended": False, "line": 0}
    kind = "reject"


class Outcome(Record):
    __slots__ = ("actions", "implicit_keep", "implicit_flags", "error",
                 "warnings", "script", "marks")
    _defaults = {"actions": (), "implicit_keep": True, "implicit_flags": (),
                 "error": None, "warnings": (), "script": None, "marks": ()}

    def final_actions(self):
        """The actions to carry out: explicit ones plus the implicit keep."""
        if self.implicit_keep:
            return self.actions + (Keep(flags=self.implicit_flags, implicit=True),)
        return self.actions


def format_action(action):
    """One line of ``pymda-admin sieve test`` output."""
    flags = " flags=%s" % " ".join(action.flags) if getattr(action, "flags", ()) else ""
    k = action.kind
    if k == "keep":
        return "keep%s%s" % (" (implicit)" if action.implicit else "", flags)
    if k == "fileinto":
        extra = "".join(t for t, on in ((" :copy", action.copy),
                                        (" :create", action.create)) if on)
        return "fileinto %r%s%s" % (action.folder, extra, flags)
    if k == "discard":
        return "discard"
    if k == "redirect":
        return "redirect %s%s" % (action.address, " :copy" if action.copy else "")
    if k == "vacation":
        return "vacation reason=%r subject=%r" % (action.reason, action.subject)
    if k == "reject":
        return "%s %r" % ("ereject" if action.extended else "reject", action.reason)
    return k
