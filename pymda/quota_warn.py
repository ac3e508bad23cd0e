"""Quota warnings (SPEC 1.6, issue 14): one message when usage crosses a threshold.

Contract: ``after_delivery(target, hold, size, envelope, cfg, log)`` runs
in deliver.py right after a message of ``size`` bytes went to a Maildir or
mbox ``target`` with a limit, while the quota Hold from quota.check is
still held.  For every resource with a limit (``storage``; ``messages``,
Maildir only) and every percentage in ``quota_warnings`` it compares the
usage before (the Hold) and after the message:

- usage after below the threshold: the threshold is re-armed;
- usage crossed it upwards (before < threshold <= after) and it is armed:
  it is marked, and one warning message goes to the user's INBOX (the
  highest threshold crossed, per resource);
- already above it: marked, no warning (no "crossing" was seen).

The marks live in the per-user state file (state.py, table
``quota_marks``); marking is one SQLite transaction that re-reads the
marks (``Ledger.quota_marks``: BEGIN IMMEDIATE), so two concurrent
deliveries that both see the crossing send one warning.

The warning is written to INBOX - the Maildir root, or the mbox that was
counted - past the quota (no check) and accounted in ``maildirsize``
like any message, under the same Hold.  Headers: From MAILER-DAEMON, To
the recipient, Subject, Date, Message-ID, Auto-Submitted:
auto-generated, MIME-Version, Content-Type text/plain UTF-8.  Body: the
file ``quota_warning_message`` (read as the user; unreadable -> the
built-in text, logged) with ``$percent $used $limit $resource $user``
expanded (``string.Template``, unknown ``$names`` left as they are).

Raises DeliveryError for a failure; deliver.py logs it and goes on (the
message itself is delivered; a retry would duplicate it).

PERFORMANCE: imported only when ``quota_warnings`` is set and a limit
applies; it opens the state file (sqlite3) on each such delivery.
"""

import time

from pymda import fastos as os

BUILTIN_TEXT = """\
Your mailbox has reached $percent% of its $resource quota:
$used of $limit are in use ($resource: bytes for storage, a count for messages).

When the mailbox is full, new mail to you will be refused.  Please delete
mail you do not need (and empty the Trash folder).
"""


def crossings(thresholds, before, after, limit):
    """(above, crossed): thresholds at or below ``after``, and those of them
    that ``before`` was under.  ``x`` is at threshold ``t`` when
    ``x * 100 >= t * limit``."""
    above = [t for t in thresholds if after * 100 >= t * limit]
    crossed = [t for t in above if before * 100 < t * limit]
    return above, crossed


def after_delivery(target, hold, size, envelope, cfg, log):
    """See the module docstring; returns the thresholds warned about."""
    resources = []
    if hold.storage:
        resources.append(("storage", hold.used_bytes, hold.used_bytes + size, hold.storage))
    if hold.messages and hold.used_count is not None:
        resources.append(("messages", hold.used_count, hold.used_count + 1, hold.messages))
    if not resources:
        return []
    from pymda import state

    ledger = state.Ledger.open(state.state_path(cfg, target.identity), timeout=cfg.lock_timeout)
    sent = []
    try:
        for resource, before, after, limit in resources:
            above, crossed = crossings(cfg.quota_warnings, before, after, limit)
            new = ledger.quota_marks(resource, above, cfg.quota_warnings)
            warn = [t for t in crossed if t in new]
            if warn:
                percent = max(warn)
                write_warning(target, cfg, log, envelope, {
                    "percent": str(percent), "used": str(after), "limit": str(limit),
                    "resource": resource, "user": target.identity.name,
                })
                sent.append((resource, percent))
    finally:
        ledger.close()
    return sent


def format_warning(values, recipient, text, now=None):
    """The warning message's bytes (header + body, LF line ends)."""
    import email.utils
    from string import Template

    host = os.uname().nodename
    now = time.time() if now is None else now
    body = Template(text).safe_substitute(values)
    if not body.endswith("\n"):
        body += "\n"
    msgid = f"<{time.time_ns()}.{os.getpid()}.{os.urandom(4).hex()}.quota@{host}>"
    header = (
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>\n"
        f"To: <{recipient}>\n"
        f"Subject: Mailbox quota warning: {values['percent']}% of {values['resource']} used\n"
        f"Date: {email.utils.formatdate(now, localtime=True)}\n"
        f"Message-ID: {msgid}\n"
        "Auto-Submitted: auto-generated\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
    )
    return (header + "\n" + body.replace("\r\n", "\n")).encode("utf-8", "surrogateescape")


def _text(cfg, log):
    path = cfg.quota_warning_message
    if not path:
        return BUILTIN_TEXT
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        return data.decode("utf-8", "surrogateescape")
    except OSError as exc:
        log.warning(f"quota_warning_message {path}: {exc.strerror}; using the built-in text")
        return BUILTIN_TEXT


def write_warning(target, cfg, log, envelope, values):
    """Write one warning into the target's INBOX (no quota check)."""
    from pymda import message as message_mod

    recipient = envelope.recipient or target.identity.name
    msg = message_mod.from_bytes(format_warning(values, recipient, _text(cfg, log)))
    prefix = b"Return-Path: <>\n"
    if target.kind == "maildir":
        from pymda import maildir

        maildir.deliver(target.path, msg, prefix)
        maildir.account(target.path, len(prefix) + msg.size)
    else:
        from pymda import mbox

        mbox.append(target.path, msg, prefix, "", cfg,
                    target.identity.uid, log, spool_dir=target.spool)
