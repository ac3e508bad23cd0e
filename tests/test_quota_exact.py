"""maildirsize stays exact under concurrency (issue 8 item 5, SPEC 1.6).

Real ``pymda`` processes (root with ``-d``, switching to a test user)
deliver at once into a fresh Maildir with a limit, with and without
``pymda-admin quota --recalc`` rebuilding the file all the while.  At the
end ``maildirsize`` must equal a recount of the Maildir, and dovecot's
``maildir`` quota backend must read the same numbers from it (``doveadm
quota get``) and after its own ``quota recalc``.
"""

import os
import subprocess
import time

import pytest

from pymda import quota
from support import paths
from support.dovecot import QuotaDovecot, installed as dovecot_installed
from support.run import EX_OK, finish, run_pymda, start_pymda

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users)"),
    pytest.mark.skipif(not os.access(paths.pymda_bin(), os.X_OK),
                       reason="pymda is not installed (scripts/install)"),
]

MESSAGE = b"From: a@example.org\nTo: b@example.org\nSubject: exact\n\n" + b"body\n" * 30
STORAGE = 50 * 1024 * 1024
MESSAGES = 1000


@pytest.fixture
def mailuser(test_user):
    return test_user


@pytest.fixture
def cfg_file(tmp_path):
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "pymda.toml"
    path.write_text(f'mailbox = "Maildir/"\nquota_storage = {STORAGE}\n'
                    f'quota_messages = {MESSAGES}\n')
    os.chmod(path, 0o644)
    return path


def pymda_args(user, cfg_file):
    return ["-c", str(cfg_file), "-d", user.name, "-f", "s@example.org",
            "-a", f"{user.name}@localhost"]


def on_disk(md):
    """(bytes, count) of the message files, by their real sizes."""
    total = count = 0
    for folder in [md] + [md / n for n in os.listdir(md) if n.startswith(".")]:
        for sub in ("new", "cur"):
            for name in os.listdir(folder / sub):
                total += os.lstat(folder / sub / name).st_size
                count += 1
    return total, count


def file_says(md):
    parsed = quota.parse_maildirsize((md / "maildirsize").read_bytes())
    assert parsed is not None
    limits, used_bytes, used_count, _ = parsed
    assert limits == (STORAGE, MESSAGES)
    return used_bytes, used_count


def test_the_first_delivery_into_a_fresh_maildir_creates_maildirsize(mailuser, cfg_file):
    md = mailuser.home / "Maildir"
    assert not md.exists()
    assert run_pymda(pymda_args(mailuser, cfg_file), MESSAGE) == (EX_OK, b"")
    assert (md / "maildirsize").exists()
    size = on_disk(md)[0]
    assert (md / "maildirsize").read_text() == f"{STORAGE}S,{MESSAGES}C\n0 0\n{size} 1\n"
    st = os.stat(md / "maildirsize")
    assert (st.st_uid, st.st_mode & 0o777) == (mailuser.uid, 0o600)


REBUILD_LOOP = """
import os, sys, time
from pymda import quota
root, storage, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.set_blocking(0, False)
runs = 0
while True:
    try:
        if os.read(0, 1) == b"":
            break                      # the test closed our stdin: stop
    except BlockingIOError:
        pass
    if os.path.isdir(root):
        quota.rebuild(root, storage, messages, timeout=60)
        runs += 1
    time.sleep(0.002)
print(runs)
"""


class Rebuilder:
    """quota.rebuild (what ``pymda-admin quota --recalc`` runs) in a tight
    loop, as the mailbox owner, in a process of its own."""

    def __init__(self, user, md):
        self.argv = [str(paths.prefix() / "bin" / "python3"), "-c", REBUILD_LOOP,
                     str(md) + "/", str(STORAGE), str(MESSAGES)]
        self.user = user

    def __enter__(self):
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            user=self.user.uid, group=self.user.gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin"})
        return self

    def __exit__(self, *exc):
        out, _ = self.proc.communicate(timeout=120)  # closes stdin: the loop ends
        assert self.proc.returncode == 0, out
        self.runs = int(out)


@pytest.mark.parametrize("rebuilds", [False, True], ids=["plain", "rebuilds"])
@pytest.mark.parametrize("n", [30, 100])
def test_concurrent_deliveries_leave_maildirsize_equal_to_a_recount(
        tmp_path, mailuser, cfg_file, n, rebuilds):
    md = mailuser.home / "Maildir"
    argv = pymda_args(mailuser, cfg_file)
    rebuilder = Rebuilder(mailuser, md) if rebuilds else None
    if rebuilder:
        rebuilder.__enter__()
    try:
        procs = [start_pymda(argv + (["-m", f"F{i % 3}"] if i % 4 == 0 else []),
                             MESSAGE + b"%d\n" % i) for i in range(n)]
        results = [finish(p, timeout=300) for p in procs]
    finally:
        if rebuilder:
            rebuilder.__exit__()
    assert all(r == (EX_OK, b"") for r in results), results
    if rebuilder:
        # the rebuilds really ran during the deliveries (how many depends on
        # the machine's load: a loaded CI host may get only a few in)
        assert rebuilder.runs >= 3, rebuilder.runs
    disk = on_disk(md)
    assert disk[1] == n
    assert file_says(md) == disk
    assert quota.scan(str(md) + "/") == disk            # names' S= agree with the files
    if dovecot_installed():
        dovecot = QuotaDovecot(tmp_path, mailuser, str(md) + "/",
                               f"storage={STORAGE // 1024}K:messages={MESSAGES}")
        expected = {"STORAGE": (-(-disk[0] // 1024), STORAGE // 1024), "MESSAGE": (n, MESSAGES)}
        assert dovecot.quota_get() == expected          # dovecot believes our file (KiB, up)
        dovecot.recalc()
        assert dovecot.quota_get() == expected          # and its own count agrees
        assert file_says(md) == disk


def test_exactly_full_then_a_client_deletes_mail_makes_room(mailuser, cfg_file):
    """The user is at exactly the limit; a client expunges a message without
    touching maildirsize: the next delivery is recounted, not refused; a
    fresh single-line file is believed until it is 15 minutes old."""
    base = pymda_args(mailuser, cfg_file)
    assert run_pymda(base + ["--mailbox", "Probe/", "-o", "quota_storage=0",
                             "-o", "quota_messages=0"], MESSAGE) == (EX_OK, b"")
    one = on_disk(mailuser.home / "Probe")[0]
    md = mailuser.home / "Maildir"
    argv = base + ["-o", f"quota_storage={2 * one}"]
    for _ in range(2):
        assert run_pymda(argv, MESSAGE) == (EX_OK, b"")
    assert quota.parse_maildirsize((md / "maildirsize").read_bytes())[1:3] == (2 * one, 2)
    os.unlink(next((md / "new").iterdir()))        # the client expunges one
    assert run_pymda(argv, MESSAGE) == (EX_OK, b"")
    assert on_disk(md) == (2 * one, 2)
    code, out = run_pymda(argv, MESSAGE)           # really full: recounted, refused
    assert code == 77 and out.startswith(b"5.2.2 "), out
    assert (md / "maildirsize").read_text().count("\n") == 2   # one usage line now
    os.unlink(next((md / "new").iterdir()))
    code, out = run_pymda(argv, MESSAGE)           # fresh single line: believed
    assert code == 77 and out.startswith(b"5.2.2 "), out
    old = time.time() - quota.STALE_SECONDS - 60
    os.utime(md / "maildirsize", (old, old))
    assert run_pymda(argv, MESSAGE) == (EX_OK, b"")   # stale: recounted
    assert on_disk(md) == (2 * one, 2)
    assert quota.parse_maildirsize((md / "maildirsize").read_bytes())[1:3] == (2 * one, 2)
