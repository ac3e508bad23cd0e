"""The body of a message for the Sieve ``body`` test (RFC 5173): MIME
parts, transfer encodings, charsets, HTML to text.

Contract: ``body_parts(data, transform, content_types)`` -> list of str,
what ``pymda.sieve.mail.MailView.body`` returns (see there): ``data`` is
the whole message.

Imported only when a script runs a ``body`` test (MailView.body): a
delivery whose script looks at headers and addresses only does not load
it.

SECURITY: the message is a stranger's: parts nest at most
``MAX_MIME_DEPTH`` deep and at most ``MAX_MIME_PARTS`` are walked; the
scanners are linear.
"""

from pymda.sieve.mail import _text, _unquote, split_header_block, unfold
from pymda.sieve.words import _B64


def _params(value):
    """(type/subtype lower-cased or "" when invalid, {param: value})."""
    value = unfold(value)
    head, _, rest = value.partition(";")
    ctype = head.strip(" \t").lower()
    if "(" in ctype:
        ctype = ctype.split("(", 1)[0].strip(" \t")
    t, slash, sub = ctype.partition("/")
    if not slash or not t or not sub or "/" in sub:
        ctype = ""
    params = {}
    i, n = 0, len(rest)
    while i < n:
        j = i
        while j < n and rest[j] not in "=;":
            j += 1
        name = rest[i:j].strip(" \t").lower()
        if j >= n or rest[j] == ";":
            i = j + 1
            continue
        j += 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            val, end = _unquote(rest, j)
            k = rest.find(";", end) if end >= 0 else -1
            j = n if k < 0 else k
        else:
            k = rest.find(";", j)
            k = n if k < 0 else k
            val = rest[j:k].strip(" \t")
            j = k
        if name and name not in params:
            params[name] = val
        i = j + 1
    return ctype, params


def _split_message(data):
    """(header block bytes, body bytes) of a message or MIME part; the
    body is None when no empty line ends the header (RFC 5173 §4: then
    there is no body at all, not an empty one)."""
    if data.startswith(b"\n"):
        return b"", data[1:]
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    i = data.find(b"\n\n")
    j = data.find(b"\n\r\n")
    if i < 0 and j < 0:
        return data, None
    if j >= 0 and (i < 0 or j < i):
        return data[:j + 1], data[j + 3:]
    return data[:i + 1], data[i + 2:]


def _split_multipart(body, boundary):
    """(preamble, [part bytes], epilogue) of a multipart body."""
    delim = b"--" + boundary.encode("utf-8", "replace")
    parts = []
    preamble = None
    current = None
    start = 0
    pos = 0
    n = len(body)
    closed = False
    while pos < n:
        eol = body.find(b"\n", pos)
        line_end = n if eol < 0 else eol + 1
        line = body[pos:line_end].rstrip(b"\r\n")
        if line.startswith(delim):
            tail = line[len(delim):]
            is_close = tail.startswith(b"--")
            if is_close:
                tail = tail[2:]
            if not tail.strip(b" \t"):
                # The line break before a delimiter belongs to it (RFC 2046 §5.1.1).
                chunk = body[start:pos]
                if chunk.endswith(b"\r\n"):
                    chunk = chunk[:-2]
                elif chunk.endswith(b"\n"):
                    chunk = chunk[:-1]
                if current is None:
                    preamble = chunk
                else:
                    parts.append(chunk)
                current = True
                start = line_end
                if is_close:
                    closed = True
                    break
        pos = line_end
    if preamble is None:
        return body, [], b""
    if not closed:
        parts.append(body[start:])
        return preamble, parts, b""
    return preamble, parts, body[start:]


def _transfer_decode(data, cte):
    import binascii
    if cte in ("", "7bit", "8bit", "binary"):
        return data
    if cte == "base64":
        clean = bytes(c for c in data if c in _B64) if data else b""
        clean = clean.rstrip(b"=")
        clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
        clean += b"=" * (-len(clean) % 4)
        try:
            return binascii.a2b_base64(clean)
        except (binascii.Error, ValueError):
            return None
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    return None  # unknown encoding: the part is skipped, as Pigeonhole


def _charset_decode(data, charset):
    charset = (charset or "utf-8").strip().lower()
    if charset in ("us-ascii", "ascii", ""):
        charset = "utf-8"  # 8-bit in an "ascii" part is nearly always UTF-8
    try:
        b"a".decode(charset, "replace")
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _html_to_text(html):
    """Text of an HTML document, as dovecot's html2text (checked with
    Pigeonhole's sieve-test): every tag is a word break, runs of white
    space are one space, <script>/<style> content and comments go,
    entities are decoded (unknown ones dropped).  A small scanner: no
    parser import on the delivery path."""
    out = []
    i, n = 0, len(html)
    lower = html.lower()
    while i < n:
        lt = html.find("<", i)
        if lt < 0:
            out.append(html[i:])
            break
        out.append(html[i:lt])
        out.append(" ")
        if html.startswith("<!--", lt):
            end = html.find("-->", lt + 4)
            i = n if end < 0 else end + 3
            continue
        for tag in ("script", "style"):
            after = lower[lt + 1 + len(tag):lt + 2 + len(tag)]
            if lower.startswith("<" + tag, lt) and not after.isalnum():
                close = lower.find("</" + tag, lt)
                gt = html.find(">", close) if close >= 0 else -1
                i = n if gt < 0 else gt + 1
                break
        else:
            gt = html.find(">", lt)
            i = n if gt < 0 else gt + 1
    text = "".join(out)
    if "&" in text:
        text = _entities(text)
    # ASCII white space only: U+00A0 from &nbsp; stays, as dovecot
    return " ".join(w for w in text.translate(_HTML_SPACE).split(" ") if w)


_HTML_SPACE = str.maketrans("\t\r\n\f", "    ")


# HTML 4 Latin-1 entities are the code points 160..255 in this order.
_LATIN1_NAMES = (
    "nbsp iexcl cent pound curren yen brvbar sect uml copy ordf laquo not shy "
    "reg macr deg plusmn sup2 sup3 acute micro para middot cedil sup1 ordm "
    "raquo frac14 frac12 frac34 iquest Agrave Aacute Acirc Atilde Auml Aring "
    "AElig Ccedil Egrave Eacute Ecirc Euml Igrave Iacute Icirc Iuml ETH Ntilde "
    "Ograve Oacute Ocirc Otilde Ouml times Oslash Ugrave Uacute Ucirc Uuml "
    "Yacute THORN szlig agrave aacute acirc atilde auml aring aelig ccedil "
    "egrave eacute ecirc euml igrave iacute icirc iuml eth ntilde ograve oacute "
    "ocirc otilde ouml divide oslash ugrave uacute ucirc uuml yacute thorn yuml"
).split()
_ENTITIES = dict(zip(_LATIN1_NAMES, map(chr, range(160, 256))))
_ENTITIES.update({
    "lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'",
    "ndash": "\u2013", "mdash": "\u2014", "lsquo": "\u2018", "rsquo": "\u2019",
    "sbquo": "\u201a", "ldquo": "\u201c", "rdquo": "\u201d", "bdquo": "\u201e",
    "bull": "\u2022", "hellip": "\u2026", "euro": "\u20ac", "trade": "\u2122",
    "lsaquo": "\u2039", "rsaquo": "\u203a", "dagger": "\u2020", "Dagger": "\u2021",
    "permil": "\u2030", "oelig": "\u0153", "OElig": "\u0152", "scaron": "\u0161",
    "Scaron": "\u0160", "zwnj": "\u200c", "zwj": "\u200d", "thinsp": "\u2009",
    "ensp": "\u2002", "emsp": "\u2003", "larr": "\u2190", "rarr": "\u2192",
})


def _entities(text):
    out = []
    i = 0
    while True:
        a = text.find("&", i)
        if a < 0:
            out.append(text[i:])
            break
        out.append(text[i:a])
        semi = text.find(";", a + 1, a + 34)
        name = text[a + 1:semi] if semi > a + 1 else ""
        if not (name.isalnum() or (name[:1] == "#" and name[1:].isalnum())):
            out.append("&")  # a bare ampersand
            i = a + 1
            continue
        rep = _ENTITIES.get(name)
        if rep is None and name.startswith("#"):
            try:
                code = int(name[2:], 16) if name[1:2] in ("x", "X") else int(name[1:])
                rep = chr(code) if 0 < code < 0x110000 else ""
            except ValueError:
                rep = ""
        out.append(rep or "")  # unknown entities are dropped, as dovecot
        i = semi + 1
    return "".join(out)


def _type_matches(ctype, wanted):
    """RFC 5173 §5.2: "" matches all, "type" every subtype, "t/s" exactly;
    a wanted type that starts or ends with '/' or has two matches none."""
    if wanted == "":
        return True
    wanted = wanted.lower()
    if wanted.startswith("/") or wanted.endswith("/") or wanted.count("/") > 1:
        return False
    if not ctype:
        return False
    if "/" in wanted:
        return ctype == wanted
    return ctype.split("/", 1)[0] == wanted


MAX_MIME_DEPTH = 20
MAX_MIME_PARTS = 1000


def _walk(data, default_type, depth, visit, counter):
    """Call visit(ctype, params, header_bytes, body_bytes, cte) for each
    MIME part of ``data``, depth first; multipart children and an
    enclosed message/rfc822 are walked after their container."""
    counter[0] += 1
    if depth > MAX_MIME_DEPTH or counter[0] > MAX_MIME_PARTS:
        return
    header, body = _split_message(data)
    if body is None:
        body = b""
    ctype, params, cte = default_type, {}, ""
    for name, value in split_header_block(header):
        lname = name.lower()
        if lname == "content-type":
            ctype, params = _params(value)
        elif lname == "content-transfer-encoding":
            cte = unfold(value).strip(" \t").lower()
    visit(ctype, params, header, body, cte)
    major = ctype.split("/", 1)[0]
    if major == "multipart" and params.get("boundary"):
        child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        _, parts, _ = _split_multipart(body, params["boundary"])
        for part in parts:
            _walk(part, child_default, depth + 1, visit, counter)
    elif ctype == "message/rfc822" and cte in ("", "7bit", "8bit", "binary"):
        _walk(body, "text/plain", depth + 1, visit, counter)


def body_parts(data, transform="text", content_types=None):
    """See MailView.body."""
    body = _split_message(data)[1]
    if body is None:
        return []  # header only: every body test is false (RFC 5173 §4)
    if transform == "raw":
        return [_text(body)]
    out = []
    counter = [0]
    if transform == "content":
        wanted = list(content_types or [])

        def visit(ctype, params, header, body, cte):
            if not any(_type_matches(ctype, w) for w in wanted):
                return
            major = ctype.split("/", 1)[0]
            if major == "multipart":
                pre, parts, epi = _split_multipart(body, params.get("boundary") or "\0")
                if parts:
                    out.append(_text(pre))
                    out.append(_text(epi))
                else:
                    out.append(_text(body))
                return
            if ctype == "message/rfc822":
                out.append(_text(_split_message(body)[0]))
                return
            decoded = _transfer_decode(body, cte)
            if decoded is None:
                return
            if major == "text" or not ctype:
                out.append(_charset_decode(decoded, params.get("charset")))
            else:
                out.append(_text(decoded))
    else:
        def visit(ctype, params, header, body, cte):
            if ctype.split("/", 1)[0] in ("multipart", "message"):
                return
            html = ctype in ("text/html", "application/xhtml+xml")
            if not (ctype.startswith("text/") or html):
                return
            decoded = _transfer_decode(body, cte)
            if decoded is None:
                return
            text = _charset_decode(decoded, params.get("charset"))
            out.append(_html_to_text(text) if html else text)

    _walk(data, "text/plain", 0, visit, counter)
    return out
