"""pymda.recipient, the per-recipient pipeline, in-process (no root needed).

A virtual user owned by the running uid (support.engine) is delivered to
through the same functions ``pymda``, ``pymda-lmtpd``, ``pymda-policyd``
and ``pymda-admin`` call; the assertions are on bytes under ``tmp_path``
and on the DeliveryResult (status, exit code, LMTP reply).  The structure
itself is checked too: one module maps a recipient to a user and one
switches to it for a delivery.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pymda import recipient
from pymda.forward.dotforward import Item
from pymda.errors import PermFail
from support import paths
from support.run import EX_DATAERR, EX_NOUSER
from support.engine import (  # noqa: F401 - cfg, tmp_path: fixtures
    MESSAGE, SENDER, USER, cfg, collecting_log, config_file, maildir_new, message_of,
    own_user, tmp_path, tree,
)

LOOP = "5.4.6"
NO_USER = "5.1.1"
NOT_ALLOWED = "5.7.1"


@pytest.fixture
def home(cfg):
    return Path(own_user(cfg).home)


# --- address -> envelope -> user -------------------------------------------------


def test_envelope_splits_the_extension_and_names_the_user(cfg):
    env = recipient.envelope_for(cfg, "alice+work@example.org", sender=SENDER)
    assert (env.user, env.local, env.domain, env.extension) == (
        "alice", "alice+work", "example.org", "work")
    assert env.original_recipient == env.recipient == "alice+work@example.org"
    assert env.sender == SENDER


def test_envelope_keeps_what_the_caller_knows(cfg):
    env = recipient.envelope_for(cfg, "alice+x@example.org", user="bob", extension="",
                                 original_recipient="list@example.org")
    assert (env.user, env.extension, env.original_recipient) == ("bob", "", "list@example.org")


def test_virtual_user_by_full_address_wins(tmp_path):
    cfg = config_file(tmp_path, users=(("carol@example.org", None),))
    assert recipient.envelope_for(cfg, "carol+a@example.org").user == "carol@example.org"
    assert recipient.envelope_for(cfg, "carol@example.net").user == "carol"


def test_find_user_own_virtual_user(cfg):
    env, identity = recipient.find_recipient(cfg, "alice+tag@example.org")
    assert identity == own_user(cfg)
    assert env.extension == "tag"


@pytest.mark.parametrize("address", ["nosuchuser-pymda-test@example.org", "@example.org"])
def test_unknown_or_empty_user_is_5_1_1(cfg, address):
    with pytest.raises(PermFail) as info:
        recipient.find_recipient(cfg, address)
    assert info.value.status == NO_USER
    assert info.value.exit == EX_NOUSER


@pytest.mark.skipif(os.geteuid() == 0, reason="root may deliver for anyone")
def test_another_uid_is_not_authorised(tmp_path):
    cfg = config_file(tmp_path, users=())
    # root's entry in passwd: uid 0, not ours
    with pytest.raises(PermFail) as info:
        recipient.find_recipient(cfg, "root@example.org")
    assert info.value.status == NOT_ALLOWED


def test_mailbox_for_is_the_main_mailbox_without_authorisation(cfg, home):
    identity, target = recipient.mailbox_for(cfg, "alice+ext@example.org")
    assert identity == own_user(cfg)
    assert (target.kind, target.path, target.folder) == ("maildir", f"{home}/Maildir/", "INBOX")


@pytest.mark.parametrize("lines, forks", [
    (['mailbox = "Maildir/"'], False),
    (['mailbox = "mbox"'], False),                                  # in the home
    (['mailbox = ""'], True),                                       # the spool
    (['mailbox = "/srv/mboxes/$user"'], True),                      # an admin's directory
    (['mailbox = "mbox"', 'mbox_folder_directory = "/srv/folders/$user"'], True),
    (['mailbox = "Maildir/"', 'sieve = false'], False),
])
def test_needs_own_process_forks_where_a_helper_may_run(tmp_path, lines, forks):
    """A root LMTP server forks where the setgid dotlockfile helper may
    have to make a lock (an mbox or its folders outside the home): no
    program may start under a temporary switch."""
    cfg = config_file(tmp_path, *lines)
    env = recipient.envelope_for(cfg, "alice@example.org")
    assert recipient.needs_own_process(cfg, env, own_user(cfg)) is forks


# --- deliver ---------------------------------------------------------------------


def test_deliver_writes_one_message(cfg, home):
    log = collecting_log()
    env = recipient.envelope_for(cfg, "alice@example.org", sender=SENDER)
    result = recipient.deliver(cfg, log, message_of(), env)
    assert result.error is None and result.exit == 0
    assert result.lmtp_reply() == "250 2.0.0 Ok: delivered"
    (data,) = maildir_new(home / "Maildir").values()
    assert data == (b"Return-Path: <sender@example.net>\nDelivered-To: alice@example.org\n"
                    + MESSAGE)
    assert len(log.lines) == 1 and "status=sent" in log.lines[0]


def test_deliver_unknown_user_is_a_result_not_an_exception(cfg, tmp_path):
    before = tree(tmp_path)
    env = recipient.envelope_for(cfg, "nosuchuser-pymda-test@example.org")
    result = recipient.deliver(cfg, collecting_log(), message_of(), env)
    assert (result.error.status, result.exit) == (NO_USER, EX_NOUSER)
    assert result.lmtp_reply().startswith("550 5.1.1 ")
    assert tree(tmp_path) == before


def test_loop_is_checked_once_and_writes_nothing(cfg, tmp_path):
    data = b"Delivered-To: alice@example.org\n" + MESSAGE
    looped = b"X-Other: 1\nDelivered-To: alice@example.org\n" + MESSAGE
    env = recipient.envelope_for(cfg, "alice@example.org")
    before = tree(tmp_path)
    log = collecting_log()
    result = recipient.deliver(cfg, log, message_of(looped), env)
    assert (result.error.status, result.exit) == (LOOP, EX_DATAERR)
    assert tree(tmp_path) == before
    assert [line for line in log.lines if "status=bounced" in line] == log.lines
    assert len(log.lines) == 1
    # The leading Delivered-To is postfix's own for this delivery (pymda
    # as mailbox_command) ...
    assert recipient.deliver(cfg, log, message_of(data), env).error is None
    # ... but over LMTP there is none of our own: the same bytes loop.
    result = recipient.deliver(cfg, log, message_of(data), env, own_delivered_to=False)
    assert result.error.status == LOOP


def test_extension_picks_an_existing_folder_else_inbox(cfg, home):
    for sub in ("new", "cur", "tmp"):
        (home / "Maildir" / ".Work" / sub).mkdir(parents=True)
    for address in ("alice+Work@example.org", "alice+nosuch@example.org"):
        env = recipient.envelope_for(cfg, address)
        assert recipient.deliver(cfg, collecting_log(), message_of(), env).error is None
    assert len(maildir_new(home / "Maildir" / ".Work")) == 1
    assert len(maildir_new(home / "Maildir")) == 1


def test_unusable_folder_is_a_usage_error(cfg, tmp_path):
    before = tree(tmp_path)
    env = recipient.envelope_for(cfg, "alice@example.org")
    result = recipient.deliver(cfg, collecting_log(), message_of(), env, folder="../x")
    assert (result.error.status, result.exit) == ("5.5.4", 64)
    assert tree(tmp_path) == before


def test_forward_expansion_goes_through_the_pipeline(cfg, home):
    (home / ".forward").write_text(f"\\{USER}\n")
    os.chmod(home / ".forward", 0o600)
    log = collecting_log()
    env = recipient.envelope_for(cfg, "alice@example.org")
    assert recipient.deliver(cfg, log, message_of(), env, forward=True).error is None
    assert len(maildir_new(home / "Maildir")) == 1
    assert "source=.forward line 1" in log.lines[-1]


def test_plan_only_writes_nothing(cfg, tmp_path, home):
    before = tree(tmp_path)
    env = recipient.envelope_for(cfg, "alice@example.org")
    targets = recipient.plan_only(cfg, env, own_user(cfg))
    assert [(t.kind, t.path) for t in targets] == [("maildir", f"{home}/Maildir/")]
    assert tree(tmp_path) == before


def test_items_hook_replaces_the_forward_expansion(cfg, home):
    """The entry point a Sieve result will use: entries instead of .forward."""
    (home / ".forward").write_text("somebody@example.net\n")
    os.chmod(home / ".forward", 0o600)
    env = recipient.envelope_for(cfg, "alice@example.org")
    items = [Item(kind="mailbox", value="", source="sieve test line 1")]
    log = collecting_log()
    result = recipient.deliver(cfg, log, message_of(), env, forward=True, items=items)
    assert result.error is None, result.error
    assert len(maildir_new(home / "Maildir")) == 1
    assert "source=sieve test line 1" in log.lines[-1]
    # no entries at all: nothing written, nothing failed (a discard)
    result = recipient.deliver(cfg, collecting_log(), message_of(), env, items=[])
    assert (result.error, result.results) == (None, [])
    assert len(maildir_new(home / "Maildir")) == 1


# --- the structure ----------------------------------------------------------------


def _calls(name):
    """{module: count} of calls of ``name(`` in pymda/ (definitions aside)."""
    found = {}
    for path in sorted((paths.REPO / "pymda").rglob("*.py")):
        text = path.read_text()
        # name( or module.name( in code; ``name(...)`` in docstrings aside
        n = len(re.findall(rf"(?<![`\w.])(?:[A-Za-z_]\w*\.)?{name}\(", text))
        n -= text.count(f"def {name}(")
        if n:
            found[str(path.relative_to(paths.REPO))] = n
    return found


def test_one_place_maps_a_recipient_to_a_user():
    assert _calls("name_for_recipient") == {"pymda/recipient.py": 1}


def test_one_place_switches_to_the_user_for_a_delivery():
    # deliver.write_as switches in a forked child to write root's file
    # targets as default_privs: not a delivery's switch.
    assert _calls("switch_to") == {"pymda/recipient.py": 1, "pymda/deliver.py": 1}
    # the temporary switch of a root pymda-lmtpd: the same one place
    assert _calls("switch_temporarily") == {"pymda/recipient.py": 1}
    assert _calls("needs_own_process") == {"pymda/lmtp/handler.py": 1}


def test_dotforward_and_resolve_do_not_import_each_other_in_a_cycle():
    code = ("import sys; import pymda.forward.dotforward; "
            "assert 'pymda.resolve' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=paths.REPO)


def test_explain_plans_without_a_message(cfg, tmp_path):
    """pymda-admin explain goes through the pipeline with no message at all
    (it used to build a fake one to reuse pymda's envelope code)."""
    code = ("import sys; from pymda.admin import commands as admin; "
            f"rc = admin.main(['explain', '-c', {str(tmp_path / 'pymda.toml')!r}, "
            "'alice+x@example.org']); "
            "assert rc == 0, rc; assert 'pymda.message' not in sys.modules, 'message'")
    env = {**os.environ, "PYMDA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, cwd=str(tmp_path), check=False)
    assert proc.returncode == 0, proc.stderr
    home = own_user(cfg).home
    assert proc.stdout == f"maildir {home}/Maildir/ folder=INBOX source=mailbox\n".encode()
