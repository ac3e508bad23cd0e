"""Configuration (pymda.config, SPEC 5), in-process.

Defaults without a file, values from a file, ``-o`` overrides, errors that
name the file and the key (ConfigError: 4.3.5, exit 75), users tables, and
the marshal cache: used when fresh and trusted, ignored when stale (the
file was edited, even with its mtime put back) or untrusted (writable by
others, owned by someone else).
"""

import marshal
import os
import textwrap

import pytest

from pymda import config, config_keys
from pymda.errors import EX_TEMPFAIL, ConfigError, UsageError

CONFIG_STATUS = "4.3.5"


@pytest.fixture
def env(tmp_path):
    return {"PYMDA_CACHE_DIR": str(tmp_path / "cache")}


def write(tmp_path, text, name="pymda.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(path, env, overrides=(), write_cache=False):
    return config.load(path, list(overrides), environ=env, write_cache=write_cache)


def cache_files(env):
    d = env["PYMDA_CACHE_DIR"]
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


# --- defaults, file, overrides -------------------------------------------------


def test_defaults_without_a_file(env, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", "/nonexistent/pymda.toml")
    cfg = config.load(None, [], environ=env)
    assert cfg.path is None
    assert cfg.mailbox == ""
    assert cfg.forward is False
    assert cfg.mail_spool_directory == "/var/mail"
    assert cfg.mbox_folder_directory == "$home/mail"
    assert cfg.mbox_quoting == "mboxrd"
    assert cfg.mbox_locks == ("dotlock", "fcntl")
    assert cfg.lock_timeout == 60
    assert cfg.stale_lock_time == 500
    assert cfg.recipient_delimiter == "+"
    assert cfg.detail_folders == "existing"
    assert cfg.create_folders is True
    assert cfg.folder_encoding == "utf7"
    assert cfg.sendmail_command == ("/usr/sbin/sendmail", "-oi", "-f", "$sender")
    assert cfg.quota_storage == 0 and cfg.message_size_limit == 0
    assert cfg.users == {}
    assert set(cfg.origins.values()) == {"default"}
    assert cache_files(env) == []


def test_pymda_config_environment_variable(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    cfg = config.load(None, [], environ=dict(env, PYMDA_CONFIG=path), write_cache=False)
    assert cfg.path == path
    assert cfg.mailbox == "Maildir/"


def test_values_from_a_file(tmp_path, env):
    path = write(tmp_path, """
        mailbox = "Maildir/"
        mbox_quoting = "mboxo"
        mbox_locks = ["fcntl"]
        lock_timeout = 2.5
        detail_folders = "create"
        create_folders = false
        message_size_limit = "10M"
        quota_storage = 1024
    """)
    cfg = load(path, env)
    assert cfg.mailbox == "Maildir/"
    assert cfg.mbox_quoting == "mboxo"
    assert cfg.mbox_locks == ("fcntl",)
    assert cfg.lock_timeout == 2.5
    assert cfg.detail_folders == "create"
    assert cfg.create_folders is False
    assert cfg.message_size_limit == 10 << 20
    assert cfg.quota_storage == 1024
    assert cfg.origins["mailbox"] == "file"
    assert cfg.origins["stale_lock_time"] == "default"


def test_overrides_win_over_the_file(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\nlock_timeout = 5\n')
    cfg = load(path, env, ["mailbox=mail/inbox", "lock_timeout=1", "create_folders=false",
                           'mbox_locks=["dotlock"]', "message_size_limit=2K",
                           'folder_encoding="utf8"'])
    assert cfg.mailbox == "mail/inbox"
    assert cfg.lock_timeout == 1
    assert cfg.create_folders is False
    assert cfg.mbox_locks == ("dotlock",)
    assert cfg.message_size_limit == 2048
    assert cfg.folder_encoding == "utf8"
    assert cfg.origins["mailbox"] == "override"


def test_override_value_forms():
    assert config.parse_value("true") is True
    assert config.parse_value("12") == 12
    assert config.parse_value("1.5") == 1.5
    assert config.parse_value("Maildir/") == "Maildir/"
    assert config.parse_value('"quoted value"') == "quoted value"
    assert config.parse_value('["a", "b"]') == ["a", "b"]
    assert config.parse_value("") == ""


@pytest.mark.parametrize("text, size", [
    (0, 0), (10, 10), ("10", 10), ("1K", 1024), ("1k", 1024), ("2M", 2 << 20),
    ("3G", 3 << 30), ("1T", 1 << 40), ("5MB", 5 << 20), (" 7 K ", 7 << 10),
])
def test_parse_size(text, size):
    assert config.parse_size(text) == size


@pytest.mark.parametrize("bad", [True, -1, "x", "1X", "", "M", 1.5, "-5"])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError):
        config.parse_size(bad)


# --- errors name the file and the key -----------------------------------------


def assert_config_error(info, *words):
    exc = info.value
    assert isinstance(exc, ConfigError)
    assert exc.status == CONFIG_STATUS
    assert exc.exit == EX_TEMPFAIL
    line = exc.line()
    assert line.startswith(CONFIG_STATUS + " ")
    assert "\n" not in line
    for word in words:
        assert word in line, (word, line)


def test_unknown_key_in_file(tmp_path, env):
    path = write(tmp_path, 'mailbox = "x"\nmailbux = "y"\n')
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path, "mailbux")


@pytest.mark.parametrize("text, key", [
    ("forward = \"yes\"\n", "forward"),
    ("lock_timeout = \"soon\"\n", "lock_timeout"),
    ("lock_timeout = -1\n", "lock_timeout"),
    ("mbox_quoting = \"mboxcl2\"\n", "mbox_quoting"),
    ("mbox_locks = [\"flock\"]\n", "mbox_locks"),
    ("mbox_locks = \"dotlock\"\n", "mbox_locks"),
    ("mail_spool_directory = \"var/mail\"\n", "mail_spool_directory"),
    ("quota_messages = 1.5\n", "quota_messages"),
    ("message_size_limit = \"big\"\n", "message_size_limit"),
    ("detail_folders = true\n", "detail_folders"),
])
def test_wrong_type_in_file(tmp_path, env, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path, key)


def test_syntax_error_names_the_file_and_line(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\nlock_timeout = = 3\n')
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path, "line 2")


def test_not_utf8(tmp_path, env):
    path = tmp_path / "pymda.toml"
    path.write_bytes(b'mailbox = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(str(path), env)
    assert_config_error(info, str(path))


def test_missing_file(tmp_path, env):
    path = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path)


def test_unknown_override_key(env):
    with pytest.raises(ConfigError) as info:
        load(None, env, ["mailbux=x"])
    assert_config_error(info, "mailbux", "-o")


def test_override_wrong_type(env):
    with pytest.raises(ConfigError) as info:
        load(None, env, ["lock_timeout=soon"])
    assert_config_error(info, "lock_timeout", "-o")


def test_override_without_equals_is_a_usage_error(env):
    with pytest.raises(UsageError) as info:
        load(None, env, ["lock_timeout"])
    assert info.value.status == "5.5.4"


# --- users tables -------------------------------------------------------------


def test_users_tables(tmp_path, env):
    path = write(tmp_path, """
        [users."alice"]
        mailbox = "Maildir/"
        quota_storage = "1M"

        [users."bob@example.org"]
        uid = 5000
        gid = 5000
        home = "/srv/mail/bob"
        quota_messages = 10
    """)
    cfg = load(path, env)
    assert cfg.user("alice") == {"mailbox": "Maildir/", "quota_storage": 1 << 20}
    assert cfg.user("ALICE") == cfg.user("alice")
    bob = cfg.user("bob@example.org")
    assert bob == {"uid": 5000, "gid": 5000, "home": "/srv/mail/bob", "quota_messages": 10}
    assert cfg.user("carol") == {}


@pytest.mark.parametrize("text, words", [
    ('[users."alice"]\nmailbux = "x"\n', ['users."alice"', "mailbux"]),
    ('[users."alice"]\nuid = "x"\ngid = 1\nhome = "/h"\n', ['users."alice".uid']),
    ('[users."alice"]\nuid = 1\n', ['users."alice"', "uid, gid and home"]),
    ('[users."alice"]\nuid = 1\ngid = 1\nhome = "rel"\n', ['users."alice".home']),
    ('users = 3\n', ["users"]),
    ('[users]\nalice = 3\n', ['users."alice"']),
    # the table-of-tables shape, for users and sql alike (config_keys._tables)
    ("users = 1\n", ["users must be a table of tables", 'users."NAME"']),
    ("[users]\nbob = 1\n", ['users."bob" must be a table']),
    ("sql = 1\n", ["sql must be a table of tables", "sql.NAME"]),
    ("[sql]\nmain = 1\n", ["sql.main must be a table"]),
])
def test_users_table_errors(tmp_path, env, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path, *words)


# --- the marshal cache ----------------------------------------------------------


def cache_of(path, env):
    return config._cache_path(path, env)


def test_cache_written_and_used(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    cfg = load(path, env, write_cache=True)
    assert cfg.mailbox == "Maildir/"
    cache = cache_of(path, env)
    assert os.path.exists(cache)
    assert os.stat(cache).st_mode & 0o022 == 0
    with open(cache, "rb") as f:
        stamp, table = marshal.load(f)
    assert table == {"mailbox": "Maildir/"}
    # Prove the cache is what is read: plant a different table in it.
    with open(cache, "wb") as f:
        marshal.dump((stamp, {"mailbox": "from-cache/"}), f)
    os.chmod(cache, 0o644)
    assert load(path, env).mailbox == "from-cache/"


def test_cache_not_written_when_asked_not_to(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    load(path, env, write_cache=False)
    assert cache_files(env) == []


def test_stale_cache_after_an_edit(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    load(path, env, write_cache=True)
    with open(path, "w") as f:
        f.write('mailbox = "Mailbox/"\n')  # same size
    assert load(path, env).mailbox == "Mailbox/"


def test_stale_cache_after_an_edit_with_mtime_put_back(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    st = os.stat(path)
    load(path, env, write_cache=True)
    with open(path, "w") as f:
        f.write('mailbox = "Mailbox/"\n')  # same size, same mtime: ctime moves
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load(path, env).mailbox == "Mailbox/"


def test_replaced_file_is_not_served_from_the_cache(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    load(path, env, write_cache=True)
    new = write(tmp_path, 'mailbox = "Mailbox/"\n', name="new.toml")
    os.rename(new, path)
    assert load(path, env).mailbox == "Mailbox/"


def plant(path, env, table, mode=0o644):
    """A cache entry with the file's right stamp but a different table."""
    st = os.stat(path)
    cache = cache_of(path, env)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "wb") as f:
        marshal.dump((config._stamp(st), table), f)
    os.chmod(cache, mode)
    return cache


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_cache_writable_by_others_is_ignored(tmp_path, env, mode):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    plant(path, env, {"mailbox": "/tmp/evil/"}, mode)
    assert load(path, env).mailbox == "Maildir/"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_cache_owned_by_someone_else_is_ignored(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    cache = plant(path, env, {"mailbox": "/tmp/evil/"})
    os.chown(cache, 65534, 65534)
    assert load(path, env).mailbox == "Maildir/"
    os.chown(cache, 0, 0)  # control: the same cache owned by root is used
    assert load(path, env).mailbox == "/tmp/evil/"


def test_garbage_cache_is_ignored(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    cache = plant(path, env, {})
    with open(cache, "wb") as f:
        f.write(b"\x00garbage")
    assert load(path, env).mailbox == "Maildir/"


def test_checks_and_defaults_name_the_same_keys():
    from pymda import config_keys

    assert set(config_keys.CHECKS) == set(config.DEFAULTS)
    assert config.KEYS is config_keys.KEYS


def test_cache_holds_the_checked_values(tmp_path, env):
    """A root-owned cache is used as it is: it holds what the checks made
    of the file (tuples, bytes), so a cached delivery runs no check."""
    path = write(tmp_path, 'mbox_locks = ["fcntl"]\nquota_storage = "1K"\n'
                           '[users.bob]\nquota_messages = 3\n')
    load(path, env, write_cache=True)
    with open(cache_of(path, env), "rb") as f:
        _, table = marshal.load(f)
    assert table == {"mbox_locks": ("fcntl",), "quota_storage": 1024,
                     "users": {"bob": {"quota_messages": 3}}}
    cfg = load(path, env)
    assert (cfg.mbox_locks, cfg.quota_storage, cfg.user("bob")) == \
        (("fcntl",), 1024, {"quota_messages": 3})


def test_cache_of_another_format_is_stale(tmp_path, env):
    """A cache entry without this pymda's CACHE_FORMAT (an older pymda
    cached the raw TOML table) is not used."""
    path = write(tmp_path, 'quota_storage = "1K"\n')
    st = os.stat(path)
    cache = cache_of(path, env)
    os.makedirs(os.path.dirname(cache))
    with open(cache, "wb") as f:
        marshal.dump((config._stamp(st)[:5], {"quota_storage": "1K"}), f)
    os.chmod(cache, 0o644)
    assert load(path, env).quota_storage == 1024


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_cache_owned_by_the_files_owner_is_checked_again(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    os.chown(path, 65534, 65534)
    cache = plant(path, env, {"lock_timeout": float("nan")})
    os.chown(cache, 65534, 65534)
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path, "lock_timeout")


def test_checked_table_checked_again_is_the_same(tmp_path, env):
    """A cache owned by the file's owner holds a checked table (lists are
    tuples there) and is checked again: that check must take its own
    output, or every delivery with a list key defers (4.3.5)."""
    text = ('mailbox = "Maildir/"\nforward_path = ["$home/.forward"]\n'
            'mbox_locks = ["fcntl"]\nuserdb = ["config", "passwd"]\n'
            'quota_warnings = [90, 80]\nsieve_before = ["/etc/a.sieve"]\n')
    path = write(tmp_path, text)
    os.chown(path, 65534, 65534)
    checked = config_keys.parse_file(text.encode(), path)
    cache = plant(path, env, checked)
    os.chown(cache, 65534, 65534)
    cfg = load(path, env)
    assert cfg.mbox_locks == ("fcntl",) and cfg.quota_warnings == (80, 90)
    assert config_keys.check_table(checked, path) == checked


def test_cached_table_is_still_validated(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    plant(path, env, {"mailbux": "x"})
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, "mailbux")


# --- templates -----------------------------------------------------------------


@pytest.mark.parametrize("template, expected", [
    ("$home/Maildir/", "/home/a/Maildir/"),
    ("${home}/x", "/home/a/x"),
    ("/var/mail/$user", "/var/mail/alice"),
    ("$$home", "$home"),
    ("$unknown/x", "/x"),
    ("a$", "a$"),
    ("${home", "${home"),
    ("no dollars", "no dollars"),
    ("$user.$domain", "alice.example.org"),
])
def test_expand(template, expected):
    variables = {"home": "/home/a", "user": "alice", "domain": "example.org"}
    assert config.expand(template, variables) == expected


class _Who:  # the two attributes an Identity / an Envelope lend to templates
    def __init__(self, **values):
        self.__dict__.update(values)


def test_template_variables_one_set_for_every_template():
    me = _Who(name="alice@example.org", home="/srv/a")
    env = _Who(sender="s@far", recipient="alice+x@example.org", user="alice@example.org",
               local="alice", domain="example.org", extension="x")
    cfg = config.load(None, environ={}).replace(recipient_delimiter="+")
    assert config.template_variables(env, me, cfg) == {
        "user": "alice@example.org", "home": "/srv/a", "sender": "s@far",
        "recipient": "alice+x@example.org", "local": "alice", "domain": "example.org",
        "extension": "x", "recipient_delimiter": "+"}
    # no envelope (state file, user check): local and domain from the name
    alone = config.template_variables(None, me)
    assert (alone["local"], alone["domain"], alone["extension"]) == ("alice", "example.org", "")
    # no identity (sendmail for a pipe's forward): the envelope's user, no home
    anon = config.template_variables(env, None)
    assert (anon["user"], anon["home"]) == ("alice@example.org", "")


def test_user_path_is_under_the_home_and_never_names_the_sender():
    me = _Who(name="bob", home="/home/bob")
    env = _Who(sender="evil/../../x", recipient="bob@h", user="bob", local="bob",
               domain="h", extension="")
    assert config.user_path("Maildir/", me) == "/home/bob/Maildir/"
    assert config.user_path("/var/mail/$user", me) == "/var/mail/bob"
    assert config.user_path("$home/.s-$sender-$domain", me, env) == "/home/bob/.s--h"


@pytest.mark.parametrize("extension", ["../../../etc", "a/b", "..", ".", "x\0y"])
def test_user_path_never_lets_a_recipient_part_climb_out(extension):
    """A +extension (or local part) is the remote sender's choice: one
    that would add or climb a path level never reaches a file name."""
    me = _Who(name="bob", home="/home/bob")
    env = _Who(sender="", recipient=f"bob+{extension}@h", user="bob", local=f"bob+{extension}",
               domain="h", extension=extension)
    path = config.user_path("Maildir-$extension/", me, env)
    assert path == "/home/bob/Maildir-/"
    if "/" in extension:
        assert config.user_path("$home/mail/$local", me, env) == "/home/bob/mail/"
    # an ordinary extension is used
    ok = _Who(sender="", recipient="bob+lists@h", user="bob", local="bob+lists", domain="h",
              extension="lists")
    assert config.user_path("Maildir-$extension/", me, ok) == "/home/bob/Maildir-lists/"


# --- hostile values and files (issue 8 items 7 and 8) ------------------------------

NUMBER_KEYS = sorted(
    key for key, (default, _) in config.KEYS.items()
    if isinstance(default, (int, float)) and not isinstance(default, bool)
)


def test_there_are_number_keys_to_check():
    assert {"lock_timeout", "stale_lock_time", "command_timeout", "message_size_limit",
            "quota_storage", "quota_messages", "lmtp_idle_timeout"} <= set(NUMBER_KEYS)


@pytest.mark.parametrize("key", NUMBER_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf", "-1", "-0.5", "1e300",
                                   "1" + "0" * 30, "123456789012345678901"])
def test_absurd_numbers_in_a_file_name_file_and_key(tmp_path, env, key, value):
    path = write(tmp_path, f"{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path, key)


@pytest.mark.parametrize("key", NUMBER_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "-1", "-1e999", "1" + "0" * 30])
def test_absurd_numbers_through_o(env, key, value):
    with pytest.raises(ConfigError) as info:
        load(None, env, [f"{key}={value}"])
    assert_config_error(info, "-o", key)


@pytest.mark.parametrize("text", ["99999999999T", "1" + "0" * 40, "2000T"])
def test_absurd_sizes_are_refused(text):
    with pytest.raises(ValueError):
        config.parse_size(text)


def test_sane_numbers_still_pass(tmp_path, env):
    path = write(tmp_path, "lock_timeout = 0.5\ncommand_timeout = 86400\n"
                           'quota_storage = "10T"\nquota_messages = 1000000\n')
    cfg = load(path, env)
    assert (cfg.lock_timeout, cfg.command_timeout) == (0.5, 86400)
    assert cfg.quota_storage == 10 << 40 and cfg.quota_messages == 1000000


@pytest.mark.parametrize("value", ["[1,", "{", '"unterminated', "'x", "[[[", '["a", 2'])
def test_override_that_starts_like_toml_must_be_toml(env, value):
    with pytest.raises(ConfigError) as info:
        load(None, env, [f"mailbox={value}"])
    assert_config_error(info, "-o", "mailbox")


def test_deeply_nested_override_is_a_config_error(env):
    with pytest.raises(ConfigError) as info:
        load(None, env, ["mbox_locks=" + "[" * 5000 + "]" * 5000])
    assert_config_error(info, "-o", "mbox_locks")


def test_deeply_nested_file_is_a_config_error(tmp_path, env):
    path = write(tmp_path, "mbox_locks = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert_config_error(info, path, "nested")


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "/dev/null", "/tmp"])
def test_special_files_are_not_configs(env, special):
    with pytest.raises(ConfigError) as info:
        load(special, env)
    assert_config_error(info, special)


def test_fifo_is_not_waited_for(tmp_path, env):
    fifo = str(tmp_path / "pymda.toml")
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load(fifo, env)  # before the fix: blocks in open() for ever
    assert_config_error(info, fifo, "regular file")


def test_huge_config_file_is_refused(tmp_path, env):
    path = tmp_path / "pymda.toml"
    path.write_bytes(b"# padding\n" * ((config.MAX_CONFIG_SIZE // 10) + 1))
    with pytest.raises(ConfigError) as info:
        load(str(path), env)
    assert_config_error(info, str(path), "larger")


def test_symlinked_config_is_followed(tmp_path, env):
    real = write(tmp_path, 'mailbox = "Maildir/"\n', name="real.toml")
    link = tmp_path / "pymda.toml"
    link.symlink_to(real)
    assert load(str(link), env).mailbox == "Maildir/"


def test_a_fifo_as_the_cache_is_ignored(tmp_path, env):
    path = write(tmp_path, 'mailbox = "Maildir/"\n')
    cache = config._cache_path(path, env)
    os.makedirs(os.path.dirname(cache))
    os.mkfifo(cache, 0o600)
    assert load(path, env).mailbox == "Maildir/"  # before: blocked opening the FIFO
