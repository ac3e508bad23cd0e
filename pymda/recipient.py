"""THE per-recipient pipeline: address -> envelope -> user -> switch -> plan -> run.

Every program reaches a user's mail through this module, as dovecot-lda
and dovecot's lmtp share one mail_deliver and postfix's local(8) has one
deliver_recipient.  The callers keep only what is theirs:

- ``pymda`` (cli): argv and postfix's environment -> ``envelope_for`` ->
  ``find_user`` -> ``deliver`` (or ``plan_only`` for ``-n``);
- ``pymda-lmtpd`` (lmtp/handler.py): ``find_recipient`` at RCPT,
  ``envelope_for`` + ``deliver`` per recipient at DATA, the LMTP reply;
- ``pymda-policyd`` (policy/service.py): ``mailbox_for`` (lookup only: no switch);
- ``pymda-admin redeliver``: ``find_user``, ``plan_only`` once, then its
  batch loop calls deliver.run per message;
- ``pymda-admin explain``: ``envelope_for`` + ``find_user`` +
  ``plan_only``, no message at all.

Contract:

- ``envelope_for(cfg, recipient, sender="", user=None,
  original_recipient=None, extension=None)`` -> resolve.Envelope.
  RECIPIENT -> USER, the one place: the address is split with
  ``recipient_delimiter`` and, unless the caller names the user (``-d``,
  redeliver), ``users.name_for_recipient`` picks it.  The name may come
  out empty (``@example.org``): ``find_user`` refuses it.  Pure.
- ``find_user(cfg, envelope, identity=None)`` -> users.Identity:
  ``users.lookup`` (PermFail 5.1.1 unknown or empty name), then
  ``users.authorise`` (PermFail 5.7.1: this process may not deliver for
  that user).  ``identity``: the caller knows who already (the invoking
  user delivering for itself): only authorised.
- ``find_recipient(cfg, address)`` -> (Envelope, Identity): both of the
  above for an address alone (LMTP RCPT).
- ``mailbox_for(cfg, address)`` -> (Identity, main-mailbox Target):
  lookup without authorisation, for the read-only quota check of
  pymda-policyd and ``pymda-admin quota``.
- ``plan_message(cfg, log, message, envelope, identity, folder=None,
  mailbox=None)`` -> (targets, Sieve step or None): redeliver --sieve,
  per message, after plan_only switched; nothing is sent.
- ``deliver(cfg, log, message, envelope, identity=None, folder=None,
  mailbox=None, forward=False, own_delivered_to=True, items=None,
  send=True)`` ->
  deliver.DeliveryResult.  In order: the user (find_user, unless given),
  LOOP CONTROL once, root's preparation, the switch, the plan, the run.
  Never raises a DeliveryError (it becomes the result's ``error``);
  anything unexpected propagates to the caller's one broad catch (4.3.0).
- ``plan_only(cfg, envelope, identity, folder=None, mailbox=None,
  forward=False, log=None, items=None, message=None)`` -> list[Target]:
  the switch and the plan, nothing written, nothing created (``-n``,
  ``explain``, and redeliver's one plan for a whole batch); with
  ``message`` the Sieve script runs too (nothing sent: plan entries
  "redirect"/"vacation"/"reject"; ``.discarded``).  Raises DeliveryError.

LOOP CONTROL (SPEC 1.3): checked once per recipient, before anything is
created (a looping message makes no spool mbox).  ``own_delivered_to``:
a Delivered-To for this recipient in the leading block is this
delivery's own (postfix's local(8) wrote it for mailbox_command); False
over LMTP, whose client writes none.  redeliver does not check (SPEC 4:
mail delivered here before is what it redelivers).

DELIVERY RIGHTS: ``switch`` below is the one place a delivery changes
uid.  As root, only two things happen before it: the loop check (reads
the spooled message) and the creation of a missing spool mbox
(``/var/mail`` is 2775 root:mail: the user cannot; postfix's local(8)
does the same).  After it, .forward and every file of the user's are
read and written with the user's rights.  For a process that is not
root, users.switch_to only verifies the uid (authorise already did).
Root's own mail is the exception postfix makes too: its mailbox is
written as root, its file targets as default_privs (resolve decides,
deliver.write_as switches in a child) and its pipes run as default_privs
(pipe.py).

SIEVE (SPEC 6, docs/sieve.md): between the switch and the plan, in
``_plan`` - the one place, for pymda, pymda-lmtpd and redeliver --sieve.
``sieve_may_run`` costs one stat when there is no script; otherwise
pymda.sieve.step runs the script and its result becomes the ``items``
of resolve.plan (a script replaces .forward).  reject -> the result's
error PermFail 5.7.1 (exit 77, LMTP 550); sends (redirect, vacation)
run in deliver.run's ``after`` once every store succeeded, keyed in the
completed-target ledger so that a retry never sends twice.

USER DATABASE: it plugs in behind ``users.name_for_recipient`` and
``users.lookup`` (called here only).

TEMPORARY SWITCH: a root pymda-lmtpd delivers a plain mailbox without a
fork: ``needs_own_process`` (THE decision: fork or not) says no, and
``deliver(temporary=True)`` plans and writes between
``users.switch_temporarily`` and ``users.switch_back`` (effective ids
only; undone and verified before it returns).  Everything that runs a
program of the user's or writes .forward file targets still switches
for good, in a forked child.  A Sieve script's sends do not need one:
sendmail's child takes the user's real and saved ids before the exec
(forward.pipe.program_ids).

LIMITATIONS: one recipient per call; LMTP calls it once per recipient.
"""

from pymda.errors import DeliveryError, PermFail


def envelope_for(cfg, recipient, sender="", user=None, original_recipient=None,
                 extension=None, orcpt=None):
    """The Envelope of one delivery to ``recipient`` (see the module docstring)."""
    from pymda.address import split_address
    from pymda.resolve import Envelope
    from pymda.users import name_for_recipient

    local, domain, base, ext = split_address(recipient, cfg.recipient_delimiter)
    if user is None:
        user = name_for_recipient(cfg, base, domain)
    return Envelope(
        sender=sender,
        recipient=recipient,
        original_recipient=original_recipient or recipient,
        user=user,
        local=local,
        domain=domain,
        extension=ext if extension is None else extension,
        orcpt=orcpt or "",
    )


def find_user(cfg, envelope, identity=None):
    """The Identity mail for ``envelope`` is delivered as, authorised."""
    from pymda.users import authorise

    if identity is None:
        identity = _lookup(cfg, envelope)
    authorise(identity)
    return identity


def _lookup(cfg, envelope):
    from pymda.users import lookup

    if not envelope.user:
        raise PermFail("User unknown: empty local part", "5.1.1")
    return lookup(cfg, envelope.user)


def find_recipient(cfg, address):
    """(Envelope, Identity) for a recipient address alone."""
    envelope = envelope_for(cfg, address)
    return envelope, find_user(cfg, envelope)


def mailbox_for(cfg, address):
    """(Identity, main-mailbox Target) of ``address``; 5.1.1 when unknown.

    No authorisation and no switch: the quota check only reads.
    """
    from pymda.address import INBOX
    from pymda.resolve import mailbox_target

    envelope = envelope_for(cfg, address)
    identity = _lookup(cfg, envelope)
    return identity, mailbox_target(cfg, envelope, identity, INBOX)


def switch(identity):
    """DELIVERY RIGHTS: become ``identity`` for good (see the module docstring)."""
    from pymda.users import switch_to

    switch_to(identity)


def prepare_as_root(cfg, envelope, identity, mailbox=None):
    """What only root may do for a user: create a missing spool mbox."""
    from pymda import fastos as os
    from pymda.resolve import mailbox_location

    if os.geteuid() != 0 or identity.uid == 0:
        return
    kind, path, spool = mailbox_location(cfg, envelope, identity, mailbox)
    if kind == "mbox" and spool and not os.path.lexists(path):
        from pymda.mbox import precreate_spool_mbox

        precreate_spool_mbox(path, identity.uid, identity.gid)


def sieve_may_run(cfg, identity):
    """False when this delivery certainly runs no Sieve script: ``sieve``
    off, or no admin script configured and no file at ``sieve_script``
    (ONE stat: a plain delivery does not import pymda.sieve at all)."""
    if not cfg.sieve:
        return False
    if cfg.sieve_before or cfg.sieve_after or cfg.sieve_default:
        return True
    if not cfg.sieve_script:
        return False
    from pymda import fastos as os
    from pymda.config import user_path

    path = user_path(cfg.sieve_script, identity)
    try:
        os.stat(path)
    except OSError as exc:
        # missing, a dangling link, a loop: no filtering; anything else
        # is for find_script to report
        return exc.errno not in (2, 20, 40)
    return True


def _plan(cfg, log, envelope, identity, folder, mailbox, forward, items, message, send,
          dry=False):
    """(targets, sieve step or None), as the user: SIEVE HOOK.  ``dry``
    (pymda -n): script errors go to syslog only, not the user's log."""
    from pymda import resolve

    step = None
    if message is not None and items is None and sieve_may_run(cfg, identity):
        from pymda.sieve import step as sieve_step

        main = resolve.choose_folder(cfg, envelope, identity, folder, mailbox)
        step = sieve_step.run(cfg, log, message, envelope, identity, main, mailbox, send=send)
    if step is None:
        return resolve.plan(cfg, envelope, identity, folder=folder, mailbox=mailbox,
                            forward=forward, log=log, items=items), None
    try:
        if step.reject is not None:
            return [], step
        targets = resolve.plan(cfg, envelope, identity, folder=folder, mailbox=mailbox,
                               log=log, items=step.items, warnings=step.warnings)
    except BaseException:
        step.abandon()  # no plan, so no deliver.run to close the script's memory
        raise
    finally:
        step.report(user_log=not dry)
    return targets, step


def plan_message(cfg, log, message, envelope, identity, folder=None, mailbox=None):
    """(targets, sieve step or None) of one message, for redeliver --sieve:
    the caller has switched already (plan_only); nothing is sent."""
    return _plan(cfg, log, envelope, identity, folder, mailbox, False, None, message,
                 send=False)


class Plan(list):
    """The targets of a plan; ``discarded``: a Sieve discard (empty plan)."""

    discarded = False


def plan_only(cfg, envelope, identity, folder=None, mailbox=None, forward=False, log=None,
              items=None, message=None):
    """Switch to the user and plan: nothing written, nothing created.

    With ``message``, the user's Sieve script runs (nothing sent, no mark
    written): its sends are plan entries of kind "redirect"/"vacation",
    a reject an entry "reject" carrying the 5.7.1 error.
    """
    switch(identity)
    targets, step = _plan(cfg, log, envelope, identity, folder, mailbox, forward,
                          items, message, send=False, dry=True)
    if step is None:
        return targets
    plan = Plan(targets)
    if step.reject is not None:
        from pymda.resolve import Target

        plan.append(Target(kind="reject", error=step.reject, identity=identity,
                           source=step.script))
    else:
        plan.extend(step.plan_entries())
        plan.discarded = step.discarded
    step.abandon()
    return plan


def needs_own_process(cfg, envelope, identity, forward=False, mailbox=None):
    """THE decision of a root server: fork (True) or switch temporarily.

    A delivery may run in the server's own process, with a temporary
    switch of its effective ids (``deliver(temporary=True)``), only when
    it runs nothing of the user's and writes nothing a .forward names:
    True (a child that switches for good) when ``forward`` is on (pipes,
    file targets, :include:), and for an mbox whose file or folder
    directory (``mbox_folder_directory``) lies outside the user's home
    (/var/mail, an admin's /srv/mboxes): where the user may not make the
    dotlock, the setgid ``dotlockfile`` helper makes it, and a program
    started under a temporary switch would keep root as its real uid.
    A Sieve script is no reason: the sendmail its redirect or vacation
    starts takes the user's real and saved ids in its child before the
    exec (forward.pipe.program_ids), so it never runs with root's.
    """
    if forward:
        return True
    from pymda.resolve import mailbox_location

    kind, path, spool = mailbox_location(cfg, envelope, identity, mailbox)
    if kind != "mbox":
        return False
    if spool:
        return True
    from pymda.config import user_path

    home = identity.home.rstrip("/") + "/"
    folders = user_path(cfg.mbox_folder_directory, identity, envelope, cfg).rstrip("/") + "/"
    return not (path.startswith(home) and folders.startswith(home))


def deliver(cfg, log, message, envelope, identity=None, folder=None, mailbox=None,
            forward=False, own_delivered_to=True, items=None, send=True, temporary=False):
    """Deliver ``message`` for one recipient; a DeliveryResult (see above).

    ``send``: False for redeliver --sieve (redirect/vacation skipped).
    ``temporary``: a root pymda-lmtpd for which needs_own_process said
    no: the switch is users.switch_temporarily, on before any file of
    the user's is opened and undone (and verified: users.switch_back
    exits the process when it cannot be) before this returns.
    """
    from pymda import deliver as engine

    switched = False
    try:
        if identity is None:
            identity = find_user(cfg, envelope)
        try:
            engine.check_loop(message, envelope, leading_is_ours=own_delivered_to)
        except DeliveryError as exc:
            log.info(f"to=<{envelope.recipient}>, user={envelope.user}, "
                     f"size={message.size}, status=bounced ({exc.line()})")
            raise
        prepare_as_root(cfg, envelope, identity, mailbox)
        if temporary:
            from pymda.users import switch_temporarily

            switch_temporarily(identity)  # TempFail: nothing is left switched
            switched = True
        else:
            switch(identity)
        # SIEVE HOOK: the user's script runs in _plan, as the user, on
        # ``message``; its result is a second source of entries (items).
        targets, step = _plan(cfg, log, envelope, identity, folder, mailbox, forward,
                              items, message, send=send)
        if step is not None and step.reject is not None:
            step.abandon()
            log.info(f"to=<{envelope.recipient}>, user={envelope.user}, "
                     f"size={message.size}, status=bounced "
                     f"(sieve {step.script}: {step.reject.line()})")
            raise step.reject
        if step is not None and step.discarded:
            log.info(f"to=<{envelope.recipient}>, user={envelope.user}, "
                     f"size={message.size}, status=discarded (sieve {step.script})")
        return engine.run(targets, message, envelope, cfg, log, after=step, identity=identity)
    except DeliveryError as exc:
        return engine.DeliveryResult(results=[], error=exc)
    finally:
        if switched:
            from pymda.users import switch_back

            switch_back()
