"""The installed pymda-policyd on a loopback port, for tests.

``start_policyd(cfg_path, *args)`` -> PolicyD: started with ``-v`` (its log
lines echo to stderr, collected in ``output()`` after ``stop()``) and
``--listen inet:127.0.0.1:<free port>``; returns once the port accepts;
call ``stop()`` in every case (it closes the log).
``ask(attrs)`` sends one policy request and returns the answer bytes.
"""

import socket
import subprocess
import tempfile
import time

from . import paths
from .procs import free_port


class PolicyD:
    def __init__(self, cfg_path, *args, env=None):
        self.port = free_port()
        self.spec = f"inet:127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(paths.prefix() / "bin" / "pymda-policyd"), "-v", "-c", str(cfg_path),
             "--listen", self.spec, *args],
            stdout=self.log, stderr=subprocess.STDOUT,
            env=env if env is not None else {"PATH": "/usr/bin:/bin"})
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"pymda-policyd did not start: {self.output()!r}")
                time.sleep(0.05)

    def ask(self, attrs, timeout=30):
        data = "".join(f"{k}={v}\n" for k, v in attrs.items()) + "\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data.encode())
            got = b""
            while not got.endswith(b"\n\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        return got

    def stop(self):
        """Terminate it; keep what it wrote (``output()``)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if not self.log.closed:
            self._text = self.output()
            self.log.close()

    def output(self):
        if self.log.closed:
            return self._text
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def start_policyd(cfg_path, *args, env=None):
    return PolicyD(cfg_path, *args, env=env)


def full_and_roomy(make_user, limit):
    """Two users with a Maildir: one whose maildirsize is at ``limit``, one empty."""
    full, roomy = make_user(), make_user()
    for user in (full, roomy):
        for sub in ("new", "cur", "tmp"):
            user.mkdir(f"Maildir/{sub}")
    full.write("Maildir/maildirsize", f"{limit}S\n{limit} 1\n".encode())
    return full, roomy


def world_readable_config(text, prefix="pymda-test-"):
    """A pymda.toml in a fresh 0755 directory (pymda runs as the user; pytest's
    tmp is 0700): returns its Path; remove its directory when done."""
    import os
    from pathlib import Path

    cfg_dir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(cfg_dir, 0o755)
    cfg = cfg_dir / "pymda.toml"
    cfg.write_text(text)
    os.chmod(cfg, 0o644)
    return cfg
