"""pymda.forward.dotforward: the .forward / :include: parser (pure), the trust
checks, the forward_path lookup and the expansion into items and Targets.

File-system tests use real files under tmp_path with an Identity whose
home is tmp_path and whose uid is ours; ownership tests need root.
"""

import os

import pytest

from pymda import config, resolve
from pymda.forward import dotforward
from pymda.forward.dotforward import Entry, ForwardSyntax, parse_forward
from pymda.errors import PermFail, TempFail
from pymda.resolve import Envelope, Target
from pymda.users import Identity

NOBODY_UID = 65534
POLICY_STATUS = "5.7.1"
IO_STATUS = "4.3.0"


def cfg(*overrides):
    return config.load(None, list(overrides), environ={})


def envelope(user="alice", extension="", domain="example.org"):
    local = f"{user}+{extension}" if extension else user
    return Envelope(sender="bob@example.net", recipient=f"{local}@{domain}",
                    original_recipient=f"{local}@{domain}", user=user, local=local,
                    domain=domain, extension=extension)


@pytest.fixture
def home(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path


@pytest.fixture
def ident(home):
    return Identity(name="alice", uid=os.getuid(), gid=os.getgid(), home=str(home))


def write(path, text, mode=0o644):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def kinds(entries):
    return [(e.kind, e.value) for e in entries]


# --- parser -----------------------------------------------------------------


def test_parse_every_form():
    text = (
        "# a comment line\n"
        "   # an indented comment\n"
        "\n"
        "\\alice, bob@example.net\n"
        '"|/usr/bin/procmail -a work", /var/tmp/copy.mbox\n'
        "/home/alice/Maildir/\n"
        "~/saved.mbox, ~/Archive/\n"
        ":include:/etc/lists/team\n"
        "|/usr/bin/vacation alice\n"
        "Carol Example <carol@example.com>\n"
        "alice\n"
    )
    entries = parse_forward(text, "/h/.forward")
    assert kinds(entries) == [
        ("self", "alice"),
        ("address", "bob@example.net"),
        ("pipe", "/usr/bin/procmail -a work"),
        ("mbox", "/var/tmp/copy.mbox"),
        ("maildir", "/home/alice/Maildir/"),
        ("home", "saved.mbox"),
        ("home", "Archive/"),
        ("include", "/etc/lists/team"),
        ("pipe", "/usr/bin/vacation alice"),
        ("address", "carol@example.com"),
        ("address", "alice"),
    ]
    assert [e.line for e in entries] == [4, 4, 5, 5, 6, 7, 7, 8, 9, 10, 11]


def test_quoted_entry_keeps_commas_spaces_and_escapes():
    entries = parse_forward('"|/bin/echo a, b \\"c\\" \\\\ d"\n', "f")
    assert entries == [Entry(kind="pipe", value='/bin/echo a, b "c" \\ d', line=1)]


def test_empty_entries_and_trailing_commas_are_skipped():
    assert kinds(parse_forward(" , bob ,, \n,\n", "f")) == [("address", "bob")]


def test_comment_only_file_is_empty():
    assert parse_forward("# nothing\n\n   \n#more\n", "f") == []


def test_include_is_case_insensitive():
    assert kinds(parse_forward(":INCLUDE: /etc/x\n", "f")) == [("include", "/etc/x")]


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ('bob\n"|/bin/cat\n', 2, "unterminated double quote"),
        ("bob, |\n", 1, "'|' without a command"),
        ('bob\n\n" | "\n', 3, "'|' without a command"),
        (":include:lists/team\n", 1, ":include: needs an absolute path"),
        (":include:\n", 1, ":include: needs an absolute path"),
        ("~carol/mbox\n", 1, "only ~/path"),
        ("bob smith\n", 1, "address with spaces must be quoted"),
        ('""\n', 1, "empty quoted entry"),
        ("a@@b\n", 1, "not an address"),
        ("\\\n", 1, "bad \\name entry"),
        ("bob\ncarol\x00\n", 2, "NUL byte"),
    ],
)
def test_malformed_input_names_file_and_line(text, line, reason):
    with pytest.raises(ForwardSyntax) as info:
        parse_forward(text, "/home/alice/.forward")
    assert info.value.line == line
    assert reason in info.value.reason
    assert str(info.value).startswith(f"/home/alice/.forward line {line}: ")


@pytest.mark.parametrize(
    "address, own",
    [
        ("alice", True),
        ("ALICE", True),
        ("alice@example.org", True),
        ("alice+work@example.org", True),
        ("alice+other", True),
        ("alice@elsewhere.org", False),
        ("alicia", False),
        ("bob@example.org", False),
    ],
)
def test_own_address(address, own):
    ident = Identity(name="alice", uid=1, gid=1, home="/h")
    assert dotforward.is_own_address(address, envelope(), ident, "+") is own


# --- lookup and trust ---------------------------------------------------------


def test_no_forward_file_means_mailbox(ident):
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None and result.warnings == []


def test_forward_path_extension_first(home, ident):
    write(home / ".forward", "plain@example.net\n")
    write(home / ".forward+work", "work@example.net\n")
    items = dotforward.expand_items(cfg(), envelope(extension="work"), ident).items
    assert [(i.kind, i.value, i.source) for i in items] == [
        ("forward", "work@example.net", ".forward line 1")
    ]
    items = dotforward.expand_items(cfg(), envelope(extension="other"), ident).items
    assert [i.value for i in items] == ["plain@example.net"]
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    assert [i.value for i in items] == ["plain@example.net"]


def test_forward_path_from_config(home, ident):
    write(home / "fwd", "x@example.net\n")
    c = cfg('forward_path=["$home/fwd"]')
    assert [i.value for i in dotforward.expand_items(c, envelope(), ident).items] == [
        "x@example.net"
    ]


def test_world_writable_forward_is_ignored(home, ident):
    write(home / ".forward", "x@example.net\n", 0o646)
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert "world-writable" in result.warnings[0]


def test_group_writable_forward_is_tolerated(home, ident):
    write(home / ".forward", "x@example.net\n", 0o664)
    assert dotforward.expand_items(cfg(), envelope(), ident).items[0].value == "x@example.net"


def test_directory_forward_is_ignored(home, ident):
    (home / ".forward").mkdir()
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert "not a regular file" in result.warnings[0]


def test_fifo_forward_is_ignored_without_hanging(home, ident):
    os.mkfifo(home / ".forward")
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert "not a regular file" in result.warnings[0]


def test_symlink_to_trusted_file_is_followed(home, ident):
    write(home / "real-forward", "x@example.net\n")
    os.symlink(home / "real-forward", home / ".forward")
    assert dotforward.expand_items(cfg(), envelope(), ident).items[0].value == "x@example.net"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_forward_owned_by_another_user_is_ignored(home):
    write(home / ".forward", "x@example.net\n")
    os.chown(home / ".forward", NOBODY_UID, NOBODY_UID)
    ident = Identity(name="alice", uid=4242, gid=4242, home=str(home))
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert "owned by uid 65534" in result.warnings[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_forward_owned_by_root_is_trusted(home):
    write(home / ".forward", "x@example.net\n")
    os.chown(home / ".forward", 0, 0)
    ident = Identity(name="alice", uid=4242, gid=4242, home=str(home))
    assert dotforward.expand_items(cfg(), envelope(), ident).items[0].value == "x@example.net"


def failing_open(errno_, strerror):
    def refuse(path, *a, **kw):
        raise OSError(errno_, strerror, path)

    return refuse


def test_forward_the_user_cannot_read_is_ignored_like_postfix(home, ident, monkeypatch):
    # e.g. a root-owned .forward with mode 0600: postfix logs "cannot open
    # file" and delivers to the mailbox; deferring would hold every message
    # until it bounces after maximal_queue_lifetime.
    write(home / ".forward", "x@example.net\n")
    monkeypatch.setattr(dotforward.os, "open", failing_open(13, "Permission denied"))
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert "Permission denied" in result.warnings[0]


def test_forward_io_error_defers(home, ident, monkeypatch):
    write(home / ".forward", "x@example.net\n")
    monkeypatch.setattr(dotforward.os, "open", failing_open(5, "Input/output error"))
    with pytest.raises(TempFail) as info:
        dotforward.expand_items(cfg(), envelope(), ident)
    assert info.value.status == IO_STATUS


def test_remote_extension_cannot_defer_or_leave_the_forward_path(home, ident):
    """The extension comes from the remote sender: one too long for a file
    name must not defer the message (ENAMETOOLONG), and one with a '/' is
    not used for the file name at all (postfix's rule)."""
    write(home / ".forward", "plain@example.net\n")
    items = dotforward.expand_items(cfg(), envelope(extension="x" * 300), ident).items
    assert [i.value for i in items] == ["plain@example.net"]
    (home / ".forward+sub").mkdir()
    write(home / ".forward+sub" / "f", "other@example.net\n")
    items = dotforward.expand_items(cfg(), envelope(extension="sub/f"), ident).items
    assert [i.value for i in items] == ["plain@example.net"]


def test_parse_problem_falls_back_to_mailbox_with_warning(home, ident):
    write(home / ".forward", "bob@example.net\n|\n")
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert f"{home}/.forward line 2" in result.warnings[0]
    assert "delivering to the mailbox" in result.warnings[0]


def test_empty_forward_means_mailbox(home, ident):
    write(home / ".forward", "# away\n\n")
    assert dotforward.expand_items(cfg(), envelope(), ident).items is None


# --- expansion ------------------------------------------------------------------


def test_expansion_kinds_sources_and_duplicates(home, ident):
    write(home / ".forward",
          "\\alice, bob@example.net, BOB@example.net\n"
          '"|/bin/true", ~/copy.mbox, ~/Md/\n'
          "alice@example.org, /bin/true-not, |/bin/true\n")
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    assert [(i.kind, i.value, i.source) for i in items] == [
        ("mailbox", "", ".forward line 1"),
        ("forward", "bob@example.net", ".forward line 1"),
        ("pipe", "/bin/true", ".forward line 2"),
        ("mbox", f"{home}/copy.mbox", ".forward line 2"),
        ("maildir", f"{home}/Md/", ".forward line 2"),
        ("mbox", "/bin/true-not", ".forward line 3"),
    ]
    assert all(i.error is None for i in items)


def test_same_file_spelled_differently_is_one_target(home, ident):
    write(home / ".forward",
          f"~/copy.mbox, {home}/copy.mbox, {home}//copy.mbox, {home}/./copy.mbox\n"
          f"~/Md/, {home}/Md//, ~/./Md/, {home}/Md/./\n")
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    assert [(i.kind, i.value) for i in items] == [
        ("mbox", f"{home}/copy.mbox"),
        ("maildir", f"{home}/Md/"),
    ]


def test_only_the_users_own_spool_file_gets_spool_rules(home, ident):
    """A file target in the spool directory that is not the user's own
    mailbox is an ordinary file: no Debian spool handling, and no "create
    it as root: install -o alice ... /var/mail/bob" advice in the log."""
    write(home / ".forward", "/var/mail/alice\n/var/mail/bob\n")
    main = Target(kind="maildir", path="/h/Maildir/", directory="/h/Maildir/", identity=ident)
    targets = resolve.forward_targets(cfg("mail_spool_directory=/var/mail"), envelope(), ident, main)
    assert [(t.path, t.spool) for t in targets] == [
        ("/var/mail/alice", "/var/mail"),
        ("/var/mail/bob", None),
    ]


def test_backslash_other_user_is_forwarded(home, ident):
    write(home / ".forward", "\\carol\n")
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    assert [(i.kind, i.value) for i in items] == [("forward", "carol")]


def test_policy_refusals(home, ident):
    exe = write(home / "prog", "#!/bin/sh\n", 0o755)
    write(home / ".forward", f"|/bin/true\n{exe}\n/tmp/ok.mbox\n")
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    assert items[0].error is None
    assert items[1].error.status == POLICY_STATUS
    assert "executable" in items[1].error.text
    assert items[2].error is None

    items = dotforward.expand_items(cfg("allow_commands=false", "allow_files=false"),
                                    envelope(), ident).items
    assert [(i.kind, i.error.status) for i in items] == [
        ("pipe", POLICY_STATUS), ("mbox", POLICY_STATUS), ("mbox", POLICY_STATUS)
    ]
    assert "allow_commands" in items[0].error.text
    assert "allow_files" in items[2].error.text


def test_include_expands_and_refuses_pipes_and_files(home, ident):
    inc = write(home / "team", "carol@example.net\n|/bin/true\n/tmp/x.mbox\n~/y/\n\\alice\n")
    write(home / ".forward", f"bob@example.net, :include:{inc}\n")
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    got = [(i.kind, i.value, i.source, i.error and i.error.status) for i in items]
    src = f":include:{inc} line"
    assert got == [
        ("forward", "bob@example.net", ".forward line 1", None),
        ("forward", "carol@example.net", f"{src} 1", None),
        ("pipe", "/bin/true", f"{src} 2", POLICY_STATUS),
        ("mbox", "/tmp/x.mbox", f"{src} 3", POLICY_STATUS),
        ("maildir", f"{home}/y/", f"{src} 4", POLICY_STATUS),
        ("mailbox", "", f"{src} 5", None),
    ]
    assert "not allowed in :include:" in items[2].error.text


def test_world_writable_include_falls_back_to_mailbox(home, ident):
    inc = write(home / "team", "carol@example.net\n", 0o666)
    write(home / ".forward", f":include:{inc}\n")
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert "world-writable" in result.warnings[0]


def test_missing_include_defers(home, ident):
    write(home / ".forward", f"bob@example.net\n:include:{home}/nope\n")
    with pytest.raises(TempFail) as info:
        dotforward.expand_items(cfg(), envelope(), ident)
    assert info.value.status == IO_STATUS
    assert ".forward line 2" in info.value.text


def test_include_loop_and_depth_cap(home, ident):
    a, b = home / "a", home / "b"
    write(a, f"one@example.net\n:include:{b}\n")
    write(b, f"two@example.net\n:include:{a}\n")
    write(home / ".forward", f":include:{a}\n")
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    assert [i.value for i in items] == ["one@example.net", "two@example.net"]

    chain = [home / f"c{n}" for n in range(dotforward.MAX_INCLUDE_DEPTH + 2)]
    for n, path in enumerate(chain[:-1]):
        write(path, f"x{n}@example.net\n:include:{chain[n + 1]}\n")
    write(chain[-1], "last@example.net\n")
    write(home / ".forward", f":include:{chain[0]}\n")
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert "nested deeper" in result.warnings[0]


def test_include_fan_out_is_read_once_per_file(home, ident):
    """Whoever can write a shared list must not make every includer's
    delivery spin: 4 levels of 200 :include: lines each meant 200**4 reads."""
    import time

    levels = [home / f"fan{n}" for n in range(5)]
    for n, path in enumerate(levels[:-1]):
        write(path, f":include:{levels[n + 1]}\n" * 200)
    write(levels[-1], "leaf@example.net\n")
    write(home / ".forward", f":include:{levels[0]}\n")
    start = time.monotonic()
    items = dotforward.expand_items(cfg(), envelope(), ident).items
    assert time.monotonic() - start < 5
    assert [i.value for i in items] == ["leaf@example.net"]


def test_include_count_is_capped(home, ident):
    many = [home / f"inc{n}" for n in range(dotforward.MAX_INCLUDES + 1)]
    for n, path in enumerate(many):
        write(path, f"m{n}@example.net\n")
    write(home / ".forward", "".join(f":include:{p}\n" for p in many))
    result = dotforward.expand_items(cfg(), envelope(), ident)
    assert result.items is None
    assert f"more than {dotforward.MAX_INCLUDES} :include: files" in result.warnings[0]


def test_expand_returns_targets(home, ident):
    write(home / ".forward", '\\alice\n"|/bin/true"\n~/m.mbox\n~/Md/\nbob@example.net\n')
    main = Target(kind="maildir", path="/h/Maildir/", directory="/h/Maildir/",
                  identity=ident)
    targets = resolve.forward_targets(cfg(), envelope(), ident, main)
    assert [(t.kind, t.path, t.command, t.address, t.source) for t in targets] == [
        ("maildir", "/h/Maildir/", None, None, ".forward line 1"),
        ("pipe", None, "/bin/true", None, ".forward line 2"),
        ("mbox", f"{home}/m.mbox", None, None, ".forward line 3"),
        ("maildir", f"{home}/Md/", None, None, ".forward line 4"),
        ("forward", None, None, "bob@example.net", ".forward line 5"),
    ]
    assert targets[3].directory == f"{home}/Md/"
    files = [t for t in targets if t.source in (".forward line 3", ".forward line 4")]
    assert all(t.identity == ident for t in targets if t not in files)
    if ident.uid == 0:
        # DELIVERY RIGHTS: root's file targets are written as default_privs.
        import pwd

        assert {t.identity.uid for t in files} == {pwd.getpwnam("nobody").pw_uid}
    else:
        assert all(t.identity == ident for t in files)


def test_expand_logs_warnings(home, ident):
    write(home / ".forward", "x@example.net\n", 0o666)

    class Log:
        def __init__(self):
            self.lines = []

        def warning(self, text):
            self.lines.append(text)

    log = Log()
    assert resolve.forward_targets(cfg(), envelope(), ident, None, log) is None
    assert "world-writable" in log.lines[0]


def test_plan_skips_forward_inside_pymda_pipe(home, ident, monkeypatch):
    from pymda import resolve

    write(home / ".forward", "bob@example.net\n")
    monkeypatch.delenv("PYMDA_DEPTH", raising=False)
    c = cfg(f"mailbox={home}/Maildir/")
    assert [t.kind for t in resolve.plan(c, envelope(), ident, forward=True)] == ["forward"]
    assert [t.kind for t in resolve.plan(c, envelope(), ident, forward=False)] == ["maildir"]
    monkeypatch.setenv("PYMDA_DEPTH", "1")
    assert [t.kind for t in resolve.plan(c, envelope(), ident, forward=True)] == ["maildir"]


def test_plan_output_shows_sources(home, ident):
    from pymda import resolve

    write(home / ".forward", "\\alice\n|/bin/true\n")
    targets = resolve.forward_targets(cfg("allow_commands=false"), envelope(), ident,
                                Target(kind="mbox", path="/var/mail/alice", identity=ident))
    text = resolve.format_plan(targets)
    assert "source=.forward line 1" in text
    assert "pipe /bin/true source=.forward line 2 refused=(5.7.1 " in text
    data = resolve.plan_json(targets)
    assert '"source": ".forward line 2"' in data and '"error": "5.7.1 ' in data


def test_permfail_is_raised_by_writer_for_refused_target(ident):
    from pymda import deliver

    target = Target(kind="pipe", command="/bin/true", identity=ident,
                    error=PermFail("no", "5.7.1"))
    with pytest.raises(PermFail):
        deliver.write_target(target, None, None, cfg(), None, b"")

