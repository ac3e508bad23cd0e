"""Small helpers shared by the private servers of tests/support.

``private_top(prefix, account)`` -> (directory, uid, gid): a fresh
temporary directory (0755) owned by the system ``account`` the server
runs as.  ``terminate(proc, timeout)``: SIGTERM, then SIGKILL after
``timeout`` seconds; no-op for None or an exited process.
``tail(path)``: the end of a log file ("" when unreadable).
"""

import os
import pwd
import subprocess
import tempfile


def private_top(prefix, account):
    pw = pwd.getpwnam(account)
    top = tempfile.mkdtemp(prefix=prefix)
    os.chmod(top, 0o755)
    os.chown(top, pw.pw_uid, pw.pw_gid)
    return top, pw.pw_uid, pw.pw_gid


def terminate(proc, timeout=60):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path, size=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-size:]
    except OSError:
        return ""
