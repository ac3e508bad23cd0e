"""Run a ``.forward`` ``|command`` with the message on its stdin (SPEC 1.7).

Contract: ``run_command(target, message, envelope, cfg)`` returns None when
the command exited 0 and raises:
- TempFail 4.3.0 when it exited 75 (EX_TEMPFAIL), timed out (after
  ``command_timeout`` seconds the whole process group is killed), or could
  not be started for a transient reason (fork: EAGAIN/ENOMEM);
- PermFail 5.3.0 "<first output line>" for any other exit status or a
  fatal signal, and when the program does not exist / is not executable;
- PermFail 5.7.1 when it would have to run as root.
``run_argv(...)`` is the same machinery with an explicit argv and stdin
chunks (forward.py uses it for sendmail).

SECURITY:
- DELIVERY RIGHTS: the command runs as ``target.identity`` (the caller has
  already switched to that user when pymda runs as root, SPEC 1.8) and never
  as root: root's commands run as ``default_privs`` (default ``nobody``).
  When pymda itself still runs as root, the child drops privileges itself,
  in this order: setgroups([]), setgid, setuid (subprocess's extra_groups,
  group, user).  A non-root pymda cannot drop supplementary groups; it runs
  the command with its own ids.
- ENVIRONMENT: exactly HOME USER LOGNAME SHELL SENDER RECIPIENT LOCAL DOMAIN
  EXTENSION (only when there is one) ORIGINAL_RECIPIENT PATH, plus
  PYMDA_DEPTH (so a pymda started from here never reads .forward, SPEC 1.3).
  Values are censored like postfix's command_expansion_filter: characters
  outside [0-9A-Za-z!@%-_=+:,./] become "_".
- SHELL: ``/bin/sh -c command`` only when the command (written by the user
  in their own .forward) contains shell metacharacters, or when its first
  word has no "/" and is not on PATH (a builtin such as ``exec``, as in
  postfix); otherwise it is split at blanks and exec'd directly.  Nothing
  from the message (headers, body, sender) is ever put into the command
  line; it reaches the command only on stdin and, censored, in the
  environment.
- A new process group (``process_group=0``), cwd = the user's home ("/"
  when that cannot be entered), umask 077, stdin/stdout/stderr are pipes.

DEADLOCK FREEDOM: stdin is written with non-blocking I/O from one poll()
loop that also drains the output and watches the child (pidfd), so a
command that does not read its input, or writes a lot, cannot block us.
A command that exits without reading all its input has still "delivered"
(exit status decides, as with postfix).

PROCESS HYGIENE: when the command exits, any process it left in its
process group is killed (SIGKILL) before the command is reaped, so the
group id cannot have been reused.  (postfix instead waits for the output
pipe to close and times out; see the README's deviations.)  On timeout the
whole group is killed, and the command itself by its pid (it may have
moved to another process group of our session).  A process that made
itself a new session (setsid) escapes, as it would from postfix.

Stdin layout (POSTFIX-FACTS.md): ``From sender  asctime`` line, then
pymda's ``Return-Path:`` and ``Delivered-To:`` lines (only those not
already in the leading block), then the message byte for byte, without
mbox quoting.
"""

import os

from pymda.address import censor
from pymda.errors import PermFail, TempFail

EX_TEMPFAIL = 75
PATH = "/usr/bin:/bin"
# Characters that make us use /bin/sh -c (a superset of what sh treats
# specially, so a command is never mis-split).
SHELL_META = frozenset("\"'`$\\;&|<>()[]{}*?~#!=%^\n\r")
OUTPUT_KEEP = 4096
MAX_REASON = 300


def needs_shell(command):
    return any(c in SHELL_META for c in command)


def command_argv(command):
    """argv for ``command``: direct exec when possible, else /bin/sh -c.

    As postfix's exec_command: a first word without "/" that is not a
    program on PATH may be a shell builtin ("|exec /usr/bin/procmail"), so
    that command goes to the shell too."""
    if needs_shell(command):
        return ["/bin/sh", "-c", command]
    # Split where sh would (blanks), not at everything str.split() calls
    # whitespace (\x1c-\x1f, U+0085, U+00A0, ...).
    argv = [word for word in command.replace("\t", " ").split(" ") if word]
    if not argv:
        raise PermFail("empty command", "5.3.0")
    if "/" not in argv[0] and not any(
        os.path.exists(os.path.join(directory, argv[0])) for directory in PATH.split(":")
    ):
        return ["/bin/sh", "-c", command]
    return argv


def environment(envelope, identity, depth=None):
    """The pipe's environment (SPEC 1.7), censored."""
    if depth is None:
        try:
            depth = int(os.environ.get("PYMDA_DEPTH", "0") or 0) + 1
        except ValueError:
            depth = 1
    env = {
        "HOME": identity.home,
        "USER": identity.name,
        "LOGNAME": identity.name,
        "SHELL": identity.shell or "/bin/sh",
        "SENDER": envelope.sender or "",
        "RECIPIENT": envelope.recipient or "",
        "LOCAL": envelope.local or "",
        "DOMAIN": envelope.domain or "",
        "ORIGINAL_RECIPIENT": envelope.original_recipient or envelope.recipient or "",
    }
    if envelope.extension:
        env["EXTENSION"] = envelope.extension
    env = {k: censor(str(v)) for k, v in env.items()}
    env["PATH"] = PATH
    env["PYMDA_DEPTH"] = str(depth)
    return env


def run_as(identity, cfg):
    """(uid, gid) the command runs as, or None for "keep our own ids"."""
    euid = os.geteuid()
    uid, gid = identity.uid, identity.gid
    if uid == 0:
        from pymda.users import default_privs

        privs = default_privs(cfg)
        uid, gid = privs.uid, privs.gid
    if euid == 0:
        return uid, gid
    if uid != euid:
        raise PermFail(f"cannot run a command as uid {uid} (running as uid {euid})", "5.7.1")
    return None


def stdin_chunks(message, envelope):
    """From_ line + trace headers + message (what postfix gives commands)."""
    from pymda import message as msgmod

    yield msgmod.format_from_line(envelope.sender)
    yield msgmod.trace_headers(message, envelope)
    yield from message.chunks()


def run_command(target, message, envelope, cfg):
    """Deliver ``message`` to ``target.command`` (see module docstring)."""
    identity = target.identity
    ids = run_as(identity, cfg)
    argv = command_argv(target.command)
    code, first, timed_out = run_argv(
        argv,
        stdin_chunks(message, envelope),
        env=environment(envelope, identity),
        ids=ids,
        cwd=identity.home or "/",
        timeout=cfg.command_timeout,
        what=f"command {target.command}",
    )
    check_status(code, first, timed_out, cfg.command_timeout)


def check_status(code, first, timed_out, timeout):
    if timed_out:
        raise TempFail(f"command time limit exceeded ({timeout:g} s)", "4.3.0")
    if code == 0:
        return
    if code == EX_TEMPFAIL:
        raise TempFail(first or "command exited with status 75", "4.3.0")
    if code < 0:
        raise PermFail(first or f"command died with signal {-code}", "5.3.0")
    raise PermFail(first or f"command died with status {code}", "5.3.0")


# Control characters (C0, DEL, C1) in a command's output become "?" before
# the output reaches postfix or syslog (a NUL would cut postfix's reason
# short, ESC sequences would reach terminals); a tab is a blank.
_CONTROLS = {**{c: "?" for c in (*range(0x20), *range(0x7F, 0xA0))}, 0x09: " "}


def first_line(output):
    """The first non-blank line of ``output`` as one clean line of text.

    Only LF and CR end a line (str.splitlines would also end one at VT, FF,
    NEL, U+2028 ...); control characters become "?", runs of blanks one
    space; at most MAX_REASON characters."""
    text = output.decode("utf-8", "replace")
    for line in text.replace("\r", "\n").split("\n"):
        line = " ".join(line.translate(_CONTROLS).split())
        if line:
            return line[:MAX_REASON]
    return ""


def program_ids():
    """The ids a program is started with when the caller gives none: None
    (this process's own) - or, under a root pymda-lmtpd's temporary
    switch (real uid root, effective uid the user's), the user's uid and
    gid, so that the child sets its real and saved ids to them as well
    before the exec.  A program must never run with root as its real uid:
    it could take root back, and a shell whose real uid is root drops its
    effective uid to it (runs as root)."""
    from pymda.users import switched_temporarily

    if switched_temporarily():
        return (os.geteuid(), os.getegid(), None)
    return None


def _spawn(argv, env, ids, cwd):
    """``ids``: (uid, gid) - no supplementary groups - or (uid, gid, None):
    keep the groups (a temporarily switched thread has none, and without
    root's effective uid may not set them); None: program_ids()."""
    import subprocess

    if ids is None:
        ids = program_ids()
    kwargs = {}
    if ids is not None:
        kwargs = {"user": ids[0], "group": ids[1]}
        if len(ids) == 2:
            kwargs["extra_groups"] = []
    last = None
    for directory in (cwd, "/"):
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=directory,
                process_group=0,
                umask=0o077,
                close_fds=True,
                restore_signals=True,
                **kwargs,
            )
        except OSError as exc:
            last = exc
            # subprocess reports a failed chdir with the directory as filename
            if exc.filename == directory and directory != "/":
                continue
            break
    raise last


def run_argv(argv, chunks, env, ids, cwd, timeout, what):
    """Run ``argv`` feeding ``chunks``; (exit code or -signal, first output
    line, timed_out).  Never leaves a process of its group behind."""
    import errno
    import select
    import signal
    import time

    try:
        proc = _spawn(argv, env, ids, cwd)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
            raise TempFail(f"cannot start {what}: {exc.strerror}", "4.3.0") from None
        raise PermFail(f"cannot execute {argv[0]}: {exc.strerror}", "5.3.0") from None
    pid = proc.pid
    win = proc.stdin.fileno()
    rout = proc.stdout.fileno()
    os.set_blocking(win, False)
    os.set_blocking(rout, False)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    deadline = time.monotonic() + timeout if timeout else None
    output = bytearray()
    pending = b""
    source = iter(chunks)
    poller = select.poll()
    poller.register(win, select.POLLOUT)
    poller.register(rout, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    writing = True
    reading = True
    exited = False
    timed_out = False
    try:
        while not exited:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                wait_ms = int(left * 1000) + 1
            else:
                wait_ms = None
            if pidfd is None:
                wait_ms = 20 if wait_ms is None else min(wait_ms, 20)
            for fd, events in poller.poll(wait_ms):
                if fd == pidfd:
                    exited = True
                elif fd == rout:
                    reading = _read_some(rout, output)
                    if not reading:
                        poller.unregister(rout)
                elif fd == win and writing:
                    if events & (select.POLLERR | select.POLLHUP):
                        writing = False
                    else:
                        pending, writing = _write_some(win, pending, source)
                    if not writing:
                        poller.unregister(win)
                        proc.stdin.close()
            if pidfd is None and not exited:
                exited = _has_exited(pid)
        if reading:
            _read_some(rout, output)  # what is there now; never wait for EOF
    finally:
        # Kill what is left of the group while the leader is still a zombie
        # (or alive, on timeout): its pgid cannot have been reused yet.
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        # The leader itself too: it may have moved to another process group
        # of our session (setpgid), and waiting for it would hang.  Not yet
        # reaped, so the pid cannot have been reused.
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        if pidfd is not None:
            os.close(pidfd)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
    return proc.returncode, first_line(bytes(output)), timed_out


def _has_exited(pid):
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _read_some(fd, output):
    """Read what is available; False at EOF.  Keeps OUTPUT_KEEP bytes."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if len(output) < OUTPUT_KEEP:
            output += data[: OUTPUT_KEEP - len(output)]


def _write_some(fd, pending, source):
    """Write as much as the pipe takes; (pending, still_writing)."""
    while True:
        if not pending:
            chunk = next(source, None)
            if chunk is None:
                return b"", False
            if not chunk:
                continue
            pending = memoryview(chunk)
        try:
            n = os.write(fd, pending)
        except BlockingIOError:
            return pending, True
        except (BrokenPipeError, OSError):
            return b"", False  # the command stopped reading: its exit status decides
        pending = pending[n:]
