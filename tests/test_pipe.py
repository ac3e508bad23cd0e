"""pymda.forward.pipe: real commands, run as real users (root only for those).

A recorder program (Python, reading /proc/self/environ so the interpreter's
own locale coercion cannot blur what it was given) saves its ids, groups,
cwd, process group, umask, argv, environment and stdin bytes.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from pymda import config, message as msgmod
from pymda.forward import pipe
from pymda.errors import PermFail, TempFail
from pymda.resolve import Envelope, Target
from pymda.users import Identity

sys.path.insert(0, str(Path(__file__).resolve().parent))

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

PERM_STATUS = "5.3.0"
TEMP_STATUS = "4.3.0"
POLICY_STATUS = "5.7.1"
NOBODY = 65534
EXPECTED_ENV_KEYS = {
    "HOME", "USER", "LOGNAME", "SHELL", "SENDER", "RECIPIENT", "LOCAL", "DOMAIN",
    "EXTENSION", "ORIGINAL_RECIPIENT", "PATH", "PYMDA_DEPTH",
}
FROM_LINE = re.compile(rb"^From (\S+)  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n")

RECORDER = textwrap.dedent("""\
    #!/usr/bin/python3
    import json, os, sys
    out = sys.argv[1]
    data = sys.stdin.buffer.read()
    raw = open("/proc/self/environ", "rb").read().split(b"\\0")
    env = dict(e.decode().split("=", 1) for e in raw if e)
    mask = os.umask(0); os.umask(mask)
    rec = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
           "egid": os.getegid(), "groups": os.getgroups(), "cwd": os.getcwd(),
           "pgid": os.getpgrp(), "pid": os.getpid(), "umask": mask,
           "argv": sys.argv, "env": env}
    with open(out + ".stdin", "wb") as f:
        f.write(data)
    with open(out + ".json", "w") as f:
        json.dump(rec, f)
    print("recorded")
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
""")

MESSAGE = (
    b"Subject: test `touch /tmp/pymda-pwned-subject` $(id)\n"
    b"Message-ID: <pipe-test@example.org>\n"
    b"\n"
    b"body line\n"
    b"From here, unquoted for commands\n"
    b">From already quoted\n"
)


@pytest.fixture
def workdir():
    """A world-accessible directory (the command runs as another user)."""
    d = Path(tempfile.mkdtemp(prefix="pymda-pipe-test-", dir="/tmp"))
    os.chmod(d, 0o1777)
    rec = d / "recorder"
    rec.write_text(RECORDER)
    os.chmod(rec, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def identity_of(user):
    import pwd

    pw = pwd.getpwnam(user.name)
    return Identity(name=pw.pw_name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir,
                    shell=pw.pw_shell)


def envelope(name, sender="bob@example.net", extension="work"):
    local = f"{name}+{extension}" if extension else name
    return Envelope(sender=sender, recipient=f"{local}@example.org",
                    original_recipient=f"{local}@example.org", user=name, local=local,
                    domain="example.org", extension=extension)


def cfg(*overrides):
    return config.load(None, list(overrides), environ={})


def run(command, ident, env=None, data=MESSAGE, c=None):
    target = Target(kind="pipe", command=command, identity=ident, source=".forward line 1")
    return pipe.run_command(target, msgmod.from_bytes(data), env or envelope(ident.name),
                            c or cfg("command_timeout=20"))


def recorded(workdir, ident, **kw):
    """Run the recorder as ``ident``: (what it saw, its stdin bytes)."""
    out = workdir / "rec"
    run(f"{workdir}/recorder {out}", ident, **kw)
    return load(out)


def failure(kind, command, ident, **kw):
    """The ``kind`` (PermFail/TempFail) that ``run(command, ident, **kw)`` raises."""
    with pytest.raises(kind) as info:
        run(command, ident, **kw)
    return info.value


def load(out):
    return json.loads(Path(f"{out}.json").read_text()), Path(f"{out}.stdin").read_bytes()


def gone(pid):
    """True when ``pid`` no longer runs (a zombie awaiting init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def wait_gone(pid, timeout=5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


# --- pure helpers -------------------------------------------------------------


def test_command_argv_direct_or_shell():
    assert pipe.command_argv("/usr/bin/procmail -a work") == ["/usr/bin/procmail", "-a", "work"]
    for cmd in ('procmail -a "$EXTENSION"', "a | b", "a > f", "a; b", "a && b", "echo `x`",
                "cat ~/x", "a*", "x=1 prog"):
        assert pipe.command_argv(cmd) == ["/bin/sh", "-c", cmd]


def test_direct_exec_splits_at_blanks_only_as_sh_would():
    # str.split() would also split at \x1c-\x1f, \x85 and U+00A0; sh does not.
    assert pipe.command_argv("/bin/echo a\x1fb\xa0c\x85d") == ["/bin/echo", "a\x1fb\xa0c\x85d"]
    assert pipe.command_argv("/bin/echo \t a  b\t") == ["/bin/echo", "a", "b"]


def test_first_output_line_is_one_clean_line():
    # NUL, ESC, DEL and other controls never reach postfix or syslog; only
    # LF and CR end a line (not VT, FF, NEL or U+2028 as str.splitlines has it).
    assert pipe.first_line(b"\r\n  a\0b\x1b[31mc\x7fd\xc2\x85e\tf \n second") == "a?b?[31mc?d?e f"
    assert pipe.first_line(b"a\x0bb\x0cc\xe2\x80\xa8d\n") == "a?b?c d"
    assert pipe.first_line(b"\xff\xfe bad utf-8\n") == "\ufffd\ufffd bad utf-8"
    assert pipe.first_line(b"\n\r\n") == ""


def test_from_line_stays_one_line_whatever_the_sender():
    """A sender given with -f (fetchmail's "-f %F", a script) may hold a
    CR or LF: it must not start a second line (or a forged From_ line) in
    what a command reads."""
    sender = "a\nFrom evil@example.net  Mon Jan  5 00:00:00 2026\r\nb@x"
    first = next(pipe.stdin_chunks(msgmod.from_bytes(MESSAGE), envelope("alice", sender=sender)))
    assert first.count(b"\n") == 1 and first.endswith(b"\n") and b"\r" not in first
    assert FROM_LINE.match(first)


def test_censor_like_postfix():
    assert pipe.censor("o'brien+x@ex-ample.org") == "o_brien+x@ex-ample.org"
    assert pipe.censor("a$(b)`c`;d e") == "a__b__c__d_e"


# --- as real users ---------------------------------------------------------------


@needs_root
def test_runs_as_user_without_groups_in_home_with_exact_env(test_user, workdir):
    ident = identity_of(test_user)
    rec, data = recorded(workdir, ident)
    assert (rec["uid"], rec["euid"]) == (ident.uid, ident.uid)
    assert (rec["gid"], rec["egid"]) == (ident.gid, ident.gid)
    assert rec["groups"] in ([], [ident.gid])  # no supplementary groups (root's 0 gone)
    assert rec["cwd"] == ident.home
    assert rec["pgid"] == rec["pid"]  # its own process group
    assert rec["umask"] == 0o077
    # direct exec: no shell added PWD or anything else
    assert set(rec["env"]) == EXPECTED_ENV_KEYS
    env = rec["env"]
    assert env["HOME"] == ident.home
    assert env["USER"] == env["LOGNAME"] == ident.name
    assert env["SENDER"] == "bob@example.net"
    assert env["RECIPIENT"] == f"{ident.name}+work@example.org"
    assert env["LOCAL"] == f"{ident.name}+work"
    assert env["DOMAIN"] == "example.org"
    assert env["EXTENSION"] == "work"
    assert env["PATH"] == "/usr/bin:/bin"
    assert int(env["PYMDA_DEPTH"]) >= 1
    assert rec["argv"][1:] == [str(workdir / "rec")]


@needs_root
def test_stdin_is_from_line_trace_headers_and_message(test_user, workdir):
    ident = identity_of(test_user)
    _, data = recorded(workdir, ident)
    m = FROM_LINE.match(data)
    assert m and m.group(1) == b"bob@example.net"
    rest = data[m.end():]
    assert rest == (
        b"Return-Path: <bob@example.net>\n"
        + f"Delivered-To: {ident.name}+work@example.org\n".encode()
        + MESSAGE
    )


@needs_root
def test_null_sender_and_existing_leading_block(test_user, workdir):
    ident = identity_of(test_user)
    out = workdir / "rec"
    rcpt = f"{ident.name}+work@example.org"
    data = (f"Return-Path: <>\nX-Original-To: {rcpt}\nDelivered-To: {rcpt}\n".encode()
            + MESSAGE)
    run(f"{workdir}/recorder {out}", ident, env=envelope(ident.name, sender=""), data=data)
    rec, got = load(out)
    m = FROM_LINE.match(got)
    assert m.group(1) == b"MAILER-DAEMON"
    assert got[m.end():] == data  # nothing added twice
    assert rec["env"]["SENDER"] == ""


@needs_root
def test_extension_absent_without_one(test_user, workdir):
    ident = identity_of(test_user)
    rec, _ = recorded(workdir, ident, env=envelope(ident.name, extension=""))
    assert set(rec["env"]) == EXPECTED_ENV_KEYS - {"EXTENSION"}


@needs_root
def test_root_pipes_run_as_default_privs(workdir):
    ident = Identity(name="root", uid=0, gid=0, home="/root", shell="/bin/sh")
    rec, _ = recorded(workdir, ident)
    assert rec["uid"] == rec["euid"] == NOBODY
    assert rec["groups"] in ([], [rec["gid"]])
    assert rec["env"]["USER"] == "root"


@needs_root
def test_default_privs_root_is_refused(workdir):
    ident = Identity(name="root", uid=0, gid=0, home="/root")
    with pytest.raises(TempFail):
        run(f"{workdir}/recorder {workdir}/x", ident, c=cfg("default_privs=root"))
    assert not (workdir / "x.json").exists()


@needs_root
def test_shell_command_and_nothing_from_the_message_reaches_a_shell(test_user, workdir):
    ident = identity_of(test_user)
    evil = "a$(touch${IFS}/tmp/pymda-pwned-sender)`touch /tmp/pymda-pwned-bq`@x.org"
    out = workdir / "shell.out"
    run(f'echo "$SENDER" > {out}; cat > /dev/null', ident, env=envelope(ident.name, sender=evil))
    assert out.read_text().strip() == pipe.censor(evil)
    for name in ("pymda-pwned-sender", "pymda-pwned-bq", "pymda-pwned-subject"):
        assert not Path("/tmp", name).exists()


@needs_root
def test_cwd_falls_back_to_root_when_home_is_missing(test_user, workdir):
    ident = identity_of(test_user).replace(home="/nonexistent-pymda-home")
    rec, _ = recorded(workdir, ident)
    assert rec["cwd"] == "/"


# --- exit status, timeouts, processes ---------------------------------------------


@needs_root
def test_exit_1_is_permanent_with_first_output_line(test_user):
    ident = identity_of(test_user)
    err = failure(PermFail, 'echo; echo "  procmail: no such   folder "; echo second; exit 1',
                  ident)
    assert err.status == PERM_STATUS
    assert err.line() == f"{PERM_STATUS} procmail: no such folder"


@needs_root
def test_exit_75_is_temporary(test_user):
    ident = identity_of(test_user)
    assert failure(TempFail, "echo try later; exit 75", ident).line() == f"{TEMP_STATUS} try later"


@needs_root
def test_silent_failure_and_signal(test_user):
    ident = identity_of(test_user)
    assert "status 3" in failure(PermFail, "/bin/sh -c 'exit 3'", ident).text
    assert "signal 9" in failure(PermFail, "kill -9 $$", ident).text


def test_shell_builtin_without_metacharacters_goes_to_the_shell():
    """postfix's exec_command: when execvp of a word without '/' fails with
    ENOENT, "perhaps they're using some shell built-in" - so the common
    "|exec /usr/bin/procmail" works."""
    assert pipe.command_argv("exec /usr/bin/procmail") == [
        "/bin/sh", "-c", "exec /usr/bin/procmail"]
    assert pipe.command_argv("exit 0") == ["/bin/sh", "-c", "exit 0"]
    assert pipe.command_argv("true x") == ["true", "x"]  # found on PATH: exec'd


@needs_root
def test_exec_idiom_delivers(test_user, workdir):
    out = workdir / "rec"
    run(f"exec {workdir}/recorder {out}", identity_of(test_user))
    rec, data = load(out)
    assert rec["uid"] == test_user.uid
    assert data.endswith(b"body line\nFrom here, unquoted for commands\n>From already quoted\n")


@needs_root
def test_missing_program_is_permanent(test_user):
    assert failure(PermFail, "/nonexistent/program arg", identity_of(test_user)).status == \
        PERM_STATUS


@needs_root
def test_timeout_kills_the_whole_group(test_user, workdir):
    ident = identity_of(test_user)
    pids = workdir / "pids"
    start = time.monotonic()
    with pytest.raises(TempFail) as info:
        run(f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; exec sleep 61", ident,
            c=cfg("command_timeout=1"))
    assert time.monotonic() - start < 10
    assert info.value.status == TEMP_STATUS
    assert "time limit" in info.value.text
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 2
    for pid in recorded:
        assert wait_gone(pid), f"process {pid} survived the timeout"


@needs_root
def test_timeout_kills_a_command_that_left_its_process_group(test_user, workdir):
    """A command may move itself into its parent's group (same session):
    killing its own group then misses it, and waiting for it hung pymda
    until the MTA's own time limit."""
    import signal

    ident = identity_of(test_user)
    pidfile = workdir / "pid"
    script = (f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
              "os.setpgid(0, os.getpgid(os.getppid())); time.sleep(60)")

    def alarm(signum, frame):
        raise TimeoutError("pymda still waits for the command")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(15)
    try:
        with pytest.raises(TempFail) as info:
            run(f"exec /usr/bin/python3 -c \"{script}\"", ident, c=cfg("command_timeout=1"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if pidfile.exists() and not gone(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert info.value.status == TEMP_STATUS
    assert "time limit" in info.value.text
    assert wait_gone(int(pidfile.read_text()))


@needs_root
def test_leftover_background_process_is_killed_after_exit(test_user, workdir):
    ident = identity_of(test_user)
    pids = workdir / "pids"
    start = time.monotonic()
    run(f"sleep 60 & echo $! > {pids}; exit 0", ident)
    assert time.monotonic() - start < 10
    assert wait_gone(int(pids.read_text()))


@needs_root
def test_command_that_does_not_read_a_big_message(test_user):
    big = MESSAGE + b"x" * 100 + b"\n" * 1 + (b"y" * 1000 + b"\n") * 8000  # ~8 MB
    start = time.monotonic()
    run("/bin/true", identity_of(test_user), data=big)
    assert time.monotonic() - start < 10


@needs_root
def test_command_that_writes_a_lot_without_reading(test_user):
    big = (b"y" * 1000 + b"\n") * 4000
    with pytest.raises(PermFail) as info:
        run("head -c 3000000 /dev/zero | tr '\\0' 'z'; exit 2", identity_of(test_user),
            data=MESSAGE + big)
    assert info.value.text == "z" * pipe.MAX_REASON


@needs_root
def test_as_the_user_without_root(test_user, workdir):
    """pymda already switched to the user: the command keeps those ids."""
    ident = identity_of(test_user)
    out = workdir / "rec"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from pymda import config, message
        from pymda.forward import pipe
        from pymda.resolve import Envelope, Target
        from pymda.users import current
        ident = current()
        env = Envelope(sender="s@x.org", recipient=ident.name + "@example.org",
                       user=ident.name, local=ident.name, domain="example.org")
        t = Target(kind="pipe", command="{workdir}/recorder {out}", identity=ident)
        pipe.run_command(t, message.from_bytes(b"Subject: x\\n\\nhi\\n"), env,
                         config.load(None, [], environ={{}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], user=ident.uid, group=ident.gid,
                          extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=60)
    assert proc.returncode == 0, proc.stdout.decode()
    rec, _ = load(out)
    assert rec["uid"] == ident.uid and rec["gid"] == ident.gid
    assert rec["cwd"] == ident.home


@needs_root
def test_non_root_cannot_run_as_another_user(test_user):
    ident = identity_of(test_user)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from pymda import config
        from pymda.forward import pipe
        from pymda.errors import PermFail
        from pymda.users import Identity
        try:
            pipe.run_as(Identity(name="x", uid=0, gid=0, home="/"),
                        config.load(None, ["default_privs=daemon"], environ={{}}))
        except PermFail as e:
            print(e.status)
    """)
    proc = subprocess.run([sys.executable, "-c", script], user=ident.uid, group=ident.gid,
                          extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=60)
    assert proc.stdout.decode().strip() == POLICY_STATUS
