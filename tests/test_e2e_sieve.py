"""Sieve in delivery, end to end: the installed ``pymda`` as real users with
a script in a real home (SPEC 6, docs/sieve.md "How delivery runs Sieve").

What a test looks at: the files in the Maildir (folders, ``cur/`` with
``:2,FLAGS``), the exit code and the one status line, the user's
``~/.dovecot.sieve.log``, and what a recording ``sendmail_command`` (a
shell script saving its argv and stdin) was asked to send.  LMTP and
postfix: tests/test_e2e_sieve_lmtp.py.
"""

import os
import random
import time

import pytest

from support.run import EX_NOPERM, EX_OK, EX_TEMPFAIL, run_pymda

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test users)")

SENDER = "carol@example.net"

RECORDER = """#!/bin/sh
# a recording sendmail: argv (one per line) and stdin into ~/sent/N.*;
# exits 75 for the address in ~/fail-for until ~/fixed exists
d="$(dirname "$0")/../sent"
mkdir -p "$d"
n="$d/$(date +%s%N)"
for a in "$@"; do printf '%s\\n' "$a"; done > "$n.argv.tmp"
cat > "$n.data"
for last in "$@"; do :; done
if [ -e "$(dirname "$0")/../fail-for" ] && [ ! -e "$(dirname "$0")/../fixed" ] \\
   && [ "$last" = "$(cat "$(dirname "$0")/../fail-for")" ]; then
    rm -f "$n.argv.tmp" "$n.data"
    echo "recorder: not now"
    exit 75
fi
mv "$n.argv.tmp" "$n.argv"
exit 0
"""


def msg(subject="hello", sender=SENDER, to=None, extra=b"", mid=None, body=b"body\n"):
    mid = mid or f"<{subject.replace(' ', '-')}.{time.monotonic_ns()}@example.net>"
    head = (f"From: Carol <{sender}>\nTo: {to or 'someone@localhost'}\n"
            f"Subject: {subject}\nMessage-ID: {mid}\n").encode()
    return head + extra + b"\n" + body


def script(user, text, path=".dovecot.sieve", mode=0o644):
    return user.write(path, text.encode(), mode)


def args(user, *more, sender=SENDER, rcpt=None):
    rcpt = rcpt or f"{user.name}@localhost"
    return ["-f", sender, "-a", rcpt, "-o", "mailbox=Maildir/", *more]


def recorder(user):
    rec = user.write("bin/sendmail", RECORDER.encode(), 0o755)
    user.mkdir("sent")
    return ["-o", f'sendmail_command=["{rec}", "-oi", "-f", "$sender"]']


def sent(user):
    """[(argv list, data bytes)] in order of sending."""
    out = []
    for p in sorted(user.path("sent").glob("*.argv")):
        out.append((p.read_text().splitlines(), p.with_suffix(".data").read_bytes()))
    return out


def files(user, folder="", sub="new"):
    d = user.path("Maildir", folder, sub) if folder else user.path("Maildir", sub)
    return sorted(d.iterdir()) if d.is_dir() else []


def count(user, folder=""):
    return len(files(user, folder)) + len(files(user, folder, "cur"))


def make_folder(user, name):
    for sub in ("cur", "new", "tmp"):
        user.mkdir(f"Maildir/{name}/{sub}")


def user_with(make_user, folder, rules):
    """A new user with Maildir ``folder``, a script of ``rules`` (fileinto,
    vacation, copy required) and a recording sendmail: (user, -o args)."""
    user = make_user()
    make_folder(user, folder)
    script(user, 'require ["fileinto", "vacation", "copy"];\n' + rules)
    return user, recorder(user)


def user_log(user):
    p = user.path(".dovecot.sieve.log")
    return p.read_text() if p.exists() else ""


ROUNDCUBE = """require ["fileinto","imap4flags","mailbox","relational","comparator-i;ascii-numeric"];
# rule:[spam]
if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5"
{
\tfileinto :create "Junk";
\tstop;
}
# rule:[lists]
if anyof (header :contains "list-id" "dev.lists", address :is "from" "list@example.org")
{
\taddflag "\\\\Seen";
\tfileinto "Lists/Dev";
\tremoveflag "\\\\Seen";
}
# rule:[boss]
if header :contains "subject" "urgent"
{
\tsetflag ["\\\\Flagged", "$Important"];
\tkeep;
}
"""


def test_files_flags_and_tests(make_user):
    alice = make_user()
    make_folder(alice, ".Lists.Dev")
    script(alice, ROUNDCUBE)
    a = args(alice)
    assert run_pymda(a, msg("score", extra=b"X-Spam-Score: 7\n"), user=alice)[0] == EX_OK
    assert run_pymda(a, msg("low", extra=b"X-Spam-Score: 2\n"), user=alice)[0] == EX_OK
    code, out = run_pymda(a, msg("dev", extra=b"List-Id: <dev.lists.example.org>\n"),
                          user=alice)
    assert (code, out) == (EX_OK, b"")
    code, out = run_pymda(a, msg("urgent: call me"), user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice, ".Junk") == 1                       # :create made it
    assert b"Subject: score\n" in files(alice, ".Junk")[0].read_bytes()
    (dev,) = files(alice, ".Lists.Dev", "cur")              # flagged: cur/
    assert dev.name.endswith(":2,S")
    # the implicit keep after the fileinto: flags reset -> new/
    inbox_new = [p.read_bytes() for p in files(alice)]
    assert sum(b"Subject: dev\n" in m for m in inbox_new) == 0
    assert sum(b"Subject: low\n" in m for m in inbox_new) == 1
    (urgent,) = files(alice, sub="cur")
    assert urgent.name.endswith(":2,F")                     # $Important dropped
    assert b"Subject: urgent: call me\n" in urgent.read_bytes()
    assert count(alice) == 2
    assert user_log(alice) == ""  # no errors


def test_missing_folder_falls_back_to_keep_once_and_logs(make_user):
    alice = make_user()
    make_folder(alice, ".Work")
    script(alice, 'require "fileinto";\nfileinto "Missing";\nfileinto "Work/Sub";\n'
                  'fileinto "Work";\nfileinto "Work";\nfileinto "../etc";\n')
    code, out = run_pymda(args(alice), msg(), user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice, ".Work") == 1                       # named twice: one copy
    assert count(alice) == 1                                # 3 fallbacks: one copy
    assert not alice.path("Maildir", ".Missing").exists()
    log = user_log(alice)
    assert "line 2: fileinto 'Missing': folder does not exist" in log
    assert "line 3: fileinto 'Work/Sub': folder does not exist" in log
    assert "fileinto '../etc': unusable folder name" in log


def test_a_slash_and_a_dot_are_one_folder(make_user):
    alice = make_user()
    script(alice, 'require ["fileinto", "mailbox"];\nfileinto :create "A/B";\n'
                  'fileinto :create "A.B";\n')
    assert run_pymda(args(alice), msg(), user=alice)[0] == EX_OK
    assert count(alice, ".A.B") == 1
    assert count(alice) == 0


def test_sieve_fileinto_create_setting(make_user):
    alice = make_user()
    script(alice, 'require "fileinto";\nfileinto "New";\n')
    code, _ = run_pymda(args(alice, "-o", "sieve_fileinto_create=true"), msg(), user=alice)
    assert code == EX_OK
    assert count(alice, ".New") == 1 and count(alice) == 0


def test_implicit_keep_is_the_m_folder_and_the_extension_folder(make_user):
    alice = make_user()
    make_folder(alice, ".Ext")
    make_folder(alice, ".Mfolder")
    script(alice, 'if header :contains "subject" "x" { keep; }\n')
    assert run_pymda(args(alice, rcpt=f"{alice.name}+Ext@localhost"), msg("x"),
                     user=alice)[0] == EX_OK
    assert run_pymda(args(alice, "-m", "Mfolder"), msg("y"), user=alice)[0] == EX_OK
    assert count(alice, ".Ext") == 1 and count(alice, ".Mfolder") == 1
    assert count(alice) == 0


def test_plan_shows_sources_and_discard_writes_nothing(make_user):
    alice = make_user()
    script(alice, 'require ["fileinto", "mailbox"];\n'
                  'if header :is "subject" "drop" { discard; stop; }\n'
                  'fileinto :create "F";\n')
    path = alice.path(".dovecot.sieve")
    code, out = run_pymda(args(alice, "-n"), msg("keep me"), user=alice)
    assert code == EX_OK
    lines = out.decode().splitlines()
    assert lines == [f"maildir {alice.home}/Maildir/ folder=F source=sieve {path} line 3"]
    import json

    code, out = run_pymda(args(alice, "-n", "--json"), msg("drop"), user=alice)
    assert code == EX_OK
    assert json.loads(out) == {"targets": [], "discarded": True}
    assert not alice.path("Maildir").exists()
    code, out = run_pymda(args(alice), msg("drop"), user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice) == 0 and count(alice, ".F") == 0


def test_dovecot_symlink_into_sieve_dir(make_user):
    alice = make_user()
    alice.mkdir("sieve")
    script(alice, 'require "fileinto";\nfileinto "Here";\n', "sieve/roundcube.sieve")
    os.symlink("sieve/roundcube.sieve", alice.path(".dovecot.sieve"))
    os.lchown(alice.path(".dovecot.sieve"), alice.uid, alice.gid)
    make_folder(alice, ".Here")
    assert run_pymda(args(alice), msg(), user=alice)[0] == EX_OK
    assert count(alice, ".Here") == 1 and count(alice) == 0
    # the compiled cache is the user's, and a second delivery uses it
    cache = list(alice.path(".cache", "pymda", "sieve").iterdir())
    assert cache and all(p.stat().st_uid == alice.uid for p in cache)
    assert run_pymda(args(alice), msg(), user=alice)[0] == EX_OK
    assert count(alice, ".Here") == 2


@pytest.mark.parametrize("template", ["filters/$user.sieve", "$home/filters/${user}.sieve"])
def test_sieve_script_template_names_the_users_script(make_user, template):
    # one expansion for the cheap "is there a script" check and for the
    # step itself: $user expands, a relative path is under the home
    alice = make_user()
    alice.mkdir("filters")
    script(alice, 'require "fileinto";\nfileinto "Here";\n', f"filters/{alice.name}.sieve")
    make_folder(alice, ".Here")
    code, out = run_pymda(args(alice, "-o", f"sieve_script={template}"), msg(), user=alice)
    assert code == EX_OK, out
    assert count(alice, ".Here") == 1 and count(alice) == 0
    assert alice.path(f"filters/{alice.name}.sieve.log").exists() is False


def test_mailboxexists_looks_in_the_mailbox_of_this_delivery(make_user):
    """With --mailbox, `mailboxexists` asks about that mailbox's folders,
    as fileinto stores into them (it looked in the configured one)."""
    alice = make_user()
    script(alice, 'require ["mailbox", "fileinto"];\n'
                  'if mailboxexists "Work" { fileinto "Work"; }\n')
    for sub in ("cur", "new", "tmp"):
        alice.mkdir(f"Other/.Work/{sub}")
    other = str(alice.path("Other")) + "/"
    code, out = run_pymda(args(alice, "--mailbox", other), msg(), user=alice)
    assert code == EX_OK, out
    assert len(list(alice.path("Other/.Work/new").iterdir())) == 1
    assert not alice.path("Maildir").exists() and not alice.path("Other/new").exists()


def test_dangling_symlink_is_no_filtering(make_user):
    alice = make_user()
    os.symlink("sieve/gone.sieve", alice.path(".dovecot.sieve"))
    code, out = run_pymda(args(alice, "-v"), msg(), user=alice)
    assert code == EX_OK
    assert b"sieve" not in out
    assert count(alice) == 1


@pytest.mark.parametrize("case", ["world-writable", "foreign", "directory"])
def test_untrusted_scripts_are_ignored_with_a_warning(make_user, case):
    alice, mallory = make_user(), make_user()
    text = 'discard;\n'
    if case == "world-writable":
        p = script(alice, text, mode=0o666)
        os.chmod(p, 0o666)
        why = "world-writable: ignored"
    elif case == "foreign":
        p = script(mallory, text, "evil.sieve", mode=0o644)
        os.chmod(mallory.home, 0o755)
        os.symlink(p, alice.path(".dovecot.sieve"))
        why = f"owned by uid {mallory.uid}"
    else:
        alice.mkdir(".dovecot.sieve")
        why = "not a regular file"
    code, out = run_pymda(args(alice, "-v"), msg(), user=alice)
    assert code == EX_OK, out
    assert why.encode() in out
    assert count(alice) == 1                                # not discarded


def test_compile_and_runtime_errors_keep_and_log(make_user):
    alice = make_user()
    script(alice, 'require "fileinto";\nif header :contains "subject" "x" {\n'
                  '  fileinto "A";\n  frobnicate;\n}\n')
    code, out = run_pymda(args(alice, "-v"), msg("x"), user=alice)
    assert code == EX_OK, out
    assert count(alice) == 1
    path = str(alice.path(".dovecot.sieve"))
    assert f"{path}:4:" in user_log(alice)
    assert f"{path}:4:".encode() in out                     # syslog (-v: stderr too)
    # a runtime error (too many actions) drops the whole result
    alice.path(".dovecot.sieve.log").unlink()
    script(alice, 'require ["fileinto", "mailbox"];\n' + "".join(
        f'fileinto :create "F{i}";\n' for i in range(40)))
    assert run_pymda(args(alice, "-o", "sieve_max_actions=5"), msg("y"),
                     user=alice)[0] == EX_OK
    assert count(alice) == 2
    assert not any(alice.path("Maildir").glob(".F*"))
    assert "too many actions" in user_log(alice) or "actions" in user_log(alice)


TOKENS = ['require', '"fileinto"', '"imap4flags"', '"variables"', '"regex"', 'if', 'elsif',
          'else', 'header', 'address', 'exists', 'size', ':over', ':under', '100K',
          ':contains', ':matches', ':regex', ':is', '"subject"', '"*a*b*"', '"(a|b)+c"',
          'allof', 'anyof', 'not', 'true', 'false', '{', '}', '(', ')', '[', ']', ',',
          ';', 'fileinto', '"INBOX"', '"Junk"', 'keep', 'stop', 'setflag', 'addflag',
          '"\\\\Seen"', 'set', '"v"', '"${v}"', '"${1}"', 'text:\nx\n.\n', '#c\n',
          '/* c */', '"\\"', '"\x00"', '"\xff"', ':comparator', '"i;octet"', '0', '99999999999999']


def test_hostile_scripts_always_deliver_never_a_traceback(make_user):
    alice = make_user()
    make_folder(alice, ".Junk")
    rnd = random.Random(20261129)
    base = ROUNDCUBE.split()
    delivered = 0
    n = 30
    for i in range(n):
        if i % 2:
            words = [rnd.choice(TOKENS) for _ in range(rnd.randint(1, 40))]
        else:   # a mutated real script
            words = list(base)
            for _ in range(rnd.randint(1, 6)):
                k = rnd.randrange(len(words))
                words[k] = rnd.choice(TOKENS + ["", words[k][:-1], words[k] * 2])
        text = " ".join(words)
        assert "discard" not in text and "reject" not in text
        alice.write(".dovecot.sieve", text.encode("utf-8", "surrogateescape"), 0o644)
        code, out = run_pymda(args(alice), msg(f"fuzz {i}", extra=b"X-Spam-Score: 9\n"),
                              user=alice)
        assert (code, out) == (EX_OK, b""), (text, out)
        total = count(alice) + count(alice, ".Junk")
        assert total > delivered, text                      # stored somewhere
        delivered = total


def test_pathological_matches_and_regex_finish_within_the_limit(make_user):
    alice = make_user()
    script(alice, 'require ["fileinto", "regex", "mailbox"];\n'
                  'if header :matches "subject" "*a*a*a*a*a*a*a*a*b" { fileinto :create "M"; }\n'
                  'if header :regex "subject" "^(a|aa)+(a+)+b$" { fileinto :create "R"; }\n'
                  'if header :regex "subject" "^a+$" { fileinto :create "Plain"; }\n')
    start = time.monotonic()
    code, out = run_pymda(args(alice, "-o", "sieve_max_cpu_time=5"),
                          msg("a" * 20000), user=alice, timeout=120)
    elapsed = time.monotonic() - start
    assert (code, out) == (EX_OK, b"")
    assert elapsed < 30, elapsed
    # either the whole script ran (Plain) or the limit stopped it (INBOX)
    assert count(alice, ".Plain") + count(alice) == 1
    assert count(alice, ".M") == 0 and count(alice, ".R") == 0


# --- reject ----------------------------------------------------------------------------------


def test_reject_exits_77_with_the_reason(make_user):
    alice = make_user()
    script(alice, 'require "reject";\nif header :contains "subject" "buy" '
                  '{ reject text:\nNo thanks.\nReally.\n.\n; }\n')
    code, out = run_pymda(args(alice), msg("buy now"), user=alice)
    assert code == EX_NOPERM
    assert out == b"5.7.1 No thanks. Really.\n"
    assert not alice.path("Maildir").exists()
    code, out = run_pymda(args(alice, "-n"), msg("buy now"), user=alice)
    assert code == EX_OK and b"5.7.1 No thanks. Really." in out
    assert run_pymda(args(alice), msg("hello"), user=alice)[0] == EX_OK
    assert count(alice) == 1


# --- vacation and redirect ---------------------------------------------------------------


VACATION = ('require ["vacation"];\n'
            'vacation :days 3 :subject "Away" "I am away until Monday.";\n')


def test_vacation_one_reply_per_period(make_user):
    alice = make_user()
    script(alice, VACATION)
    rec = recorder(alice)
    to = f"{alice.name}@localhost"
    for i in range(2):
        code, out = run_pymda(args(alice, *rec), msg(f"m{i}", to=to), user=alice)
        assert (code, out) == (EX_OK, b"")
    assert count(alice) == 2
    (reply,) = sent(alice)
    argv, data = reply
    assert argv[-2:] == ["--", SENDER]
    assert argv[argv.index("-f") + 1] == ""                 # the null sender
    head = data.split(b"\n\n", 1)[0]
    assert b"\nAuto-Submitted: auto-replied (vacation)\n" in head
    assert b"\nSubject: Away\n" in head
    assert b"In-Reply-To: <m0." in head
    assert b"I am away until Monday." in data
    # another sender gets its own reply
    code, _ = run_pymda(args(alice, *rec, sender="dave@example.net"),
                        msg("m3", sender="dave@example.net", to=to), user=alice)
    assert code == EX_OK and len(sent(alice)) == 2
    # -n never sends, and shows the reply
    code, out = run_pymda(args(alice, *rec, "-n", "--json", sender="erin@example.net"),
                          msg("m4", sender="erin@example.net", to=to), user=alice)
    assert code == EX_OK
    assert {"kind": "vacation", "address": "erin@example.net",
            "source": f"sieve {alice.path('.dovecot.sieve')} line 2"} in \
        __import__("json").loads(out)["targets"]
    assert len(sent(alice)) == 2


NEVER_REPLY = {
    "null sender": dict(sender=""),
    "list header": dict(extra=b"List-Id: <x.lists.example.org>\n"),
    "precedence bulk": dict(extra=b"Precedence: bulk\n"),
    "auto-submitted": dict(extra=b"Auto-Submitted: auto-generated\n"),
    "suppress": dict(extra=b"X-Auto-Response-Suppress: OOF\n"),
    "mailer-daemon": dict(sender="MAILER-DAEMON@example.net"),
    "owner-": dict(sender="owner-list@example.net"),
    "-request": dict(sender="list-request@example.net"),
    "not addressed to me": dict(to="somebody-else@example.net"),
    "own address": dict(sender="SELF"),
}


@pytest.mark.parametrize("rule", sorted(NEVER_REPLY))
def test_vacation_never_replies(make_user, rule):
    alice = make_user()
    script(alice, VACATION)
    rec = recorder(alice)
    kw = dict(NEVER_REPLY[rule])
    sender = kw.pop("sender", SENDER)
    if sender == "SELF":
        sender = f"{alice.name}@localhost"
    kw.setdefault("to", f"{alice.name}@localhost")
    code, out = run_pymda(args(alice, *rec, sender=sender),
                          msg(sender=sender or "x@example.net", **kw), user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice) == 1
    assert sent(alice) == []


def test_header_injection_through_subject_from_and_variables(make_user):
    alice = make_user()
    script(alice, 'require ["vacation", "variables", "encoded-character"];\n'
                  'if header :matches "subject" "*" { set "s" "${1}"; }\n'
                  'vacation :subject "Re: ${s}${hex:0d 0a}Bcc: evil@example.com"\n'
                  '  :from "me@example.org${hex:0a}Bcc: evil2@example.com"\n'
                  '  "Away.${hex:0d 0a}Bcc: body@example.com";\n')
    rec = recorder(alice)
    subject = "hi =?utf-8?q?there=0D=0ABcc:_evil3@example.com?="
    code, out = run_pymda(args(alice, *rec), msg(subject, to=f"{alice.name}@localhost"),
                          user=alice)
    assert (code, out) == (EX_OK, b"")
    ((argv, data),) = sent(alice)
    head = data.split(b"\n\n", 1)[0]
    for line in head.split(b"\n"):
        assert not line.lower().startswith(b"bcc"), head
    assert head.count(b"\nSubject:") + head.startswith(b"Subject:") == 1
    assert [a for a in argv if "evil" in a] == []


def test_redirect_sends_a_marked_copy_and_a_returning_copy_is_kept(make_user):
    alice = make_user()
    script(alice, 'redirect "bob@example.net";\n')
    rec = recorder(alice)
    code, out = run_pymda(args(alice, *rec), msg("fwd"), user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice) == 0                                # redirect cancels keep
    ((argv, data),) = sent(alice)
    assert argv[-2:] == ["--", "bob@example.net"]
    assert argv[argv.index("-f") + 1] == SENDER
    assert f"X-Sieve-Redirected-From: {alice.name}@localhost\n".encode() in data
    # the copy comes back (bob redirects to alice): kept, not sent again
    code, out = run_pymda(args(alice, *rec), data, user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice) == 1 and len(sent(alice)) == 1


def test_redirect_loop_between_two_pymda_users(make_user):
    """alice redirects to bob, bob to alice: the message ends in a mailbox,
    each redirect happens once (the copies are fed back by hand as the MTA
    would)."""
    alice, bob = make_user(), make_user()
    a_addr, b_addr = f"{alice.name}@localhost", f"{bob.name}@localhost"
    script(alice, f'redirect "{b_addr}";\n')
    script(bob, f'redirect "{a_addr}";\n')
    rec_a, rec_b = recorder(alice), recorder(bob)
    data = msg("loop")
    hops = 0
    for _ in range(6):
        for user, rec, rcpt in ((alice, rec_a, a_addr), (bob, rec_b, b_addr)):
            before = len(sent(user))
            code, out = run_pymda(args(user, *rec, rcpt=rcpt), data, user=user)
            assert (code, out) == (EX_OK, b"")
            if len(sent(user)) == before:
                break
            hops += 1
            data = sent(user)[-1][1]
        else:
            continue
        break
    assert hops == 2                        # alice -> bob -> alice (kept)
    assert count(alice) == 1 and count(bob) == 0


def test_retry_after_a_temporary_failure_sends_nothing_twice(make_user):
    alice, rec = user_with(make_user, ".Keep", 'fileinto "Keep";\nvacation "away";\n'
                           'redirect :copy "bob@example.net";\nredirect "carl@example.net";\n')
    alice.write("fail-for", b"carl@example.net", 0o644)
    m = msg("retry", to=f"{alice.name}@localhost")
    code, out = run_pymda(args(alice, *rec), m, user=alice)
    assert code == EX_TEMPFAIL, out
    assert out.startswith(b"4.3.0 ") and b"carl@example.net" in out
    assert count(alice, ".Keep") == 1
    assert sorted(a[-1] for a, _ in sent(alice)) == ["bob@example.net", SENDER]
    # the MTA retries the same message: only the redirect still owed goes
    alice.write("fixed", b"", 0o644)
    code, out = run_pymda(args(alice, *rec), m, user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice, ".Keep") == 1 and count(alice) == 0
    assert sorted(a[-1] for a, _ in sent(alice)) == ["bob@example.net",
                                                     "carl@example.net", SENDER]
    # a later, different message is sent again (the records were dropped)
    code, out = run_pymda(args(alice, *rec), msg("again", to=f"{alice.name}@localhost"),
                          user=alice)
    assert code == EX_OK
    assert [a[-1] for a, _ in sent(alice)].count("carl@example.net") == 2


def test_a_store_that_fails_sends_nothing_until_it_succeeds(make_user):
    alice = make_user()
    make_folder(alice, ".Stuck")
    script(alice, 'require ["fileinto"];\nfileinto "Stuck";\nredirect "bob@example.net";\n')
    rec = recorder(alice)
    # a file where tmp/ should be: the store fails (temporarily) every time
    os.rmdir(alice.path("Maildir", ".Stuck", "tmp"))
    alice.write("Maildir/.Stuck/tmp", b"", 0o600)
    m = msg("stuck")
    code, out = run_pymda(args(alice, *rec), m, user=alice)
    assert code == EX_TEMPFAIL, out
    assert sent(alice) == []
    alice.path("Maildir", ".Stuck", "tmp").unlink()
    alice.mkdir("Maildir/.Stuck/tmp")
    code, out = run_pymda(args(alice, *rec), m, user=alice)
    assert (code, out) == (EX_OK, b"")
    assert count(alice, ".Stuck") == 1 and len(sent(alice)) == 1


# --- pymda-admin: redeliver --sieve, sieve test -d / --execute -------------------------------


def admin(*argv, input_bytes=b""):
    import subprocess

    from support import paths

    proc = subprocess.run([str(paths.prefix() / "bin" / "pymda-admin"), *map(str, argv)],
                          input=input_bytes, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120, check=False)
    return proc.returncode, proc.stdout


def test_redeliver_with_sieve_files_and_never_sends(make_user, tmp_path):
    alice, rec = user_with(make_user, ".Dev",
                           'if header :contains "subject" "dev" { fileinto "Dev"; }\n'
                           'redirect :copy "bob@example.net";\nvacation "away";\n')
    mbox = alice.write("old.mbox", b"From carol@example.net  Sat Nov 28 10:00:00 2026\n"
                       + msg("dev news", to=f"{alice.name}@localhost")
                       + b"\nFrom carol@example.net  Sat Nov 28 10:00:01 2026\n"
                       + msg("other", to=f"{alice.name}@localhost"), 0o644)
    code, out = admin("redeliver", "-d", alice.name, "--mailbox", "Maildir/", *rec, mbox)
    assert code == 0, out
    assert count(alice) == 2 and count(alice, ".Dev") == 0  # without --sieve: INBOX
    code, out = admin("redeliver", "--sieve", "-d", alice.name, "--mailbox", "Maildir/",
                      "--set", "redeliver_record=$home/.sieve-record", *rec, mbox)
    assert code == 0, out
    assert count(alice, ".Dev") == 1 and count(alice) == 3
    assert sent(alice) == []
    # run again: nothing twice
    code, out = admin("redeliver", "--sieve", "-d", alice.name, "--mailbox", "Maildir/",
                      "--set", "redeliver_record=$home/.sieve-record", *rec, mbox)
    assert code == 0, out
    assert count(alice, ".Dev") == 1 and count(alice) == 3


def test_admin_sieve_test_as_the_user_and_execute(make_user, tmp_path):
    alice = make_user()
    make_folder(alice, ".Dev")
    path = script(alice, 'require ["fileinto", "copy"];\nif header :contains "subject" "dev" '
                         '{ fileinto "Dev"; }\nredirect :copy "bob@example.net";\n',
                  "test.sieve")
    m = user_file = alice.write("m.eml", msg("dev stuff"), 0o644)
    assert "copy" in path.read_text()
    code, out = admin("sieve", "test", "-d", alice.name, "-o", "mailbox=Maildir/",
                      path, m)
    assert code == 0, out
    text = out.decode()
    assert f"folder=Dev source=sieve {path} line 2" in text
    assert "redirect bob@example.net" in text
    assert count(alice, ".Dev") == 0                       # nothing written
    rec = recorder(alice)
    code, out = admin("sieve", "test", "-d", alice.name, "--execute", "-o", "mailbox=Maildir/",
                      *rec, path, user_file)
    assert code == 0, out
    assert count(alice, ".Dev") == 1
    ((argv, _),) = sent(alice)
    assert argv[-1] == "bob@example.net"


def test_mbox_mailbox_folders_are_files_under_mbox_folder_directory(make_user):
    alice = make_user()
    script(alice, 'require ["fileinto", "mailbox", "imap4flags"];\n'
                  'if header :contains "subject" "list" { fileinto :create "Lists/Dev"; }\n'
                  'addflag "\\\\Seen";\n')
    a = ["-f", SENDER, "-a", f"{alice.name}@localhost", "-o", "mailbox=mbox"]
    assert run_pymda(a, msg("list mail"), user=alice) == (EX_OK, b"")
    assert run_pymda(a, msg("other"), user=alice) == (EX_OK, b"")
    folder = alice.path("mail", "Lists", "Dev").read_bytes()
    assert folder.startswith(f"From {SENDER} ".encode()) and b"Subject: list mail\n" in folder
    inbox = alice.path("mbox").read_bytes()
    assert inbox.count(b"\nSubject: ") == 1 and b"Subject: other\n" in inbox
