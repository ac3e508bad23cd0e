"""Envelope + Identity -> ordered list of Targets.  Writes nothing.

Contract: ``plan(cfg, envelope, identity, folder=None, mailbox=None,
forward=False, log=None, items=None)`` returns ``list[Target]``: the
user's mailbox (with the folder chosen by SPEC 1.2) or, when ``forward``
is on and a trusted .forward exists, what it expands to
(``forward_targets``: dotforward.expand_items -> ``targets_for_items``).  Raises UsageError
for an unusable ``-m`` folder (exit 64), ConfigError when root's file
targets need an unusable ``default_privs``.

Entries come from .forward (and, later, from a Sieve result: the
``items`` parameter); this module alone turns them into Targets and
decides each Target's identity (DELIVERY RIGHTS in targets_for_items).

It looks at the file system only to see whether a folder exists
(``detail_folders = "existing"``, ``create_folders = false``), so it must
run as the user (cli switches first).

``format_plan`` / ``plan_json`` print a plan for ``pymda -n`` and
``pymda-admin explain``.
"""


from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.address import (
    INBOX,
    check_folder,
    is_inbox,
    maildir_folder,
    mbox_folder,
)
from pymda.config import user_path
from pymda.errors import UsageError
from pymda.record import Record


class Envelope(Record):
    """Who a message is from and for.  sender '' is the null sender."""

    __slots__ = (
        "sender",
        "recipient",
        "original_recipient",
        "user",
        "local",
        "domain",
        "extension",
        # the original recipient the MTA gave with the envelope (LMTP's
        # ORCPT=), "" if none: trace_headers writes it as X-Original-To
        "orcpt",
    )
    _defaults = {"original_recipient": "", "extension": "", "domain": "", "local": "",
                 "orcpt": ""}


class Target(Record):
    """One place a message goes.

    kind: "maildir" | "mbox" | "pipe" | "forward"
    path: mailbox root ("/home/a/Maildir/") or mbox file; for pipes/forwards None
    folder: "INBOX" or the folder name (mailbox kinds)
    directory: for maildir, the directory written (root or root/.Folder)
    create: create the folder when missing
    spool: for mbox, the spool directory when the file lives there (Debian
           /var/mail rules apply), else None
    source: "mailbox" | ".forward line N" | ":include:PATH line N"
    identity: users.Identity the target is written as
    error: a DeliveryError reported instead of writing (a .forward target
           a policy refuses: allow_files, allow_commands, :include: rules)
    flags: Maildir info flags ("FS") to deliver into cur/ with (Sieve's
           imap4flags), or None
    kind "redirect" | "vacation" | "reject": in plans only (pymda -n):
           what a Sieve script would send or refuse; never delivered
    """

    __slots__ = (
        "kind",
        "path",
        "folder",
        "directory",
        "create",
        "spool",
        "command",
        "address",
        "source",
        "identity",
        "error",
        "flags",
    )
    _defaults = {
        "flags": None,
        "error": None,
        "path": None,
        "folder": INBOX,
        "directory": None,
        "create": True,
        "spool": None,
        "command": None,
        "address": None,
        "source": "mailbox",
        "identity": None,
    }

    def key(self):
        """What makes two targets the same (duplicate elimination)."""
        return (self.kind, self.path, self.folder, self.command, self.address)


def mailbox_location(cfg, envelope, identity, override=None):
    """(kind, path, spool_dir) of the user's main mailbox (SPEC 1.2)."""
    template = override
    if template is None:
        from pymda.users import settings

        template = settings(cfg, identity).get("mailbox", cfg.mailbox)
    if template == "":
        spool = cfg.mail_spool_directory
        return "mbox", os.path.join(spool, identity.name), spool
    path = user_path(template, identity, envelope, cfg)
    if path.endswith("/"):
        return "maildir", path, None
    spool = cfg.mail_spool_directory
    in_spool = os.path.dirname(path) == spool.rstrip("/")
    return "mbox", path, spool if in_spool else None


def mailbox_target(cfg, envelope, identity, folder=INBOX, mailbox=None, create=True,
                   source="mailbox"):
    """The Target for ``folder`` of the user's mailbox (folder checked)."""
    kind, path, spool = mailbox_location(cfg, envelope, identity, mailbox)
    if is_inbox(folder):
        if kind == "maildir":
            return Target(kind=kind, path=path, folder=INBOX, directory=path,
                          source=source, identity=identity)
        return Target(kind=kind, path=path, folder=INBOX, spool=spool,
                      source=source, identity=identity)
    if kind == "maildir":
        directory = os.path.join(path, maildir_folder(folder, cfg.folder_encoding))
        return Target(kind=kind, path=path, folder=folder, directory=directory,
                      create=create, source=source, identity=identity)
    base = user_path(cfg.mbox_folder_directory, identity, envelope, cfg)
    file = os.path.join(base, mbox_folder(folder, cfg.folder_encoding))
    return Target(kind=kind, path=file, folder=folder, create=create, source=source,
                  identity=identity)


def target_exists(target):
    if target.kind == "maildir":
        return os.path.isdir(os.path.join(target.directory, "new"))
    return os.path.isfile(target.path)


def choose_folder(cfg, envelope, identity, folder=None, mailbox=None):
    """The mailbox Target after the SPEC 1.2 folder rules."""
    if folder is not None:
        if is_inbox(folder):
            return mailbox_target(cfg, envelope, identity, INBOX, mailbox)
        if check_folder(folder) is None:
            raise UsageError(f"unusable folder name {folder!r}")
        try:
            target = mailbox_target(cfg, envelope, identity, folder, mailbox)
        except ValueError as exc:  # too long once encoded
            raise UsageError(f"unusable folder name: {exc}") from None
        if cfg.create_folders or target_exists(target):
            return target
        return mailbox_target(cfg, envelope, identity, INBOX, mailbox)
    ext = envelope.extension
    if ext and cfg.detail_folders != "off" and not is_inbox(ext):
        # LOOP/SAFETY: an unsafe extension is never a path: INBOX instead.
        if check_folder(ext) is not None:
            try:
                target = mailbox_target(cfg, envelope, identity, ext, mailbox)
            except ValueError:  # too long once encoded: never retried forever
                target = None
            if target is not None and (cfg.detail_folders == "create"
                                       or target_exists(target)):
                return target
    return mailbox_target(cfg, envelope, identity, INBOX, mailbox)


def plan(cfg, envelope, identity, folder=None, mailbox=None, forward=False, log=None,
         items=None, warnings=None):
    """The ordered targets for one recipient.

    ``items``: entries from a source other than .forward: a Sieve
    script's result (pymda.sieve.step), dotforward.Item-shaped entries
    (kind, value, source "sieve PATH line N", error, and ``flags``)
    through the same targets_for_items step - the one place that decides
    who a target is written or run as; an empty list is a discarded
    message.  Sieve's kind "folder" (fileinto) becomes a folder of the
    user's mailbox (``sieve_folder``); a folder it may not use falls back
    to the main target, with a line appended to ``warnings``.
    None: the .forward, when ``forward`` is on.
    """
    main = choose_folder(cfg, envelope, identity, folder, mailbox)
    if items is not None:
        def folder_target(item):
            return sieve_folder(cfg, envelope, identity, main, item, mailbox, warnings)

        return targets_for_items(cfg, identity, main, items, folder_target)
    if forward and not os.environ.get("PYMDA_DEPTH"):
        targets = forward_targets(cfg, envelope, identity, main, log)
        if targets:
            return targets
    return [main]


def forward_targets(cfg, envelope, identity, main, log=None):
    """Targets of the user's .forward, or None: deliver to ``main``.

    dotforward finds, checks and expands the file into Items (its
    warnings go to ``log``); targets_for_items makes them Targets.
    """
    from pymda.forward import dotforward

    expansion = dotforward.expand_items(cfg, envelope, identity)
    if log is not None:
        for text in expansion.warnings:
            log.warning(text)
    if expansion.items is None:
        return None
    return targets_for_items(cfg, identity, main, expansion.items)


def sieve_folder_target(cfg, envelope, identity, kind, name, mailbox=None, source=None):
    """(Target, None) of the Sieve folder ``name`` (not INBOX) of a
    ``kind`` mailbox, or (None, why) for a name pymda would never use.
    Also what Sieve's ``mailboxexists`` asks (pymda.sieve.step)."""
    # Maildir++: "A.B" and "A/B" are one folder, so one name for both
    # (Target.key: one copy per folder)
    folder = name.replace(".", "/") if kind == "maildir" else name
    if check_folder(folder) is None:
        return None, "unusable folder name"
    try:
        return mailbox_target(cfg, envelope, identity, folder, mailbox, source=source), None
    except ValueError:
        return None, "folder name too long"


def sieve_folder(cfg, envelope, identity, main, item, mailbox=None, warnings=None):
    """The Target of a Sieve ``fileinto`` entry (SPEC 6 "Where mail goes").

    ``item.value`` is the folder as the script wrote it (UTF-8, ``/`` or
    ``.`` between levels; INBOX in any case is the main mailbox);
    ``item.create``: ``:create`` or ``sieve_fileinto_create``.  A name
    pymda would never use, or a missing folder that may not be created,
    is ``main`` (the implicit-keep target) and a line in ``warnings``.
    """
    name = item.value
    flags = getattr(item, "flags", None)
    if is_inbox(name):
        return mailbox_target(cfg, envelope, identity, INBOX, mailbox,
                              source=item.source).replace(flags=flags)
    target, why = sieve_folder_target(cfg, envelope, identity, main.kind, name, mailbox,
                                      source=item.source)
    if target is not None and not getattr(item, "create", False) \
            and not target_exists(target):
        why = "folder does not exist (no :create)"
        target = None
    if target is None:
        if warnings is not None:
            warnings.append("%s: fileinto %r: %s: stored in %s instead"
                            % (item.source, name, why, main.folder))
        return main.replace(source=item.source, flags=flags)
    return target.replace(flags=flags)


def targets_for_items(cfg, identity, main, items, folder_target=None):
    """Targets for expanded entries (dotforward.Item: kind, value, source,
    error), in order; ``main`` is the mailbox Target that ``\\user`` and the
    user's own address stand for.

    DELIVERY RIGHTS: pipes and forwards run as the user; file targets are
    written as the user, except root's, which are written as
    default_privs (postfix local(8)); deliver.write_as does that switch
    in a child.  ConfigError when default_privs is unusable.
    """
    spool = cfg.mail_spool_directory.rstrip("/")
    file_identity = identity
    if identity.uid == 0 and any(i.kind in ("mbox", "maildir") for i in items):
        from pymda.users import default_privs

        file_identity = default_privs(cfg)
    targets = []
    for item in items:
        kind, value, source = item.kind, item.value, item.source
        if kind == "mailbox":
            target = main.replace(source=source, flags=getattr(item, "flags", None))
        elif kind == "folder":
            target = folder_target(item)
        elif kind == "mbox":
            # Spool rules (Debian's dotlockfile helper, the "create it as
            # root" advice) only for the user's own spool mailbox.
            own_spool = value == f"{spool}/{identity.name}"
            target = Target(kind="mbox", path=value, source=source, identity=file_identity,
                            spool=spool if own_spool else None)
        elif kind == "maildir":
            target = Target(kind="maildir", path=value, directory=value, source=source,
                            identity=file_identity)
        elif kind == "pipe":
            target = Target(kind="pipe", command=value, source=source, identity=identity)
        else:
            target = Target(kind="forward", address=value, source=source, identity=identity)
        if item.error is not None:
            target = target.replace(error=item.error)
        targets.append(target)
    return targets


# --- presentation ------------------------------------------------------------


def target_dict(target):
    """The JSON shape of SPEC 1 (--json): keys that do not apply omitted."""
    out = {"kind": target.kind}
    if target.kind in ("maildir", "mbox"):
        out["path"] = target.path
        out["folder"] = target.folder
    elif target.kind == "pipe":
        out["command"] = target.command
    elif target.kind in ("forward", "redirect", "vacation"):
        out["address"] = target.address
    if target.flags:
        out["flags"] = target.flags
    out["source"] = target.source
    if target.error is not None:
        out["error"] = target.error.line()
    return out


def format_plan(targets):
    """One target a line: kind, where, folder, source."""
    lines = []
    for t in targets:
        d = target_dict(t)
        where = d.get("path") or d.get("command") or d.get("address")
        extra = f" folder={d['folder']}" if "folder" in d else ""
        if "flags" in d:
            extra += f" flags={d['flags']}"
        refused = f" refused=({d['error']})" if "error" in d else ""
        lines.append(f"{d['kind']} {where}{extra} source={d['source']}{refused}")
    if getattr(targets, "discarded", False):
        lines.append("discarded (sieve)")
    return "\n".join(lines) + "\n"


def plan_json(targets):
    import json

    out = {"targets": [target_dict(t) for t in targets]}
    if getattr(targets, "discarded", False):
        out["discarded"] = True
    return json.dumps(out) + "\n"
