"""Dates for Sieve's ``date``/``currentdate`` tests (RFC 5260).

- ``parse_date(text)`` -> ``(utc_seconds, zone_minutes, zone_text)`` of
  an RFC 2822 date (obsolete forms tolerated: missing weekday, 2/3-digit
  years, missing seconds, alphabetic zones, comments), or None.
- ``received_date(value)`` -> the same for a Received: header's date
  (after its last ``;``).
- ``parse_zone(text)`` -> minutes east of UTC of ``+hhmm``/``-hhmm``, or
  None.
- ``date_part(part, utc_seconds, zone_minutes, zone_text=None)`` -> the
  string of a RFC 5260 date part (``year month day date julian hour
  minute second time iso8601 std11 zone weekday``) in the given zone;
  None for an unknown part.
- ``current_date()`` -> ``(utc_seconds, local zone_minutes)``.
- ``days_from_civil`` / ``civil_from_days``: proleptic Gregorian
  arithmetic on integers.

No ``datetime`` or ``time.strptime`` import: integer civil-date
arithmetic (H. Hinnant's algorithms).  Raises nothing on bad input.
"""

PARTS = ("year", "month", "day", "date", "julian", "hour", "minute",
         "second", "time", "iso8601", "std11", "zone", "weekday")


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    raise NotImplementedError


def civil_from_days(days):
    """(year, month, day) of a day number since 1970-01-01."""
    raise NotImplementedError


def parse_zone(text):
    """Minutes east of UTC of ``+hhmm``/``-hhmm`` (strict), or None."""
    raise NotImplementedError


def parse_date(text):
    """(utc_seconds, zone_minutes, zone_text) of an RFC 2822 date or None."""
    raise NotImplementedError


def received_date(value):
    """The date of a Received: header value (after its last ';') or None."""
    raise NotImplementedError


def date_part(part, utc_seconds, zone_minutes, zone_text=None):
    """String of date part ``part`` of the instant in ``zone_minutes``."""
    raise NotImplementedError


def current_date():
    """(utc_seconds, local zone offset in minutes) of now."""
    raise NotImplementedError
