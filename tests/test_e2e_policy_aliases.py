"""The SMTP-time quota check through postfix's alias maps (issue 15, SPEC 3
"Aliases"), with a real postfix (loopback only, root only) and the
installed pymda-policyd.

Postfix: ``mydestination`` with example.org, ``virtual_alias_maps =
hash:<virtual>, regexp:<dots>`` (the "ignore dots" example
``/^(.*)\\.(.*@example\\.org)$/ $1$2``), the support module's private
aliases file as ``alias_maps``, ``recipient_delimiter = +``,
``smtpd_end_of_data_restrictions = check_policy_service`` pointing at
pymda-policyd, ``mailbox_command`` = pymda.  One user is full, one has room.
"""

import os
import smtplib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import paths  # noqa: E402
from support.policyd import full_and_roomy, start_policyd, world_readable_config  # noqa: E402

SMTP_HOST = "127.0.0.1"
SMTP_PORT = 25
ACCEPTED = 250
REJECT_CODE = 552
REJECT_STATUS = b"5.2.2 "
REJECT_TEXT = b"Mailbox is full"
DUNNO = b"action=DUNNO\n\n"
FULL = b"action=552 5.2.2 Mailbox is full\n\n"
LIMIT = 20000
VIRTUAL_LOOP_CODE = 451  # postfix cleanup(8), at the end of DATA
VIRTUAL_LOOP_REPLY = b"4.6.0 Alias expansion error"
SENDER = "sender@remote.invalid"
VIRTUAL_MAP = Path("/etc/postfix/pymda-test-virtual")
DOTS_MAP = Path("/etc/postfix/pymda-test-dots")
MISSING_MAP = Path("/etc/postfix/pymda-test-missing")
LOOKUP_FAILED = "alias lookup failed, answering DUNNO"

MESSAGE = (b"From: sender@remote.invalid\r\nSubject: aliases e2e\r\n"
           b"Message-ID: <aliases-e2e@example.org>\r\n\r\n" + b"line of body text\r\n" * 50)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="postfix tests need root")


def write_maps(full, roomy):
    VIRTUAL_MAP.write_text(textwrap.dedent(f"""\
        info@example.org {full.name}@example.org
        pepe@example.org {full.name}@example.org
        chain1@example.org chain2@example.org
        chain2@example.org chain3@example.org
        chain3@example.org info@example.org
        loop1@example.org loop2@example.org
        loop2@example.org loop1@example.org
        mixed@example.org {roomy.name}@example.org, someone@remote.invalid
        """))
    DOTS_MAP.write_text("/^(.*)\\.(.*@example\\.org)$/ $1$2\n")
    subprocess.run(["/usr/sbin/postmap", f"hash:{VIRTUAL_MAP}"], check=True)


@pytest.fixture
def setup(postfix, make_user):
    full, roomy = full_and_roomy(make_user, LIMIT)
    # ttl 0: every request asks the maps again (a test changes main.cf)
    cfg = world_readable_config(
        f'mailbox = "Maildir/"\nquota_storage = {LIMIT}\npolicy_alias_cache_ttl = 0\n',
        prefix="pymda-aliases-e2e-")
    write_maps(full, roomy)
    postfix.write_aliases({"staff": f"{full.name}, {roomy.name}",
                           "aloop1": "aloop2", "aloop2": "aloop1"})
    policyd = start_policyd(cfg)
    postfix.reset(
        mydestination="localhost, $myhostname, example.org",
        virtual_alias_maps=f"hash:{VIRTUAL_MAP}, regexp:{DOTS_MAP}",
        mailbox_command=f'{paths.pymda_bin()} -c {cfg} -f "$SENDER"',
        smtpd_end_of_data_restrictions=f"check_policy_service {policyd.spec}",
    )
    try:
        yield postfix, policyd, full, roomy, cfg
    finally:
        policyd.stop()
        postfix.reset()
        for p in (VIRTUAL_MAP, Path(f"{VIRTUAL_MAP}.db"), DOTS_MAP):
            p.unlink(missing_ok=True)
        cfg.unlink()
        cfg.parent.rmdir()


def smtp(rcpt):
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=60) as s:
        s.ehlo("client.example")
        s.mail(SENDER)
        code, reply = s.rcpt(rcpt)
        assert code == ACCEPTED, (rcpt, code, reply)
        return s.data(MESSAGE)


def maildir_messages(user):
    return [p for sub in ("new", "cur") for p in (user.home / "Maildir" / sub).iterdir()]


def assert_refused(code, reply):
    assert code == REJECT_CODE, (code, reply)
    assert reply.startswith(REJECT_STATUS) and reply.endswith(REJECT_TEXT), reply


def test_virtual_alias_of_a_full_mailbox_is_refused_at_end_of_data(setup):
    postfix, policyd, full, roomy, _ = setup
    assert_refused(*smtp("info@example.org"))
    assert postfix.queue_empty()
    assert maildir_messages(full) == []


def test_regexp_and_extension_to_a_full_mailbox_is_refused(setup):
    postfix, policyd, full, roomy, _ = setup
    # dots removed by the regexp (three steps), then pepe@ without +x
    assert_refused(*smtp("p.e.p.e+x@example.org"))
    assert postfix.queue_empty()


def test_recursive_chain_to_a_full_mailbox_is_refused(setup):
    postfix, policyd, full, roomy, _ = setup
    assert_refused(*smtp("chain1@example.org"))


def test_list_with_one_full_member_is_accepted_and_the_other_gets_it(setup):
    postfix, policyd, full, roomy, _ = setup
    code, reply = smtp("staff@example.org")
    assert code == ACCEPTED, reply
    postfix.wait_until(lambda: maildir_messages(roomy), timeout=60, what="roomy's copy")
    (stored,) = maildir_messages(roomy)
    assert b"Subject: aliases e2e\n" in stored.read_bytes()
    # the full member's copy is refused by pymda at delivery
    postfix.wait_until(lambda: any(d[1] == "5.2.2" for d in postfix.deliveries()),
                       timeout=60, what="the full member's bounce")
    assert maildir_messages(full) == []


def test_alias_loops_terminate_with_dunno(setup):
    postfix, policyd, full, roomy, _ = setup
    assert policyd.ask({"recipient": "loop1@example.org", "size": 10**9}) == DUNNO
    assert policyd.ask({"recipient": "aloop1@example.org", "size": 10**9}) == DUNNO
    # through postfix: the policy service answers (no 451 4.3.5 for a
    # service that did not), and does not refuse; postfix's cleanup then
    # rejects its own virtual alias loop, local(8) handles the alias one
    code, reply = smtp("loop1@example.org")
    assert (code, reply) == (VIRTUAL_LOOP_CODE, VIRTUAL_LOOP_REPLY)
    code, reply = smtp("aloop1@example.org")
    assert code == ACCEPTED, reply
    # the full user itself, asked the same way, is refused (the service works)
    assert policyd.ask({"recipient": f"{full.name}@example.org", "size": 10**9}) == FULL


def test_unreadable_map_gives_dunno_and_a_log_line(setup):
    postfix, policyd, full, roomy, _ = setup
    postfix.set(virtual_alias_maps=f"hash:{MISSING_MAP}, hash:{VIRTUAL_MAP}")
    assert policyd.ask({"recipient": "info@example.org", "size": 10**9}) == DUNNO
    policyd.stop()
    assert LOOKUP_FAILED in policyd.output()
    assert str(MISSING_MAP) in policyd.output()


def explain(cfg, address):
    proc = subprocess.run(
        [str(paths.prefix() / "bin" / "pymda-admin"), "explain", "-c", str(cfg), address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def test_admin_explain_prints_the_chain_and_the_plan(setup):
    postfix, policyd, full, roomy, cfg = setup
    out = explain(cfg, "chain1@example.org")
    table = f"(virtual_alias_maps hash:{VIRTUAL_MAP})"
    assert out.startswith(
        f"chain1@example.org -> chain2@example.org {table}\n"
        f"chain2@example.org -> chain3@example.org {table}\n"
        f"chain3@example.org -> info@example.org {table}\n"
        f"info@example.org -> {full.name}@example.org {table}\n"
        f"\n{full.name}@example.org:\n"), out
    assert str(full.home / "Maildir") in out


def test_admin_explain_plans_only_local_final_recipients(setup):
    postfix, policyd, full, roomy, cfg = setup
    out = explain(cfg, "mixed@example.org")
    assert out.startswith(f"mixed@example.org -> {roomy.name}@example.org, someone@remote.invalid "
                          f"(virtual_alias_maps hash:{VIRTUAL_MAP})\n"), out
    assert f"\n{roomy.name}@example.org:\n" in out and str(roomy.home / "Maildir") in out
    assert out.rstrip().endswith("someone@remote.invalid: not a local domain (postfix sends it on)")
