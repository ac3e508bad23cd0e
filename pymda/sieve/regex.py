"""The ``regex`` match type (draft-ietf-sieve-regex-01): POSIX ERE.

- ``compile_regex(pattern, casefold=False)`` -> a compiled ``Regex``;
  raises ``RegexError`` (text for the script's error) on a pattern that
  is invalid or longer than ``MAX_PATTERN``.
- ``search(compiled, text)`` -> list of captures (``${0}`` = the whole
  match, then each group, "" for a group that did not take part) or
  None; raises ``RegexTimeout`` (a ``RegexError``) when the guarded
  engine runs out of time.
- ``translate_ere(pattern, end_anchor)`` -> the pattern in the syntax
  RE2 and Python's ``re`` share.

Engine (why: docs/sieve-regex.md): Google RE2 through the ``google-re2``
package (linear time, thread-safe, no timer needed) when it is
installed; otherwise, and for the patterns RE2 cannot run
(back-references, a GNU extension Pigeonhole's glibc accepts), Python's
``re`` under a CPU timer (``ITIMER_PROF``, ``MATCH_CPU_LIMIT`` seconds
per match).  Both engines use leftmost-first (Perl/PCRE2) semantics, as
dovecot 2.4 does; Pigeonhole 0.5 used glibc's POSIX leftmost-longest,
which can give other matches for alternations such as ``x(a|ab)``.
This module, ``re`` and ``re2`` are imported only when a script uses
regex.

SECURITY: patterns and subjects are attacker-controlled.  Matching never
takes exponential time: RE2 is linear; ``re`` is stopped by the timer.
The translation emits no engine-specific construct a script could use
(inline flags and lookarounds are errors, as in glibc; lazy or
possessive quantifiers come out as repeated groups).  Which patterns
compile follows glibc's regcomp, the engine Pigeonhole uses.

LIMITATIONS: the ``re`` fallback needs the main thread (a signal
handler); in another thread a pattern that needs ``re`` is refused with
``RegexError`` (install google-re2).  Equivalence classes ``[=a=]`` and
collating symbols ``[.a.]`` match the character itself (C locale).
Case-insensitive matching (i;ascii-casemap) also folds non-ASCII letters
under RE2.
"""

MAX_PATTERN = 8192
MATCH_CPU_LIMIT = 1.0  # seconds of CPU per match on the guarded engine

# POSIX character classes in the C locale (ASCII), as bracket contents.
_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "0-9a-zA-Z",
    "upper": "A-Z", "lower": "a-z", "space": " \\t\\n\\r\\f\\v",
    "blank": " \\t", "punct": "!-/:-@\\[-`{-~", "print": " -~",
    "graph": "!-~", "cntrl": "\\x00-\\x1f\\x7f", "xdigit": "0-9A-Fa-f",
    "word": "0-9a-zA-Z_",
}

# GNU extensions glibc's regcomp accepts after a backslash.
_GNU_ESCAPES = {"w": "\\w", "W": "\\W", "s": "\\s", "S": "\\S",
                "b": "\\b", "B": "\\B", "<": "\\b", ">": "\\b", "`": "\\A"}

_DUP_MAX = 1000  # RE2's limit (glibc allows 32767)


class RegexError(ValueError):
    """An invalid or unsupported regular expression."""


class RegexTimeout(RegexError):
    """A match ran out of CPU time (the guarded engine)."""


def _escape_char(c):
    if c.isalnum() or c == "_" or ord(c) > 127:
        return c
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if ord(c) < 32 or ord(c) == 127:
        return "\\x%02x" % ord(c)
    return "\\" + c


def _bracket(p, i):
    """(translated bracket expression, index after it); p[i] == '['."""
    n = len(p)
    i += 1
    out = ["["]
    if i < n and p[i] == "^":
        out.append("^")
        i += 1
    first = True
    items = 0
    while True:
        if i >= n:
            raise RegexError("unmatched [ in regular expression")
        c = p[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if c == "[" and i + 1 < n and p[i + 1] in ":=.":
            kind = p[i + 1]
            end = p.find(kind + "]", i + 2)
            if end < 0:
                raise RegexError("unterminated [%s in bracket expression" % kind)
            name = p[i + 2:end]
            i = end + 2
            if kind == ":":
                cls = _CLASSES.get(name)
                if cls is None:
                    raise RegexError(f"unknown character class [:{name}:]")
                out.append(cls)
            else:
                if len(name) != 1:
                    raise RegexError(f"unsupported collating element {name!r}")
                out.append(_escape_char(name))
            items += 1
            continue
        if c == "-" and items and i + 1 < n and p[i + 1] != "]":
            out.append("-")  # a range between the previous and next item
            i += 1
            continue
        out.append(_escape_char(c) if not c.isalnum() else c)
        items += 1
        i += 1
    out.append("]")
    return "".join(out), i


def _interval(p, i):
    """(quantifier text, index after) of the interval ``{m}``, ``{m,}``,
    ``{m,n}`` or ``{,n}`` at p[i]; RegexError for any other ``{`` (as
    glibc's regcomp, which Pigeonhole uses: "x{" is "Unmatched \\{")."""
    end = p.find("}", i)
    if end < 0:
        raise RegexError("unmatched { in regular expression")
    body = p[i + 1:end]
    lo, comma, hi = body.partition(",")
    if not (lo.isdigit() or (comma and lo == "")) or (hi and not hi.isdigit()) \
            or not (lo.isascii() and hi.isascii()):
        raise RegexError("invalid content of {} in regular expression")
    if len(lo) > 6 or len(hi) > 6:  # before int(): no huge digit strings
        raise RegexError("repetition count too large in regular expression")
    lo_n = int(lo) if lo else 0
    if lo_n > _DUP_MAX or (hi and int(hi) > _DUP_MAX):
        raise RegexError("repetition count too large in regular expression")
    if hi and int(hi) < lo_n:
        raise RegexError("invalid content of {} in regular expression")
    if not comma:
        return "{%d}" % lo_n, end + 1
    return ("{%d,%s}" % (lo_n, hi)), end + 1


def translate_ere(pattern, end_anchor="\\Z"):
    """Translate a POSIX ERE to RE2/Python syntax; raise RegexError.

    Returns (translated pattern, uses back-references).  ``end_anchor``
    is what ``$`` becomes (``\\Z`` for re, ``\\z`` for RE2): in POSIX
    ``$`` matches only at the very end (no REG_NEWLINE).
    """
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"regular expression longer than {MAX_PATTERN} characters")
    p = pattern
    n = len(p)
    # Each level: list of atoms; an atom is [text, quantified].
    stack = [[]]
    groups = 0
    open_groups = []
    backrefs = False
    i = 0
    while i < n:
        c = p[i]
        atoms = stack[-1]
        if c in "*+?{":
            if c == "{":
                q, i = _interval(p, i)
            else:
                q, i = c, i + 1
            if not atoms or atoms[-1][0] in ("|", "^"):
                raise RegexError("invalid preceding regular expression")
            atom = atoms[-1]
            if atom[1]:  # a** or a*? : repeat the repeated atom, never lazy
                atom[0] = "(?:" + atom[0] + ")"
            atom[0] += q
            atom[1] = True
            continue
        if c == "[":
            text, i = _bracket(p, i)
            atoms.append([text, False])
            continue
        if c == "(":
            groups += 1
            open_groups.append(groups)
            stack.append([])
            i += 1
            continue
        if c == ")" and len(stack) == 1:
            atoms.append(["\\)", False])  # glibc: an unmatched ) is a literal
            i += 1
            continue
        if c == ")":
            inner = "".join(a[0] for a in stack.pop())
            open_groups.pop()
            stack[-1].append(["(" + inner + ")", False])
            i += 1
            continue
        if c in "|^.$":
            atoms.append([end_anchor if c == "$" else c, False])
            i += 1
            continue
        if c == "\\":
            if i + 1 >= n:
                raise RegexError("trailing backslash in regular expression")
            e = p[i + 1]
            i += 2
            if e in "123456789":
                if int(e) > groups or int(e) in open_groups:
                    raise RegexError("invalid back reference in regular expression")
                backrefs = True
                atoms.append(["(?:\\" + e + ")", False])
            elif e == "'":
                atoms.append([end_anchor, False])
            elif e in _GNU_ESCAPES:
                atoms.append([_GNU_ESCAPES[e], False])
            else:
                atoms.append([_escape_char(e), False])
            continue
        atoms.append([_escape_char(c), False])
        i += 1
    if len(stack) != 1:
        raise RegexError("unmatched ( in regular expression")
    return "".join(a[0] for a in stack[0]), backrefs


class Regex:
    """A compiled regex: ``engine`` is "re2" or "re"."""

    __slots__ = ("pattern", "engine", "compiled")

    def __init__(self, pattern, engine, compiled):
        self.pattern = pattern
        self.engine = engine
        self.compiled = compiled


def _load_re2():
    try:
        import re2
    except ImportError:
        return None
    return re2


def compile_regex(pattern, casefold=False, engine=None):
    """Compiled matcher for a POSIX ERE; ``casefold`` = i;ascii-casemap.

    ``engine``: None (RE2 when installed, else ``re``), ``"re2"`` or
    ``"re"`` (tests).  Raises RegexError.
    """
    re2 = None if engine == "re" else _load_re2()
    if engine == "re2" and re2 is None:
        raise RegexError("google-re2 is not installed")
    if re2 is not None:
        text, backrefs = translate_ere(pattern, "\\z")
        if not backrefs:
            opts = re2.Options()
            opts.log_errors = False  # never write to our stderr
            opts.dot_nl = True
            opts.case_sensitive = not casefold
            try:
                return Regex(pattern, "re2", re2.compile(text, opts))
            except re2.error as exc:
                raise RegexError(f"invalid regular expression: {_reason(exc)}") from None
        if engine == "re2":
            raise RegexError("back-references need the re engine")
    import re
    text, _ = translate_ere(pattern, "\\Z")
    flags = re.DOTALL
    if casefold:
        flags |= re.IGNORECASE | re.ASCII
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return Regex(pattern, "re", re.compile(text, flags))
    except (re.error, FutureWarning, DeprecationWarning, RecursionError,
            OverflowError) as exc:
        raise RegexError(f"invalid regular expression: {exc}") from None


def _reason(exc):
    msg = exc.args[0] if exc.args else str(exc)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return str(msg)


def _on_timer(signum, frame):
    raise RegexTimeout("regular expression took too long")


def _guarded(rx, text, limit):
    """rx.search(text) under an ITIMER_PROF of ``limit`` CPU seconds.

    A timer the caller already runs (e.g. the per-delivery CPU limit) is
    saved and restored with what is left of it, so it still fires.
    """
    import _signal
    try:
        old_handler = _signal.signal(_signal.SIGPROF, _on_timer)
    except ValueError:
        raise RegexError("regex without google-re2 only runs in the main thread") from None
    old_left, old_interval = _signal.setitimer(_signal.ITIMER_PROF, 0)
    mine = limit if not old_left else min(limit, old_left)
    import time
    start = time.process_time()
    try:
        _signal.setitimer(_signal.ITIMER_PROF, mine)
        return rx.search(text)
    finally:
        _signal.setitimer(_signal.ITIMER_PROF, 0)
        _signal.signal(_signal.SIGPROF, old_handler)
        if old_left:
            left = old_left - (time.process_time() - start)
            _signal.setitimer(_signal.ITIMER_PROF, max(left, 0.001), old_interval)


def search(compiled, text, cpu_limit=MATCH_CPU_LIMIT):
    """Captures of the first match of ``compiled`` in ``text``, or None.

    ``[${0}, ${1}, ...]``; a group that did not take part is "".
    Raises RegexTimeout when the guarded engine runs out of time.
    """
    if compiled.engine == "re2":
        m = compiled.compiled.search(text)
    else:
        m = _guarded(compiled.compiled, text, cpu_limit)
    if m is None:
        return None
    return [m.group(0)] + [g if g is not None else "" for g in m.groups()]
