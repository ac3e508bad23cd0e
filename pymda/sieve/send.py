"""Mail that Sieve sends: vacation replies and redirected copies (SPEC 6).

Pure decisions and message bytes; the only I/O is ``SendmailSender.send``
(through pymda.forward.sendmail's sendmail runner) and the memory given by the
caller (pymda.sieve.memory).

Contract (what the delivery pipeline calls, after ``evaluate``)::

    plan = prepare(outcome.final_actions(), ctx)   # -> SendPlan
    # plan.outgoing: [Outgoing]   (kind, envelope_from, recipient, data,
    #                              mark, ledger_key, line)
    # plan.keep:     True when a redirect was refused as a loop and the
    #                message must be kept instead (implicit keep)
    # plan.logs:     ["FILE:LINE: why nothing was sent", ...]
    errors = send_all(plan.outgoing, sender, memory,
                      done=ledger_done, record=ledger_record)

``ctx`` is a ``Context``: ``env`` (pymda.sieve.interp.Environment: the
envelope), ``view`` (the MailView of the message as received),
``message`` (its bytes, without a From_ line), ``user_address`` (the
user's address: the final envelope recipient), ``settings``
(``Settings``, see ``settings_from_config``), ``memory`` (``seen``/
``mark``), ``now`` (UTC seconds), ``hostname``, ``script``.

Vacation (RFC 5230, RFC 6131, RFC 3834; SIEVE-NOTES 5): ``vacation_skip``
applies the never-reply rules in Pigeonhole's order and returns the
reason or None; the period is clamped by ``clamp_period``; the memory key
is ``vacation_key(sender, handle)`` and is marked by ``send_all`` only
after sendmail accepted the reply.  ``compose_vacation`` builds the reply
(envelope: null sender, recipient = the original envelope sender).

Redirect (RFC 5228 4.2): ``redirect_copy`` adds ``X-Sieve-Redirected-From:
<user address>`` and drops ``Return-Path`` (as Pigeonhole); the envelope
sender is the original one (null stays null) or, with
``sieve_redirect_envelope_from = "recipient"``, the user's address;
``redirect_loop`` recognises a message that already went through a
redirect for this user (pymda's or dovecot's: the same header), which is
kept instead (the header is compared with the user's address and the
final envelope recipient).

SECURITY: no text from the script or the message reaches a header
unchecked: CR, LF and NUL become spaces (``_clean``), non-ASCII text is
RFC 2047-encoded, ``:from`` must parse as one address (else the default
is used and it is logged), recipients never start with ``-`` and follow
``--`` on sendmail's command line (pymda.forward.sendmail.sendmail_argv).

LIMITATIONS: replies are always UTF-8 text/plain (or the ``:mime``
entity as written); no SMTPUTF8 recipients.
"""

from pymda.record import Record

SUBJECT_MAX = 256               # characters, the last one an ellipsis
LIST_HEADERS = ("list-id", "list-owner", "list-subscribe", "list-post",
                "list-unsubscribe", "list-help", "list-archive")
SYSTEM_LOCALPARTS = ("mailer-daemon", "listserv", "majordomo")
RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
REDIRECT_HEADER = "X-Sieve-Redirected-From"


class Settings(Record):
    """The sending rules' knobs (pymda config keys; the ones without a
    key keep Pigeonhole's defaults and exist for its test suite)."""

    __slots__ = ("min_period", "default_period", "max_period",
                 "redirect_envelope_from", "use_original_recipient",
                 "check_recipient", "send_from_recipient",
                 "to_header_ignore_envelope", "default_subject",
                 "subject_template", "user_email")
    _defaults = {"min_period": 86400, "default_period": 7 * 86400,
                 "max_period": 60 * 86400, "redirect_envelope_from": "sender",
                 "use_original_recipient": True, "check_recipient": True,
                 "send_from_recipient": False,
                 "to_header_ignore_envelope": False,
                 "default_subject": "", "subject_template": "",
                 "user_email": None}


def settings_from_config(cfg):
    return Settings(min_period=cfg.sieve_vacation_min_period,
                    default_period=cfg.sieve_vacation_default_period,
                    max_period=cfg.sieve_vacation_max_period,
                    redirect_envelope_from=cfg.sieve_redirect_envelope_from)


class Context(Record):
    __slots__ = ("env", "view", "message", "user_address", "settings",
                 "memory", "now", "hostname", "script")
    _defaults = {"settings": Settings(), "memory": None, "now": 0,
                 "hostname": "localhost", "script": "script"}


class Outgoing(Record):
    """One message to send.  ``mark``: ``(memory key, expiry)`` to record
    after a successful send (vacation), or None; ``ledger_key``: the
    completed-target key that keeps a retry from sending it again."""

    __slots__ = ("kind", "envelope_from", "recipient", "data", "mark",
                 "ledger_key", "line")
    _defaults = {"mark": None, "line": 0}


class SendPlan(Record):
    __slots__ = ("outgoing", "keep", "logs")


# -- helpers ---------------------------------------------------------------

def _clean(text):
    """Header-safe text: CR, LF, NUL and other controls become spaces."""
    if text is None:
        return None
    return "".join(" " if (c < " " and c != "\t") or c == "\x7f" else c
                   for c in text).strip()


def _addr_of(raw):
    """(Address, formatted) of the one mailbox in ``raw``, or (None, None)."""
    from pymda.sieve.mail import parse_address_list

    addrs = parse_address_list(raw)
    if len(addrs) != 1 or not addrs[0].valid or not addrs[0].domain:
        return None, None
    return addrs[0], addrs[0].all


def _same(a, b):
    return a is not None and b is not None and a.lower() == b.lower()


def encode_header_text(text):
    """RFC 2047: ``text`` unchanged when ASCII, else UTF-8 base64 encoded
    words (each at most 75 characters, split on whole characters),
    separated by folding white space."""
    if text.isascii():
        return text
    import binascii

    words = []
    chunk = ""
    for c in text:
        if len((chunk + c).encode("utf-8")) > 36:
            words.append(chunk)
            chunk = ""
        chunk += c
    if chunk:
        words.append(chunk)
    return "\n ".join(
        "=?utf-8?b?%s?=" % binascii.b2a_base64(w.encode("utf-8"), newline=False).decode()
        for w in words)


_ATEXT = "!#$%&'*+-/=?^_`{|}~"


def format_mailbox(address):
    """``"Name" <local@domain>`` (the name RFC 2047-encoded when needed),
    or ``<local@domain>``."""
    name = _clean(address.display_name)
    if not name:
        return "<%s>" % address.all
    if name.isascii():
        if all(c.isalnum() or c in _ATEXT for c in name):
            return "%s <%s>" % (name, address.all)
        return '"%s" <%s>' % (name.replace("\\", "\\\\").replace('"', '\\"'),
                              address.all)
    return "%s <%s>" % (encode_header_text(name), address.all)


def _fold(name, value):
    """``Name: value`` folded at spaces so that lines stay under 78
    characters where possible (never splitting a word)."""
    line = "%s: " % name
    out = []
    for word in value.split(" "):
        if len(line) + len(word) > 76 and line.strip() and not line.endswith(": "):
            out.append(line.rstrip(" "))
            line = " "
        line += word + " "
    out.append(line.rstrip(" "))
    return "\n".join(out) + "\n"


def _date(now):
    import time

    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now))


def _message_id(hostname, now):
    import binascii

    from pymda import fastos as os

    return "<%d.%s@%s>" % (int(now), binascii.hexlify(os.urandom(8)).decode(),
                           hostname)


# -- vacation --------------------------------------------------------------

def clamp_period(period, settings):
    """Seconds between two replies to one sender: ``period`` (``:days``
    ×86400 or ``:seconds``; None = the default) within [min, max].
    ``:days 0`` / ``:seconds 0`` get the minimum; with
    ``sieve_vacation_min_period = 0`` that is 0: always reply (RFC 6131 2)."""
    if period is None:
        period = settings.default_period
    return max(settings.min_period, min(settings.max_period, period))


def vacation_key(sender, handle):
    from pymda.sieve.memory import hashed_key

    return hashed_key("vac:", sender.lower(), handle)


def user_addresses(action, env, settings):
    """The addresses that count as the user's (never-reply rule 9)."""
    out = [env.recipient]
    if settings.use_original_recipient and env.orig_recipient:
        out.append(env.orig_recipient)
    if settings.user_email:
        out.append(settings.user_email)
    for raw in action.addresses:
        addr, text = _addr_of(raw)
        out.append(text if addr is not None else raw)
    return [a for a in out if a]


def vacation_skip(action, ctx):
    """None when a reply is due, else the reason (never-reply rules in
    Pigeonhole's order; SIEVE-NOTES 5).  Returns ``(reason, matched)``:
    ``matched`` is the user's address found in the recipient headers."""
    env, view, settings = ctx.env, ctx.view, ctx.settings
    sender = env.sender or ""
    if not env.recipient or not sender:
        return "the %s is null" % ("envelope sender" if not sender
                                   else "envelope recipient"), None
    mine = user_addresses(action, env, settings)
    if _same(sender, env.recipient) or any(_same(sender, a) for a in mine[1:]):
        return "the sender is one of the user's own addresses", None
    try:
        answered = ctx.memory is not None and ctx.memory.seen(
            vacation_key(sender, action.handle), ctx.now)
    except Exception as e:      # no memory, no reply: never answer twice
        return "cannot read the vacation memory: %s" % (
            getattr(e, "text", None) or e), None
    if answered:
        return "already answered %s within the period" % sender, None
    for name in LIST_HEADERS:
        if view.exists(name):
            return "mailing list message (%s)" % name, None
    for value in view.headers("auto-submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return "auto-submitted message", None
    for value in view.headers("precedence"):
        if value.strip().lower() in ("junk", "bulk", "list"):
            return "precedence %s" % value.strip().lower(), None
    for value in view.headers("x-auto-response-suppress"):
        words = {w.strip().lower() for w in value.split(",")}
        if words & {"all", "oof"}:
            return "X-Auto-Response-Suppress: %s" % value.strip(), None
    local = sender.rpartition("@")[0] if "@" in sender else sender
    low = local.lower()
    if (low in SYSTEM_LOCALPARTS or "-request" in low
            or low.startswith("owner-")):
        return "system address %s" % sender, None
    matched = None
    for name in RECIPIENT_HEADERS:
        for addr in view.addresses(name):
            if addr.valid and any(_same(addr.all, a) for a in mine):
                matched = addr.all
                break
        if matched:
            break
    if matched is None and settings.check_recipient:
        return "none of the user's addresses is a recipient of the message", None
    return None, matched


def _reply_to(view, sender, settings):
    """The To: of the reply: the header mailbox of the original sender
    (Sender, Resent-From, From; the one equal to the envelope sender),
    else ``<sender>``."""
    for name in ("sender", "resent-from", "from"):
        for addr in view.addresses(name):
            if addr.valid and addr.domain and (
                    settings.to_header_ignore_envelope or _same(addr.all, sender)):
                return format_mailbox(addr)
    return "<%s>" % _clean(sender)


def _subject(action, view, settings):
    if action.subject is not None:
        subject = _clean(action.subject)
    else:
        original = view.headers("subject")
        original = _clean(original[0]) if original else ""
        if original:
            template = settings.subject_template or "Auto: %$"
            subject = template.replace("%{subject}", original).replace(
                "%$", original)
        else:
            subject = settings.default_subject or "Automated reply"
    if len(subject) > SUBJECT_MAX:
        subject = subject[:SUBJECT_MAX - 1] + "\u2026"
    return subject


def _message_ids(view, name):
    out = []
    for value in view.raw_headers(name):
        for word in value.replace("\n", " ").replace("\t", " ").split():
            if word.startswith("<") and word.endswith(">") and "\r" not in word:
                out.append(word)
    return out


def compose_vacation(action, ctx, matched, logs):
    """The reply's bytes (LF line ends)."""
    env, view, settings = ctx.env, ctx.view, ctx.settings
    from_header = None
    if action.from_addr is not None:
        raw = _clean(action.from_addr)
        addr, _text = _addr_of(raw)
        if not (raw.endswith(">") or not any(c in raw for c in " \t")):
            addr = None     # text after the address: not one mailbox
        if addr is None:
            logs.append("%s:%d: vacation: invalid :from address, using the "
                        "default" % (ctx.script, action.line))
        else:
            # kept as written (as Pigeonhole, also when MIME-encoded) when
            # ASCII; else rebuilt with the name RFC 2047-encoded
            from_header = raw if raw.isascii() else format_mailbox(addr)
    if from_header is None:
        from_header = "<%s>" % (matched or env.recipient or "postmaster")
    headers = [
        ("Message-ID", _message_id(ctx.hostname, ctx.now)),
        ("Date", _date(ctx.now)),
        ("X-Sieve", "pymda"),
        ("From", from_header),
        ("To", _reply_to(view, env.sender, settings)),
        ("Subject", encode_header_text(_subject(action, view, settings))),
    ]
    ids = _message_ids(view, "message-id")[:1]
    if ids:
        headers.append(("In-Reply-To", ids[0]))
        headers.append(("References", " ".join(_message_ids(view, "references") + ids)))
    headers += [
        ("Auto-Submitted", "auto-replied (vacation)"),
        ("Precedence", "bulk"),
        ("X-Auto-Response-Suppress", "All"),
        ("MIME-Version", "1.0"),
    ]
    reason = action.reason.replace("\r\n", "\n").replace("\r", "\n")
    # long values (References, an ASCII subject) folded at spaces; encoded
    # words already come folded
    out = "".join(_fold(n, v) if "\n" not in v else "%s: %s\n" % (n, v)
                  for n, v in headers)
    if action.mime:
        # the reason is a MIME entity: its own header block, then its body
        if not reason.startswith("\n") and "\n\n" not in reason:
            reason = "\n" + reason
        out += reason
    else:
        out += "Content-Type: text/plain; charset=utf-8\n"
        out += "Content-Transfer-Encoding: 8bit\n\n"
        out += reason
    if not out.endswith("\n"):
        out += "\n"
    return out.encode("utf-8", "surrogateescape")


def vacation_outgoing(action, ctx, logs):
    """The Outgoing of a vacation action, or None (and a log line)."""
    reason, matched = vacation_skip(action, ctx)
    if reason is not None:
        logs.append("%s:%d: vacation: no reply: %s" % (ctx.script, action.line, reason))
        return None
    sender = ctx.env.sender
    recipient = _clean(sender)
    if (recipient != sender or recipient.startswith("-") or not recipient.isascii()
            or " " in recipient or "@" not in recipient):
        logs.append("%s:%d: vacation: no reply to %r" % (ctx.script, action.line, sender))
        return None
    period = clamp_period(action.period, ctx.settings)
    envelope_from = ctx.user_address if ctx.settings.send_from_recipient else ""
    return Outgoing(kind="vacation", envelope_from=envelope_from or "",
                    recipient=recipient,
                    data=compose_vacation(action, ctx, matched, logs),
                    mark=(vacation_key(sender, action.handle), ctx.now + period),
                    ledger_key="sieve-vacation:%s" % recipient.lower(),
                    line=action.line)


# -- redirect --------------------------------------------------------------

def redirect_loop(view, user_address):
    """True when the message already carries X-Sieve-Redirected-From for
    ``user_address``."""
    for value in view.headers(REDIRECT_HEADER):
        for addr in _addresses_in(value):
            if _same(addr, user_address):
                return True
    return False


def _addresses_in(value):
    from pymda.sieve.mail import parse_address_list

    return [a.all for a in parse_address_list(value) if a.valid] or [value.strip("<> ")]


def redirect_copy(message, user_address):
    """The redirected copy: a leading From_ line and every ``Return-Path``
    field of the header dropped (the next MTA writes its own; Pigeonhole
    drops them too), ``X-Sieve-Redirected-From`` added on top, in the
    message's own line-end style; the body byte for byte."""
    if message.startswith(b"From "):
        message = message[message.find(b"\n") + 1:]
    first = message.find(b"\n")
    nl = b"\r\n" if first > 0 and message[first - 1:first] == b"\r" else b"\n"
    end = message.find(nl + nl)
    head_end = len(message) if end < 0 else end + len(nl)
    lines = message[:head_end].split(nl)
    kept = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line[:12].lower() == b"return-path:"
        if not dropping:
            kept.append(line)
    header = ("%s: %s" % (REDIRECT_HEADER, _clean(user_address))).encode(
        "utf-8", "surrogateescape")
    return header + nl + nl.join(kept) + message[head_end:]


def redirect_sender(env, user_address, settings):
    """The envelope sender of a redirected copy.  The null sender stays
    null (RFC 5228 4.2: no bounces of bounces); otherwise
    ``settings.redirect_envelope_from``: ``sender`` (the original),
    ``recipient`` (the user's address), and for Pigeonhole's test suite
    ``orig_recipient``, ``user_email`` and an explicit ``<address>``."""
    if not env.sender:
        return ""
    how = (settings.redirect_envelope_from or "sender").strip()
    if how == "recipient":
        return env.recipient or env.sender
    if how == "orig_recipient":
        return env.orig_recipient or env.recipient or env.sender
    if how == "user_email":
        return settings.user_email or env.recipient or env.sender
    if how.startswith("<") and how.endswith(">"):
        return how[1:-1]
    return env.sender


# -- the whole result ------------------------------------------------------

def prepare(actions, ctx):
    """SendPlan of the ``actions`` (Outcome.final_actions())."""
    outgoing = []
    logs = []
    keep = False
    looped = None
    for action in actions:
        if action.kind == "redirect":
            if looped is None:
                looped = any(redirect_loop(ctx.view, a) for a in
                             {ctx.user_address, ctx.env.recipient} if a)
            if looped:
                logs.append("%s:%d: redirect to %s: not sent, the message was "
                            "already redirected by %s (kept instead)"
                            % (ctx.script, action.line, action.address,
                               ctx.user_address))
                keep = keep or not action.copy
                continue
            outgoing.append(Outgoing(
                kind="redirect",
                envelope_from=redirect_sender(ctx.env, ctx.user_address,
                                              ctx.settings),
                recipient=action.address,
                data=redirect_copy(ctx.message, ctx.user_address),
                ledger_key="sieve-redirect:%s" % action.address.lower(),
                line=action.line))
        elif action.kind == "vacation":
            out = vacation_outgoing(action, ctx, logs)
            if out is not None:
                outgoing.append(out)
    if keep and any(a.kind in ("keep", "fileinto") and not getattr(a, "copy", False)
                    for a in actions):
        keep = False        # the message is stored anyway
    return SendPlan(outgoing=tuple(outgoing), keep=keep, logs=tuple(logs))


def send_all(outgoing, sender, memory, done=None, record=None):
    """Send each message; mark vacation memory and the ledger only after
    a successful send.  ``done(ledger_key)`` -> bool skips what a
    previous attempt already sent; ``record(ledger_key)`` remembers a
    send.  Returns the failure texts (a failed send never fails the
    delivery: the caller logs them).  When ``done`` raises, the message
    is not sent (never twice); when ``record``/``mark`` raise after a
    send, that is reported too (each is tried: the ledger record first)."""
    errors = []
    for out in outgoing:
        try:
            if done is not None and done(out.ledger_key):
                continue
        except Exception as exc:        # no ledger, no send: never twice
            errors.append("%s to %s: not sent: %s" % (
                out.kind, out.recipient, getattr(exc, "text", None) or exc))
            continue
        try:
            sender.send(out.envelope_from, out.recipient, out.data)
        except Exception as exc:        # DeliveryError, OSError: logged
            errors.append("%s to %s: %s" % (out.kind, out.recipient,
                                            getattr(exc, "text", None) or exc))
            continue
        # the ledger first: it is what keeps a retry from sending again,
        # whatever happens to the vacation memory
        why = []
        for write, arg in ((record, (out.ledger_key,)),
                           (memory and memory.mark, out.mark)):
            if write is not None and arg is not None:
                try:
                    write(*arg)
                except Exception as exc:
                    why.append(str(getattr(exc, "text", None) or exc))
        if why:
            errors.append("%s to %s: sent, but not recorded: %s" % (
                out.kind, out.recipient, "; ".join(why)))
    return errors


class RecordingSender:
    """Keeps what would be sent (``sent``: list of (from, to, bytes));
    for plans, tests and the Pigeonhole adapter."""

    def __init__(self):
        self.sent = []

    def send(self, envelope_from, recipient, data):
        self.sent.append((envelope_from, recipient, data))


class SendmailSender:
    """``send(envelope_from, recipient, data)`` through ``sendmail_command``
    (``$sender`` = ``envelope_from``, "" = the null sender), ``--`` before
    the recipient; raises TempFail/PermFail as pymda.forward.sendmail.submit."""

    def __init__(self, cfg, user="", home="", user_address=""):
        self.cfg = cfg
        self.user = user
        self.home = home
        self.user_address = user_address

    def send(self, envelope_from, recipient, data):
        from pymda.forward import sendmail as forward

        forward.submit_bytes(self.cfg, envelope_from, recipient, data,
                             self.user, self.home, self.user_address)
