"""Logging: one syslog line per target (facility mail, ident pymda).

Contract: ``Log(verbose)`` opens syslog; ``delivery(...)`` writes the
postfix-style line ``to=<rcpt>, user=alice, folder=work,
mailbox=/home/alice/Maildir/, size=1234, msgid=<...>, status=sent``;
``warning``/``info`` write free text.  With ``verbose`` the same lines are
kept and ``flush()`` writes them to stderr - after pymda's one status line,
so that line stays the first bytes of the output postfix reads.

The stdlib ``logging`` package is not used: it costs ~6 ms to import, and
syslog is all a one-shot MDA needs.  A missing /dev/log is not an error.
"""

import syslog

from pymda import fastos as os  # not os: ~1.2 ms of start-up


class Log:
    def __init__(self, verbose=False, ident="pymda", client=None):
        self.verbose = verbose
        self.client = client  # "host[addr]" of the SMTP client, for the log only
        self.lines = []
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_MAIL)

    def _emit(self, priority, text):
        text = text.replace("\n", " ").replace("\r", " ")
        try:
            syslog.syslog(priority, text)
        except (OSError, ValueError):
            pass
        if self.verbose:
            self.lines.append(text)

    def info(self, text):
        self._emit(syslog.LOG_INFO, text)

    def warning(self, text):
        self._emit(syslog.LOG_WARNING, "warning: " + text)

    def error(self, text):
        self._emit(syslog.LOG_ERR, "error: " + text)

    def delivery(self, target, envelope, message, status, reason=None):
        self.info(format_delivery(target, envelope, message, status, reason, self.client))

    def flush(self):
        if self.lines:
            data = ("\n".join(self.lines) + "\n").encode("utf-8", "surrogateescape")
            self.lines = []
            try:
                os.write(2, data)
            except OSError:
                pass


def format_delivery(target, envelope, message, status, reason=None, client=None):
    """The postfix-style log line for one target."""
    parts = [f"to=<{envelope.recipient}>"]
    if envelope.original_recipient and envelope.original_recipient != envelope.recipient:
        parts.append(f"orig_to=<{envelope.original_recipient}>")
    parts.append(f"user={envelope.user}")
    if client:
        parts.append(f"client={client}")
    if target.kind in ("maildir", "mbox"):
        parts.append(f"folder={target.folder}")
        parts.append(f"mailbox={target.path}")
    elif target.kind == "pipe":
        parts.append(f"command={target.command}")
    elif target.kind == "forward":
        parts.append(f"forward=<{target.address}>")
    if target.source != "mailbox":
        parts.append(f"source={target.source}")
    parts.append(f"size={message.size}")
    if message.message_id:
        parts.append(f"msgid={message.message_id}")
    text = f"status={status}"
    if reason:
        text += f" ({reason})"
    parts.append(text)
    return ", ".join(parts)
