"""pymda.state: the per-user ledger of completed targets, and how
deliver.run uses it (skip what is done, nothing for a single target)."""

import os
import subprocess
import sys
import time

import pytest

from pymda import config, deliver, message as msgmod, state
from pymda.errors import TempFail
from pymda.resolve import Envelope, Target
from pymda.users import Identity

MESSAGE = b"Subject: s\nMessage-ID: <state@example.org>\n\nhi\n"


def envelope(recipient="alice@example.org", sender="bob@example.net"):
    return Envelope(sender=sender, recipient=recipient, original_recipient=recipient,
                    user="alice", local=recipient.split("@")[0], domain="example.org")


def ident(home):
    return Identity(name="alice", uid=os.getuid(), gid=os.getgid(), home=str(home))


class Log:
    def __init__(self):
        self.lines = []

    def delivery(self, target, envelope, message, status, reason=None):
        self.lines.append((target.source, status))

    def warning(self, text):
        self.lines.append(("warning", text))


def test_record_done_forget(tmp_path):
    path = tmp_path / "state.sqlite"
    ledger = state.Ledger.open(str(path))
    assert not ledger.done("m1", "pipe:/bin/true")
    ledger.record("m1", "pipe:/bin/true")
    ledger.record("m2", "pipe:/bin/true")
    assert ledger.done("m1", "pipe:/bin/true")
    assert not ledger.done("m1", "forward:x@y")
    ledger.close()
    ledger = state.Ledger.open(str(path))  # durable across processes/opens
    assert ledger.done("m1", "pipe:/bin/true")
    ledger.forget("m1")
    assert not ledger.done("m1", "pipe:/bin/true")
    assert ledger.done("m2", "pipe:/bin/true")
    ledger.close()
    assert (os.stat(path).st_mode & 0o777) == 0o600


def test_entries_expire_after_a_week(tmp_path):
    path = str(tmp_path / "s")
    ledger = state.Ledger.open(path)
    now = time.time()
    ledger.record("old", "t", now=now - state.EXPIRE_SECONDS - 60)
    ledger.record("new", "t", now=now - state.EXPIRE_SECONDS + 3600)
    ledger.close()
    ledger = state.Ledger.open(path)
    assert not ledger.done("old", "t")
    assert ledger.done("new", "t")
    ledger.close()


def test_symlink_is_refused(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "s")
    with pytest.raises(TempFail):
        state.Ledger.open(str(tmp_path / "s"))
    assert not (tmp_path / "elsewhere").exists()


def test_message_key_depends_on_message_sender_and_recipient():
    m = msgmod.from_bytes(MESSAGE)
    k = state.message_key(m, envelope())
    assert k == state.message_key(msgmod.from_bytes(MESSAGE), envelope())
    # the MTA's From_ line (time of each attempt) is not part of the key
    assert k == state.message_key(
        msgmod.from_bytes(b"From bob@example.net  Tue Nov 24 22:08:05 2026\n" + MESSAGE),
        envelope())
    assert k != state.message_key(m, envelope(recipient="carol@example.org"))
    assert k != state.message_key(m, envelope(sender="eve@example.net"))
    assert k != state.message_key(msgmod.from_bytes(MESSAGE + b"x\n"), envelope())


def test_state_path_default_and_config(tmp_path):
    c = config.load(None, [], environ={})
    assert state.state_path(c, ident(tmp_path)) == f"{tmp_path}/.pymda-state.sqlite"
    c = config.load(None, ["state_file=.cache/pymda-$user"], environ={})
    assert state.state_path(c, ident(tmp_path)) == f"{tmp_path}/.cache/pymda-alice"


def _targets(tmp_path, who, pipe_command):
    return [
        Target(kind="mbox", path=str(tmp_path / "copy.mbox"), identity=who,
               source=".forward line 1"),
        Target(kind="pipe", command=pipe_command, identity=who, source=".forward line 2"),
    ]


@pytest.fixture
def shared_dir():
    """World-writable: as root, the pipe runs as default_privs (nobody)."""
    import shutil
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="pymda-state-test-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_retry_delivers_only_what_is_owed(shared_dir):
    tmp_path = shared_dir
    who = ident(tmp_path)
    c = config.load(None, ["mbox_locks=[\"fcntl\"]"], environ={})
    flag = tmp_path / "fixed"
    count = tmp_path / "pipe-count"
    cmd = f"echo x >> {count}; test -e {flag} || exit 75"
    m = msgmod.from_bytes(MESSAGE)
    log = Log()
    result = deliver.run(_targets(tmp_path, who, cmd), m, envelope(), c, log)
    assert result.exit == 75
    assert (tmp_path / ".pymda-state.sqlite").exists()
    flag.touch()
    log = Log()
    result = deliver.run(_targets(tmp_path, who, cmd), msgmod.from_bytes(MESSAGE),
                         envelope(), c, log)
    assert result.exit == 0
    assert log.lines == [(".forward line 1", "skipped"), (".forward line 2", "sent")]
    assert (tmp_path / "copy.mbox").read_bytes().count(b"\nSubject: s\n") == 1
    assert count.read_text().count("x") == 2
    # all done: the records are dropped, the file stays small
    ledger = state.Ledger.open(str(tmp_path / ".pymda-state.sqlite"))
    assert ledger.db.execute("SELECT COUNT(*) FROM done").fetchone()[0] == 0
    ledger.close()


def test_same_target_is_written_once(tmp_path):
    who = ident(tmp_path)
    c = config.load(None, ["mbox_locks=[\"fcntl\"]"], environ={})
    t = Target(kind="mbox", path=str(tmp_path / "m"), identity=who, source=".forward line 1")
    result = deliver.run([t, t.replace(source=".forward line 2")], msgmod.from_bytes(MESSAGE),
                         envelope(), c, Log())
    assert result.exit == 0 and len(result.results) == 1
    assert (tmp_path / "m").read_bytes().count(b"Subject: s") == 1


def test_single_target_never_imports_state_or_sqlite(tmp_path):
    """A plain delivery does not load pymda.state, sqlite3 or pipe/forward."""
    code = f"""
import sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from pymda import config, deliver, message
from pymda.resolve import Envelope, Target
from pymda.users import current
me = current()
t = Target(kind="mbox", path={str(tmp_path / 'one.mbox')!r}, identity=me)
env = Envelope(sender="a@b", recipient="c@d", user=me.name, local="c", domain="d")
class L:
    def delivery(self, *a, **k): pass
    def warning(self, *a): pass
r = deliver.run([t], message.from_bytes(b"Subject: x\\n\\nhi\\n"), env,
                config.load(None, ['mbox_locks=["fcntl"]'], environ={{}}), L())
assert r.exit == 0, r.line
bad = [m for m in ("pymda.state", "sqlite3", "pymda.forward.pipe", "pymda.forward.sendmail",
                   "pymda.forward.dotforward", "subprocess") if m in sys.modules]
print(",".join(bad))
"""
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode()
    assert proc.stdout.decode().strip() == ""
    assert not (tmp_path / ".pymda-state.sqlite").exists()


@pytest.mark.parametrize("garbage", [b"\x00garbage" * 500, b"SQLite format 3\x00" + b"\xff" * 5000])
def test_damaged_state_file_delivers_everything_with_a_warning(tmp_path, garbage):
    who = ident(tmp_path)
    (tmp_path / ".pymda-state.sqlite").write_bytes(garbage)
    c = config.load(None, ["mbox_locks=[\"fcntl\"]"], environ={})
    targets = [Target(kind="mbox", path=str(tmp_path / name), identity=who,
                      source=f".forward line {n}") for n, name in enumerate(("a", "b"), 1)]
    log = Log()
    result = deliver.run(targets, msgmod.from_bytes(MESSAGE), envelope(), c, log)
    assert result.exit == 0, result.line
    assert [line for line in log.lines if line[0] == "warning"][0][1].startswith(
        "no duplicate elimination on retry: 4.3.0 ")
    for name in ("a", "b"):
        assert (tmp_path / name).read_bytes().count(b"\nSubject: s\n") == 1
