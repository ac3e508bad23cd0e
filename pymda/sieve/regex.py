"""The ``regex`` match type (draft-ietf-sieve-regex): POSIX ERE.

- ``compile_regex(pattern, casefold=False)`` -> a compiled matcher;
  raises ``RegexError`` (message for the script's error) on a pattern
  that is invalid, too long (``MAX_PATTERN``) or uses something we do
  not support (back-references).
- ``search(compiled, text)`` -> list of captures (``${0}`` = whole
  match, then each group, "" for an unset group) or None.
- ``translate_ere(pattern)`` -> the pattern in the engine's syntax.

The engine choice and its reasons are in docs/sieve-regex.md.  Imported
only when a script uses regex.

SECURITY: patterns and subjects are attacker-controlled; matching never
takes exponential time (see docs/sieve-regex.md).
"""

MAX_PATTERN = 8192


class RegexError(ValueError):
    """An invalid or unsupported regular expression."""


def translate_ere(pattern):
    """Translate a POSIX ERE to the engine's syntax; raise RegexError."""
    raise NotImplementedError


def compile_regex(pattern, casefold=False):
    """Compiled matcher for a POSIX ERE; ``casefold`` = i;ascii-casemap."""
    raise NotImplementedError


def search(compiled, text):
    """Captures of the first match of ``compiled`` in ``text``, or None."""
    raise NotImplementedError
