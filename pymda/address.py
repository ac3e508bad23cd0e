"""Addresses and folder names: pure functions, no file system.

- ``split_address("alice+work@example.org", "+")`` ->
  ("alice+work", "example.org", "alice", "work")
- ``check_folder(name)`` -> list of path components, or None when the name
  must never be used (SPEC 1.2: empty, ".", "..", leading ".", NUL,
  empty levels, anything that could leave the mailbox).
- ``maildir_folder(name, encoding)`` -> ".Work.Reports" (Maildir++).
- ``mbox_folder(name, encoding)`` -> "Work/Reports" (relative file path).
- ``parse_sender(text)``: ``-f`` as given -> the sender ("" for ``<>``).
- ``encode_mutf7(text)``: IMAP modified UTF-7 (RFC 3501 5.1.3), dovecot's
  default on-disk folder name encoding.

SECURITY: every folder name that reaches the file system has passed
``check_folder``; callers treat None as "never use" (-m: usage error;
+extension: INBOX).
"""

INBOX = "INBOX"


def split_address(address, delimiters="+"):
    """(local, domain, user, extension) of an address.

    The extension is what follows the first delimiter character in the
    local part, as postfix's ``recipient_delimiter`` (each character of
    the setting is a delimiter).
    """
    address = address.strip().strip("<>")
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    user, extension = local, ""
    if delimiters:
        cut = -1
        for d in delimiters:
            i = local.find(d)
            if i > 0 and (cut < 0 or i < cut):
                cut = i
        if cut > 0:
            user, extension = local[:cut], local[cut + 1 :]
    return local, domain, user, extension


def parse_sender(text):
    """An envelope sender as given on a command line: ``""`` or ``<>`` is
    the null sender (""); one pair of angle brackets is removed."""
    text = text.strip()
    if text in ("<>", ""):
        return ""
    if text.startswith("<") and text.endswith(">"):
        return text[1:-1]
    return text


# postfix's default command_expansion_filter: the characters it lets
# through to $SENDER & co.; every other one becomes "_".
EXPANSION_SAFE = frozenset(
    "1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def censor(value):
    """``value`` as postfix's command_expansion_filter passes it to a shell."""
    return "".join(c if c in EXPANSION_SAFE else "_" for c in value)


def is_inbox(name):
    return name.upper() == INBOX


def check_folder(name):
    """Folder levels of ``name`` ('/'-separated) or None if it is unsafe."""
    if not name or "\0" in name or name.startswith(".") or name.startswith("/"):
        return None
    levels = name.split("/")
    for level in levels:
        if not level or level in (".", "..") or level.startswith("."):
            return None
        # '.' is Maildir++'s level separator: "x..y" or "x." would make an
        # empty level that IMAP servers cannot show.
        if ".." in level or level.endswith("."):
            return None
        if "\n" in level or "\r" in level:
            return None
    return levels


def _encode_level(level, encoding):
    if encoding == "utf8" or (level.isascii() and "&" not in level):
        return level
    return encode_mutf7(level)


# A file name (one path component) may not be longer than this (Linux
# NAME_MAX, in bytes): a longer folder would fail the same way on every
# retry, so it is treated as unusable, like an unsafe name.
NAME_MAX = 255


def _fits(component):
    return len(component.encode("utf-8", "surrogateescape")) <= NAME_MAX


def maildir_folder(name, encoding="utf7"):
    """Maildir++ directory name for a checked folder: '.A.B'.

    A '.' inside a level is Maildir++'s own hierarchy separator, so
    'a.b' and 'a/b' are the same folder (as in dovecot's maildir++ layout).
    ValueError for an unsafe name or one longer than NAME_MAX once encoded.
    """
    levels = check_folder(name)
    if levels is None:
        raise ValueError(f"unsafe folder name {name!r}")
    result = "." + ".".join(_encode_level(level, encoding) for level in levels)
    if not _fits(result):
        raise ValueError(f"folder name too long: {name!r}")
    return result


def mbox_folder(name, encoding="utf7"):
    """Relative mbox file path for a checked folder: 'A/B' (ValueError as above)."""
    levels = check_folder(name)
    if levels is None:
        raise ValueError(f"unsafe folder name {name!r}")
    encoded = [_encode_level(level, encoding) for level in levels]
    if not all(_fits(level) for level in encoded):
        raise ValueError(f"folder name too long: {name!r}")
    return "/".join(encoded)


def encode_mutf7(text):
    """IMAP modified UTF-7: '&' -> '&-', non-ASCII runs as &base64(utf16be)-."""
    import binascii

    out = []
    run = []

    def flush():
        if run:
            data = "".join(run).encode("utf-16-be")
            b64 = binascii.b2a_base64(data, newline=False).rstrip(b"=")
            out.append("&" + b64.decode("ascii").replace("/", ",") + "-")
            run.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)
