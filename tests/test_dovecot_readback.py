"""Every corpus message, delivered by the installed pymda to a Maildir and to
an mbox, reads back byte for byte with the real dovecot and with Python's
``mailbox`` module.

What is compared (SPEC 1.1, 1.4, 1.5): the stored message is
``Return-Path: <sender>`` + ``Delivered-To: rcpt`` + the input after
normalisation (CRLF -> LF, leading From_ line removed, final newline
added); in an mbox every line matching ``^>*From `` carries one more ``>``
(dovecot and Python's mailbox do not undo the quoting; our own splitter
does), each message is preceded by ``From <sender>  <asctime>`` and
followed by one empty line.

Runs as a fresh test user when root (the realistic case), else as the
invoking user in a temporary directory.  All messages go into one Maildir
and one mbox, read back once each, to keep the runtime reasonable.
"""

import collections
import concurrent.futures
import mailbox
import os
import re

import pytest

from support import dovecot, mboxfmt
from support.run import EX_OK, run_pymda

SENDER = "corpus-sender@example.org"
FROM_LINE = re.compile(rb"^From corpus-sender@example\.org  [A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]\d "
                       rb"\d\d:\d\d:\d\d \d{4}$")

pytestmark = pytest.mark.skipif(not dovecot.installed(), reason="doveadm not installed")


class Delivered:
    def __init__(self, user, base, recipient, maildir, mbox, expected):
        self.user = user
        self.base = base
        self.recipient = recipient
        self.maildir = maildir
        self.mbox = mbox
        self.expected = expected      # list of (name, expected stored bytes), input order


@pytest.fixture(scope="module")
def delivered(pymda_installed, tmp_path_factory):
    """Deliver the whole corpus once to <base>/Maildir/ and <base>/mbox."""
    from support.paths import corpus_messages
    from support.users import create_user, delete_user

    messages = corpus_messages()
    if not messages:
        pytest.fail("no corpus messages (set PYMDA_CORPUS)")
    user = None
    if os.geteuid() == 0:
        user = create_user()
        base = str(user.home)
        recipient = f"{user.name}@localhost"
    else:
        base = str(tmp_path_factory.mktemp("readback"))
        recipient = f"{os.environ.get('USER', 'me')}@localhost"
    maildir = os.path.join(base, "Maildir")
    mbox = os.path.join(base, "mbox")

    def deliver_all(target):
        failures = []
        for path in messages:
            code, out = run_pymda(["-f", SENDER, "-a", recipient, "--mailbox", target],
                                  path.read_bytes(), user=user, timeout=60)
            if code != EX_OK or out:
                failures.append((path.name, code, out[:200]))
        return failures

    try:
        # Maildir and mbox in parallel: two independent streams, each in order.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            f_maildir = pool.submit(deliver_all, maildir + "/")
            f_mbox = pool.submit(deliver_all, mbox)
            failures = f_maildir.result() + f_mbox.result()
        assert not failures, f"{len(failures)} deliveries failed, e.g. {failures[:5]}"
        expected = [(p.name, mboxfmt.expected(p.read_bytes(), SENDER, recipient)) for p in messages]
        yield Delivered(user, base, recipient, maildir, mbox, expected)
    finally:
        if user is not None:
            delete_user(user)


def _multiset_diff(expected, got):
    """Readable difference between two lists of messages compared as multisets."""
    want = collections.Counter(m for _, m in expected)
    have = collections.Counter(got)
    missing = [name for name, m in expected if want[m] > have.get(m, 0)]
    extra = [m[:200] for m in have if have[m] > want.get(m, 0)]
    return missing, extra


def _first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i, a[max(0, i - 40): i + 40], b[max(0, i - 40): i + 40]
    return min(len(a), len(b)), a[-40:], b[-40:]


def _compare_in_order(expected, got, what):
    assert len(got) == len(expected), f"{what}: {len(got)} messages, expected {len(expected)}"
    bad = []
    for (name, want), have in zip(expected, got):
        if want != have:
            bad.append((name, _first_difference(want, have)))
    assert not bad, f"{what}: {len(bad)} messages differ; first: {bad[:3]}"


# -- Maildir -----------------------------------------------------------------


def test_maildir_files_are_exact(delivered):
    new = os.path.join(delivered.maildir, "new")
    names = os.listdir(new)
    assert len(names) == len(delivered.expected)
    assert not os.listdir(os.path.join(delivered.maildir, "tmp")), "tmp/ not cleaned up"
    got = []
    for name in names:
        with open(os.path.join(new, name), "rb") as f:
            data = f.read()
        got.append(data)
        size = re.search(r",S=(\d+)", name)
        vsize = re.search(r",W=(\d+)", name)
        assert size and int(size.group(1)) == len(data), f"S= wrong in {name}"
        assert vsize and int(vsize.group(1)) == len(data) + data.count(b"\n"), f"W= wrong in {name}"
    missing, extra = _multiset_diff(delivered.expected, got)
    assert not missing and not extra, f"missing/different: {missing[:5]}; unexpected: {extra[:2]}"


def test_maildir_reads_back_with_dovecot(delivered):
    got = dovecot.read_maildir(delivered.maildir)
    missing, extra = _multiset_diff(delivered.expected, got)
    assert len(got) == len(delivered.expected)
    assert not missing and not extra, f"missing/different: {missing[:5]}; unexpected: {extra[:2]}"


def test_maildir_reads_back_with_python_mailbox(delivered):
    md = mailbox.Maildir(delivered.maildir, factory=None, create=False)
    try:
        got = [md.get_bytes(key) for key in md.keys()]
    finally:
        md.close()
    missing, extra = _multiset_diff(delivered.expected, got)
    assert len(got) == len(delivered.expected)
    assert not missing and not extra, f"missing/different: {missing[:5]}; unexpected: {extra[:2]}"


# -- mbox --------------------------------------------------------------------


def test_mbox_is_exact(delivered):
    with open(delivered.mbox, "rb") as f:
        data = f.read()
    parsed = mboxfmt.split_mbox(data)
    bad_from = [f for f, _ in parsed if not FROM_LINE.match(f)]
    assert not bad_from, f"malformed From_ lines: {bad_from[:3]}"
    _compare_in_order(delivered.expected, [m for _, m in parsed], "mbox (unquoted)")


def test_mbox_reads_back_with_dovecot(delivered):
    got = dovecot.read_mbox(delivered.mbox)
    want = [(name, mboxfmt.quote(m)) for name, m in delivered.expected]
    _compare_in_order(want, got, "dovecot mbox")


def test_mbox_reads_back_with_python_mailbox(delivered):
    mb = mailbox.mbox(delivered.mbox, factory=None, create=False)
    try:
        got = [mb.get_bytes(key) for key in mb.keys()]
    finally:
        mb.close()
    want = [(name, mboxfmt.quote(m)) for name, m in delivered.expected]
    _compare_in_order(want, got, "python mailbox.mbox")


def test_mbox_is_owned_by_the_user_mode_0600(delivered):
    st = os.stat(delivered.mbox)
    assert st.st_mode & 0o777 == 0o600
    if delivered.user is not None:
        assert st.st_uid == delivered.user.uid
