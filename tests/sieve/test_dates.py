"""pymda.sieve.dates: RFC 2822 dates and RFC 5260 date parts.

The integer calendar is checked against ``datetime`` (the test may import
it; the module may not)."""

import datetime
import subprocess
import sys

import pytest

from pymda.sieve.dates import (PARTS, civil_from_days, current_date,
                               date_part, days_from_civil, parse_date,
                               parse_zone, received_date)


def test_civil_round_trip_against_datetime():
    epoch = datetime.date(1970, 1, 1)
    lo = (datetime.date(1, 1, 1) - epoch).days
    hi = (datetime.date(9999, 12, 31) - epoch).days
    for n in list(range(lo, hi, 613)) + [lo, hi, 0, -1, 59, 60, 11016]:
        y, m, d = civil_from_days(n)
        assert datetime.date(y, m, d) == epoch + datetime.timedelta(n)
        assert days_from_civil(y, m, d) == n


DATE = "Mon, 20 Jul 2009 21:44:43 +0300"


@pytest.mark.parametrize("part, original, plus0200, utc", [
    ("year", "2009", "2009", "2009"),
    ("month", "07", "07", "07"),
    ("day", "20", "20", "20"),
    ("date", "2009-07-20", "2009-07-20", "2009-07-20"),
    ("julian", "55032", "55032", "55032"),
    ("hour", "21", "20", "18"),
    ("minute", "44", "44", "44"),
    ("second", "43", "43", "43"),
    ("time", "21:44:43", "20:44:43", "18:44:43"),
    ("iso8601", "2009-07-20T21:44:43+03:00", "2009-07-20T20:44:43+02:00",
     "2009-07-20T18:44:43Z"),
    ("std11", "Mon, 20 Jul 2009 21:44:43 +0300",
     "Mon, 20 Jul 2009 20:44:43 +0200", "Mon, 20 Jul 2009 18:44:43 +0000"),
    ("zone", "+0300", "+0200", "+0000"),
    ("weekday", "1", "1", "1"),
])
def test_date_parts(part, original, plus0200, utc):
    secs, zone, text = parse_date(DATE)
    assert (zone, text) == (180, "+0300")
    assert date_part(part, secs, zone, text) == original
    assert date_part(part, secs, 120) == plus0200
    assert date_part(part, secs, 0) == utc


def test_date_parts_cover_rfc5260():
    assert set(PARTS) == {"year", "month", "day", "date", "julian", "hour",
                          "minute", "second", "time", "iso8601", "std11",
                          "zone", "weekday"}
    assert date_part("frob", 0, 0) is None


def test_parts_against_datetime():
    for secs in range(-2208988800, 4102444800, 86400 * 97 + 3671):
        for zone in (0, 330, -480, 840):
            dt = datetime.datetime.fromtimestamp(
                secs, datetime.timezone(datetime.timedelta(minutes=zone)))
            assert date_part("iso8601", secs, zone) == dt.isoformat().replace("+00:00", "Z")
            assert date_part("weekday", secs, zone) == str(dt.isoweekday() % 7)
            assert date_part("julian", secs, zone) == \
                str(dt.toordinal() - datetime.date(1858, 11, 17).toordinal())


def test_day_change_across_zone():
    secs, zone, _ = parse_date("Mon, 23 Jul 2009 05:30:14 +0800")
    assert date_part("date", secs, 0) == "2009-07-22"
    assert date_part("date", secs, zone) == "2009-07-23"
    assert date_part("julian", secs, 0) == "55034"


@pytest.mark.parametrize("text, iso", [
    ("Mon, 20 Jul 2009 21:44:43 CEST", "2009-07-20T21:44:43Z"),  # unknown name = -0000
    ("Mon, 20 Jul 2009 21:44:43 +0300 junk", "2009-07-20T21:44:43+03:00"),  # as sieve-test
    ("Mon, 20 Jul 2009 21:44:43 +0300", "2009-07-20T21:44:43+03:00"),
    ("20 Jul 2009 21:44:43 +0300", "2009-07-20T21:44:43+03:00"),
    ("Mon,20 Jul 2009 21:44 +0300", "2009-07-20T21:44:00+03:00"),
    ("mon, 20 jul 09 21:44:43 -0130", "2009-07-20T21:44:43-01:30"),
    ("Mon, 20 Jul 99 21:44:43 +0000", "1999-07-20T21:44:43Z"),
    ("Mon, 20 Jul 109 21:44:43 +0000", "2009-07-20T21:44:43Z"),
    ("Fri, 20 Jul 2009 21:44:43 +0300", "2009-07-20T21:44:43+03:00"),  # wrong weekday
    ("Mon, 20 Jul 2009 21:44:43 +0300 (EEST)", "2009-07-20T21:44:43+03:00"),
    ("Mon (day), 20 Jul 2009 21:44:43 EDT", "2009-07-20T21:44:43-04:00"),
    ("Mon, 20 Jul 2009 21:44:43 GMT", "2009-07-20T21:44:43Z"),
    ("Mon, 20 Jul 2009 21:44:43 UT", "2009-07-20T21:44:43Z"),
    ("Mon, 20 Jul 2009 21:44:43 PST", "2009-07-20T21:44:43-08:00"),
    ("Mon, 20 Jul 2009 21:44:43 A", "2009-07-20T21:44:43Z"),
    ("Mon, 20 Jul 2009 21:44:43", "2009-07-20T21:44:43Z"),
    ("Tue, 29 Feb 2000 23:59:60 +0000", "2000-03-01T00:00:00Z"),
    ("  Mon,   20   Jul   2009   21:44:43   +0300  ", "2009-07-20T21:44:43+03:00"),
])
def test_parse_date_forms(text, iso):
    secs, zone, _ = parse_date(text)
    assert date_part("iso8601", secs, zone) == iso


def test_unknown_zone_prints_as_utc():
    # checked with Pigeonhole's sieve-test: "-0000" is "+0000" in the zone
    # part and "Z" in iso8601; any zero offset is "Z"
    secs, zone, text = parse_date("Tue, 23 Jun 2026 05:47:52 -0000")
    assert (zone, text) == (0, "-0000")
    assert date_part("zone", secs, zone, text) == "+0000"
    assert date_part("iso8601", secs, zone, text) == "2026-06-23T05:47:52Z"
    secs, zone, text = parse_date("Mon, 20 Jul 2009 21:44:43 Z")
    assert zone == 0
    secs, zone, text = parse_date("Mon, 20 Jul 2009 21:44:43 EST")
    assert date_part("zone", secs, zone, text) == "-0500"


@pytest.mark.parametrize("text", [
    "Moo, 34 Juul 3060 25:30:42 +6600", "", "garbage", "Mon, 20 Jul",
    "Mon, 31 Jun 2009 21:44:43 +0300", "Mon, 29 Feb 2009 21:44:43 +0300",
    "Mon, 20 Jul 2009 24:00:00 +0300", "Mon, 20 Jul 2009 21:60:00 +0300",
    "Mon, 20 Jul 2009 21:44:43 +03", "Mon, 20 Jul 2009 21:44:43 +0360",
    "Mon, 20 Jul 2009 21:44:43 +9900", "Mon, 20 Jul 20090 21:44:43 +0000",
    "Mon, 20 Jul 2009 21:44:43 C3ST", "Mon, x Jul 2009 21:44:43 +0000",
    "Wed 29 May 2019 06:09:22 PM EDT", "Mon, 20 Jul 2009 21:44:43 PM",
    "Mon, 30 Feb 2009 21:44:43 +0300",
    "Mon, 20 Jul 2009 2a:44:43 +0000", "Mon, \u0662\u0660 Jul 2009 21:44:43 +0000",
])
def test_parse_date_rejects(text):
    assert parse_date(text) is None


def test_received_date():
    value = ("from mx.example.org (mx.example.org [192.0.2.1])\n"
             "\tby mail.example.com (Postfix) with ESMTPS id 4F2B;"
             " Mon, 22 Jul 2009 23:30:14 +0300 (EEST)")
    secs, zone, _ = received_date(value)
    assert date_part("std11", secs, zone) == "Wed, 22 Jul 2009 23:30:14 +0300"
    assert received_date("from a by b; x; Mon, 20 Jul 2009 21:44:43 +0300")
    assert received_date("from a by b") is None
    assert received_date("from a by b; garbage") is None


@pytest.mark.parametrize("text, minutes", [
    ("+0200", 120), ("-0130", -90), ("+0000", 0), ("-0000", 0),
    ("+2359", 1439), ("0200", None), ("+200", None), ("+02:00", None),
    ("+0260", None), ("+\u0661\u0660\u0660", None), ("", None),
])
def test_parse_zone(text, minutes):
    assert parse_zone(text) == minutes


def test_current_date():
    secs, zone = current_date()
    now = datetime.datetime.now().astimezone()
    assert abs(secs - now.timestamp()) < 5
    assert zone == now.utcoffset().total_seconds() // 60


def test_dates_imports_nothing_heavy():
    code = ("import sys; before = set(sys.modules);"
            "from pymda.sieve import dates;"
            "d = dates.parse_date('Mon, 20 Jul 2009 21:44:43 +0300');"
            "dates.date_part('std11', d[0], d[1]); dates.current_date();"
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                         text=True, check=True).stdout
    new = eval(out)  # a printed list of module names
    assert set(new) <= {"pymda", "pymda.sieve", "pymda.sieve.dates", "time"}, new


def test_hostile_dates_never_raise():
    import random
    rng = random.Random(5260)
    words = ["Mon,", "20", "Jul", "2009", "21:44:43", "+0300", "(", ")", ":", "-",
             "99999999999999999999", "0", "Feb", "29", "1900", "24:00", "EST", ",", "x"]
    for _ in range(5000):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 9)))
        got = parse_date(text)
        if got is not None:
            assert date_part("iso8601", got[0], got[1])
        received_date("a;" + text)


def test_huge_numbers_are_invalid_not_errors():
    big = "9" * 5000  # int() refuses more than 4300 digits
    assert parse_date(f"Mon, {big} Jul 2009 21:44:43 +0000") is None
    assert parse_date(f"Mon, 20 Jul {big} 21:44:43 +0000") is None
    assert parse_date(f"Mon, 20 Jul 2009 {big}:44:43 +0000") is None
