"""Sieve's ``:matches`` (RFC 5228 §2.7.1): a glob engine that never backtracks.

Contract: ``glob_match(pattern, text, casefold=False)`` -> the captures
``[text, w1, w2, ...]`` (``${0}`` and one string per ``*`` and ``?``,
non-greedy, RFC 5229 §3.2) or None.  ``*`` matches any run, ``?`` one
character, ``\\`` makes the next character literal; ``casefold``:
ASCII case-insensitive (i;ascii-casemap), captures keep the text's case.

Time: each segment between stars is placed once, leftmost; a segment is
found with ``str.find`` or, when that keeps failing, with bit masks: at
most about O(len(text) * len(pattern) / 64) word operations whatever the
pattern (a hostile ``*a*a*a*a*b`` on a long header included).

Imported by pymda.sieve.match at the first ``:matches`` of a run: a
script without one (most filters use ``:contains`` and ``:is``) never
loads it.  PURE: no I/O.
"""

from pymda.sieve.match import fold


def _parse_glob(pattern):
    """Segments of a glob pattern split at each ``*``.

    Returns (segments, stars_before): each segment a list of items, an item
    either a literal str of one character or None for ``?``.  ``\\`` makes
    the next character literal; a trailing ``\\`` is a literal backslash.
    """
    segments = [[]]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 1
            segments[-1].append(pattern[i] if i < n else "\\")
        elif c == "*":
            segments.append([])
        elif c == "?":
            segments[-1].append(None)
        else:
            segments[-1].append(c)
        i += 1
    return segments


def _runs(segment):
    """[(offset, literal run)] of a segment: its maximal runs of literals."""
    runs = []
    k, m = 0, len(segment)
    while k < m:
        if segment[k] is None:
            k += 1
            continue
        j = k
        while j < m and segment[j] is not None:
            j += 1
        runs.append((k, "".join(segment[k:j])))
        k = j
    return runs


def _segment_at(segment, runs, text, pos):
    """Does ``segment`` (with its ``runs``) match ``text`` at ``pos``?"""
    if pos < 0 or pos + len(segment) > len(text):
        return False
    for offset, run in runs:
        if not text.startswith(run, pos + offset):
            return False
    return True


def _occurrences(text, run, start, end):
    """Bit mask of the positions in [start, end) where ``run`` starts."""
    n = len(text)
    bits = bytearray(b"0") * n  # most significant first: bit i at n-1-i
    pos = text.find(run, start, end)
    while pos >= 0:
        bits[n - 1 - pos] = 0x31
        pos = text.find(run, pos + 1, end)
    return int(bits, 2) if n else 0  # base 2: linear, no digit limit


def _segment_mask(runs, text, start, limit):
    """Bit mask of every p in [start, limit] where all ``runs`` match.

    Bit-parallel: AND of each run's occurrence mask shifted by its
    offset; the work is O(len(text) * distinct runs) plus
    O(len(text) / 64) word operations per run.
    """
    cache = {}
    mask = ((1 << (limit + 1)) - 1) >> start << start
    for offset, run in runs:
        occ = cache.get(run)
        if occ is None:
            occ = cache[run] = _occurrences(text, run, start, len(text))
        mask &= occ >> offset
        if not mask:
            break
    return mask


# Failed verifications after which _find_segment switches to bit masks.
_SCAN_BUDGET = 256


def _find_segment(segment, runs, text, start, limit):
    """Leftmost position p in [start, limit] where ``segment`` matches.

    Searches for the segment's longest literal run with ``str.find`` and
    verifies the other runs with ``str.startswith``: O(len(text)) in the
    usual case.  A segment that keeps failing verification (hostile
    ``a?a?a?...`` on "aaaa...") is finished with bit masks
    (``_segment_mask``), so no pattern costs more than
    O(len(text) * len(segment) / 64) plus one ``find`` pass per
    distinct run.
    """
    if start > limit:
        return -1
    if not runs:  # only '?': any position with room
        return start
    k, run = max(runs, key=lambda r: len(r[1]))
    pos = start
    budget = _SCAN_BUDGET
    while pos <= limit:
        q = text.find(run, pos + k, limit + k + len(run))
        if q < 0:
            return -1
        p = q - k
        if _segment_at(segment, runs, text, p):
            return p
        pos = p + 1
        budget -= 1
        if not budget:
            mask = _segment_mask(runs, text, pos, limit) if pos <= limit else 0
            if not mask:
                return -1
            return (mask & -mask).bit_length() - 1
    return -1


def _captures(segment, text, pos, out):
    for k, item in enumerate(segment):
        if item is None:
            out.append(text[pos + k])


def glob_match(pattern, text, casefold=False):
    """Captures of a ``:matches`` pattern on ``text`` or None.

    Returns ``[text, w1, w2, ...]``: ``${0}`` and one string per ``*`` and
    ``?`` wildcard, non-greedy (RFC 5229 §3.2).  ``\\`` escapes the next
    character.  ``casefold``: ASCII case-insensitive (i;ascii-casemap).

    Why this is never exponential: between two stars the pattern is a
    fixed-length segment; the leftmost place of each middle segment is
    always as good as any later place (it leaves the most text for the
    rest), so each segment is searched once, left to right, and the
    first and last segments are anchored.  That is also what "each
    wildcard matches as little as possible, left to right" asks.
    """
    segments = _parse_glob(fold(pattern) if casefold else pattern)
    subject = fold(text) if casefold else text
    n = len(subject)
    caps = [text]
    first = segments[0]
    if len(segments) == 1:
        if len(first) != n or not _segment_at(first, _runs(first), subject, 0):
            return None
        _captures(first, text, 0, caps)
        return caps
    last = segments[-1]
    tail = n - len(last)
    if len(first) > tail or not _segment_at(first, _runs(first), subject, 0):
        return None
    if not _segment_at(last, _runs(last), subject, tail):
        return None
    _captures(first, text, 0, caps)
    pos = len(first)
    for segment in segments[1:-1]:
        p = _find_segment(segment, _runs(segment), subject, pos,
                          tail - len(segment))
        if p < 0:
            return None
        caps.append(text[pos:p])
        _captures(segment, text, p, caps)
        pos = p + len(segment)
    caps.append(text[pos:tail])
    _captures(last, text, tail, caps)
    return caps
