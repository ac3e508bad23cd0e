"""Envelope + Identity -> ordered list of Targets.  Writes nothing.

Contract: ``plan(cfg, envelope, identity, folder=None, mailbox=None,
forward=False)`` returns ``list[Target]``: the user's mailbox (with the
folder chosen by SPEC 1.2) or, when ``forward`` is on and a trusted
.forward exists, what it expands to (dotforward.expand).  Raises
UsageError for an unusable ``-m`` folder (exit 64).

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
from pymda.config import expand
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
    )
    _defaults = {"original_recipient": "", "extension": "", "domain": "", "local": ""}


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
    )
    _defaults = {
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


def template_vars(envelope, identity):
    return {
        "user": identity.name,
        "home": identity.home,
        "local": envelope.local,
        "domain": envelope.domain,
        "extension": envelope.extension,
    }


def mailbox_location(cfg, envelope, identity, override=None):
    """(kind, path, spool_dir) of the user's main mailbox (SPEC 1.2)."""
    template = override
    if template is None:
        from pymda.users import settings

        template = settings(cfg, identity).get("mailbox", cfg.mailbox)
    if template == "":
        spool = cfg.mail_spool_directory
        return "mbox", os.path.join(spool, identity.name), spool
    path = expand(template, template_vars(envelope, identity))
    if not path.startswith("/"):
        path = os.path.join(identity.home, path)
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
    base = expand(cfg.mbox_folder_directory, template_vars(envelope, identity))
    if not base.startswith("/"):
        base = os.path.join(identity.home, base)
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


def plan(cfg, envelope, identity, folder=None, mailbox=None, forward=False, log=None):
    """The ordered targets for one recipient."""
    main = choose_folder(cfg, envelope, identity, folder, mailbox)
    if forward and not os.environ.get("PYMDA_DEPTH"):
        from pymda import dotforward

        targets = dotforward.expand(cfg, envelope, identity, main, log)
        if targets:
            return targets
    return [main]


# --- presentation ------------------------------------------------------------


def target_dict(target):
    """The JSON shape of SPEC 1 (--json): keys that do not apply omitted."""
    out = {"kind": target.kind}
    if target.kind in ("maildir", "mbox"):
        out["path"] = target.path
        out["folder"] = target.folder
    elif target.kind == "pipe":
        out["command"] = target.command
    elif target.kind == "forward":
        out["address"] = target.address
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
        refused = f" refused=({d['error']})" if "error" in d else ""
        lines.append(f"{d['kind']} {where}{extra} source={d['source']}{refused}")
    return "\n".join(lines) + "\n"


def plan_json(targets):
    import json

    return json.dumps({"targets": [target_dict(t) for t in targets]}) + "\n"
