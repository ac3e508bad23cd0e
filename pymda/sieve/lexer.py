"""Sieve lexer (RFC 5228 section 2 and 8.1): script text -> tokens.

Contract: ``tokenize(text, filename)`` returns a list of ``(kind, value,
line)`` tuples, kind one of ``"id"`` (identifier), ``"tag"`` (``:name``,
value without the colon, lower-cased), ``"num"`` (int, K/M/G applied),
``"str"`` (quoted or ``text:`` string, escapes and dot-stuffing removed),
or the punctuation itself (``; , ( ) [ ] { }``); a final ``("eof", None,
line)``.  Raises ``SieveCompileError`` listing every lexical error
(file, line, message); an unterminated string or comment ends the scan.

String line ends: a bare LF inside a quoted or multi-line string becomes
CRLF, as Pigeonhole does, so that strings compare equal whatever the
script file's line ends are (its test suite relies on it).

Imported only on a compiled-cache miss (pymda.sieve.cache); never on the
delivery path of a cached script.

LIMITATIONS: the script must be valid UTF-8 (checked by the caller);
numbers above 2**64-1 and identifiers/tags longer than 32 characters are
errors (Pigeonhole's limits).
"""

from pymda.sieve.result import SieveCompileError

_IDSTART = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDCHARS = _IDSTART | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_PUNCT = frozenset(";,()[]{}")
_QUANT = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_NUMBER = (1 << 64) - 1     # Pigeonhole's sieve_number_t
MAX_IDENTIFIER = 32             # RFC 5228 leaves it open; Pigeonhole's limit
MAX_ERRORS = 100


def _crlf(s):
    """Bare LF -> CRLF (see module docstring)."""
    if "\n" not in s:
        return s
    return s.replace("\r\n", "\n").replace("\n", "\r\n")


def tokenize(text, filename="script"):
    toks = []
    errors = []

    def fail(msg, line, final=False):
        """Record an error and go on (all lexical errors are reported);
        an unterminated construct (``final``) ends the scan."""
        errors.append((filename, line, msg))
        if final or len(errors) >= MAX_ERRORS:
            raise _Stop()

    try:
        _scan(text, filename, toks, fail)
    except _Stop:
        pass
    if errors:
        exc = SieveCompileError(errors[0][2], filename, errors[0][1])
        exc.errors = errors
        raise exc
    return toks


class _Stop(Exception):
    pass


def _scan(text, filename, toks, fail):
    append = toks.append
    i = 0
    n = len(text)
    line = 1

    while i < n:
        c = text[i]
        if c == " " or c == "\t" or c == "\r":
            i += 1
        elif c == "\n":
            line += 1
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                fail("unterminated bracket comment", line, True)
            line += text.count("\n", i, j)
            i = j + 2
        elif c in _PUNCT:
            append((c, c, line))
            i += 1
        elif c == '"':
            start = line
            buf = []
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    k = n
                b = text.find("\\", j, k)
                if b >= 0:
                    k = b
                if k >= n:
                    fail("unterminated quoted string", start, True)
                buf.append(text[j:k])
                if text[k] == '"':
                    i = k + 1
                    break
                # RFC 5228 2.4.2: "\" followed by any character is that
                # character (unknown escapes are not an error).
                if k + 1 >= n:
                    fail("unterminated quoted string", start, True)
                buf.append(text[k + 1])
                j = k + 2
            s = "".join(buf)
            line += s.count("\n")
            append(("str", _crlf(s), start))
        elif c == ":":
            j = i + 1
            if j < n and text[j] in _IDSTART:
                while j < n and text[j] in _IDCHARS:
                    j += 1
                if j - i - 1 > MAX_IDENTIFIER:
                    fail("tag ':%s...' is too long" % text[i + 1:i + 21], line)
                append(("tag", text[i + 1:j].lower(), line))
                i = j
            else:
                fail("':' not followed by an identifier", line)
                i += 1
        elif c in _DIGITS:
            j = i
            while j < n and text[j] in _DIGITS:
                j += 1
            value = int(text[i:j])
            if j < n and text[j].lower() in _QUANT:
                value *= _QUANT[text[j].lower()]
                j += 1
            if j < n and text[j] in _IDCHARS:
                fail("invalid number %r" % text[i:j + 1], line)
                while j < n and text[j] in _IDCHARS:
                    j += 1
            elif value > MAX_NUMBER:
                fail("number %s is too large" % text[i:j], line)
            append(("num", value, line))
            i = j
        elif c in _IDSTART:
            j = i
            while j < n and text[j] in _IDCHARS:
                j += 1
            word = text[i:j]
            if word.lower() == "text" and j < n and text[j] == ":":
                try:
                    i = _multiline(text, j + 1, line, filename, append)
                except SieveCompileError as e:
                    fail(e.message, e.line, True)
                line += text.count("\n", j, i)
            else:
                if j - i > MAX_IDENTIFIER:
                    fail("identifier '%s...' is too long" % word[:20], line)
                append(("id", word.lower(), line))
                i = j
        else:
            fail("unexpected character %r" % c, line)
            i += 1
    append(("eof", None, line))


def _multiline(text, i, line, filename, append):
    """Scan a ``text:`` string starting after the colon; return the index
    after its terminating ``.`` line."""
    n = len(text)
    # RFC 5228 8.1: "text:" *(SP / HTAB) (hash-comment / CRLF)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "#":
        j = text.find("\n", i)
        i = n if j < 0 else j
    if i < n and text[i] == "\r":
        i += 1
    if i >= n or text[i] != "\n":
        raise SieveCompileError(
            "text: must be followed by a line end", filename, line)
    i += 1
    out = []
    while True:
        j = text.find("\n", i)
        if j < 0:
            if text[i:].rstrip("\r") == ".":
                return n
            raise SieveCompileError(
                "unterminated multi-line string", filename, line)
        ln = text[i:j]
        if ln.endswith("\r"):
            ln = ln[:-1]
        i = j + 1
        if ln == ".":
            break
        if ln.startswith("."):
            # dot-stuffing: ".." at the start stands for "."; RFC 5228
            # leaves a single leading dot undefined, kept as is.
            ln = ln[1:] if ln.startswith("..") else ln
        out.append(ln + "\r\n")
    append(("str", "".join(out), line))
    return i
