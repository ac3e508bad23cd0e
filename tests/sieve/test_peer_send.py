"""The real peer for mail that Sieve sends: Pigeonhole's ``sieve-test -e``
prints every message it would send (vacation replies, redirected copies);
pymda.sieve.send must send the same messages to the same recipients with
the same envelope senders and the same values of the headers that matter
(From, To, Subject, In-Reply-To, References, Auto-Submitted, Precedence,
X-Auto-Response-Suppress, MIME-Version, Content-Type; redirect:
X-Sieve-Redirected-From and the original message below it).

For every 4th message of the real corpus, the envelope sender is the
message's From address and the recipient its first To address (so the
never-reply rules meet real lists, robots and To/Cc forms).  Each
sieve-test run gets a fresh home (it remembers vacation replies).  Needs
root (sieve-test refuses to run as root: it runs as ``nobody``).
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from pymda.sieve import interp, send, validate
from pymda.sieve.mail import decode_words, parse_address_list, split_header_block, unfold
from sievekit import (SIEVE_TEST, corpus_sample, peer_script, peer_workdir,
                      sieve_test_argv, view)
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs sieve-test as nobody)"),
    pytest.mark.skipif(SIEVE_TEST is None, reason="sieve-test (dovecot-sieve) not installed"),
]

SCRIPTS = {
    "vacation-redirect": 'require "vacation";\n'
                         'vacation :days 3 :subject "Gone" "I am away";\n'
                         'redirect "carol@example.org";\n',
    "vacation-default-subject": 'require ["vacation", "copy"];\n'
                                'vacation :addresses ["Ops <ops@example.org>"] '
                                '"Back on Monday.";\n'
                                'redirect :copy "dave@example.org";\n',
    "vacation-from": 'require ["vacation"];\n'
                     'vacation :from "Bob Example <bob@example.org>" '
                     ':subject "Abwesend: Grüße" "weg";\n',
    # Roundcube managesieve's vacation form, :mime body
    "roundcube-mime": 'require ["vacation"];\n'
                      '# rule:[Out of office]\n'
                      'if true\n{\n\tvacation :days 7 :subject "Out of office" '
                      ':mime text:\nContent-Type: text/plain; charset=utf-8\n'
                      'Content-Transfer-Encoding: 8bit\n\n'
                      'I am out until Monday. Dringend: Jürgen.\n.\n;\n}\n',
    # Nextcloud Mail's generated script (variables, date range, :subject
    # from the original subject)
    "nextcloud": 'require ["date", "relational", "vacation", "variables"];\n'
                 '### Nextcloud Mail: Vacation Responder ### DON\'T EDIT ###\n'
                 'if allof(currentdate :value "ge" "date" "2000-01-01") {\n'
                 '  if header :matches "subject" "*" { set "subject" "${1}"; }\n'
                 '  vacation :days 4 :subject "Re: ${subject}" '
                 ':addresses ["nc@example.org"] "Away from ${subject}";\n}\n',
    # SOGo's generated vacation (its own list guards, then vacation)
    "sogo": 'require ["vacation", "envelope"];\n'
            'if allof ( not exists ["list-help", "list-unsubscribe", "list-subscribe", '
            '"list-owner", "list-post", "list-archive", "list-id", "Mailing-List"], '
            'not header :comparator "i;ascii-casemap" :is "Precedence" '
            '["list", "bulk", "junk"], not header :comparator "i;ascii-casemap" '
            ':matches "To" "Multiple recipients of*" ) {\n'
            'vacation :days 7 :addresses ["sogo@example.org"] :subject "Absent" '
            'text:\nI am absent.\n\n-- \nSOGo\n.\n;\n}\n',
}

VACATION_HEADERS = ("from", "to", "subject", "in-reply-to", "references",
                    "auto-submitted", "precedence", "x-auto-response-suppress",
                    "mime-version", "content-type")
DROP = ("x-sieve", "message-id", "date")     # per-run values


def _first(data, name):
    for field, value in split_header_block(data):
        if field.lower() == name:
            for addr in parse_address_list(unfold(value)):
                if addr.valid and addr.domain and addr.all.isascii():
                    return addr.all
    return None


def _header_map(head, names):
    out = {}
    for field, value in split_header_block(head):
        if field.lower() in names:
            text = " ".join(unfold(value).split())
            out.setdefault(field.lower(), []).append(decode_words(text))
    return out


def _normal(data, kind):
    """What is compared of one sent message."""
    data = data.replace(b"\r\n", b"\n")
    k = data.find(b"\n\n")
    head, body = (data[:k + 1], data[k + 2:]) if k >= 0 else (data, b"")
    if kind == "vacation":
        return _header_map(head, VACATION_HEADERS), body.strip()
    fields = [(n.lower(), " ".join(unfold(v).split()))
              for n, v in split_header_block(head) if n.lower() not in DROP]
    return fields, body.rstrip(b"\n")


def peer_sends(script, message, sender, recipient):
    home = tempfile.mkdtemp(prefix="pymda-sendpeer-", dir="/tmp")
    os.chmod(home, 0o777)
    try:
        proc = subprocess.run(
            sieve_test_argv(home, "-e") + [
             "-a", recipient, "-r", recipient, "-f", sender, script, message],
            capture_output=True, timeout=60)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    err = proc.stderr.replace(b"\r\n", b"\n")
    out = proc.stdout.replace(b"\r\n", b"\n")
    assert b"final result: success" in err + out, err
    # stderr: "sending message from <SENDER>:" per message, in order;
    # stdout: the messages one after the other (each starts with its
    # X-Sieve header), then a "RECIPIENT: ..." trailer per message
    senders = []
    marker = b"Info: sending message from <"
    pos = err.find(marker)
    while pos >= 0:
        senders.append(err[pos + len(marker):err.find(b">:", pos)].decode())
        pos = err.find(marker, pos + 1)
    trailer = out.find(b"\nRECIPIENT: ") if senders else len(out)
    recipients = [line[len(b"RECIPIENT: "):].decode()
                  for line in out[trailer:].splitlines() if line.startswith(b"RECIPIENT: ")]
    bodies = [b"X-Sieve: " + part for part in out[:trailer].split(b"X-Sieve: Pigeonhole")[1:]
              if part]
    assert len(senders) == len(recipients) == len(bodies), (err, out[:2000])
    return list(zip(senders, recipients, bodies))


def pymda_sends(text, data, sender, recipient):
    env = interp.Environment(sender=sender, recipient=recipient, orig_recipient=recipient)
    out = interp.execute(validate.compile_script(text), view(data), env)
    assert out.error is None, out.error
    ctx = send.Context(env=env, view=view(data), message=data, user_address=recipient,
                       settings=send.Settings(use_original_recipient=False),
                       now=1_800_000_000, hostname="test.example.net")
    plan = send.prepare(out.final_actions(), ctx)
    sender_ = send.RecordingSender()
    assert send.send_all(plan.outgoing, sender_, None) == []
    return [(f, r, d) for f, r, d in sender_.sent]


workdir = pytest.fixture(scope="module")(peer_workdir)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_same_messages_as_sieve_test(workdir, name):
    messages = corpus_sample(4)
    script = peer_script(workdir, name, SCRIPTS[name])
    mismatches = []
    counts = {"vacation": 0, "redirect": 0, "none": 0}
    for message in messages:
        with open(message, "rb") as f:
            data = f.read()
        if data.startswith(b"From "):
            data = data[data.find(b"\n") + 1:]
        k = data.find(b"\n\n")
        sender = _first(data[:k], "from") or "alice@example.com"
        recipient = _first(data[:k], "to") or "bob@example.net"
        if sender.lower() == recipient.lower():
            continue
        copy = os.path.join(workdir, "message.eml")
        with open(copy, "wb") as f:
            f.write(data)
        os.chmod(copy, 0o644)
        theirs = peer_sends(script, copy, sender, recipient)
        mine = pymda_sends(SCRIPTS[name], data, sender, recipient)

        def norm(sends):
            out = {}
            for env_from, rcpt, body in sends:
                kind = "vacation" if env_from == "" else "redirect"
                out[(kind, env_from, rcpt)] = _normal(body, kind)
            return out
        t, m = norm(theirs), norm(mine)
        if t != m:
            mismatches.append((os.path.basename(message), t, m))
        for kind, _f, _r in m:
            counts[kind] += 1
        if not m:
            counts["none"] += 1
    assert mismatches == [], mismatches[:3]
    # the corpus exercises both sides: replies sent and replies refused
    assert counts["vacation"] >= 3 and counts["none"] + counts["redirect"] >= 1, counts
