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
  address lists of every such header;
- ``body(transform, content_types)`` -> list of str for the body
  extension (RFC 5173);
- ``size`` -> the message size in octets.

Module functions: ``unfold``, ``decode_words`` (RFC 2047),
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


class Address(Record):
    """One address of an address list.

    ``all`` is ``local_part@domain`` (or just ``local_part`` when there is
    no domain) for a valid address, the whole value for an invalid one.
    """

    __slots__ = ("local_part", "domain", "display_name", "all")
    _defaults = {"display_name": None}

    @property
    def valid(self):
        return self.local_part is not None


def unfold(value):
    """Remove CRLF/LF folding from a header value (RFC 5322 §2.2.3)."""
    raise NotImplementedError


def decode_words(value):
    """RFC 2047-decode ``value`` (str); invalid encoded words stay raw."""
    raise NotImplementedError


def parse_address_list(value):
    """list[Address] of an RFC 5322 address-list/mailbox-list value.

    Display names, groups (flattened; an empty group gives nothing),
    comments, quoted local parts, obsolete route forms.  A value that does
    not parse is one invalid ``Address`` holding the whole value.
    """
    raise NotImplementedError


def parse_envelope_address(value):
    """Address of an SMTP path (``<a@b>``, ``a@b``, ``<@r1,@r2:a@b>``).

    The null path (``""`` or ``"<>"``) gives ``Address(local_part="",
    domain="", all="")``; an invalid path an invalid ``Address``.
    """
    raise NotImplementedError


def split_header_block(data):
    """list[(name, raw_value)] of a header block (bytes or str).

    Values keep their folding; parsing stops at the first empty line.
    Lines without a colon (and a From_ line) are skipped.
    """
    raise NotImplementedError


class MailView:
    """Read-only view of one message for the Sieve interpreter.

    ``header_bytes``: the header block; ``size``: message size in octets;
    ``read_message``: callable returning the whole message bytes, called
    at most once, only by ``body``.
    """

    __slots__ = ("size", "_fields", "_read", "_index", "_decoded", "_body")

    def __init__(self, header_bytes, size=0, read_message=None):
        raise NotImplementedError

    def header_names(self):
        """Header field names in order (as written, duplicates kept)."""
        raise NotImplementedError

    def raw_headers(self, name):
        """Unfolded, undecoded values of header ``name`` (case-insensitive)."""
        raise NotImplementedError

    def headers(self, name):
        """Unfolded, RFC 2047-decoded, trimmed values of header ``name``."""
        raise NotImplementedError

    def exists(self, name):
        """True when header ``name`` is present."""
        raise NotImplementedError

    def addresses(self, name):
        """list[Address] of every header ``name`` (in order)."""
        raise NotImplementedError

    def body(self, transform="text", content_types=None):
        """list[str] of body parts for the body test (RFC 5173).

        ``transform``: ``"raw"`` (the undecoded body, one item),
        ``"content"`` (the decoded parts whose MIME type matches one of
        ``content_types``: ``"text"`` matches ``text/*``, ``"text/html"``
        exactly, ``""`` every part; multipart containers themselves match
        only their preamble/epilogue... as RFC 5173 §5.2), ``"text"`` (the
        decoded text parts, as ``:content "text"``).
        Transfer encodings (quoted-printable, base64) are decoded and text
        is decoded from its charset to str.
        """
        raise NotImplementedError
