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

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep",
           "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                "Sep", "Oct", "Nov", "Dec")
_DAY_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")

# RFC 2822 §4.3 obsolete zones; military letters mean "unknown" (-0000).
_ZONES = {"ut": 0, "gmt": 0, "z": 0, "est": -300, "edt": -240, "cst": -360,
          "cdt": -300, "mst": -420, "mdt": -360, "pst": -480, "pdt": -420}

# Days between 1858-11-17 (MJD 0) and 1970-01-01.
_MJD_EPOCH = 40587


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y = year - (month <= 2)
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days):
    """(year, month, day) of a day number since 1970-01-01."""
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def _days_in_month(year, month):
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_zone(text):
    """Minutes east of UTC of ``+hhmm``/``-hhmm`` (strict), or None."""
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit() \
            or not text[1:].isascii():
        return None
    hours, minutes = int(text[1:3]), int(text[3:5])
    if minutes > 59:
        return None
    offset = hours * 60 + minutes
    return -offset if text[0] == "-" else offset


def _strip_comments(text):
    out = []
    depth = 0
    for c in text:
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(c)
    return "".join(out)


def _int(text):
    # short ASCII digit strings only: int() of 4300+ digits raises
    if text.isdigit() and text.isascii() and len(text) <= 9:
        return int(text)
    return None


def parse_date(text):
    """(utc_seconds, zone_minutes, zone_text) of an RFC 2822 date or None.

    Tolerated (RFC 2822 §4.3 and common practice): no weekday, a wrong
    weekday, comments, 2-digit (<50 = 20xx) and 3-digit (+1900) years,
    no seconds, alphabetic zones (the RFC 822 names; any other name and a
    missing zone count as ``-0000``), any case.  Rejected: an unknown month, an
    impossible day or time, a malformed zone.
    """
    if "(" in text:
        text = _strip_comments(text)
    words = text.replace(",", " ").split()
    if not words:
        return None
    if words[0][:3].lower() in _DAYS and not words[0][:1].isdigit():
        if words[0].lower()[:3] not in _DAYS or len(words[0]) > 9:
            return None
        words = words[1:]
    if len(words) < 4:
        return None
    day = _int(words[0])
    month = words[1][:3].lower()
    if month not in _MONTHS or len(words[1]) > 9:
        return None
    month = _MONTHS.index(month) + 1
    year = _int(words[2])
    if day is None or year is None:
        return None
    if len(words[2]) == 2:
        year += 2000 if year < 50 else 1900
    elif len(words[2]) == 3:
        year += 1900
    elif len(words[2]) != 4:
        return None
    if not 1 <= day <= _days_in_month(year, month):
        return None
    hms = words[3].split(":")
    if len(hms) not in (2, 3):
        return None
    hms = [_int(x) for x in hms]
    if None in hms:
        return None
    hour, minute = hms[0], hms[1]
    second = hms[2] if len(hms) == 3 else 0
    if hour > 23 or minute > 59 or second > 60:
        return None
    # Text after the zone is ignored, as Pigeonhole; "06:09:22 PM EDT"
    # fails on its zone "PM" (alphabetic zones have 1 or 3-5 letters).
    zone_text = words[4] if len(words) > 4 else "-0000"
    zone = parse_zone(zone_text)
    if zone is None:
        if zone_text.lower() in _ZONES:
            zone = _ZONES[zone_text.lower()]
        elif zone_text.isalpha() and zone_text.isascii() \
                and (len(zone_text) == 1 or 3 <= len(zone_text) <= 5):
            # military letters and other names (CEST): RFC 2822 §4.3 says
            # treat as "-0000"; Pigeonhole accepts them so
            zone = 0
            zone_text = "-0000"
        else:
            return None
    elif abs(zone) > 23 * 60 + 59:
        return None
    local = days_from_civil(year, month, day) * 86400 \
        + hour * 3600 + minute * 60 + second
    return local - zone * 60, zone, zone_text


def received_date(value):
    """The date of a Received: header value (after its last ';') or None."""
    _, semi, tail = value.rpartition(";")
    if not semi:
        return None
    return parse_date(tail)


def _two(n):
    return "%02d" % n


def format_zone(minutes):
    """``+hhmm``/``-hhmm`` of an offset in minutes."""
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return "%s%02d%02d" % (sign, minutes // 60, minutes % 60)


def date_part(part, utc_seconds, zone_minutes, zone_text=None):
    """String of date part ``part`` of the instant in ``zone_minutes``.

    ``zone_text``: the original zone as written (kept for callers; the
    parts print the numeric offset: an unknown zone "-0000" prints as
    "+0000", a zero offset as "Z" in iso8601, as Pigeonhole does).
    """
    local = utc_seconds + zone_minutes * 60
    days, secs = divmod(local, 86400)
    if part == "julian":
        return str(days + _MJD_EPOCH)
    if part == "weekday":
        return str((days + 4) % 7)  # 1970-01-01 was a Thursday
    if part == "zone":
        return format_zone(zone_minutes)  # "-0000" prints as "+0000" (Pigeonhole)
    year, month, day = civil_from_days(days)
    hour, rest = divmod(secs, 3600)
    minute, second = divmod(rest, 60)
    simple = {"year": "%04d" % year, "month": _two(month), "day": _two(day),
              "hour": _two(hour), "minute": _two(minute), "second": _two(second),
              "date": "%04d-%02d-%02d" % (year, month, day),
              "time": "%02d:%02d:%02d" % (hour, minute, second)}
    if part in simple:
        return simple[part]
    if part == "iso8601":
        z = format_zone(zone_minutes)
        z = "Z" if zone_minutes == 0 else z[:3] + ":" + z[3:]  # as Pigeonhole
        return "%04d-%02d-%02dT%02d:%02d:%02d%s" % (
            year, month, day, hour, minute, second, z)
    if part == "std11":
        return "%s, %02d %s %04d %02d:%02d:%02d %s" % (
            _DAY_NAMES[(days + 4) % 7], day, _MONTH_NAMES[month - 1], year,
            hour, minute, second,
            date_part("zone", utc_seconds, zone_minutes, zone_text))
    return None


def current_date():
    """(utc_seconds, local zone offset in minutes) of now."""
    import time  # built in: no file to load
    now = int(time.time())
    return now, time.localtime(now).tm_gmtoff // 60
