"""pymda.resolve in-process (no root needed): envelope + identity + entries
-> ordered Targets.  Where the main mailbox is (SPEC 1.2), which folder
an extension or ``-m`` picks, how expanded entries become Targets and
who they are written as, and the plan as ``pymda -n`` prints it.
"""

import json
import os
import pwd

import pytest

from pymda import resolve
from pymda.forward.dotforward import Item
from pymda.errors import PermFail, UsageError
from pymda.users import Identity
from support.engine import (  # noqa: F401 - cfg, me, tmp_path: fixtures
    cfg, config_file, envelope, me, own_user, tmp_path, tree,
)


def mkmaildir(root):
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)


# --- the main mailbox -----------------------------------------------------------


def test_default_mailbox_is_the_spool_mbox(tmp_path):
    cfg = config_file(tmp_path, 'mail_spool_directory = "/var/mail"')
    me = own_user(cfg)
    assert resolve.mailbox_location(cfg, envelope(), me) == ("mbox", "/var/mail/alice",
                                                             "/var/mail")


def test_relative_maildir_is_under_home(cfg, me):
    assert resolve.mailbox_location(cfg, envelope(), me) == (
        "maildir", f"{me.home}/Maildir/", None)


def test_mbox_template_outside_the_spool(cfg, me):
    loc = resolve.mailbox_location(cfg, envelope(), me, "$home/mail/$user-$extension")
    assert loc == ("mbox", f"{me.home}/mail/alice-", None)
    loc = resolve.mailbox_location(cfg, envelope(extension="x"), me, "/var/mail/$user")
    assert loc == ("mbox", "/var/mail/alice", "/var/mail")


# --- folders (SPEC 1.2) ---------------------------------------------------------


def test_extension_folder_only_when_it_exists(cfg, me):
    env = envelope(extension="Work")
    assert resolve.choose_folder(cfg, env, me).folder == "INBOX"
    mkmaildir(f"{me.home}/Maildir/.Work")
    target = resolve.choose_folder(cfg, env, me)
    assert (target.folder, target.directory) == ("Work", f"{me.home}/Maildir/.Work")


@pytest.mark.parametrize("setting, folder", [("create", "Work"), ("off", "INBOX")])
def test_detail_folders_setting(tmp_path, setting, folder):
    cfg = config_file(tmp_path, 'mailbox = "Maildir/"', f'detail_folders = "{setting}"')
    assert resolve.choose_folder(cfg, envelope(extension="Work"), own_user(cfg)).folder == folder


@pytest.mark.parametrize("extension", ["../x", ".hidden", "a//b", "x\0y"])
def test_unsafe_extension_is_inbox(tmp_path, extension):
    cfg = config_file(tmp_path, 'mailbox = "Maildir/"', 'detail_folders = "create"')
    target = resolve.choose_folder(cfg, envelope(extension=extension), own_user(cfg))
    assert (target.folder, target.directory) == ("INBOX", target.path)


@pytest.mark.parametrize("folder", ["../x", "", ".", "a/../../b"])
def test_unusable_m_folder_is_a_usage_error(cfg, me, folder):
    with pytest.raises(UsageError):
        resolve.choose_folder(cfg, envelope(), me, folder=folder)


def test_m_folder_missing_without_create_folders_is_inbox(tmp_path):
    cfg = config_file(tmp_path, 'mailbox = "Maildir/"', "create_folders = false")
    assert resolve.choose_folder(cfg, envelope(), own_user(cfg), folder="Nope").folder == "INBOX"


def test_mbox_folders_live_under_mbox_folder_directory(tmp_path):
    cfg = config_file(tmp_path, 'mailbox = "mbox"', 'mbox_folder_directory = "$home/mail"')
    me = own_user(cfg)
    target = resolve.choose_folder(cfg, envelope(), me, folder="Lists/pymda")
    assert (target.kind, target.path) == ("mbox", f"{me.home}/mail/Lists/pymda")


# --- plan -----------------------------------------------------------------------


def test_plan_writes_nothing(cfg, me, tmp_path):
    with open(f"{me.home}/.forward", "w") as f:
        f.write("\\alice\nbob@example.net\n")
    before = tree(tmp_path)
    targets = resolve.plan(cfg, envelope(), me, forward=True)
    assert [(t.kind, t.source) for t in targets] == [
        ("maildir", ".forward line 1"), ("forward", ".forward line 2")]
    assert resolve.plan(cfg, envelope(), me, forward=False)[0].source == "mailbox"
    assert tree(tmp_path) == before


def test_empty_forward_is_the_mailbox(cfg, me):
    with open(f"{me.home}/.forward", "w") as f:
        f.write("# nothing\n")
    assert [t.source for t in resolve.plan(cfg, envelope(), me, forward=True)] == ["mailbox"]


def test_items_replace_the_forward_and_an_empty_list_is_no_target(cfg, me):
    with open(f"{me.home}/.forward", "w") as f:
        f.write("bob@example.net\n")
    items = [Item(kind="forward", value="carol@example.net", source="sieve s line 2")]
    targets = resolve.plan(cfg, envelope(), me, forward=True, items=items)
    assert [(t.kind, t.address, t.source) for t in targets] == [
        ("forward", "carol@example.net", "sieve s line 2")]
    assert resolve.plan(cfg, envelope(), me, forward=True, items=[]) == []


# --- entries -> targets (DELIVERY RIGHTS) ------------------------------------------


def test_targets_for_items_kinds_sources_and_refusals(cfg, me):
    me = me.replace(uid=4242, gid=4242)  # not root, whoever runs the test (pure code)
    main = resolve.choose_folder(cfg, envelope(), me)
    refused = PermFail("no", "5.7.1")
    items = [
        Item(kind="mailbox", value="", source=".forward line 1"),
        Item(kind="mbox", value="/tmp/x.mbox", source=".forward line 2"),
        Item(kind="maildir", value="/tmp/Md/", source=".forward line 3"),
        Item(kind="pipe", value="/bin/true", source=".forward line 4", error=refused),
        Item(kind="forward", value="bob@example.net", source=".forward line 5"),
    ]
    targets = resolve.targets_for_items(cfg, me, main, items)
    assert [(t.kind, t.path or t.command or t.address, t.source) for t in targets] == [
        ("maildir", main.path, ".forward line 1"),
        ("mbox", "/tmp/x.mbox", ".forward line 2"),
        ("maildir", "/tmp/Md/", ".forward line 3"),
        ("pipe", "/bin/true", ".forward line 4"),
        ("forward", "bob@example.net", ".forward line 5"),
    ]
    assert targets[2].directory == "/tmp/Md/"
    assert [t.error for t in targets] == [None, None, None, refused, None]
    assert {t.identity for t in targets} == {me}


def test_roots_file_targets_are_written_as_default_privs(cfg):
    root = Identity(name="root", uid=0, gid=0, home="/root")
    main = resolve.mailbox_target(cfg, envelope(user="root"), root)
    items = [Item(kind="mbox", value="/tmp/r.mbox", source=".forward line 1"),
             Item(kind="pipe", value="/bin/true", source=".forward line 2"),
             Item(kind="mailbox", value="", source=".forward line 3")]
    targets = resolve.targets_for_items(cfg, root, main, items)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert [t.identity.uid for t in targets] == [nobody, 0, 0]


def test_only_the_users_own_spool_file_gets_spool_rules(tmp_path):
    cfg = config_file(tmp_path, 'mail_spool_directory = "/var/mail"')
    me = own_user(cfg)
    items = [Item(kind="mbox", value="/var/mail/alice", source=".forward line 1"),
             Item(kind="mbox", value="/var/mail/bob", source=".forward line 2")]
    main = resolve.mailbox_target(cfg, envelope(), me)
    targets = resolve.targets_for_items(cfg, me, main, items)
    assert [t.spool for t in targets] == ["/var/mail", None]


# --- presentation ---------------------------------------------------------------


def test_format_plan_and_json(cfg, me):
    main = resolve.choose_folder(cfg, envelope(), me)
    pipe = resolve.Target(kind="pipe", command="/bin/x", source=".forward line 2",
                          identity=me, error=PermFail("refused", "5.7.1"))
    text = resolve.format_plan([main, pipe])
    assert text == (f"maildir {me.home}/Maildir/ folder=INBOX source=mailbox\n"
                    "pipe /bin/x source=.forward line 2 refused=(5.7.1 refused)\n")
    assert json.loads(resolve.plan_json([main, pipe])) == {"targets": [
        {"kind": "maildir", "path": f"{me.home}/Maildir/", "folder": "INBOX",
         "source": "mailbox"},
        {"kind": "pipe", "command": "/bin/x", "source": ".forward line 2",
         "error": "5.7.1 refused"},
    ]}
