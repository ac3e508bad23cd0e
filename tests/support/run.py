"""Run the installed pymda (or any program) as a subprocess, as any user.

``run_pymda(args, input_bytes, user=None, env=None, timeout=60,
postfix_env=False, recipient=None, sender=None)`` returns ``Result(code,
output)``: a 2-tuple, so ``code, out = run_pymda(...)`` works; stdout and
stderr are merged as postfix merges them.

- ``user``: a ``support.users.TestUser`` (or anything with uid, gid, name,
  home): the child runs with that uid/gid and NO supplementary groups (as
  postfix runs ``mailbox_command``).  Root only.
- ``env``: extra variables (None values delete).  The child environment is
  otherwise minimal and never inherits the test runner's (no stray
  PYMDA_CONFIG): PATH, LANG=C, and HOME/USER/LOGNAME of the user.
- ``postfix_env=True``: exactly the environment postfix's local(8) gives
  ``mailbox_command`` (POSTFIX-FACTS.md): USER LOGNAME HOME SHELL SENDER
  RECIPIENT ORIGINAL_RECIPIENT LOCAL DOMAIN [EXTENSION] PATH=/usr/bin:/bin
  LANG=C MAIL_CONFIG=/etc/postfix, cwd /var/spool/postfix, umask 077.
"""

import collections
import contextlib
import os
import pwd
import subprocess

from . import paths

Result = collections.namedtuple("Result", "code output")

# sysexits / SPEC 1.9
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def _identity(user):
    if user is None:
        pw = pwd.getpwuid(os.getuid())
        return pw.pw_name, pw.pw_dir, pw.pw_shell or "/bin/sh"
    pw = pwd.getpwuid(user.uid)
    return user.name, user.home, pw.pw_shell or "/bin/sh"


def postfix_environment(user, recipient, sender="", original_recipient=None, delimiter="+"):
    """The environment postfix local(8) passes to mailbox_command."""
    name, home, shell = _identity(user)
    local, _, domain = recipient.rpartition("@")
    env = {
        "USER": name,
        "LOGNAME": name,
        "HOME": str(home),
        "SHELL": shell,
        "SENDER": sender,
        "RECIPIENT": recipient,
        "ORIGINAL_RECIPIENT": original_recipient or recipient,
        "LOCAL": local,
        "DOMAIN": domain,
        "PATH": "/usr/bin:/bin",
        "LANG": "C",
        "MAIL_CONFIG": "/etc/postfix",
    }
    if delimiter and delimiter in local:
        env["EXTENSION"] = local.split(delimiter, 1)[1]
    return env


def child_environment(user=None, env=None, postfix_env=False, recipient=None, sender=""):
    if postfix_env:
        if recipient is None:
            name = user.name if user is not None else pwd.getpwuid(os.getuid()).pw_name
            recipient = f"{name}@localhost"
        full = postfix_environment(user, recipient, sender)
    else:
        name, home, shell = _identity(user)
        full = {"PATH": BASE_PATH, "LANG": "C", "HOME": str(home), "USER": name, "LOGNAME": name}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = str(value)
    return full


def run(argv, input_bytes=b"", user=None, env=None, timeout=60, postfix_env=False,
        recipient=None, sender="", cwd=None, umask=None):
    """Run ``argv`` (list) and return Result(code, merged output bytes)."""
    kwargs = {}
    if user is not None and (os.geteuid() != user.uid):
        kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
    if postfix_env:
        cwd = cwd or ("/var/spool/postfix" if os.path.isdir("/var/spool/postfix") else "/")
        umask = 0o077 if umask is None else umask
    if umask is not None:
        kwargs["umask"] = umask
    proc = subprocess.run(
        [str(a) for a in argv],
        input=input_bytes,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_environment(user, env, postfix_env, recipient, sender),
        cwd=str(cwd) if cwd else None,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    return Result(proc.returncode, proc.stdout)


def run_pymda(args, input_bytes=b"", user=None, env=None, timeout=60, **kw):
    """Run the installed pymda launcher with ``args``; see the module doc."""
    return run([paths.pymda_bin(), *args], input_bytes, user=user, env=env, timeout=timeout, **kw)


def start_pymda(args, input_bytes=b"", user=None, env=None, stdin_path=None,
                stdout=subprocess.PIPE, **kw):
    """Start pymda without waiting: returns a Popen (stdout+stderr merged;
    ``stdout=subprocess.DEVNULL`` drops both).

    The message is written to stdin and stdin closed by ``finish()``;
    ``stdin_path``: stdin is that file instead (a large message read at
    pymda's pace, for tests that stop or kill it mid-write).
    """
    kwargs = {}
    if user is not None and (os.geteuid() != user.uid):
        kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
    stdin = open(stdin_path, "rb") if stdin_path is not None else subprocess.PIPE
    try:
        proc = subprocess.Popen(
            [str(paths.pymda_bin()), *[str(a) for a in args]],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout == subprocess.PIPE else stdout,
            env=child_environment(user, env, kw.get("postfix_env", False),
                                  kw.get("recipient"), kw.get("sender", "")),
            **kwargs,
        )
    finally:
        if stdin_path is not None:
            stdin.close()
    proc.pymda_input = input_bytes if stdin_path is None else None
    return proc


@contextlib.contextmanager
def reaped(proc):
    """``with reaped(proc):`` a process the block did not see to its end is
    killed and waited for (no stray pymda after a failed assertion)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc, timeout=60):
    """Feed a start_pymda() process its input, wait: Result(code, output)."""
    out, _ = proc.communicate(proc.pymda_input, timeout=timeout)
    return Result(proc.returncode, out)
