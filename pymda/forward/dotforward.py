"""Find, trust-check, parse and expand ``.forward`` and ``:include:`` files.

Contract:
- ``parse_forward(text, path)`` -> list[Entry]: pure, no file system.
  Raises ForwardSyntax(path, line, reason) on malformed input.
- ``find(cfg, envelope, identity)`` -> (path, text) of the first usable
  file along ``forward_path``, or (None, None).  Untrusted or unreadable
  files are ignored with a warning appended to ``warnings`` (mailbox
  delivery).  An extension with a '/' is not used in a file name (postfix's
  rule); one too long for a file name finds nothing.
- ``expand_items(cfg, envelope, identity)`` -> Expansion(items, path, warnings):
  the ordered, de-duplicated list of Items a message for this recipient goes
  to, or ``items=None`` when there is no usable .forward (normal mailbox
  delivery).  Raises TempFail on an I/O error reading a .forward or
  :include: file, or a missing :include: file: the MTA retries.

Item kinds: "mailbox" (the user's own mailbox: ``\\alice``, own name or
address), "mbox" / "maildir" (a file target: ``/path``, ``/path/``,
``~/path``), "pipe" (``|command``), "forward" (any other address),
Every Item carries ``source``: ".forward line N" or ":include:PATH line N";
an Item a policy forbids carries ``error`` (the PermFail 5.7.1 its delivery
reports instead of writing).

THE EXPANSION BOUNDARY: this module returns Items and stops there.  It
never writes mail, never runs anything and does not know what a Target
is: ``resolve.targets_for_items`` turns Items into Targets and decides
who each one is written or run as (postfix keeps expansion, delivery and
delivery rights apart the same way: dotforward.c, command.c, and the
privileges passed along as an argument).  It does not import resolve.

SYNTAX (as sendmail and postfix's local(8) read it):
- Entries are separated by commas or newlines; a line whose first
  non-blank character is ``#`` is a comment.
- An entry may be double-quoted, so it can hold commas and spaces;
  inside quotes ``\\"`` and ``\\\\`` are a quote and a backslash.
- ``|command``  ``/file``  ``/maildir/``  ``~/file``  ``:include:/abs``
  ``\\user``  ``user``  ``user@domain``  ``Name <user@domain>``.
- An unquoted command may contain spaces (``|/usr/bin/procmail -a x``) but
  not commas: quote it if it needs one.

PARSE PROBLEMS never lose mail: an unterminated quote, a bare ``|``, a
relative ``:include:``, an address with unquoted spaces, a binary or
over-long file make pymda IGNORE THE WHOLE .forward, log a warning naming
file and line, and deliver to the user's mailbox.  (Deferring instead would
hold the mail in the queue until it bounces back to the sender after
postfix's maximal_queue_lifetime; delivering only the entries that parsed
would silently drop the rest.)  A .forward or :include: file the user may
not open (EACCES, EPERM) is treated like an untrusted one: warning, mailbox
(postfix logs "cannot open file" for a .forward and uses the mailbox too).
Other I/O errors (EIO, EMFILE, ...) and a missing :include: file defer
(4.3.0); postfix bounces a missing :include: file (5.3.5), pymda gives the
admin the queue lifetime to notice.

SECURITY:
- TRUST: a .forward is used only if it is a regular file owned by the user
  or root and not world-writable (postfix's rule; group-writable is
  tolerated because of user-private groups).  Otherwise it is ignored with
  a warning and mail goes to the mailbox.  Symbolic links are followed
  (it is read as the user, so the user can only point at what they can
  read anyway); the checks apply to the file opened.
- :include: files must be absolute, regular and not world-writable.  As in
  postfix (allow_mail_to_commands/allow_mail_to_files default to "alias,
  forward"), pipes and files inside an :include: file are refused (5.7.1):
  whoever may write a shared list must not run commands as its readers.
- ``allow_commands = false`` / ``allow_files = false`` refuse pipes / files
  (5.7.1); a file target that exists and has any execute bit is refused
  (5.7.1): mail must not become a program.
- Files are opened O_NONBLOCK (a FIFO cannot hang us) and read as the
  process's uid: the caller has already switched to the user (SPEC 1.8).

LOOP CONTROL: nested :include: files are capped at MAX_INCLUDE_DEPTH, an
:include: file already read for this message is not read again (a loop,
or a fan-out that would read it exponentially often), at most MAX_INCLUDES
files are read, and the total number of entries is capped at MAX_ENTRIES.

DUPLICATE ELIMINATION: the same target (kind + path / command / address,
addresses compared case-insensitively, paths without "//" and "/./")
appears once, at its first position.

LIMITATIONS: ``\\other`` (another user's name) cannot be delivered locally
without root, so it is forwarded like a plain address.  ``~user/path`` is
not supported (parse problem).  $variables in commands are not expanded by
pymda; the shell expands them from the pipe's environment.
"""

import os
import stat

from pymda.errors import PermFail, TempFail
from pymda.record import Record

MAX_INCLUDE_DEPTH = 5
MAX_INCLUDES = 50  # :include: files read for one message
MAX_ENTRIES = 1000
MAX_FILE_SIZE = 1 << 20  # a .forward over a MiB is not a .forward

REASON_INCLUDE_POLICY = "pipes and files are not allowed in :include: files"
REASON_NO_COMMANDS = "mail to commands is not allowed (allow_commands = false)"
REASON_NO_FILES = "mail to files is not allowed (allow_files = false)"
REASON_EXECUTABLE = "refusing to deliver to an executable file"


class ForwardSyntax(Exception):
    """A parse problem; str() names the file and line."""

    def __init__(self, path, line, reason):
        super().__init__(f"{path} line {line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class Entry(Record):
    """One parsed entry.  kind: pipe|mbox|maildir|home|include|self|address."""

    __slots__ = ("kind", "value", "line")


class Item(Record):
    """One expanded target (see module docstring for kinds)."""

    __slots__ = ("kind", "value", "source", "error")
    _defaults = {"error": None}


class Expansion(Record):
    __slots__ = ("items", "path", "warnings")


# --- parsing (pure) -------------------------------------------------------


def split_line(line, path, lineno):
    """Split one line into [(text, quoted)] entries at unquoted commas."""
    entries = []
    buf = []
    quoted = False  # some part of the current entry was quoted
    in_quote = False
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if in_quote:
            if c == "\\" and i + 1 < n:
                buf.append(line[i + 1])
                i += 2
                continue
            if c == '"':
                in_quote = False
            else:
                buf.append(c)
        elif c == '"':
            in_quote = True
            quoted = True
        elif c == ",":
            entries.append(("".join(buf), quoted))
            buf = []
            quoted = False
        else:
            buf.append(c)
        i += 1
    if in_quote:
        raise ForwardSyntax(path, lineno, "unterminated double quote")
    entries.append(("".join(buf), quoted))
    return entries


def parse_entry(text, quoted, path, lineno):
    """Classify one entry's text; None for an empty unquoted entry."""
    text = text.strip()
    if not text:
        if quoted:
            raise ForwardSyntax(path, lineno, "empty quoted entry")
        return None
    if text[0] == "|":
        command = text[1:].strip()
        if not command:
            raise ForwardSyntax(path, lineno, "'|' without a command")
        return Entry(kind="pipe", value=command, line=lineno)
    if text[:9].lower() == ":include:":
        target = text[9:].strip()
        if not target.startswith("/"):
            raise ForwardSyntax(path, lineno, f":include: needs an absolute path, got {target!r}")
        return Entry(kind="include", value=target, line=lineno)
    if text[0] == "/":
        kind = "maildir" if text.endswith("/") else "mbox"
        return Entry(kind=kind, value=text, line=lineno)
    if text[0] == "~":
        if not text.startswith("~/") or len(text) == 2:
            raise ForwardSyntax(path, lineno, f"only ~/path is supported, got {text!r}")
        return Entry(kind="home", value=text[2:], line=lineno)
    if text[0] == "\\":
        name = text[1:].strip()
        if not name or _has_space(name):
            raise ForwardSyntax(path, lineno, f"bad \\name entry {text!r}")
        return Entry(kind="self", value=name, line=lineno)
    address = text
    if address.endswith(">") and "<" in address:
        address = address[address.rindex("<") + 1 : -1].strip()
        if not address:
            raise ForwardSyntax(path, lineno, f"empty address in {text!r}")
    if _has_space(address):
        raise ForwardSyntax(path, lineno, f"address with spaces must be quoted: {text!r}")
    if address.count("@") > 1 or address.startswith("@") or address.endswith("@"):
        raise ForwardSyntax(path, lineno, f"not an address: {text!r}")
    return Entry(kind="address", value=address, line=lineno)


def _has_space(text):
    return any(c in text for c in " \t\r\f\v")


def parse_forward(text, path):
    """Entries of a .forward or :include: file, in order."""
    if "\0" in text:
        raise ForwardSyntax(path, 1 + text[: text.index("\0")].count("\n"), "NUL byte")
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        for piece, quoted in split_line(line, path, lineno):
            entry = parse_entry(piece, quoted, path, lineno)
            if entry is not None:
                out.append(entry)
    return out


# --- reading files ----------------------------------------------------------


def forward_paths(cfg, envelope, identity):
    """Candidate .forward paths, in order (templates needing an absent
    $extension are skipped, as postfix skips them)."""
    from pymda.config import expand as expand_template, template_variables

    variables = template_variables(envelope, identity, cfg)
    variables["sender"] = ""  # the remote party's choice never names a file
    # The extension is the remote sender's choice: one with a '/' is not
    # used in a file name at all (postfix's rule).
    extension = envelope.extension
    if extension and "/" in extension:
        extension = ""
        variables["extension"] = ""
    paths = []
    for template in cfg.forward_path:
        if not extension and "extension" in template:
            continue
        path = expand_template(template, variables)
        if path and path not in paths:
            paths.append(path)
    return paths


def read_trusted(path, owner_uids, what):
    """Text of ``path`` if it passes the trust checks.

    Returns (text, None), or (None, reason) when the file is missing
    (reason None) or untrusted or not readable by the user (reason a
    string).  Raises TempFail on other errors (EIO, EMFILE, ...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (2, 20, 36):  # ENOENT, ENOTDIR, ENAMETOOLONG
            return None, None
        if exc.errno in (1, 13, 40):  # EPERM, EACCES; ELOOP: a symlink loop
            # As postfix ("cannot open file"): a permanent problem of the
            # user's setup, not worth holding the mail for.
            return None, f"{what} {path} cannot be opened: {exc.strerror}"
        raise TempFail(f"cannot open {what} {path}: {exc.strerror}", "4.3.0") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"{what} {path} is not a regular file"
        if owner_uids is not None and st.st_uid not in owner_uids:
            return None, f"{what} {path} is owned by uid {st.st_uid}, not by the user or root"
        if st.st_mode & stat.S_IWOTH:
            return None, f"{what} {path} is world-writable"
        data = None
        if st.st_size <= MAX_FILE_SIZE:
            from pymda.durable import read_all

            data = read_all(fd, MAX_FILE_SIZE)
        if data is None:
            return None, f"{what} {path} is larger than {MAX_FILE_SIZE} bytes"
    except OSError as exc:
        raise TempFail(f"cannot read {what} {path}: {exc.strerror}", "4.3.0") from None
    finally:
        os.close(fd)
    return data.decode("utf-8", "surrogateescape"), None


def find(cfg, envelope, identity, warnings):
    """(path, text) of the .forward to use, or (None, None)."""
    for path in forward_paths(cfg, envelope, identity):
        text, problem = read_trusted(path, (identity.uid, 0), ".forward")
        if problem:
            warnings.append(f"ignoring {problem}")
            return None, None
        if text is not None:
            return path, text
    return None, None


# --- expansion --------------------------------------------------------------


def is_own_address(address, envelope, identity, delimiter):
    """Is ``address`` the user's own name or address (any +extension)?"""
    address = address.lower()
    if address == (envelope.recipient or "").lower():
        return True
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if delimiter:
        base = local
        for d in delimiter:
            if d in base:
                base = base.split(d, 1)[0]
        local = base
    name = identity.name.lower()
    if "@" in name:  # virtual user named by address
        return bool(domain) and f"{local}@{domain}" == name
    if local != name:
        return False
    return not domain or domain == (envelope.domain or "").lower()


def _item_key(item):
    if item.kind == "forward":
        return ("forward", item.value.lower())
    return (item.kind, item.value)


def clean_path(path, kind):
    """``path`` without empty and "." components ("//", "/./"), which name
    the same file anyway, so that one file is one target (DUPLICATE
    ELIMINATION); a Maildir keeps its trailing "/".  ".." is left alone: it
    means something else when a component is a symbolic link."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    clean = "/" + "/".join(parts)
    if kind == "maildir" and clean != "/":
        clean += "/"
    return clean


def _file_item(kind, path, source, cfg, in_include):
    path = clean_path(path, kind)
    if in_include:
        return Item(kind=kind, value=path, source=source,
                    error=PermFail(f"{path}: {REASON_INCLUDE_POLICY}", "5.7.1"))
    if not cfg.allow_files:
        return Item(kind=kind, value=path, source=source,
                    error=PermFail(f"{path}: {REASON_NO_FILES}", "5.7.1"))
    if kind == "mbox":
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return Item(kind=kind, value=path, source=source,
                        error=PermFail(f"{path}: {REASON_EXECUTABLE}", "5.7.1"))
    return Item(kind=kind, value=path, source=source)


def expand_entries(cfg, envelope, identity, entries, label, in_include, state):
    """Append Items for ``entries`` (from file ``label``) to state['items']."""
    items = state["items"]
    for entry in entries:
        if len(items) >= MAX_ENTRIES:
            raise ForwardSyntax(label, entry.line, f"more than {MAX_ENTRIES} entries")
        source = (f":include:{label} line {entry.line}" if in_include
                  else f".forward line {entry.line}")
        kind = entry.kind
        if kind == "include":
            _include(cfg, envelope, identity, entry, label, state)
            continue
        if kind == "pipe":
            if in_include:
                item = Item(kind="pipe", value=entry.value, source=source,
                            error=PermFail(f"|{entry.value}: {REASON_INCLUDE_POLICY}", "5.7.1"))
            elif not cfg.allow_commands:
                item = Item(kind="pipe", value=entry.value, source=source,
                            error=PermFail(f"|{entry.value}: {REASON_NO_COMMANDS}", "5.7.1"))
            else:
                item = Item(kind="pipe", value=entry.value, source=source)
        elif kind in ("mbox", "maildir"):
            item = _file_item(kind, entry.value, source, cfg, in_include)
        elif kind == "home":
            path = os.path.join(identity.home, entry.value)
            item = _file_item("maildir" if path.endswith("/") else "mbox",
                              path, source, cfg, in_include)
        elif kind == "self":
            if is_own_address(entry.value, envelope, identity, cfg.recipient_delimiter):
                item = Item(kind="mailbox", value="", source=source)
            else:
                item = Item(kind="forward", value=entry.value, source=source)
        else:  # address
            if is_own_address(entry.value, envelope, identity, cfg.recipient_delimiter):
                item = Item(kind="mailbox", value="", source=source)
            else:
                item = Item(kind="forward", value=entry.value, source=source)
        key = _item_key(item)
        if key in state["seen"]:
            continue
        state["seen"].add(key)
        items.append(item)


def _include(cfg, envelope, identity, entry, label, state):
    depth = state["depth"]
    if depth >= MAX_INCLUDE_DEPTH:
        raise ForwardSyntax(label, entry.line,
                            f":include: nested deeper than {MAX_INCLUDE_DEPTH}")
    path = entry.value
    # LOOP CONTROL: a file already expanded for this message (further up:
    # a loop; elsewhere: its items are there already) is not read again,
    # and at most MAX_INCLUDES files are read, so that a shared list cannot
    # make its includers' deliveries spin (200 lines x 4 levels = 200**4).
    try:
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    if ident in state["read"] or path in state["read"]:
        return
    state["includes"] += 1
    if state["includes"] > MAX_INCLUDES:
        raise ForwardSyntax(label, entry.line, f"more than {MAX_INCLUDES} :include: files")
    text, problem = read_trusted(path, None, ":include: file")
    if problem:
        raise ForwardSyntax(label, entry.line, problem)
    if text is None:
        raise TempFail(f"{label} line {entry.line}: cannot open :include: file {path}: "
                       "No such file or directory", "4.3.0")
    state["read"].add(path)
    if ident is not None:
        state["read"].add(ident)
    entries = parse_forward(text, path)
    state["depth"] = depth + 1
    try:
        expand_entries(cfg, envelope, identity, entries, path, True, state)
    finally:
        state["depth"] = depth


def expand_items(cfg, envelope, identity):
    """Expansion for this recipient (see module docstring)."""
    warnings = []
    path, text = find(cfg, envelope, identity, warnings)
    if path is None:
        return Expansion(items=None, path=None, warnings=warnings)
    state = {"items": [], "seen": set(), "read": set(), "includes": 0, "depth": 0}
    try:
        entries = parse_forward(text, path)
        expand_entries(cfg, envelope, identity, entries, path, False, state)
    except ForwardSyntax as exc:
        warnings.append(f"ignoring {path}: {exc}; delivering to the mailbox")
        return Expansion(items=None, path=path, warnings=warnings)
    if not state["items"]:
        # empty, comment-only or nothing left: normal mailbox delivery
        return Expansion(items=None, path=path, warnings=warnings)
    return Expansion(items=state["items"], path=path, warnings=warnings)
