"""The real peer: Pigeonhole's ``sieve-test`` and pymda file the same
corpus messages into the same folders.

For every script below and every 8th message of the real corpus
(``$PYMDA_CORPUS``), ``sieve-test`` (Debian dovecot-sieve, run as
``nobody``: it refuses root) prints the folders it would store into; pymda's
interpreter must choose the same set (``INBOX`` for keep and the implicit
keep).  Needs root (to switch to nobody) and ``sieve-test``.
"""

import os
import shutil
import subprocess

import pytest

from pymda.sieve import interp, validate
from sievekit import (SIEVE_TEST, corpus_sample, peer_script, peer_workdir,
                      sieve_test_argv, view)
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs sieve-test as nobody)"),
    pytest.mark.skipif(SIEVE_TEST is None, reason="sieve-test (dovecot-sieve) not installed"),
]

SENDER = "alice@example.com"
RECIPIENT = "bob+news@example.net"

SCRIPTS = {
    "roundcube": '''require ["fileinto", "relational", "comparator-i;ascii-numeric"];
# rule:[lists]
if exists "list-id" { fileinto "Lists"; }
# rule:[dev]
if address :domain :is "from" ["github.com", "gitlab.com"] { fileinto "Dev"; }
if header :contains "subject" ["invoice", "order", "receipt", "re:"] { fileinto "Shop"; }
if header :count "ge" :comparator "i;ascii-numeric" "received" "4" { fileinto "Hops"; }
if size :over 20K { fileinto "Big"; stop; }
if address :localpart :contains ["from", "sender", "reply-to"] ["noreply", "no-reply"] { fileinto "Robots"; }
''',
    "variables": '''require ["fileinto", "variables", "envelope", "subaddress"];
if header :matches "subject" "*[*]*" { fileinto "Tagged"; }
if header :matches "from" "*<*@*>*" { if string :is "${3}" "" { fileinto "NoDomain"; } }
if address :all :matches "to" "*@*.org" { fileinto "Org"; }
if not anyof (exists "date", exists "message-id") { fileinto "Broken"; }
if allof (header :contains "content-type" "multipart",
          not header :contains "content-type" "alternative") { fileinto "Multi"; }
if envelope :detail "to" "other" { fileinto "Other"; }
if address :is :all "cc" "" { fileinto "EmptyCc"; }
''',
    "body": '''require ["fileinto", "body"];
if body :text :contains "unsubscribe" { fileinto "Unsub"; }
if body :raw :contains "base64" { fileinto "B64"; }
if body :content "text/html" :contains "<table" { fileinto "Table"; }
if body :content "text" :contains "http" { fileinto "Links"; } else { keep; }
''',
}


def peer_folders(workdir, script, message):
    # nobody may not read the corpus where it lies (a checkout under a 0700
    # /root, say): sieve-test reads a copy in the shared work directory
    copy = os.path.join(workdir, "message.eml")
    shutil.copyfile(message, copy)
    os.chmod(copy, 0o644)
    proc = subprocess.run(
        sieve_test_argv(workdir) + [
         "-a", RECIPIENT, "-r", RECIPIENT, "-f", SENDER, script, copy],
        capture_output=True, text=True, timeout=60)
    assert "final result: success" in proc.stdout + proc.stderr, proc.stderr
    return {line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
            if line.strip().startswith("* store message in folder:")}


def pymda_folders(text, message):
    with open(message, "rb") as f:
        data = f.read()
    if data.startswith(b"From "):
        data = data[data.find(b"\n") + 1:]
    out = interp.execute(validate.compile_script(text), view(data),
                         interp.Environment(sender=SENDER, recipient=RECIPIENT))
    assert out.error is None, out.error
    return {a.folder if a.kind == "fileinto" else "INBOX"
            for a in out.final_actions() if a.kind in ("fileinto", "keep")}


workdir = pytest.fixture(scope="module")(peer_workdir)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_same_folders_as_sieve_test(workdir, name):
    messages = corpus_sample(8)
    script = peer_script(workdir, name, SCRIPTS[name])
    seen = set()
    mismatches = []
    for message in messages:
        theirs = peer_folders(workdir, script, message)
        mine = pymda_folders(SCRIPTS[name], message)
        seen |= mine
        if theirs != mine:
            mismatches.append((os.path.basename(message), sorted(theirs), sorted(mine)))
    assert mismatches == []
    assert len(seen) >= 3           # the rules do fire on the corpus
