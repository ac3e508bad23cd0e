"""A real postfix for end-to-end tests (root only).

``Postfix`` writes /etc/postfix/main.cf (the Debian package is installed
unconfigured; an existing main.cf is backed up and restored), starts postfix
with ``postfix start`` (no systemd here), and offers:

- ``send(sender, rcpt, data)``: ``/usr/sbin/sendmail -i -f sender -- rcpt``
- ``set(**params)``: ``postconf -e`` + ``postfix reload``
- ``reset(**params)``: back to the test defaults, then ``set``
- ``flush()``: ``postqueue -f``
- ``queue()``: the queue as a list of dicts (``postqueue -j``);
  ``queue_empty()``, ``deferred()``
- ``wait_until(predicate, timeout)``: poll; raise AssertionError on timeout
- ``deliveries(rcpt)``: (rcpt, dsn, status, reason) per logged attempt;
  ``wait_status(rcpt, "sent"|"deferred"|"bounced")``
- ``clear_queue()``: ``postsuper -d ALL``
- ``log()``: this instance's log (``maillog_file``, no syslog needed),
  from the moment it started; ``wait_log(text)``
- ``stop()``: stop postfix, delete queued mail, restore main.cf

Only one test process may own postfix at a time: an exclusive flock on
/run/lock/pymda-test-postfix.lock is held from ``start`` to ``stop`` (other
pytest sessions on the machine wait for it).

Test defaults (main.cf): loopback only, ipv4, ``mydestination = localhost,
$myhostname, localhost.localdomain``, ``recipient_delimiter = +``,
``mailbox_command = <prefix>/bin/pymda -f "$SENDER"``, a private aliases
file, ``maillog_file = /var/log/postfix-test.log``, retries every second
(queue_run_delay / minimal_backoff_time 1s, maximal_backoff_time 2s).
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import paths

CONFIG_DIR = Path("/etc/postfix")
MAIN_CF = CONFIG_DIR / "main.cf"
BACKUP = CONFIG_DIR / "main.cf.pymda-test-backup"
ALIASES = CONFIG_DIR / "pymda-test-aliases"
LOG_FILE = Path("/var/log/postfix-test.log")
LOCK_FILE = "/run/lock/pymda-test-postfix.lock"
MARKER = "# written by pymda tests/support/postfix.py"
HOSTNAME = "pymda-test.localdomain"

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
POSTALIAS = "/usr/sbin/postalias"
SENDMAIL = "/usr/sbin/sendmail"


def installed():
    return all(os.access(p, os.X_OK) for p in (POSTFIX, POSTCONF, POSTQUEUE, SENDMAIL))


def default_mailbox_command():
    return f'{paths.pymda_bin()} -f "$SENDER"'


def default_params():
    return {
        "compatibility_level": "3.6",
        "myhostname": HOSTNAME,
        "mydomain": "localdomain",
        "myorigin": "$myhostname",
        "mydestination": "localhost, $myhostname, localhost.localdomain",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_client_restrictions": "",
        "smtpd_helo_restrictions": "",
        "smtpd_sender_restrictions": "",
        "recipient_delimiter": "+",
        "mailbox_command": default_mailbox_command(),
        "forward_path": "$home/.forward${recipient_delimiter}${extension}, $home/.forward",
        "alias_maps": f"hash:{ALIASES}",
        "alias_database": f"hash:{ALIASES}",
        "maillog_file": str(LOG_FILE),
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "delay_warning_time": "0",
        "biff": "no",
        "relayhost": "",
        "smtputf8_enable": "no",
    }


def master_pid():
    """The running master's pid (from its pid file), or None."""
    try:
        with open("/var/spool/postfix/pid/master.pid") as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().strip() == "master" else None
    except (OSError, ValueError, IndexError):
        return None


def master_running():
    return master_pid() is not None


def _run(argv, check=True, input_bytes=None, timeout=60):
    proc = subprocess.run(
        argv, input=input_bytes, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=timeout, check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: "
                           f"{proc.stdout.decode(errors='replace')}")
    return proc


def _format_value(value):
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class Postfix:
    def __init__(self):
        self._lock_fd = None
        self._log_offset = 0
        self._had_main_cf = False
        self.running = False
        self.params = {}

    # -- life cycle --------------------------------------------------------

    def start(self, **params):
        self._lock_fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        if master_running():
            _run([POSTFIX, "stop"], check=False)    # left over from a crashed run
            self._wait_stopped()
        if MAIN_CF.exists():
            text = MAIN_CF.read_text(errors="replace")
            if MARKER not in text:
                shutil.copy2(MAIN_CF, BACKUP)
        self._had_main_cf = BACKUP.exists()
        self.params = {**default_params(), **params}
        self._write_main_cf()
        self.write_aliases({})
        LOG_FILE.touch()
        # postsuper & co. log straight to the file, as user postfix, when
        # postlogd is not up; a postfix fatal() also sleeps a second.
        import pwd

        pw = pwd.getpwnam("postfix")
        os.chown(LOG_FILE, pw.pw_uid, pw.pw_gid)
        os.chmod(LOG_FILE, 0o644)
        self._log_offset = LOG_FILE.stat().st_size
        _run([POSTSUPER, "-d", "ALL"], check=False)
        if os.path.exists("/usr/lib/postfix/configure-instance.sh"):
            # Debian's start-up helper: copies the chroot's etc files.
            _run(["/usr/lib/postfix/configure-instance.sh", "-"], check=False)
        _run([POSTFIX, "check"], check=False)
        _run([POSTFIX, "start"])
        self.running = True
        self.wait_until(master_running, timeout=20, what="postfix to start")
        return self

    def stop(self):
        try:
            if self.running:
                _run([POSTFIX, "stop"], check=False)
                self._wait_stopped()
                self.running = False
            _run([POSTSUPER, "-d", "ALL"], check=False)
            if self._had_main_cf and BACKUP.exists():
                shutil.move(BACKUP, MAIN_CF)
            elif MAIN_CF.exists() and MARKER in MAIN_CF.read_text(errors="replace"):
                MAIN_CF.unlink()
            for p in (ALIASES, Path(str(ALIASES) + ".db")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)     # releases the flock
                self._lock_fd = None

    def _wait_stopped(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not master_running():
                return
            time.sleep(0.1)

    # -- configuration -----------------------------------------------------

    def _write_main_cf(self):
        lines = [MARKER]
        for key, value in self.params.items():
            lines.append(f"{key} = {_format_value(value)}")
        tmp = MAIN_CF.with_suffix(".cf.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, MAIN_CF)

    def set(self, **params):
        """Change main.cf parameters and reload."""
        self.params.update(params)
        self._write_main_cf()
        self.reload()

    def reset(self, **params):
        """Back to the test defaults plus ``params``; reload."""
        new = {**default_params(), **params}
        if new == self.params:
            return
        self.params = new
        self._write_main_cf()
        self.reload()

    def reload(self):
        """``postfix reload``: SIGHUP to master; wait for the new config."""
        if not self.running:
            return
        pid = master_pid()
        if pid is None:
            raise RuntimeError("postfix master is not running")
        # what `postfix reload` does, without its 2 s of checks and logging
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.2)

    def clear_queue(self):
        """Delete all queued mail (``postsuper -d ALL``)."""
        _run([POSTSUPER, "-d", "ALL"], check=False)

    def write_aliases(self, aliases):
        """Replace the aliases table: {name: "target, target"}."""
        lines = ["postmaster: root"] + [f"{k}: {v}" for k, v in aliases.items()]
        ALIASES.write_text("\n".join(lines) + "\n")
        os.chmod(ALIASES, 0o644)
        _run([POSTALIAS, f"hash:{ALIASES}"])

    def postconf(self, name):
        return _run([POSTCONF, "-h", name]).stdout.decode().strip()

    # -- mail --------------------------------------------------------------

    def send(self, sender, rcpt, data, timeout=30):
        """Submit ``data`` (bytes) with sendmail; ``sender`` "" is the null sender."""
        recipients = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        _run([SENDMAIL, "-i", "-f", sender or "<>", "--", *recipients],
             input_bytes=data, timeout=timeout)

    def flush(self):
        _run([POSTQUEUE, "-f"], check=False)

    def queue(self):
        """The mail queue: list of dicts from ``postqueue -j``."""
        proc = subprocess.run([POSTQUEUE, "-j"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"postqueue -j exited {proc.returncode}: {proc.stderr!r}")
        out = proc.stdout.decode(errors="replace")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def queue_empty(self):
        return not self.queue()

    def deferred(self):
        return [q for q in self.queue() if q.get("queue_name") == "deferred"]

    def delay_reasons(self):
        return [r.get("delay_reason", "") for q in self.queue() for r in q.get("recipients", [])]

    def wait_until(self, predicate, timeout=30, interval=0.2, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; "
                    f"queue={self.queue()!r}\nlog:\n{self.log()[-3000:]}"
                )
            time.sleep(interval)

    def wait_empty(self, timeout=30):
        return self.wait_until(self.queue_empty, timeout, what="an empty queue")

    # -- log ---------------------------------------------------------------

    def log(self):
        try:
            with open(LOG_FILE, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def mark_log(self):
        """Forget the log so far: later log()/wait_log() see only new lines."""
        try:
            self._log_offset = LOG_FILE.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0

    def deliveries(self, rcpt=None):
        """Delivery attempts in the log: list of (rcpt, dsn, status, reason).

        ``reason`` is the text in parentheses after the status: for
        mailbox_command, the command's output (postfix keeps the D.S.N in
        ``dsn=`` and drops it from the text).
        """
        import re

        out = []
        for m in re.finditer(r"to=<([^>]*)>,.*? dsn=(\d\.\d+\.\d+), status=(\w+)(?: \((.*)\))?$",
                             self.log(), re.M):
            if rcpt is None or m.group(1) == rcpt:
                out.append((m.group(1), m.group(2), m.group(3), (m.group(4) or "").strip()))
        return out

    def wait_status(self, rcpt, status, timeout=30):
        """Wait for a log entry ``status=<status>`` for rcpt; return that entry."""
        def find():
            for entry in self.deliveries(rcpt):
                if entry[2] == status:
                    return entry
            return None
        return self.wait_until(find, timeout, what=f"status={status} for {rcpt}")

    def wait_log(self, text, timeout=30):
        return self.wait_until(lambda: text in self.log(), timeout, what=f"{text!r} in the log")
