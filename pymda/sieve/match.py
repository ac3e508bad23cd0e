"""Comparators, match types and relational tests for Sieve.

Comparators (RFC 4790, RFC 5228 §2.7.3): ``"i;octet"``,
``"i;ascii-casemap"``, ``"i;ascii-numeric"`` (a value's leading digits;
a value not starting with a digit is positive infinity, as Pigeonhole).

Match types: ``:is``, ``:contains``, ``:matches`` (glob with ``*``,
``?`` and ``\\`` escapes), relational (RFC 5231) ``:value`` /
``:count`` with ``gt ge lt le eq ne``, and ``:regex`` (delegated to
``pymda.sieve.regex``, imported only then).

Entry points:

- ``match_values(match_type, comparator, values, keys, relation=None)``
  -> ``(matched, captures)``: true when any value matches any key (RFC
  5228 §2.7.1); ``captures`` is the list of match variables (``${0}``,
  ``${1}``...) of the first ``:matches`` success, else None.
- ``count_matches(comparator, relation, count, keys)``: ``:count``.
- ``:matches`` is ``pymda.sieve.wildcard.glob_match`` (imported at its
  first use: a script without ``:matches`` never loads it).
- ``compare(comparator, a, b)`` -> -1/0/1; ``relation_holds(relation,
  order)``.
- ``check(comparator, match_type)`` -> error string or None (for the
  validator: e.g. ``i;ascii-numeric`` with ``:contains``).

Time: ``:matches`` never backtracks (pymda.sieve.wildcard).

Raises ``ValueError`` only for unknown comparator/match-type/relation
names (the validator rejects those first).
"""

COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")
MATCH_TYPES = ("is", "contains", "matches", "value", "count", "regex")
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")

# ASCII-only case folding that keeps string lengths (str.lower() may not:
# "\u0130".lower() is two characters), so capture offsets stay valid.
_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}

# What each comparator supports (RFC 4790 §9, RFC 5231 §4): i;ascii-numeric
# has equality and ordering only, no substring operation.
_SUBSTRING = ("contains", "matches", "regex")


def fold(text):
    """ASCII lower-case of ``text`` (same length: offsets stay valid).
    For an ASCII string that is ``str.lower`` (isascii is O(1)), twenty
    times faster than the table: every :is/:contains test folds."""
    if text.isascii():
        return text.lower()
    return text.translate(_ASCII_LOWER)


def check(comparator, match_type):
    """Error text when ``comparator`` cannot do ``match_type``, else None."""
    if comparator not in COMPARATORS:
        return f"unknown comparator {comparator!r}"
    if match_type not in MATCH_TYPES:
        return f"unknown match type {match_type!r}"
    if comparator == "i;ascii-numeric" and match_type in _SUBSTRING:
        return (f"comparator {comparator!r} does not support "
                f"the :{match_type} match type")
    return None


def numeric_key(value):
    """i;ascii-numeric value: the leading digits without leading zeros
    (a str, "0" for zero), or None for positive infinity (no leading digit).

    A str, not an int: ``int()`` of a long digit string is slow and
    Python 3.11 refuses more than 4300 digits.  Compare with
    ``_numeric_order``.
    """
    n = len(value)
    i = 0
    while i < n and "0" <= value[i] <= "9":
        i += 1
    if i == 0:
        return None
    digits = value[:i].lstrip("0")
    return digits or "0"


def _numeric_order(a, b):
    ka, kb = numeric_key(a), numeric_key(b)
    if ka is None or kb is None:
        # Infinity equals infinity and is above every number (RFC 4790 §9.1.1).
        return (ka is None) - (kb is None)
    if len(ka) != len(kb):
        return -1 if len(ka) < len(kb) else 1
    return (ka > kb) - (ka < kb)


def compare(comparator, a, b):
    """Order of ``a`` and ``b`` under ``comparator``: -1, 0 or 1.

    i;octet orders by code point, which is the order of the UTF-8 octets.
    """
    if comparator == "i;ascii-casemap":
        a, b = fold(a), fold(b)
    elif comparator == "i;ascii-numeric":
        return _numeric_order(a, b)
    elif comparator != "i;octet":
        raise ValueError(f"unknown comparator {comparator!r}")
    return (a > b) - (a < b)


_RELATIONS = {
    "gt": (1,), "ge": (0, 1), "lt": (-1,), "le": (-1, 0),
    "eq": (0,), "ne": (-1, 1),
}


def relation_holds(relation, order):
    """True when ``order`` (-1/0/1 of value vs key) satisfies ``relation``."""
    try:
        return order in _RELATIONS[relation]
    except KeyError:
        raise ValueError(f"unknown relation {relation!r}") from None


def match_one(match_type, comparator, value, key):
    """Does ``value`` match ``key``?  -> captures list (``:matches``),
    True/False for the other match types (not ``:count`` nor
    ``:value``)."""
    if match_type == "is":
        if comparator == "i;ascii-numeric":
            return _numeric_order(value, key) == 0
        if comparator == "i;ascii-casemap":
            return fold(value) == fold(key)
        return value == key
    if match_type == "contains":
        if comparator == "i;ascii-casemap":
            return fold(key) in fold(value)
        if comparator == "i;octet":
            return key in value
    elif match_type == "matches":
        if comparator in ("i;ascii-casemap", "i;octet"):
            from pymda.sieve.wildcard import glob_match

            return glob_match(key, value, comparator == "i;ascii-casemap")
    else:
        raise ValueError(f"unknown match type {match_type!r}")
    raise ValueError(check(comparator, match_type) or "bad comparator")


def match_values(match_type, comparator, values, keys, relation=None):
    """(matched, captures) of a Sieve test over lists of values and keys.

    ``match_type``: ``"is"``, ``"contains"``, ``"matches"``, ``"value"``
    (needs ``relation``), ``"count"`` (needs ``relation``; compares
    ``len(values)``) or ``"regex"`` (imports ``pymda.sieve.regex``; may
    raise its ``RegexError``).  ``captures`` is the list of match
    variables of the first successful ``:matches`` or ``:regex`` (values
    in order, then keys in order), else None.
    """
    if match_type == "count":
        return count_matches(comparator, relation, len(values), keys), None
    if match_type == "regex":
        return _regex_values(comparator, values, keys)
    if match_type == "value":
        for value in values:
            for key in keys:
                if relation_holds(relation, compare(comparator, value, key)):
                    return True, None
        return False, None
    for value in values:
        for key in keys:
            result = match_one(match_type, comparator, value, key)
            if result is True:
                return True, None
            if result:
                return True, result
    return False, None


def _regex_values(comparator, values, keys):
    if comparator not in ("i;octet", "i;ascii-casemap"):
        raise ValueError(check(comparator, "regex") or "bad comparator")
    if not values:
        return False, None
    from pymda.sieve import regex
    casefold = comparator == "i;ascii-casemap"
    compiled = [regex.compile_regex(key, casefold) for key in keys]
    for value in values:
        for rx in compiled:
            caps = regex.search(rx, value)
            if caps is not None:
                return True, caps
    return False, None


def count_matches(comparator, relation, count, keys):
    """``:count``: does the number ``count`` satisfy ``relation`` with a key?

    The count is compared as its decimal string under ``comparator``
    (RFC 5231 §4.2; scripts use i;ascii-numeric).
    """
    text = str(count)
    for key in keys:
        if relation_holds(relation, compare(comparator, text, key)):
            return True
    return False
