"""A private dovecot serving only its auth-userdb socket (root only).

``DovecotAuth(users_text).start()`` writes a dovecot.conf under a
temporary directory — its own ``base_dir``, ``state_dir`` and log, no
protocols (no listener on any port), a passwd-file passdb/userdb read
from ``users`` in that directory — and runs ``dovecot -F`` in the
foreground as a child that dies with this process (procs.start_server:
the master stays root, so the setting holds).  ``socket_path`` is the auth-userdb socket (0600
root), the one dovecot-lda talks to.  ``write_users(text)`` replaces the
passwd-file (dovecot re-reads it when its mtime changes, checking at most
once a second: a running server gets a second to notice); ``stop()`` /
``start()`` again; ``destroy()``.
"""

import os
import shutil
import tempfile
import time

from support.procs import start_server, tail, terminate

DOVECOT = "/usr/sbin/dovecot"

CONF = """\
base_dir = {top}/run
state_dir = {top}/state
log_path = {top}/dovecot.log
instance_name = pymda-test-{name}
protocols =
listen = 127.0.0.1
ssl = no
mail_location = maildir:~/Maildir
first_valid_uid = 1
service auth {{
  unix_listener auth-userdb {{
    mode = 0600
    user = root
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = passwd-file
  args = {top}/users
}}
userdb {{
  driver = passwd-file
  args = {top}/users
}}
"""


def installed():
    return os.access(DOVECOT, os.X_OK)


class DovecotAuth:
    def __init__(self, users_text=""):
        self.top = tempfile.mkdtemp(prefix="pymda-dovecot-auth-")
        os.chmod(self.top, 0o755)
        for sub in ("run", "state"):
            os.mkdir(os.path.join(self.top, sub), 0o755)
        self.conf = os.path.join(self.top, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(top=self.top, name=os.path.basename(self.top)))
        self.write_users(users_text)
        self.proc = None

    @property
    def socket_path(self):
        return os.path.join(self.top, "run", "auth-userdb")

    def write_users(self, text):
        path = os.path.join(self.top, "users")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        # dovecot re-reads the file when its mtime (seconds) changes: make
        # every version's mtime distinct even within one second
        self.version = getattr(self, "version", 0) + 1
        stamp = int(time.time()) + self.version
        os.utime(tmp, (stamp, stamp))
        os.rename(tmp, path)
        if getattr(self, "proc", None) is not None:
            time.sleep(1.1)  # dovecot looks at the file at most once a second

    def start(self, timeout=30):
        self.proc = start_server([DOVECOT, "-F", "-c", self.conf],
                                 os.path.join(self.top, "dovecot.log"), cwd=self.top)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited {self.proc.returncode}: {self.log()}")
            if os.path.exists(self.socket_path):
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"dovecot did not create {self.socket_path}: {self.log()}")

    def log(self):
        return tail(os.path.join(self.top, "dovecot.log"))

    def stop(self):
        terminate(self.proc, 30)
        self.proc = None
        # dovecot leaves its sockets behind: a stopped server refuses connections
        for name in os.listdir(os.path.join(self.top, "run")):
            if name == "auth-userdb":
                try:
                    os.unlink(os.path.join(self.top, "run", name))
                except OSError:
                    pass

    def destroy(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.top, ignore_errors=True)
