"""Pigeonhole's own test suite, one pytest item per ``test "..." { }`` block.

Files: FILES below (SIEVE-NOTES 4.3 phase 1 and the phase-2 files of
issue 10), read from ``$PYMDA_PIGEONHOLE_TESTS`` or
``../shared/pigeonhole-tests`` (skipped with a message when absent; never
copied into the repository).  Each file runs once (pigeonhole_adapter)
and its items look their result up.

Expectations: ``pigeonhole-expect.txt`` names every test that is expected
to fail, with the reason.  Listed tests are strict xfails: one that starts
passing fails the run, so the list only shrinks.  A file-level problem
(does not compile, runtime error outside a test block) fails every item of
that file unless the item is listed.
"""

import re
from pathlib import Path

import pytest

import pigeonhole_adapter as adapter

HERE = Path(__file__).resolve().parent
ROOT = adapter.suite_root()

PHASE1 = [
    "testsuite.svtest", "control-if.svtest", "control-stop.svtest",
    "test-address.svtest.in", "test-allof.svtest", "test-anyof.svtest",
    "test-exists.svtest", "test-header.svtest", "test-size.svtest",
    "lexer.svtest", "comparators/i-octet.svtest",
    "comparators/i-ascii-casemap.svtest", "match-types/is.svtest",
    "match-types/contains.svtest", "match-types/matches.svtest",
    "extensions/envelope.svtest", "extensions/encoded-character.svtest",
    "extensions/subaddress/basic.svtest", "extensions/subaddress/rfc.svtest",
    "extensions/subaddress/config.svtest",
    "extensions/relational/basic.svtest", "extensions/relational/rfc.svtest",
    "extensions/relational/comparators.svtest",
    "extensions/variables/basic.svtest", "extensions/variables/match.svtest",
    "extensions/variables/modifiers.svtest",
    "extensions/variables/quoting.svtest", "extensions/variables/string.svtest",
]
PHASE2 = [
    "execute/actions.svtest", "execute/mailstore.svtest",
    "execute/errors.svtest", "compile/compile.svtest",
    "compile/errors.svtest", "compile/recover.svtest",
    "compile/warnings.svtest",
    "extensions/mailbox/errors.svtest", "extensions/mailbox/execute.svtest",
    "extensions/date/basic.svtest", "extensions/date/date-parts.svtest",
    "extensions/date/zones.svtest", "extensions/index/basic.svtest",
    "extensions/index/errors.svtest",
    "extensions/body/basic.svtest", "extensions/body/content.svtest",
    "extensions/body/errors.svtest", "extensions/body/match-values.svtest",
    "extensions/body/raw.svtest", "extensions/body/text.svtest",
    "extensions/regex/basic.svtest", "extensions/regex/errors.svtest",
    "extensions/regex/match-values.svtest",
    "extensions/imap4flags/basic.svtest", "extensions/imap4flags/errors.svtest",
    "extensions/imap4flags/execute.svtest",
    "extensions/imap4flags/flagstore.svtest",
    "extensions/imap4flags/flagstring.svtest",
    "extensions/imap4flags/hasflag.svtest",
    "extensions/variables/errors.svtest", "extensions/variables/limits.svtest",
    "extensions/variables/regex.svtest",
    "extensions/relational/errors.svtest",
]
# issue 11: mail that Sieve sends or refuses, include, duplicate
PHASE3 = [
    "execute/smtp.svtest", "execute/address-normalize.svtest",
    "extensions/vacation/errors.svtest", "extensions/vacation/execute.svtest",
    "extensions/vacation/message.svtest", "extensions/vacation/reply.svtest",
    "extensions/vacation/smtp.svtest", "extensions/vacation/utf-8.svtest",
    "extensions/reject/execute.svtest", "extensions/reject/smtp.svtest",
    "extensions/duplicate/errors.svtest", "extensions/duplicate/execute.svtest",
    "extensions/include/errors.svtest", "extensions/include/execute.svtest",
    "extensions/include/once.svtest", "extensions/include/optional.svtest",
    "extensions/include/rfc.svtest", "extensions/include/twice.svtest",
    "extensions/include/variables.svtest",
    "multiscript/basic.svtest", "multiscript/conflicts.svtest",
]
FILES = PHASE1 + PHASE2 + PHASE3


def _expectations():
    """{"file::test": reason} from pigeonhole-expect.txt."""
    out = {}
    for line in (HERE / "pigeonhole-expect.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ident, _, reason = line.partition("\t")
        out[ident.strip()] = reason.strip() or "no reason given"
    return out


EXPECT = _expectations()


def _test_names(path):
    """Test names, by a plain scan (collection must not depend on the
    implementation under test): ``test "name"`` at the start of a line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [m.replace('\\"', '"') for m in _TEST_RE.findall(text)]


_TEST_RE = re.compile(r'(?m)^[ \t]*test[ \t]+"((?:[^"\\]|\\.)*)"')


def _items():
    if not ROOT.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(
            reason="Pigeonhole tests not found at %s (set PYMDA_PIGEONHOLE_TESTS)"
            % ROOT))]
    items = []
    for rel in FILES:
        path = ROOT / rel
        for name in _test_names(path):
            ident = "%s::%s" % (rel, name)
            marks = ()
            if ident in EXPECT:
                marks = (pytest.mark.xfail(reason=EXPECT[ident], strict=True),)
            items.append(pytest.param(rel, name, id=ident, marks=marks))
    return items


_RESULTS = {}


def _file_result(rel):
    if rel not in _RESULTS:
        path = ROOT / rel
        # test-address.svtest.in: the "#UTF8#" lines (UTF-8 local parts
        # are invalid) stay comments: pymda accepts UTF-8 addresses.
        _RESULTS[rel] = adapter.run_file(path)
    return _RESULTS[rel]


@pytest.mark.parametrize("rel,name", _items())
def test_pigeonhole(rel, name):
    results, errors = _file_result(rel)
    if name not in results:
        pytest.fail("test did not run: %s" % ("; ".join(errors) or "not reached"))
    if results[name] is not None:
        pytest.fail(results[name])
