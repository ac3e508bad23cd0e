"""Sieve error types (defined in pymda.sieve.result; see there).

The compiler imports them from here; the delivery path gets them from
``result`` without this extra module.
"""

from pymda.sieve.result import SieveCompileError, SieveError, SieveRuntimeError  # noqa: F401
