"""The delivery engine: the only caller of the writers.

Contract: ``run(targets, message, envelope, cfg, log, flags=None,
after=None, identity=None)``
delivers ``message`` to every target in order and returns a
DeliveryResult: its ``exit`` code, its one output ``line`` (None when all
went well) and per-target ``results``.  It never raises a DeliveryError
(they become results); anything unexpected is the caller's 4.3.0.
``flags``: Maildir flags to deliver into ``cur/`` with (redeliver); a
Target's own ``flags`` (Sieve's imap4flags) win.
The caller has switched to the user (recipient.py) and planned the
targets (resolve.py).

LOOP CONTROL (SPEC 1.3): ``check_loop`` - the first Delivered-To for
this recipient in the leading block is this delivery's own (postfix
wrote it); any other Delivered-To for this recipient in the header means
the message has been here before: 5.4.6, nothing delivered.
recipient.deliver calls it once per recipient, before anything is
created; ``run`` itself does not check.

QUOTA (SPEC 1.6): checked before any byte is written, only when a limit
applies (quota.py is not even imported otherwise); the check's hold on a
Maildir's quota lock is kept until the message's ``maildirsize`` line is
written.

OUTCOME of several targets: all delivered -> 0.  Otherwise the first
temporary failure wins (exit 75: the MTA retries the whole message), then
the first permanent one.

DUPLICATE ELIMINATION (SPEC 1.3): the same target (Target.key) is written
once per message.  With two or more targets, a per-user state.Ledger
records each target once it is done (after the writer's fsync, a pipe's
exit 0, sendmail's exit 0); the MTA's retry after a temporary failure skips
what is recorded ("status=skipped").  When nothing failed temporarily the
records are dropped again.  A single target costs nothing (state.py is not
even imported) unless a Sieve script sends mail.

SENDS (SPEC 6): ``after`` is the Sieve step of recipient.py (or None):
once every target succeeded, ``after.after(done, record)`` sends the
script's redirects and vacation reply, each checked and recorded in the
ledger under its own key (the ledger is opened whenever
``after.needs_ledger``); a DeliveryError it returns (a redirect sendmail
refused) is the delivery's.  When a target failed, ``after.abandon()``:
nothing is sent, the retry sends.  A ledger that cannot be opened (read-only home, ...) is
logged and the delivery goes on without it: at worst a retry after a
partial failure duplicates, which is better than holding the mail.
"""

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import DeliveryError, PermFail, TempFail
from pymda.message import same_address, trace_headers
from pymda.record import Record


class TargetResult(Record):
    __slots__ = ("target", "error", "where")
    _defaults = {"error": None, "where": None}

    @property
    def ok(self):
        return self.error is None


class DeliveryResult(Record):
    __slots__ = ("results", "error")
    _defaults = {"error": None}

    @property
    def exit(self):
        return 0 if self.error is None else self.error.exit

    @property
    def line(self):
        return None if self.error is None else self.error.line()

    def lmtp_reply(self):
        """The LMTP reply line (RFC 2033 4.2): basic code + D.S.N text."""
        if self.error is None:
            return "250 2.0.0 Ok: delivered"
        return f"{reply_code(self.error.status)} {self.error.line()}"


def reply_code(status):
    """SMTP basic reply code for an RFC 3463 status (RFC 5321 4.2.2/4.2.3).

    4.2.2 mailbox full / 4.3.1 system storage -> 452; other 4.2.x
    (mailbox busy or refused for now) -> 450; other 4.x.y (local error)
    -> 451.  5.2.2 / 5.2.3 / 5.3.4 (storage, size) -> 552; 5.1.x
    (address), other 5.2.x (mailbox) and 5.7.x (policy) -> 550; any
    other 5.x.y (loop, empty message, a pipe that failed) -> 554.
    """
    if status.startswith("4"):
        if status in ("4.2.2", "4.3.1"):
            return "452"
        return "450" if status.startswith("4.2.") else "451"
    if status in ("5.2.2", "5.2.3", "5.3.4"):
        return "552"
    if status.startswith(("5.1.", "5.2.", "5.7.")):
        return "550"
    return "554"


def check_loop(message, envelope, leading_is_ours=True):
    """Raise 5.4.6 when the message was delivered to this recipient before.

    ``leading_is_ours``: a Delivered-To for this recipient in the leading
    block is this delivery's own (postfix's local(8) wrote it for
    mailbox_command).  False over LMTP: postfix's lmtp client writes
    none, so every Delivered-To for the recipient is an earlier delivery.
    """
    rcpt = envelope.recipient
    seen = [v for v in message.delivered_to if same_address(v, rcpt)]
    own = 0
    for name, value in message.leading:
        if leading_is_ours and name == "delivered-to" and same_address(value, rcpt):
            own = 1
            break
    if len(seen) > own:
        raise PermFail(f"Mail forwarding loop for {envelope.recipient}", "5.4.6")


def _limits_apply(cfg, target):
    if cfg.quota_storage or cfg.quota_messages:
        return True
    from pymda.users import settings

    table = settings(cfg, target.identity)
    return bool(table.get("quota_storage") or table.get("quota_messages"))


def write_as(identity, write):
    """Run ``write()`` in a child switched to ``identity``; its result or error.

    DELIVERY RIGHTS: pymda still runs as root only for root's own mail,
    and root's file targets must be written as default_privs, never as
    root (postfix local(8)).  The child reports ``OK where`` or the
    DeliveryError's status and text through a pipe; a child that dies
    without a word is a temporary failure.
    """
    from pymda.users import switch_to

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: nothing may escape into the parent's code path
        try:
            os.close(rfd)
            try:
                switch_to(identity)
                report = "OK " + str(write())
            except DeliveryError as exc:
                report = f"{exc.status} {exc.text}"
            os.write(wfd, report.encode("utf-8", "surrogateescape")[:4000])
        except BaseException:
            pass
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while True:
        piece = os.read(rfd, 4096)
        if not piece:
            break
        chunks.append(piece)
    os.close(rfd)
    os.waitpid(pid, 0)
    report = b"".join(chunks).decode("utf-8", "surrogateescape")
    if report.startswith("OK "):
        return report[3:]
    status, _, text = report.partition(" ")
    if status[:1] == "5":
        raise PermFail(text, status)
    if status[:1] == "4":
        raise TempFail(text, status)
    raise TempFail(f"writing as {identity.name} failed without a report", "4.3.0")


def write_target(target, message, envelope, cfg, log, prefix, flags=None):
    """Write one mailbox/file target; returns where it went."""
    if target.error is not None:
        raise target.error  # refused by policy at expansion time (5.7.1)
    if target.kind in ("maildir", "mbox") and target.identity is not None:
        if os.geteuid() == 0 and target.identity.uid != 0:
            # Only root's file targets get here (everyone else switched
            # before planning): write them as their identity, in a child.
            return write_as(target.identity, lambda: _write(
                target, message, envelope, cfg, log, prefix, flags))
    return _write(target, message, envelope, cfg, log, prefix, flags)


def _write(target, message, envelope, cfg, log, prefix, flags=None):
    if target.kind in ("maildir", "mbox") and _limits_apply(cfg, target):
        from pymda import quota

        # The hold (a shared lock) lasts until the maildirsize line is
        # written: no quota rebuild can run in between (quota.py).
        size = len(prefix) + message.size
        hold = quota.check(target, size, cfg)
        try:
            where = _write_target(target, message, envelope, cfg, log, prefix, flags)
            if cfg.quota_warnings and hold is not None:
                _quota_warnings(target, hold, size, envelope, cfg, log)
            return where
        finally:
            quota.release(hold)
    return _write_target(target, message, envelope, cfg, log, prefix, flags)


def _write_target(target, message, envelope, cfg, log, prefix, flags=None):
    if target.kind == "maildir":
        from pymda import maildir

        folder = target.directory != target.path
        where = maildir.deliver(
            target.directory, message, prefix, folder=folder, flags=flags,
            created=_subscriber(target, cfg, log) if folder else None,
        )
        # Maildir++: whoever delivers keeps an existing maildirsize current,
        # limits or not (dovecot or courier may be the ones enforcing them).
        maildir.account(target.path, len(prefix) + message.size)
        return where
    if target.kind == "mbox":
        from pymda import mbox

        mbox.append(
            target.path, message, prefix, envelope.sender, cfg,
            target.identity.uid, log, spool_dir=target.spool, home=target.identity.home,
        )
        return target.path
    if target.kind == "pipe":
        from pymda.forward import pipe

        pipe.run_command(target, message, envelope, cfg)
        return target.command
    if target.kind == "forward":
        from pymda.forward import sendmail as forward

        forward.send(target, message, envelope, cfg)
        return target.address
    raise TempFail(f"unknown target kind {target.kind!r}")


def _quota_warnings(target, hold, size, envelope, cfg, log):
    """Quota warnings (quota_warn.py) after a delivery: never fatal, the
    message is already written (a retry would duplicate it)."""
    from pymda import quota_warn

    try:
        for resource, percent in quota_warn.after_delivery(
                target, hold, size, envelope, cfg, log):
            log.info(f"quota warning sent: {resource} at {percent}%")
    except DeliveryError as exc:
        log.warning(f"quota warning not sent: {exc.line()}")
    except Exception as exc:  # noqa: BLE001 - after delivery nothing may defer
        log.warning(f"quota warning not sent: internal error {type(exc).__name__}: {exc}")


def _subscriber(target, cfg, log):
    """The ``created`` callback of maildir.deliver: subscribe a new folder
    (``subscribe_created_folders``); a failure is logged, never fatal."""
    if not cfg.subscribe_created_folders:
        return None

    def created(directory):
        from pymda import subscriptions

        try:
            subscriptions.subscribe(target.path, directory, timeout=cfg.lock_timeout)
        except DeliveryError as exc:
            log.warning(f"folder {target.folder} not subscribed: {exc.line()}")

    return created


def run(targets, message, envelope, cfg, log, flags=None, after=None, identity=None):
    """Deliver to every target; see the module docstring."""
    prefix = trace_headers(message, envelope)
    results = []
    first_temp = first_perm = None
    # DUPLICATE ELIMINATION: the same target never twice for one message.
    unique = []
    seen = set()
    for target in targets:
        key = target.key()
        if key not in seen:
            seen.add(key)
            unique.append(target)
    targets = unique
    ledger = msg_key = None
    if len(targets) > 1 or (after is not None and after.needs_ledger):
        try:
            ledger, msg_key = _open_ledger(identity or targets[0].identity, message,
                                           envelope, cfg)
        except DeliveryError as exc:
            log.warning(f"no duplicate elimination on retry: {exc.line()}")
    try:
        for target in targets:
            if ledger is not None:
                from pymda import state

                tkey = state.target_key(target)
                try:
                    already = ledger.done(msg_key, tkey)
                except DeliveryError as exc:
                    already = False
                    log.warning(exc.line())
                if already:
                    results.append(TargetResult(target=target, where="skipped"))
                    log.delivery(target, envelope, message, "skipped",
                                 "already delivered by an earlier attempt")
                    continue
            try:
                where = write_target(target, message, envelope, cfg, log, prefix,
                                     flags if target.flags is None else target.flags)
            except DeliveryError as exc:
                results.append(TargetResult(target=target, error=exc))
                status = "deferred" if exc.temporary else "bounced"
                log.delivery(target, envelope, message, status, exc.line())
                if exc.temporary:
                    first_temp = first_temp or exc
                else:
                    first_perm = first_perm or exc
                continue
            if ledger is not None:
                try:
                    ledger.record(msg_key, tkey)
                except DeliveryError as exc:
                    log.warning(exc.line())
            results.append(TargetResult(target=target, where=where))
            log.delivery(target, envelope, message, "sent", f"delivered to {target.kind}")
        if after is not None:
            if first_temp is None and first_perm is None:
                error = _after(after, ledger, msg_key, log)
                if error is not None:
                    if error.temporary:
                        first_temp = error
                    else:
                        first_perm = error
            else:
                after.abandon()
        if ledger is not None and first_temp is None:
            try:
                ledger.forget(msg_key)  # no retry will come: drop the records
            except DeliveryError as exc:
                log.warning(exc.line())
    finally:
        if ledger is not None:
            ledger.close()
    return DeliveryResult(results=results, error=first_temp or first_perm)


def _after(after, ledger, msg_key, log):
    """SENDS: ``after`` (a Sieve step) once every target succeeded, with
    the ledger's done/record for its sends; its DeliveryError or None."""
    done = record = None
    if ledger is not None:
        def done(key):
            return ledger.done(msg_key, key)

        def record(key):
            ledger.record(msg_key, key)
    return after.after(done, record)


def _open_ledger(identity, message, envelope, cfg):
    """(Ledger, message key) for a delivery to several targets, or with sends."""
    from pymda import state

    path = state.state_path(cfg, identity)
    ledger = state.Ledger.open(path, timeout=cfg.lock_timeout)
    return ledger, state.message_key(message, envelope)

