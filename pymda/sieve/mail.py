"""Message access for Sieve tests: headers, addresses, envelope, body.

``MailView(header_bytes, size, read_message)`` wraps a message's header
block (the bytes up to and including the empty line) and answers what the
interpreter asks:

- ``header_names()`` -> names in order of appearance (as written);
- ``raw_headers(name)`` -> the values of a header (case-insensitive name,
  in order), unfolded, otherwise untouched;
- ``headers(name)`` -> the same values RFC 2047-decoded (B and Q, any
  charset the ``codecs`` module knows; an invalid or unknown encoded word
  stays as written), leading and trailing whitespace removed (RFC 5228
  §5.7, as Pigeonhole);
- ``addresses(name)`` -> a list of ``Address`` records from the RFC 5322
  address lists of every such header; ``address_fields(name)`` the same
  grouped per header field (for ``:index``);
- ``body(transform, content_types)`` -> list of str for the body
  extension (RFC 5173; the MIME code is pymda.sieve.body, imported only
  by a script that runs a ``body`` test);
- ``size`` -> the message size in octets.

Module functions: ``is_address_header`` (``ADDRESS_HEADERS``),
``address_part`` (``:all :localpart :domain :user
:detail``), ``unfold``, ``decode_words`` (RFC 2047),
``parse_address_list`` (RFC 5322 + obsolete forms), ``parse_envelope_address``
(RFC 5321 path), ``split_header_block``.

An ``Address`` has ``local_part``, ``domain``, ``display_name`` and
``all``.  A value that is not a valid address list is one record with
``local_part`` and ``domain`` None and ``all`` the whole (trimmed) value,
so ``:all`` compares it as a whole and ``:localpart``/``:domain`` never
match (RFC 5228 §2.7.4, Pigeonhole).

Raises nothing on hostile input: every parser falls back to "invalid".

SECURITY: the header block is attacker-controlled; the parsers are linear
in its length and allocate at most a few copies of it.

LIMITATIONS: 8-bit header bytes are read as UTF-8 (invalid sequences
become U+FFFD).  No import of ``email`` (16 ms): own small parsers; only
``codecs``/``binascii`` are imported, and only when a value is encoded.
"""

from pymda.record import Record

_WSP = " \t"


class Address(Record):
    """One address of an address list.

    ``all`` is ``local_part@domain`` (the local part quoted when it is not
    a dot-atom; just the local part when there is no domain) for a valid
    address, the whole value for an invalid one.
    """

    __slots__ = ("local_part", "domain", "display_name", "all")
    _defaults = {"display_name": None}

    @property
    def valid(self):
        return self.local_part is not None


# Headers the address test accepts (RFC 5228 §5.1: at least From To Cc
# Bcc Sender Resent-From Resent-To, and SHOULD any other address-list
# header): RFC 5322's, RFC 2076's and the common non-standard ones, the
# set Pigeonhole's test-address accepts.  Names are lower case.
ADDRESS_HEADERS = frozenset((
    "from", "to", "cc", "bcc", "sender", "reply-to",
    "resent-from", "resent-to", "resent-cc", "resent-bcc", "resent-sender",
    "resent-reply-to", "for-approval", "for-handling", "for-comment",
    "apparently-to", "errors-to", "delivered-to", "return-receipt-to",
    "x-admin", "read-receipt-to", "x-confirm-reading-to",
    "return-receipt-requested", "registered-mail-reply-requested-by",
    "mail-followup-to", "mail-reply-to", "abuse-reports-to",
    "x-complaints-to", "x-report-abuse-to", "x-beenthere",
    "x-original-from", "x-original-to", "disposition-notification-to",
))


def is_address_header(name):
    """May the address test look at header ``name``?  (For the validator:
    Pigeonhole refuses other names, e.g. "frop", at compile time.)"""
    return name.lower() in ADDRESS_HEADERS


def address_part(address, part, delimiters="+"):
    """The ``part`` of an ``Address`` a Sieve test compares, or None.

    ``part``: ``"all"``, ``"localpart"``, ``"domain"`` (RFC 5228 §2.7.4)
    or ``"user"``/``"detail"`` (RFC 5233, ``delimiters`` = pymda's
    ``recipient_delimiter``, each character one delimiter, the first one
    in the local part counts).  None means "this address takes no part
    in the test": an invalid address for every part but ``all``, and an
    address without a delimiter for ``detail``.
    """
    if part == "all":
        return address.all
    local = address.local_part
    if local is None:
        return None
    if part == "localpart":
        return local
    if part == "domain":
        return address.domain
    cut = -1
    for d in delimiters or "":
        i = local.find(d)
        if i >= 0 and (cut < 0 or i < cut):
            cut = i
    if part == "user":
        return local if cut < 0 else local[:cut]
    if part == "detail":
        return None if cut < 0 else local[cut + 1:]
    raise ValueError(f"unknown address part {part!r}")


def _invalid(value):
    return Address(local_part=None, domain=None, all=value)


def _text(data):
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")


# ---------------------------------------------------------------- headers

def split_header_block(data):
    """list[(name, raw_value)] of a header block (bytes or str).

    Values keep their folding (as ``\n`` + continuation line); parsing
    stops at the first empty line.  Lines that are not a field (no colon,
    or a name with characters RFC 5322 does not allow, such as a From_
    line) are skipped with their continuation lines.  A name keeps
    its case; white space before the colon is dropped (obsolete syntax,
    RFC 5322 §4.5).
    """
    text = _text(data)
    fields = []
    name = None
    parts = None
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            break
        if line[0] in _WSP:
            if parts is not None:
                parts.append(line)
            continue
        if parts is not None:
            fields.append((name, "\n".join(parts)))
            parts = None
        colon = line.find(":")
        if colon <= 0:
            continue  # From_ line or garbage: not a header field
        name = line[:colon].rstrip(_WSP)
        if not name or not _field_name(name):
            continue  # e.g. "From mboxrd@z Thu Jan  1 00:00:00 1970"
        parts = [line[colon + 1:]]
    if parts is not None:
        fields.append((name, "\n".join(parts)))
    return fields


def _field_name(name):
    """RFC 5322 §3.6.8: printable US-ASCII except ':' (and no space).
    Printable ASCII is " " to "~": three C-speed checks, no loop."""
    return name.isascii() and name.isprintable() and " " not in name


def unfold(value):
    """Remove CRLF/LF folding from a header value (RFC 5322 §2.2.3).

    As dovecot (checked with Pigeonhole's sieve-test): the line break
    goes, and a TAB that starts the continuation line becomes a space;
    the rest of the continuation's white space stays ("a\\n\\t\\tb" is
    "a \\tb").  A tab inside a line is kept.
    """
    if "\n" not in value and "\r" not in value:
        return value
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        out.append(" " + line[1:] if line.startswith("\t") else line)
    return "".join(out)


# ---------------------------------------------------------------- RFC 2047

def decode_words(value):
    """RFC 2047-decode ``value`` (str).

    Encoded words are recognised anywhere in the value; white space
    between two of them is dropped (RFC 2047 §6.2).  As dovecot (checked
    with Pigeonhole's sieve-test): bad Q escapes stay literal, bad base64
    characters are dropped, an unknown or non-text charset is read as
    UTF-8, white space inside the encoded text is accepted; only a word
    that is not an encoded word at all (no ``?=``, an encoding other than
    B/Q, a ``?`` inside the text) stays as written.
    Undecodable bytes become U+FFFD.  Deviation: adjacent words in one
    charset are joined before decoding, so a character split over two
    words survives (dovecot gives U+FFFD there).
    """
    if "=?" not in value:
        return value
    from pymda.sieve.words import decode  # only a value with "=?" loads it

    return decode(value)


# ---------------------------------------------------------------- addresses

_SPECIALS = '()<>[]:;@\\,"'


def _unquote(s, i):
    """The quoted string that opens at ``s[i]`` (a ``"``): ``(text, end)``,
    the text with its backslash escapes undone and ``end`` the index after
    the closing quote, or -1 when there is none (``text`` is then what
    follows the opening quote)."""
    buf, i, n = [], i + 1, len(s)
    while i < n and s[i] != '"':
        if s[i] == "\\" and i + 1 < n:
            i += 1
        buf.append(s[i])
        i += 1
    return "".join(buf), (i + 1 if i < n else -1)


def _skip_comment(value, i):
    """Index after the (nested) comment that starts at value[i], or -1
    when it is not closed."""
    depth, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if not depth:
                return i + 1
        i += 1
    return -1


def _tokens(value):
    """Tokens of a structured header value, comments dropped.

    Each token is (kind, text): kind "a" atom (dots included, 8-bit
    characters allowed), "q" quoted string (unescaped), "d" domain
    literal (with brackets), or the special character itself.  An
    unterminated quoted string, comment or literal ends the list with a
    ("!", rest) token, which no grammar rule accepts.
    """
    toks = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            i = _skip_comment(value, i)
            if i < 0:
                toks.append(("!", ""))
                return toks
        elif c == '"':
            buf = []
            i += 1
            while True:
                if i >= n:
                    toks.append(("!", ""))
                    return toks
                c = value[i]
                if c == "\\" and i + 1 < n:
                    buf.append(value[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                if c not in "\r\n":
                    buf.append(c)
                i += 1
            toks.append(("q", "".join(buf)))
        elif c == "[":
            j = value.find("]", i)
            if j < 0:
                toks.append(("!", ""))
                return toks
            toks.append(("d", "".join(value[i:j + 1].split())))
            i = j + 1
        elif c in _SPECIALS:
            toks.append((c, c))  # ")" "]" "\\" here: accepted by no rule
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in " \t\r\n":
                j += 1
            toks.append(("a", value[i:j]))
            i = j
    return toks


def _is_dot_atom(text):
    if not text or text[0] == "." or text[-1] == "." or ".." in text:
        return False
    for c in text:
        if c in _SPECIALS or c in " \t\r\n" or ord(c) < 33 or ord(c) == 127:
            return False
    return True


def _format_addr(local, domain, loose_dots=False):
    """local@domain, the local part quoted when it needs it; with
    ``loose_dots`` dots anywhere do not force quotes (envelope paths)."""
    plain = (all(c == "." or _is_atext(c) for c in local) and local) \
        if loose_dots else _is_dot_atom(local)
    if not plain:
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}" if domain else local


def _local_part(words):
    """Local part of a list of word tokens, or None when not valid.

    Words must be joined by dots (dot-atom or obsolete ``"a".b``)."""
    if not words:
        return None
    text = ""
    prev = None
    for kind, w in words:
        if kind not in ("a", "q"):
            return None
        if prev is not None and not (text.endswith(".") or w.startswith(".")):
            return None
        text += w
        prev = w
    if words[0][0] == "a" and len(words) == 1 and not _is_dot_atom(text):
        return None
    if text.startswith(".") or text.endswith(".") or not text:
        if not (len(words) == 1 and words[0][0] == "q" and text):
            return None
    return text


def _domain(toks, i):
    """(domain, next index) of a domain starting at toks[i], or None."""
    if i < len(toks) and toks[i][0] == "d":
        return toks[i][1], i + 1
    parts = []
    while i < len(toks) and toks[i][0] == "a":
        parts.append(toks[i][1])
        i += 1
    domain = "".join(parts)
    if not _is_dot_atom(domain):
        return None
    return domain, i


def _phrase(words):
    if not words:
        return None
    return decode_words(" ".join(w for _, w in words))


def _angle_addr(toks, i):
    """(local, domain, next index) of ``<[route:]addr-spec>`` at toks[i]."""
    i += 1  # "<"
    # obsolete route: 1*("," / "@" domain) ":"
    if i < len(toks) and toks[i][0] in ("@", ","):
        while i < len(toks) and toks[i][0] in ("@", ","):
            if toks[i][0] == "@":
                d = _domain(toks, i + 1)
                if d is None:
                    return None
                i = d[1]
            else:
                i += 1
        if i >= len(toks) or toks[i][0] != ":":
            return None
        i += 1
    words = []
    while i < len(toks) and toks[i][0] in ("a", "q"):
        words.append(toks[i])
        i += 1
    local = _local_part(words)
    if local is None or i >= len(toks) or toks[i][0] != "@":
        return None
    d = _domain(toks, i + 1)
    if d is None:
        return None
    domain, i = d
    if i >= len(toks) or toks[i][0] != ">":
        return None
    return local, domain, i + 1


def _mailbox(toks, i):
    """(Address, next index) of a mailbox at toks[i], or None.

    Also returns ("group", phrase, index after ':') when the phrase is a
    group's display name.
    """
    words = []
    while i < len(toks) and toks[i][0] in ("a", "q"):
        words.append(toks[i])
        i += 1
    kind = toks[i][0] if i < len(toks) else None
    if kind == "<":
        r = _angle_addr(toks, i)
        if r is None:
            return None
        local, domain, i = r
        return Address(local_part=local, domain=domain,
                       display_name=_phrase(words),
                       all=_format_addr(local, domain)), i
    if kind == ":":
        if not words:
            return None
        return ("group", _phrase(words), i + 1)
    if kind == "@":
        local = _local_part(words)
        if local is None:
            return None
        d = _domain(toks, i + 1)
        if d is None:
            return None
        domain, i = d
        return Address(local_part=local, domain=domain,
                       all=_format_addr(local, domain)), i
    return None


def _skip_entry(toks, i):
    """Index of the next top-level "," or ";" at or after ``i``."""
    depth = 0
    while i < len(toks):
        kind = toks[i][0]
        if kind == "<":
            depth += 1
        elif kind == ">" and depth:
            depth -= 1
        elif kind in (",", ";") and not depth:
            return i
        i += 1
    return i


def parse_address_list(value):
    """list[Address] of an RFC 5322 address-list/mailbox-list value.

    Display names (RFC 2047-decoded), groups (flattened; an empty group
    gives nothing), comments, quoted local parts, obsolete route forms
    and empty list elements.

    Broken values, as Pigeonhole 0.5 (checked entry by entry with its
    sieve-test): an entry without a domain (``nonsense``) or with a
    broken ``<...>`` is skipped and the list goes on; a hard error (a bad
    domain after ``@``, text after an address or after a group's ``;``
    without a comma, a group inside a group, an unterminated quote or
    comment) ends the list, keeping the addresses before it.  A value
    that yields no valid address at all is one invalid ``Address``
    holding the whole (unfolded, trimmed) value: ``:all`` compares it as
    a whole, ``:localpart``/``:domain`` never match (RFC 5228 §2.7.4).
    An empty value is one invalid ``Address`` with ``all`` "".
    """
    value = unfold(value).strip(_WSP)
    toks = _tokens(value)
    out = []
    broken = not toks
    i, n = 0, len(toks)
    in_group = False
    while i < n:
        kind = toks[i][0]
        if kind == ",":
            i += 1
            continue
        if kind == ";":
            if not in_group:
                broken = True
                break
            in_group = False
            i += 1
            if i < n and toks[i][0] != ",":
                broken = True
                break
            continue
        r = _mailbox(toks, i)
        if r is None:
            broken = True
            j = _skip_entry(toks, i + 1)
            kinds = {k for k, _ in toks[i:j]}
            if "!" in kinds or ("@" in kinds and "<" not in kinds and kind != "@"):
                break  # hard error: the rest of the value is lost
            i = j  # soft: no domain, or a broken <...>
            continue
        if r[0] == "group":
            if in_group:
                broken = True
                break
            in_group = True
            i = r[2]
            continue
        out.append(r[0])
        i = r[1]
        if i < n and toks[i][0] not in (",", ";"):
            broken = True
            break  # text after an address
    if not out and broken:
        return [_invalid(value)]
    return out


_ATEXT_SPECIAL = frozenset("!#$%&'*+-/=?^_`{|}~")


def _is_atext(c):
    return c.isalnum() or c in _ATEXT_SPECIAL or ord(c) > 127


def _envelope_domain(text):
    """RFC 5321 domain or address literal, leniently: labels of letters,
    digits, '-' and '_' anywhere (Pigeonhole accepts "_example.com" and
    "example-.com"), 8-bit for SMTPUTF8; no empty label."""
    if text.startswith("[") and text.endswith("]") and len(text) > 2:
        return "[" not in text[1:-1] and "]" not in text[1:-1] and " " not in text
    if not text:
        return False
    for label in text.split("."):
        if not label:
            return False
        for c in label:
            if not (c.isalnum() or c in "-_" or ord(c) > 127):
                return False
    return True


def parse_envelope_address(value):
    """Address of an SMTP path (``<a@b>``, ``a@b``, ``<@r1,@r2:a@b>``).

    RFC 5321 §4.1.2: the null path (``""`` or ``"<>"``) gives
    ``Address(local_part="", domain="", all="")``; a source route is
    checked and dropped; a path without a domain (``<postmaster>``) gives
    ``domain`` "".  As Pigeonhole: dots may lead, trail or repeat in the
    local part (Japanese mobile carriers' addresses), domains may hold
    '_'.  Anything else (unbalanced brackets, ``x@``, ``@@``, a bad route,
    a display name) gives an invalid ``Address`` holding the text.
    """
    text = value.strip(_WSP)
    if text in ("", "<>"):
        return Address(local_part="", domain="", all="")
    s = text
    if s.startswith("<"):
        if not s.endswith(">"):
            return _invalid(text)
        s = s[1:-1]
    if "<" in s or ">" in s:
        return _invalid(text)
    if s.startswith("@"):  # source route: "@" domain *("," "@" domain) ":"
        colon = s.find(":")
        if colon < 0:
            return _invalid(text)
        for hop in s[:colon].split(","):
            if not hop.startswith("@") or not _envelope_domain(hop[1:]):
                return _invalid(text)
        s = s[colon + 1:]
    if s.startswith('"'):  # quoted-string local part
        local, end = _unquote(s, 0)
        if end < 0:
            return _invalid(text)
        rest = s[end:]
        if rest and not rest.startswith("@"):
            return _invalid(text)
    else:
        at = s.find("@")
        local, rest = (s, "") if at < 0 else (s[:at], s[at:])
        if not local or not all(c == "." or _is_atext(c) for c in local):
            return _invalid(text)
    if not rest:
        return Address(local_part=local, domain="", all=_format_addr(local, "", True))
    domain = rest[1:]
    if not _envelope_domain(domain):
        return _invalid(text)
    return Address(local_part=local, domain=domain, all=_format_addr(local, domain, True))


class MailView:
    """Read-only view of one message for the Sieve interpreter.

    ``header_bytes``: the header block; ``size``: message size in octets;
    ``read_message``: callable returning the whole message bytes, called
    at most once, only by ``body``.
    """

    __slots__ = ("size", "_fields", "_read", "_index", "_decoded", "_body",
                 "_addresses")

    def __init__(self, header_bytes, size=0, read_message=None):
        self.size = size
        self._read = read_message
        self._fields = split_header_block(header_bytes)
        index = {}
        for name, value in self._fields:
            index.setdefault(name.lower(), []).append(value)
        self._index = index
        self._decoded = {}
        self._addresses = {}
        self._body = None

    def header_names(self):
        """Header field names in order (as written, duplicates kept)."""
        return [name for name, _ in self._fields]

    def raw_headers(self, name):
        """Unfolded, undecoded values of header ``name`` (case-insensitive),
        without the white space that follows the colon."""
        return [unfold(v).lstrip(_WSP) for v in self._index.get(name.lower(), ())]

    def headers(self, name):
        """Unfolded, RFC 2047-decoded, trimmed values of header ``name``."""
        key = name.lower()
        got = self._decoded.get(key)
        if got is None:
            got = [decode_words(unfold(v)).strip(" \t\r\n")
                   for v in self._index.get(key, ())]
            self._decoded[key] = got
        return got

    def exists(self, name):
        """True when header ``name`` is present."""
        return name.lower() in self._index

    def address_fields(self, name):
        """list[list[Address]]: the address list of each header field
        ``name``, one list per field in order (RFC 5260 ``:index`` counts
        fields, not addresses).  Cached: callers must not change it."""
        key = name.lower()
        out = self._addresses.get(key)
        if out is None:
            out = [parse_address_list(v) for v in self._index.get(key, ())]
            self._addresses[key] = out
        return out

    def addresses(self, name):
        """list[Address] of every header ``name`` (in order)."""
        return [a for field in self.address_fields(name) for a in field]

    def _message(self):
        if self._body is None:
            self._body = self._read() if self._read is not None else b""
        return self._body

    def body(self, transform="text", content_types=None):
        """list[str] of body parts for the body test (RFC 5173).

        ``transform``: ``"raw"`` (the undecoded body after the empty
        line, one item; no item at all when the message has no empty line
        after its header), ``"content"`` (the decoded parts whose MIME type
        matches one of ``content_types``: ``"text"`` matches ``text/*``,
        ``"text/html"`` exactly, ``""`` every part; a matching multipart
        contributes its preamble and epilogue, a matching message/rfc822
        its header, as RFC 5173 §5.2), ``"text"`` (the text of text/*
        parts and of HTML/XHTML parts with markup removed, recursing
        into nested messages' bodies).  Transfer encodings
        (quoted-printable, base64) are decoded and text is decoded from
        its charset to str; a part with an unknown transfer encoding is
        skipped.
        """
        from pymda.sieve.body import body_parts

        return body_parts(self._message(), transform, content_types)
