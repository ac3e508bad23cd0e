"""The Sieve step of the per-recipient pipeline (SPEC 6): a script's
result -> resolve entries, and its sends after the stores.

Called by pymda.recipient only (after the switch to the user, and only
when ``recipient.sieve_may_run`` saw a script or admin scripts: a plain
delivery never imports this package)::

    step = run(cfg, log, message, envelope, identity, folder, mailbox, send=True)
    step is None             # no script after all: deliver as before
    step.reject              # PermFail 5.7.1 <reason> (reject/ereject) or None
    step.items               # entries for resolve.plan(items=...): kinds
                             # "mailbox" (keep) and "folder" (fileinto),
                             # with ``flags`` (Maildir info) and ``create``
    step.discarded           # the script stored nothing (discard)
    step.warnings            # resolve.plan appends fileinto fallbacks here
    step.plan_entries()      # Targets "redirect"/"vacation" for pymda -n
    step.report()            # warnings -> syslog and the user's sieve_log
    step.needs_ledger        # there is something to send
    step.after(done, record) # deliver.run, once every store succeeded:
                             # sends + duplicate marks; DeliveryError|None
    step.abandon()           # deliver.run, when a store failed

NEVER TWICE: ``after`` gets the completed-target ledger's ``done`` /
``record`` (deliver.run opens the ledger whenever there is something to
send, also for a single mailbox target); each send has its own key
(``sieve-redirect:ADDR``, ``sieve-vacation:ADDR``), recorded right after
sendmail accepted it, so the MTA's retry after a temporary failure sends
only what is still owed.  A redirect that sendmail refuses
temporarily is the delivery's error (exit 75: the MTA retries, the
ledger skips what was stored and sent); refused for good, it bounces the
message when the script stored no copy, else it is only logged.  A
vacation reply that fails is only logged (SPEC 6).  Without this a
redirect that failed would lose the message.  ``send=False`` (pymda -n, redeliver
--sieve): nothing is sent and no mark is written.

Errors of the script never raise: evaluate already turned them into the
implicit keep; they are in ``warnings`` with FILE:LINE.

LIMITATIONS: imap4flags keywords (``$label1``...) have no Maildir info
letter without dovecot's ``dovecot-keywords`` file: they are dropped with
a log line; flags on an mbox target are not written (no Status header).
A message spooled to a file (over 1 MiB) is read into memory once when
a script redirects it, answers it or runs a body test.
"""

from pymda.record import Record

# IMAP system flags -> Maildir info letters (sorted when written)
_MAILDIR_FLAGS = {"\\seen": "S", "\\answered": "R", "\\flagged": "F",
                  "\\deleted": "T", "\\draft": "D"}


class Entry(Record):
    """One Sieve store, dotforward.Item-shaped for resolve.targets_for_items."""

    __slots__ = ("kind", "value", "source", "error", "flags", "create")
    _defaults = {"error": None, "flags": None, "create": False, "value": None}


def maildir_flags(flags, dropped=None):
    """Maildir info letters for IMAP ``flags`` ("" -> None: new/)."""
    letters = set()
    for flag in flags:
        letter = _MAILDIR_FLAGS.get(flag.lower())
        if letter:
            letters.add(letter)
        elif dropped is not None and flag.lower() != "\\recent":
            dropped.append(flag)
    return "".join(sorted(letters)) or None


def _header_block(message):
    head = message.head()
    if head.startswith(b"\n"):
        return b""
    end = head.find(b"\n\n")
    return head if end < 0 else head[:end + 2]


def _whole(message):
    if message.data is not None:
        return message.data
    return b"".join(message.chunks())


class _Recorder:
    """A sender that remembers why each recipient's send failed."""

    def __init__(self, sender):
        self.sender = sender
        self.failed = {}

    def send(self, envelope_from, recipient, data):
        try:
            self.sender.send(envelope_from, recipient, data)
        except Exception as exc:
            self.failed[recipient] = exc
            raise


class Step:
    __slots__ = ("session", "log", "send", "items", "reject", "discarded",
                 "warnings", "script", "identity")

    @property
    def needs_ledger(self):
        return bool(self.send and self.session.sends)

    def source(self, line):
        return "sieve %s line %d" % (self.script, line)

    def plan_entries(self):
        """What would be sent, as plan Targets (never delivered)."""
        from pymda.resolve import Target

        return [Target(kind=o.kind, address=o.recipient, source=self.source(o.line),
                       identity=self.identity)
                for o in self.session.sends]

    def report(self, user_log=True):
        """Warnings and script errors to syslog and (``user_log``) the
        user's sieve_log."""
        session = self.session
        for line in session.logs:
            self.log.warning("sieve: " + line)
        extra = [w for w in self.warnings if w not in session.logs]
        for line in extra:
            self.log.warning("sieve: " + line)
        if not user_log:
            return
        session.user_lines = list(session.user_lines) + extra
        why = session.write_user_log()
        if why:
            self.log.warning("sieve: " + why)

    def abandon(self):
        memory = self.session.memory
        if memory is not None:
            memory.close()

    def after(self, done=None, record=None):
        """Sends and duplicate marks; a DeliveryError when a redirect failed."""
        from pymda.errors import DeliveryError, TempFail

        session = self.session
        sender = None
        if self.send and session.sends:
            from pymda.sieve.send import SendmailSender

            sender = _Recorder(SendmailSender(session.cfg, self.identity.name,
                                              self.identity.home,
                                              session.envelope.recipient))
        skipped = set()
        unchecked = {}          # ledger key -> why the ledger could not say
        if done is not None:
            def was_done(key):
                try:
                    if done(key):
                        skipped.add(key)
                        return True
                except DeliveryError as exc:    # not sent (never twice): retry
                    unchecked[key] = exc
                    raise
                return False
        else:
            was_done = None
        logs = session.finish(send=self.send, done=was_done, record=record,
                              sender=sender)
        for line in logs:
            self.log.warning("sieve: " + line)
        for out in session.sends if self.send else ():
            if out.ledger_key in skipped:
                self.log.info("sieve: %s to <%s>: skipped (sent by an earlier attempt)"
                              % (out.kind, out.recipient))
            elif out.ledger_key in unchecked or out.recipient in sender.failed:
                exc = unchecked.get(out.ledger_key) or sender.failed[out.recipient]
                if out.kind != "redirect":
                    continue
                if not isinstance(exc, DeliveryError):
                    exc = TempFail("redirect to %s failed: %s" % (out.recipient, exc))
                if exc.temporary or not self.items:
                    return exc
                # refused for good, but the message is stored: logged only
            else:
                self.log.info("sieve: %s to <%s>: sent (%s)"
                              % (out.kind, out.recipient, self.source(out.line)))
        return None


def run(cfg, log, message, envelope, identity, main, send=True):
    """The Step for one delivery (see the module docstring), or None.

    ``main``: the Target the message goes to without a script (its folder
    is the implicit-keep folder the script sees).
    """
    from pymda.sieve import delivery
    from pymda.sieve.mail import MailView

    def mailbox_exists(name):
        from pymda import resolve
        from pymda.address import check_folder, is_inbox

        if is_inbox(name):
            return True
        folder = name.replace(".", "/") if main.kind == "maildir" else name
        if check_folder(folder) is None:
            return False
        try:
            target = resolve.mailbox_target(cfg, envelope, identity, folder)
        except ValueError:
            return False
        return resolve.target_exists(target)

    cached = []

    def read_message():
        if not cached:
            cached.append(_whole(message))
        return cached[0]

    view = MailView(_header_block(message), message.size, read_message)

    # the bytes a redirect copies: read only then (or for a body test)
    ignored = []
    session = delivery.evaluate(cfg, identity, envelope, read_message,
                                view, keep_folder=main.folder,
                                mailbox_exists=mailbox_exists, warnings=ignored)
    if session is None:
        for line in ignored:        # untrusted scripts: syslog only
            log.warning("sieve: " + line)
        return None
    step = Step()
    step.session, step.log, step.send, step.identity = session, log, send, identity
    step.script = session.outcome.script or "script"
    step.warnings = []
    step.reject = None
    if session.reject is not None and not session.stores:
        from pymda.errors import PermFail

        reason = session.reject.reason or "rejected"
        step.reject = PermFail(" ".join(reason.split()) or "rejected", "5.7.1")
    dropped = []
    items = []
    for action in session.stores:
        flags = maildir_flags(action.flags, dropped)
        if action.kind == "keep":
            items.append(Entry(kind="mailbox", source=step.source(action.line),
                               flags=flags))
        else:
            items.append(Entry(kind="folder", value=action.folder,
                               source=step.source(action.line), flags=flags,
                               create=action.create or cfg.sieve_fileinto_create))
    if dropped:
        log.info("sieve: %s: keywords not stored (no Maildir letter): %s"
                 % (step.script, " ".join(sorted(set(dropped)))))
    step.items = items
    step.discarded = not items and step.reject is None
    return step

