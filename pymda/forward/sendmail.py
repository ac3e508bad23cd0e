"""Re-inject a message for a forwarding address through ``sendmail_command``.

Contract: ``send(target, message, envelope, cfg)`` returns None once the
MTA has accepted the message for ``target.address`` (sendmail exited 0),
and raises:
- TempFail 4.3.0 when sendmail exits 75 (EX_TEMPFAIL) or with a status that
  means "try again" (EX_UNAVAILABLE 69, EX_SOFTWARE 70, EX_OSERR 71,
  EX_CANTCREAT 73, EX_IOERR 74, EX_CONFIG 78), dies by a signal, times out
  (``command_timeout``) or cannot be started: a forwarding problem on our
  side must never bounce the user's mail;
- PermFail 5.3.0 "<first output line>" for any other non-zero status
  (EX_USAGE, EX_DATAERR, EX_NOUSER, EX_NOHOST, ...).

The command is ``cfg.sendmail_command`` with ``$sender`` (the original
envelope sender, "" for the null sender: postfix's ``sendmail -f ""``),
``$recipient``, ``$user``, ``$home`` expanded in each argument, then ``--``
and the address as a separate argv element: no shell ever sees it, and an
address starting with "-" cannot become an option.

stdin is ``Delivered-To: <recipient>`` (unless the leading block already
carries one for this recipient, as postfix adds it before running
mailbox_command), then the message byte for byte.

LOOP CONTROL: that Delivered-To header is how a forwarding loop is detected
downstream (by postfix's local(8) or by pymda, SPEC 1.3): when the message
comes back to this recipient it carries a Delivered-To for it that is not
the one added for the new delivery, and is refused with 5.4.6.

SECURITY: sendmail runs with pymda's ids (already the user's, SPEC 1.8;
under a root pymda-lmtpd's temporary switch the child takes the user's
real and saved ids too before the exec: pipe.run_argv),
with a minimal environment (PATH, MAIL_CONFIG when set, PYMDA_DEPTH), in
its own process group, killed as a group on timeout (pipe.run_argv).
"""

import os

from pymda.errors import PermFail, TempFail

# sysexits that mean "try again later" when sendmail returns them
TEMPORARY_EXITS = frozenset((69, 70, 71, 73, 74, 75, 78))


def sendmail_argv(cfg, envelope, address, identity=None):
    """The argv that re-injects a message for ``address``."""
    from pymda.config import template_variables

    return _argv(cfg, template_variables(envelope, identity, cfg), address)


def _argv(cfg, variables, address):
    from pymda.config import expand

    argv = [expand(arg, variables) for arg in cfg.sendmail_command]
    if not argv or not argv[0]:
        from pymda.errors import ConfigError

        raise ConfigError("sendmail_command is empty")
    return argv + ["--", address]


def delivered_to_header(message, envelope):
    """The Delivered-To line to prepend, or b"" when already there."""
    recipient = (envelope.recipient or "").lower()
    for name, value in message.leading or ():
        if name == "delivered-to" and value.strip().lower() == recipient:
            return b""
    return f"Delivered-To: {envelope.recipient}\n".encode("utf-8", "surrogateescape")


def _chunks(message, envelope):
    yield delivered_to_header(message, envelope)
    yield from message.chunks()


def environment():
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if os.environ.get("MAIL_CONFIG"):
        env["MAIL_CONFIG"] = os.environ["MAIL_CONFIG"]
    try:
        depth = int(os.environ.get("PYMDA_DEPTH", "0") or 0)
    except ValueError:
        depth = 0
    if depth:
        env["PYMDA_DEPTH"] = str(depth)
    return env


def send(target, message, envelope, cfg):
    """Forward ``message`` to ``target.address`` (see module docstring)."""
    identity = getattr(target, "identity", None)
    argv = sendmail_argv(cfg, envelope, target.address, identity)
    _submit(argv, _chunks(message, envelope), target.address, cfg, "forwarding")


def submit_bytes(cfg, envelope_from, recipient, data, user="", home="",
                 user_address=""):
    """Send ``data`` (a whole message, bytes) to ``recipient`` with the
    envelope sender ``envelope_from`` ("" = null) through
    ``sendmail_command`` (Sieve's redirect and vacation: no Delivered-To
    is added; ``$recipient`` in the command is ``user_address``, the
    user's own address, as for a forward).  Raises as ``send``."""
    from pymda.config import template_variables

    variables = template_variables(cfg=cfg)  # no envelope: $local etc. are ''
    variables.update(sender=envelope_from or "", recipient=user_address or "",
                     user=user or "", home=home or "")
    _submit(_argv(cfg, variables, recipient), (data,), recipient, cfg, "sending")


def _submit(argv, chunks, address, cfg, what):
    from pymda.forward import pipe

    try:
        code, first, timed_out = pipe.run_argv(
            argv,
            chunks,
            env=environment(),
            ids=None,
            cwd="/",
            timeout=cfg.command_timeout,
            what=f"{what} to {address}",
        )
    except PermFail as exc:
        # sendmail missing or not executable: an admin fixes that; defer.
        raise TempFail(f"{what} to {address}: {exc.text}", "4.3.0") from None
    if timed_out:
        raise TempFail(
            f"{what} to {address}: {argv[0]} time limit exceeded", "4.3.0"
        )
    if code == 0:
        return
    reason = first or (f"{argv[0]} died with signal {-code}" if code < 0
                       else f"{argv[0]} exited with status {code}")
    if code < 0 or code in TEMPORARY_EXITS:
        raise TempFail(f"{what} to {address}: {reason}", "4.3.0")
    raise PermFail(f"{what} to {address}: {reason}", "5.3.0")
