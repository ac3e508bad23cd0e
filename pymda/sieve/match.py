"""Comparators, match types and relational tests for Sieve.

Comparators (RFC 4790, RFC 5228 §2.7.3): ``"i;octet"``,
``"i;ascii-casemap"``, ``"i;ascii-numeric"`` (a value's leading digits;
a value not starting with a digit is positive infinity, as Pigeonhole).

Match types: ``:is``, ``:contains``, ``:matches`` (glob with ``*``,
``?`` and ``\\`` escapes), and relational (RFC 5231) ``:value`` /
``:count`` with ``gt ge lt le eq ne``.

Entry points:

- ``match_values(match_type, comparator, values, keys, relation=None)``
  -> ``(matched, captures)``: true when any value matches any key (RFC
  5228 §2.7.1); ``captures`` is the list of match variables (``${0}``,
  ``${1}``...) of the first ``:matches`` success, else None.
- ``count_matches(comparator, relation, count, keys)``: ``:count``.
- ``glob_match(pattern, text, casefold=False)`` -> captures or None.
- ``compare(comparator, a, b)`` -> -1/0/1; ``relation_holds(relation,
  order)``.
- ``check(comparator, match_type)`` -> error string or None (for the
  validator: e.g. ``i;ascii-numeric`` with ``:contains``).

Time: ``:matches`` is O(len(pattern) * len(text)) worst case, whatever
the pattern (no backtracking over stars: greedy-free segment search,
non-greedy captures as RFC 5229 §3.2).

Raises ``ValueError`` only for unknown comparator/match-type/relation
names (the validator rejects those first).
"""

COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")
MATCH_TYPES = ("is", "contains", "matches", "value", "count", "regex")
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")


def check(comparator, match_type):
    """Error text when ``comparator`` cannot do ``match_type``, else None."""
    raise NotImplementedError


def numeric_key(value):
    """i;ascii-numeric value: int of the leading digits, or None (=infinity)."""
    raise NotImplementedError


def compare(comparator, a, b):
    """Order of ``a`` and ``b`` under ``comparator``: -1, 0 or 1."""
    raise NotImplementedError


def relation_holds(relation, order):
    """True when ``order`` (-1/0/1 of value vs key) satisfies ``relation``."""
    raise NotImplementedError


def glob_match(pattern, text, casefold=False):
    """Captures of a ``:matches`` pattern on ``text`` or None.

    Returns ``[text, w1, w2, ...]``: ``${0}`` and one string per ``*`` and
    ``?`` wildcard, non-greedy (RFC 5229 §3.2).  ``\\`` escapes the next
    character.  ``casefold``: ASCII case-insensitive (i;ascii-casemap).
    """
    raise NotImplementedError


def match_one(match_type, comparator, value, key):
    """Does ``value`` match ``key``?  -> captures list (``:matches``),
    True/False for other match types (not ``:count``)."""
    raise NotImplementedError


def match_values(match_type, comparator, values, keys, relation=None):
    """(matched, captures) of a Sieve test over lists of values and keys.

    ``match_type``: ``"is"``, ``"contains"``, ``"matches"``, ``"value"``
    (needs ``relation``) or ``"count"`` (needs ``relation``; compares
    ``len(values)``).  ``"regex"`` is handled by ``pymda.sieve.regex``.
    """
    raise NotImplementedError


def count_matches(comparator, relation, count, keys):
    """``:count``: does the number ``count`` satisfy ``relation`` with a key?"""
    raise NotImplementedError
