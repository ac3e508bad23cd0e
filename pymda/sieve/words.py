"""RFC 2047 encoded words in header values: the decoder behind
``pymda.sieve.mail.decode_words``.

Contract: ``decode(value)`` -> ``value`` (str) with every encoded word
decoded, as ``decode_words`` documents (dovecot's leniency, adjacent
words of one charset joined before decoding).  ``decode_words`` returns a
value without ``=?`` as it is and imports this module only for one with:
most header values of most messages never load it.  PURE: no I/O.
"""

from pymda.sieve.mail import _WSP


def _parse_word(value, start):
    """(end, charset, bytes) of the encoded word at ``start`` or None."""
    q1 = value.find("?", start + 2)
    if q1 < 0:
        return None
    charset = value[start + 2:q1]
    if not charset or " " in charset or "\t" in charset:
        return None
    if len(value) < q1 + 3 or value[q1 + 2] != "?":
        return None
    encoding = value[q1 + 1].upper()
    end = value.find("?=", q1 + 3)
    if end < 0:
        return None
    text = value[q1 + 3:end]
    if "?" in text:
        return None  # "=?cs?q?a?b?=" is not an encoded word (dovecot agrees)
    if encoding == "B":
        data = _decode_b(text)
    elif encoding == "Q":
        data = _decode_q(text)
    else:
        return None
    charset = charset.split("*", 1)[0].lower()  # RFC 2231 language suffix
    try:
        b"a".decode(charset, "replace")  # b"" would skip the codec lookup
    except LookupError:
        # unknown ("unknown-8bit") or not a text encoding ("hex"): the
        # bytes are read as UTF-8, as dovecot does
        charset = "utf-8"
    return end + 2, charset, data


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _decode_b(text):
    """Base64 of an encoded word, leniently as dovecot: characters outside
    the alphabet are dropped, missing padding is added, a dangling sixth
    bit group is ignored."""
    import binascii
    clean = bytes(c for c in text.encode("ascii", "ignore") if c in _B64)
    clean = clean[:len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    clean += b"=" * (-len(clean) % 4)
    return binascii.a2b_base64(clean)


def _decode_q(text):
    """Q encoding (RFC 2047 §4.2), leniently as dovecot: an "=" not
    followed by two hex digits stays as it is."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "_":
            out.append(0x20)
        elif c == "=" and _is_hex2(text[i + 1:i + 3]):
            out.append(int(text[i + 1:i + 3], 16))
            i += 2
        else:
            out += c.encode("utf-8")
        i += 1
    return bytes(out)


def _is_hex2(pair):
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


def decode(value):
    """See ``pymda.sieve.mail.decode_words``; ``value`` holds ``=?``."""
    out = []
    pending = None  # [charset, bytearray] of adjacent words
    i = 0
    last_was_word = False
    while True:
        j = value.find("=?", i)
        if j < 0:
            break
        word = _parse_word(value, j)
        if word is None:
            if pending:
                out.append(bytes(pending[1]).decode(pending[0], "replace"))
                pending = None
            out.append(value[i:j + 2])
            i = j + 2
            last_was_word = False
            continue
        end, charset, data = word
        between = value[i:j]
        if not (last_was_word and not between.strip(_WSP)):
            if pending:
                out.append(bytes(pending[1]).decode(pending[0], "replace"))
                pending = None
            out.append(between)
        if pending and pending[0] == charset:
            pending[1] += data
        else:
            if pending:
                out.append(bytes(pending[1]).decode(pending[0], "replace"))
            pending = [charset, bytearray(data)]
        i = end
        last_was_word = True
    if pending:
        out.append(bytes(pending[1]).decode(pending[0], "replace"))
    out.append(value[i:])
    return "".join(out)
